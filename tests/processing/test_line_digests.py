"""Line digests (processing/digests.py): unchanged lines skip parsing, and the result is exact.

The scan is an optimization only, so the main test here runs random
sequences of files through two real Runners on two real SQLite files, one
as shipped and one whose stored digests are wiped before every run, and
requires the same results, errors and final state from both.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processing import digests
from processing.config import Config
from processing.digests import Scan, digest_context, scan_file
from processing.model import TEMPLATE_HEADER, FileRejected
from processing.passwords import StudentPasswords
from processing.runner import SCAN_MIN_BYTES, Runner
from processing.store import Store, database_path
from processing.template import read_rows
from tests.conftest import ORDERS, SPR, csv_text, make_config, run_bytes, student
from tests.processing.test_properties import row_lists


def digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


ANN = "0101,S1,Ann,Lee,5,ann,,,A"
BOB = "0101,S2,Bob,Ray,6,bob,pw12,Room 1,D"
KNOWN = {digest(ANN): "S1", digest(BOB): "S2"}


def text_of(lines: Sequence[str], newline: str = "\r\n") -> io.StringIO:
    """A decoded file as open_text gives it: line breaks untranslated."""
    return io.StringIO(TEMPLATE_HEADER + newline + newline.join(lines) + newline, newline="")


def scan(lines: Sequence[str], newline: str = "\r\n") -> Scan:
    return scan_file(text_of(lines, newline), KNOWN, digest)


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_a_file_of_known_lines_is_all_unchanged_whatever_its_line_breaks(newline: str) -> None:
    found = scan([BOB, ANN], newline)
    assert found.all_unchanged
    assert (found.rows, found.hits, found.misses) == (2, {2: "S2", 3: "S1"}, [])


def test_blank_rows_are_skipped_as_the_reader_skips_them() -> None:
    found = scan(["", ANN, ",,,,,,,,", '"",""', "  , ,\t", BOB])
    assert found.all_unchanged
    assert found.hits == {3: "S1", 7: "S2"}


def test_other_lines_are_parsed_as_misses_in_file_order() -> None:
    changed = "0101,S1,Ann,Lee,5,ann,,,D"
    found = scan([BOB, changed, ANN + " "])
    assert found.hits == {2: "S2"}
    assert [(raw.line, raw.fields[8], raw.text) for raw in found.misses] == [
        (3, "D", changed),
        (4, "A ", ANN + " "),
    ]
    assert not found.all_unchanged
    # S1's two rows are both misses: the duplicate is found there
    assert found.rows_to_decide() is not None


def test_misses_are_decided_alone_only_when_no_hit_shares_their_student() -> None:
    found = scan([ANN, "0101,S3,Cy,Day,5,cy,pw-33,,A"])
    assert found.rows_to_decide() is not None
    assert scan([ANN, ANN]).rows_to_decide() is None  # a duplicated unchanged line
    assert not scan([ANN, ANN]).all_unchanged


def test_a_known_line_inside_a_quoted_field_is_part_of_that_record() -> None:
    found = scan(['0101,S3,"a', ANN, 'b",Lee,5,cid,,,A', BOB])
    assert found.hits == {5: "S2"}
    assert [(raw.line, raw.fields[2], raw.text) for raw in found.misses] == [
        (2, f"a\r\n{ANN}\r\nb", None)
    ]


def test_a_scan_with_too_many_misses_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digests, "MISS_LIMIT", 2)
    found = scan([ANN, "0101,S3,x,y,5,a3,pw-1,,A", "0101,S4,x,y,5,a4,pw-1,,A", "0101,S5,x"])
    assert not found.complete
    assert not found.all_unchanged
    assert found.rows_to_decide() is None
    assert found.hits == {2: "S1"}  # what it found so far still hints the full path


LINES = [ANN, BOB, ",,,,,,,,", '"",""', '0101,S3,"a', 'b",Lee,5,cid,,,A', "x\x00y", ANN + " ", "S"]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.one_of(st.sampled_from(LINES), st.text(max_size=12)), max_size=8),
    newline=st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_the_scan_finds_the_records_read_rows_finds(lines: list[str], newline: str) -> None:
    """Hits and misses together are exactly read_rows' records, cut in the same places."""
    try:
        expected = list(read_rows(text_of(lines, newline)))
    except FileRejected:
        return  # a random first line can be read as part of the header
    found = scan(lines, newline)
    known = {raw.line: KNOWN.get(digest(raw.text)) if raw.text else None for raw in expected}
    assert found.hits == {line: sid for line, sid in known.items() if sid is not None}
    assert found.misses == [raw for raw in expected if known[raw.line] is None]


def test_the_context_changes_with_the_order_schools_and_grades() -> None:
    base = digest_context("E", ["0101", "0102"], ["K", "1"])
    assert base == digest_context("E", ["0102", "0101"], ["1", "K"])
    assert base != digest_context("R", ["0101", "0102"], ["K", "1"])
    assert base != digest_context("E", ["0101"], ["K", "1"])
    assert base != digest_context("E", ["0101", "0102"], ["K"])


def test_the_line_digest_is_keyed_and_depends_on_the_context() -> None:
    one, two = StudentPasswords(b"1" * 32), StudentPasswords(b"2" * 32)
    assert one.line_digest("c")(ANN) == one.line_digest("c")(ANN)
    assert one.line_digest("c")(ANN) != two.line_digest("c")(ANN)
    assert one.line_digest("c")(ANN) != one.line_digest("d")(ANN)


# ---- through the real Runner and Store ---------------------------------------------


class District:
    """One config, one store, one runner: process files as the server would."""

    def __init__(self, config_path: Path, *, wipe_digests: bool = False) -> None:
        self.config_path = config_path
        self.wipe_digests = wipe_digests
        self.full_loads = 0
        self.partial_loads = 0  # Store.load_students: a scan's misses decided alone
        self.scan_min_bytes = 0  # these files are small; the server scans nightly-sized ones

    async def run(self, data: bytes, order: str | None = None) -> dict[str, Any]:
        config = Config.from_toml(self.config_path)
        store = await Store.open(database_path(config.server.data))
        try:
            await store.sync_config(config)
            if self.wipe_digests:
                await store.db.execute("UPDATE students SET line_digest = NULL")
            load_district = store.load_district

            async def counted(district_id: str) -> Any:
                self.full_loads += 1
                return await load_district(district_id)

            store.load_district = counted  # type: ignore[method-assign]
            load_students = store.load_students

            async def counted_partial(*args: Any, **kwargs: Any) -> Any:
                self.partial_loads += 1
                return await load_students(*args, **kwargs)

            store.load_students = counted_partial  # type: ignore[method-assign]
            runner = Runner(config, store, StudentPasswords.from_data_dir(config.server.data))
            runner.scan_min_bytes = self.scan_min_bytes
            outcome = await run_bytes(runner, data, order_id=order)
            assert await store.invariant_violations() == []
            return {
                "result": {
                    key: value
                    for key, value in outcome.result.to_json().items()
                    if key not in ("run_id", "received_at", "finished_at")
                },
                "errors": [(e.line, e.code, e.message, e.values) for e in outcome.errors],
                "students": await store.list_students(SPR),
                "orders": await store.list_orders(SPR),
            }
        finally:
            await store.close()

    async def digests(self) -> dict[str, bytes | None]:
        config = Config.from_toml(self.config_path)
        store = await Store.open(database_path(config.server.data))
        try:
            rows = await store.db.execute_fetchall(
                "SELECT student_id, line_digest FROM students WHERE district_id = ?", (SPR,)
            )
            return {row[0]: row[1] for row in rows}
        finally:
            await store.close()


def rows_file(rows: Sequence[Sequence[str] | str], newline: str = "\r\n") -> bytes:
    return csv_text(rows, newline).encode("utf-8")


async def test_the_same_file_again_is_unchanged_without_loading_the_students(
    tmp_path: Path,
) -> None:
    district = District(make_config(tmp_path))
    data = rows_file([student("S1"), student("S2", grade="03"), student("S3", class_name="")])
    assert (await district.run(data))["result"]["added"] == 3
    assert district.full_loads == 1
    again = await district.run(data)
    assert again["result"]["unchanged"] == 3
    assert district.full_loads == 1  # the scan proved every line unchanged
    with_error = rows_file([student("S1"), student("S2", grade="03"), student("S9", "I")])
    third = await district.run(with_error)
    assert (third["result"]["unchanged"], third["errors"][0][1]) == (2, "STUDENT_NOT_FOUND")
    # a line without a digest, naming no other row's student: decided alone
    assert (district.full_loads, district.partial_loads) == (1, 1)


async def test_a_small_file_is_decided_without_the_scan(tmp_path: Path) -> None:
    """A partial upload to a big district would pay for loading every digest."""
    district = District(make_config(tmp_path))
    district.scan_min_bytes = SCAN_MIN_BYTES  # the Runner's default
    data = rows_file([student("S1")])
    await district.run(data)
    assert (await district.run(data))["result"]["unchanged"] == 1
    assert district.full_loads == 2


async def test_a_changed_row_taking_an_unchanged_students_username_is_refused(
    tmp_path: Path,
) -> None:
    """Decided alone, a row still sees the usernames of students it does not name."""
    district = District(make_config(tmp_path))
    ann, bob = student("S1", username="Ann.Lee"), student("S2", username="bob")
    await district.run(rows_file([ann, bob]))
    again = await district.run(
        rows_file([ann, student("S3", username="ANN.LEE"), student("S2", username="ann.lee")])
    )
    assert district.partial_loads == 1
    assert [(e[0], e[1]) for e in again["errors"]] == [
        (3, "USERNAME_TAKEN"),
        (4, "USERNAME_TAKEN"),
    ]
    assert again["result"]["unchanged"] == 1


async def test_reordered_lines_and_other_line_breaks_are_still_unchanged(tmp_path: Path) -> None:
    district = District(make_config(tmp_path))
    rows = [student("S1"), student("S2"), student("S3", grade="KG")]
    await district.run(rows_file(rows))
    again = await district.run(rows_file(rows[::-1], newline="\n"))
    assert again["result"]["unchanged"] == 3
    assert district.full_loads == 1


async def test_x_rows_store_no_digest_so_a_second_run_says_student_exists(tmp_path: Path) -> None:
    district = District(make_config(tmp_path))
    data = rows_file([student("S1"), student("S2", "X")])
    await district.run(data)
    assert {k: v is not None for k, v in (await district.digests()).items()} == {
        "S1": True,
        "S2": False,
    }
    again = await district.run(data)
    assert [(e[0], e[1]) for e in again["errors"]] == [(3, "STUDENT_EXISTS")]
    assert again["result"]["unchanged"] == 1


async def test_a_duplicated_unchanged_line_rejects_both_rows(tmp_path: Path) -> None:
    district = District(make_config(tmp_path))
    await district.run(rows_file([student("S1")]))
    again = await district.run(rows_file([student("S1"), student("S1")]))
    assert [(e[0], e[1]) for e in again["errors"]] == [
        (2, "DUPLICATE_STUDENT_ID"),
        (3, "DUPLICATE_STUDENT_ID"),
    ]


async def test_a_config_change_makes_the_same_lines_checked_again(tmp_path: Path) -> None:
    config_path = make_config(tmp_path)
    district = District(config_path)
    data = rows_file([student("S1", grade="5"), student("S2", grade="3")])
    await district.run(data)
    make_config(tmp_path, grades=["3", "4"])  # grade 5 leaves the program
    again = await district.run(data)
    assert [(e[0], e[1]) for e in again["errors"]] == [(2, "GRADE_NOT_IN_PROGRAM")]
    assert again["result"]["unchanged"] == 1


async def test_another_order_is_not_the_order_the_digest_was_taken_for(tmp_path: Path) -> None:
    district = District(make_config(tmp_path))
    data = rows_file([student("S1")])
    await district.run(data)
    moved = await district.run(data, order=ORDERS[SPR][1])
    assert (moved["result"]["updated"], moved["result"]["transferred"]) == (1, 1)
    back = await district.run(data)
    assert (back["result"]["updated"], back["result"]["transferred"]) == (1, 1)
    assert (await district.run(data))["result"]["unchanged"] == 1


async def test_a_d_row_for_another_orders_student_is_no_digest_for_that_order(
    tmp_path: Path,
) -> None:
    """Found by the property test: D keeps an active student on its own order."""
    district = District(make_config(tmp_path))
    await district.run(rows_file([student("S1")]))
    regular = ORDERS[SPR][1]
    data = rows_file([student("S1", "D")])
    first = await district.run(data, order=regular)
    assert (first["result"]["deactivated"], first["students"][0]["order"]) == (1, ORDERS[SPR][0])
    assert (await district.digests())["S1"] is None
    again = await district.run(data, order=regular)  # now it moves to the named order
    assert (again["result"]["updated"], again["students"][0]["order"]) == (1, regular)
    assert (await district.run(data, order=regular))["result"]["unchanged"] == 1


async def test_a_changed_student_gets_the_new_lines_digest(tmp_path: Path) -> None:
    district = District(make_config(tmp_path))
    await district.run(rows_file([student("S1")]))
    before = (await district.digests())["S1"]
    changed = rows_file([student("S1", first="Anna")])
    assert (await district.run(changed))["result"]["updated"] == 1
    after = (await district.digests())["S1"]
    assert after is not None and after != before
    assert (await district.run(changed))["result"]["unchanged"] == 1
    # the old line is a change again, not "unchanged" by a stale digest
    assert (await district.run(rows_file([student("S1")])))["result"]["updated"] == 1


def variants(rows: list[tuple[str, ...]]) -> st.SearchStrategy[bytes]:
    """The rows as a file, with the things that vary between real extracts."""
    return st.tuples(
        st.sampled_from(["\r\n", "\n", "\r"]),
        st.booleans(),  # a blank row (Excel's ",,,,,,,,")
        st.booleans(),  # a quoted Class Name that spans two lines
    ).map(lambda options: _variant(rows, *options))


def _variant(rows: list[tuple[str, ...]], newline: str, blank: bool, multiline: bool) -> bytes:
    out: list[Sequence[str] | str] = list(rows)
    if blank:
        out.insert(len(out) // 2, ",,,,,,,,")
    if multiline and rows and len(rows[0]) == 9:
        out[0] = (*rows[0][:7], "Room\n1", rows[0][8])
    return csv_text(out, newline).encode("utf-8")


files = row_lists(8).flatmap(variants)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sequence=st.lists(st.one_of(files, st.just(b"again")), min_size=2, max_size=5),
    regular=st.lists(st.booleans(), min_size=5, max_size=5),  # which runs use --order
)
def test_digests_never_change_an_outcome(
    tmp_path_factory: pytest.TempPathFactory, sequence: list[bytes], regular: list[bool]
) -> None:
    fast = District(make_config(tmp_path_factory.mktemp("fast"), licenses=4))
    plain = District(make_config(tmp_path_factory.mktemp("plain"), licenses=4), wipe_digests=True)

    async def both() -> None:
        previous = b""
        for index, data in enumerate(sequence):
            data = previous if data == b"again" else data
            previous = data
            target = ORDERS[SPR][1] if regular[index] else None
            assert await fast.run(data, target) == await plain.run(data, target)

    asyncio.run(both())


async def test_a_nightly_sized_file_again_takes_the_scan_at_the_default_threshold(
    tmp_path: Path,
) -> None:
    district = District(make_config(tmp_path, licenses=20_000))
    district.scan_min_bytes = SCAN_MIN_BYTES  # the Runner's default
    rows = [
        student(f"S{n:05d}", first="Zoë", last="Núñez-García", class_name="Grade 5 - Room 12")
        for n in range(16_000)
    ]
    data = rows_file(rows)
    assert len(data) >= SCAN_MIN_BYTES
    assert (await district.run(data))["result"]["added"] == 16_000
    again = await district.run(data)
    assert (again["result"]["unchanged"], again["result"]["rows"]) == (16_000, 16_000)
    assert district.full_loads == 1
