"""Hostile input: whatever a district (or an attacker with its password) uploads.

Read top to bottom:

1. A fuzz of the whole decide path (decode.open_text -> template.read_rows ->
   plan.file_findings + plan.build_plan on an in-memory DistrictState, then the
   errors.csv rendering) with arbitrary bytes, arbitrary Unicode written as
   UTF-8 / UTF-16, huge fields, long lines, 100,000 columns, NUL bytes and
   unterminated quotes: the answer is always a file error (FileRejected) or
   rows and row errors, never another exception.
2. The same monsters through the real Runner and Store: a finished run, the
   invariant intact.
3. Bounded memory: a 50 MB file of one unterminated quote, or one 50 MB line,
   processed by the Runner stays within 10x the file size (tracemalloc peak;
   the peak RSS growth is printed too).
4. Over SFTP: an upload over `max_upload_mb` is refused while it is written,
   and nothing is processed.
5. A full disk (a 2 MB tmpfs under the district homes): the upload fails with
   an SFTP error, nothing already stored is lost, and the server keeps serving.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import os
import subprocess
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processing.config import DEFAULT_GRADES, Config
from processing.decode import open_text
from processing.model import (
    TEMPLATE_COLUMNS,
    TEMPLATE_HEADER,
    DistrictState,
    FileRejected,
    OrderTally,
    Student,
)
from processing.passwords import StudentPasswords
from processing.plan import Plan, build_plan, file_findings
from processing.reports import render_errors_csv
from processing.runner import Runner
from processing.spool import accept
from processing.store import Store
from processing.template import read_rows
from tests.conftest import (
    SHE,
    SPR,
    ServerHandle,
    assert_invariant,
    csv_text,
    finished_runs,
    make_config,
    put_bytes,
)

MB = 1024 * 1024
HEADER = (TEMPLATE_HEADER + "\r\n").encode("ascii")
SCHOOL_CODES = frozenset({"0101", "0102", "0201"})
GRADES = frozenset(DEFAULT_GRADES)
LIMIT = 200 * MB  # the default max_upload_mb


def mac(password: str) -> bytes:
    return hashlib.blake2b(password.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def district_state() -> DistrictState:
    """Two stored students (one active, one deactivated) on E, a regular order R."""
    students = {
        sid: Student(sid, "0101", "Ana", "Lee", "5", f"usr-{sid}", "", active, "E", mac("pw-1111"))
        for sid, active in (("S1", True), ("S2", False))
    }
    orders = {"E": OrderTally("E", "enterprise", 3, 1), "R": OrderTally("R", "regular", 2, 0)}
    return DistrictState("d", 0, students, orders)


def decide(path: Path) -> FileRejected | Plan:
    """What the Runner does with a file, minus the database: two passes, a plan."""
    try:
        text, _ = open_text(path, LIMIT)
        with text:
            found = file_findings(read_rows(text))
        text, _ = open_text(path, LIMIT)
        with text:
            return build_plan(
                read_rows(text),
                district_state(),
                target="E",
                school_codes=SCHOOL_CODES,
                grades=GRADES,
                duplicates=found.duplicates,
                taken_elsewhere=frozenset({"taken"}),
                mac=mac,
            )
    except FileRejected as rejected:
        return rejected


def check_answer(path: Path) -> FileRejected | Plan:
    """`decide` must answer with a file error or a plan whose counts add up."""
    answer = decide(path)
    if isinstance(answer, FileRejected):
        assert answer.problem.message
        return answer
    counts = answer.counts
    assert counts.rows == counts.added + counts.updated + counts.unchanged + counts.errors
    assert len({e.line for e in answer.errors}) == counts.errors
    for error in answer.errors:
        assert error.code and error.message
        if len(error.values) == len(TEMPLATE_COLUMNS) and error.values[6].strip():
            assert error.values[6] == "***"  # the Password never reaches errors.csv
    render_errors_csv(answer.errors)  # and the error file can be written
    return answer


# ---- 1. the fuzz ---------------------------------------------------------------------------

VALID_ROW = "0101,S9,Ann,Lee,3,ann9,pw-9999,Room 1,A"


@st.composite
def monster_rows(draw: st.DrawFn) -> bytes:
    """The header, then rows built to hurt: huge fields, many columns, NULs, open quotes."""
    parts = [HEADER.decode("ascii")]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["huge", "columns", "line", "nul", "quote", "valid", "text"]))
        if kind == "huge":  # one field of up to 1 MB, in a row of nine
            size = draw(st.sampled_from([64, 65, 4096, 200_000, MB]))
            column = draw(st.integers(0, 8))
            cells = VALID_ROW.split(",")
            cells[column] = draw(st.sampled_from("AéZ\u0391 ")) * size
            parts.append(",".join(cells))
        elif kind == "columns":  # up to 100,000 columns
            count = draw(st.sampled_from([0, 1, 8, 10, 1000, 100_000]))
            parts.append(",".join(["x"] * count))
        elif kind == "line":  # a 1 MB line without a single comma
            parts.append("L" * MB)
        elif kind == "nul":
            cells = VALID_ROW.split(",")
            cells[draw(st.integers(0, 8))] += "\x00"
            parts.append(",".join(cells))
        elif kind == "quote":  # an unterminated quote swallows the rest of the file
            cut = draw(st.integers(0, len(VALID_ROW)))
            parts.append(VALID_ROW[:cut] + '"' + VALID_ROW[cut:])
        elif kind == "valid":
            parts.append(VALID_ROW)
        else:
            parts.append(draw(st.text(max_size=200)))
    text = "\r\n".join(parts) + draw(st.sampled_from(["", "\r\n", "\n", "\r"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]))
    return text.encode(encoding, errors="replace")


def encoded_text() -> st.SearchStrategy[bytes]:
    """Arbitrary Unicode (lone surrogates included) written the ways a district might."""
    any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=400)
    header_or_not = st.sampled_from(["", TEMPLATE_HEADER + "\r\n", TEMPLATE_HEADER + "\n"])
    encodings = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"])
    return st.tuples(header_or_not, any_text, encodings).map(
        lambda t: (t[0] + t[1]).encode(t[2], errors="surrogatepass")
    )


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.one_of(
        st.binary(max_size=2000),
        st.binary(max_size=2000).map(lambda b: HEADER + b),
        st.binary(max_size=600).map(lambda b: codecs.BOM_UTF16_LE + b),
        st.binary(max_size=600).map(lambda b: codecs.BOM_UTF8 + HEADER + b),
        encoded_text(),
        monster_rows(),
    )
)
def test_any_input_gives_a_file_error_or_rows_and_errors(tmp_path: Path, data: bytes) -> None:
    """Never an exception other than FileRejected, whatever the bytes."""
    path = tmp_path / "students.csv"
    path.write_bytes(data)
    check_answer(path)


# ---- 2. the monsters, named, through the decide path and the real Runner -------------------

MONSTERS: dict[str, bytes] = {
    "one 1 MB line": HEADER + b"x" * MB + b"\r\n",
    "a 1 MB first name": HEADER + b"0101,S1," + b"N" * MB + b",Lee,3,u001,pw-1234,,A\r\n",
    "100,000 columns": HEADER + b",".join([b"c"] * 100_000) + b"\r\n" + VALID_ROW.encode(),
    "a header of 100,000 columns": b",".join([b"School Code"] * 100_000) + b"\r\n",
    "a NUL byte in a row": HEADER + b"0101,S1,An\x00n,Lee,3,u001,pw-1234,,A\r\n",
    "a NUL byte after 1 MB": HEADER + (VALID_ROW.encode() + b"\r\n") * 30_000 + b"\x00",
    "an unterminated quote": HEADER + b'0101,S1,"Ann,Lee,3,u001,pw-1234,,A\r\n' * 1000,
    "only a quote": b'"',
    "a quote in the header": b'"School Code,Student ID\r\n' + VALID_ROW.encode(),
    "UTF-16 without a BOM": (TEMPLATE_HEADER + "\r\n" + VALID_ROW).encode("utf-16-le"),
    "UTF-16 with a BOM, odd length": codecs.BOM_UTF16_LE + HEADER.decode().encode("utf-16-le")[:-1],
    "lone surrogates as UTF-8": HEADER
    + "0101,S1,\ud800,Lee,3,u001,pw-1234,,A".encode("utf-8", "surrogatepass"),
    "only CRs": HEADER + b"\r" * 100_000,
    "a million commas": HEADER + b"," * MB,
    "a million quotes": HEADER + b'"' * MB,
}


@pytest.mark.parametrize("name", list(MONSTERS))
def test_named_monsters_give_an_answer(tmp_path: Path, name: str) -> None:
    path = tmp_path / "students.csv"
    path.write_bytes(MONSTERS[name])
    check_answer(path)


@pytest.fixture(scope="module")
def runner_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_config(tmp_path_factory.mktemp("hostile_runner"), licenses=5)


async def run_file(config_path: Path, data: bytes | Path) -> dict[str, Any]:
    """One run of `data` through the real Runner and Store; returns result.json's object."""
    config = Config.from_toml(config_path)
    store = await Store.open(config.server.data / "eams.sqlite3")
    try:
        await store.sync_config(config)
        runner = Runner(config, store, StudentPasswords.from_data_dir(config.server.data))
        source = data if isinstance(data, Path) else config_path.parent / "upload.csv"
        if isinstance(data, bytes):
            source.write_bytes(data)
        job = accept(source, config.server.data, SPR, source="students.csv")
        outcome = await runner.run(await runner.store.enqueue_run(job))
        assert await store.invariant_violations() == []
        result: dict[str, Any] = outcome.result.to_json()
        return result
    finally:
        await store.close()


@pytest.mark.parametrize("name", list(MONSTERS))
async def test_named_monsters_through_the_runner(runner_config: Path, name: str) -> None:
    result = await run_file(runner_config, MONSTERS[name])
    assert result["state"] in ("done", "failed")
    counts = result["added"] + result["updated"] + result["unchanged"] + result["errors"]
    assert result["rows"] == counts
    assert_invariant(runner_config)


# ---- 3. bounded memory -----------------------------------------------------------------------

BIG = 50 * MB


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


@contextlib.contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Peak RSS growth in bytes while the block runs (Linux: VmHWM reset via clear_refs);
    an empty list where that is not available."""
    figure: list[int] = []
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_kib("VmRSS")
    except (OSError, LookupError):
        yield figure
        return
    yield figure
    figure.append((_rss_kib("VmHWM") - before) * 1024)


def write_big(path: Path, head: bytes, filler: bytes, tail: bytes) -> Path:
    """A file of about BIG bytes, written in 1 MB pieces (not built in memory)."""
    with open(path, "wb") as out:
        out.write(head)
        for _ in range(BIG // MB):
            out.write(filler * (MB // len(filler)))
        out.write(tail)
    return path


@pytest.mark.parametrize(
    ("name", "head", "tail"),
    [
        pytest.param(name, head, tail, id=name)
        for name, head, tail in (
            ("one unterminated quote", HEADER + b'0101,S1,"', b""),
            ("one 50 MB line", HEADER, b"\r\n"),
            # Kept whole in errors.csv and the database (SPEC 6.3: the row's values).
            ("a 50 MB First Name", HEADER + b"0101,S1,", b",Lee,3,u001,pw-1234,,A\r\n"),
        )
    ],
)
async def test_a_50_mb_monster_stays_within_10x_its_size(
    tmp_path: Path, name: str, head: bytes, tail: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = make_config(tmp_path)
    source = write_big(tmp_path / "monster.csv", head, b"A", tail)
    size = source.stat().st_size
    tracemalloc.start()
    try:
        with peak_rss_growth() as rss:
            result = await run_file(config_path, source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result["state"] == "done"
    assert (result["rows"], result["errors"]) == (1, 1)  # one rejected record, not a crash
    rss_text = f", peak RSS growth {rss[0] / MB:.0f} MB" if rss else ""
    with capsys.disabled():
        print(
            f"\n[memory] {name}: file {size / MB:.0f} MB, tracemalloc peak "
            f"{peak / MB:.0f} MB ({peak / size:.1f}x){rss_text}"
        )
    assert peak < 10 * size


# ---- 4 and 5: over SFTP ---------------------------------------------------------------------


def student_row(n: int) -> list[str]:
    return ["0101", f"S{n:05d}", "Ann", f"Lee{n}", "3", f"user{n:05d}", "pw-1234", "", "A"]


def roster(count: int) -> bytes:
    return csv_text([student_row(n) for n in range(1, count + 1)]).encode("utf-8")


async def test_an_upload_over_max_upload_mb_is_refused_while_it_is_written(
    start_server: Any,
) -> None:
    """The write that crosses 1 MB fails at once (the client need not send 1 GB to learn
    that); the staging file is gone, the previous students.csv is kept, nothing runs."""
    handle: ServerHandle = await start_server(max_upload_mb=1)
    previous = roster(2)
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", previous)
        await finished_runs(handle, 1)
        chunk = b"x" * (256 * 1024)
        upload = await sftp.open("students.csv", "wb")
        for index in range(4):  # exactly 1 MB: still allowed
            await upload.write(chunk, index * len(chunk))
        with pytest.raises(asyncssh.SFTPFailure) as refused:
            await upload.write(b"y", 4 * len(chunk))
        assert "file too large: uploads are limited to 1 MB" in str(refused.value.reason)
        with pytest.raises(asyncssh.SFTPFailure):  # and every write after it
            await upload.write(b"z", 0)
        with pytest.raises(asyncssh.SFTPFailure):
            await upload.close()
        # A temporary upload cannot be grown past the limit by SETSTAT/FSETSTAT either.
        await put_bytes(sftp, "students.csv.filepart", b"School Code")
        with pytest.raises(asyncssh.SFTPFailure):
            await sftp.setstat("students.csv.filepart", asyncssh.SFTPAttrs(size=10 * 1024 * MB))
        async with sftp.open("students.csv.filepart", "r+b") as partial:
            with pytest.raises(asyncssh.SFTPFailure):
                await partial.truncate(MB + 1)
        assert (await sftp.stat("students.csv.filepart")).size == len(b"School Code")
        await sftp.remove("students.csv.filepart")
        names = set(await sftp.listdir("."))
    assert names == {".", "..", "check", "results", "students.csv", "students_template.csv"}
    assert (handle.home() / "students.csv").read_bytes() == previous
    assert not [p for p in handle.home().iterdir() if p.name.startswith(".eams-")]
    assert len(await finished_runs(handle, 1)) == 1  # only the first upload ever ran


# A tmpfs of 2 MB for the district homes. We run as root in the test container;
# elsewhere mount is not permitted and the test is skipped, saying so.


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """`<tmp_path>/homes` on a 2 MB tmpfs (set up before start_server, removed after it)."""
    homes = tmp_path / "homes"
    homes.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(homes)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount to simulate a full disk: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield homes
    finally:
        if subprocess.run(["umount", str(homes)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(homes)], capture_output=True)


async def test_a_full_disk_fails_the_upload_and_loses_nothing(
    small_disk: Path, start_server: Any
) -> None:
    handle: ServerHandle = await start_server(districts=(SPR, SHE))
    previous = roster(3)
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", previous)
    [first] = await finished_runs(handle, 1)
    students_before = await handle.app.store.list_students(SPR)
    assert len(students_before) == 3

    big = roster(3) + b"#" * (3 * MB)  # 3 MB on a 2 MB disk
    for name in ("students.csv", "students.csv.filepart", "check/students.csv"):
        async with handle.connect() as conn, conn.start_sftp_client() as sftp:
            with pytest.raises(asyncssh.SFTPFailure) as failed:
                async with sftp.open(name, "wb") as upload:
                    await upload.write(big)
            assert "could not store the upload" in str(failed.value.reason), name
            assert "No space left on device" in str(failed.value.reason), name
            with contextlib.suppress(asyncssh.SFTPError):
                await sftp.rename(name, "students.csv")  # a .filepart: completes nothing

    # Nothing stored was lost, nothing was processed, no partial file fills the disk.
    assert (handle.home() / "students.csv").read_bytes() == previous
    assert len(await finished_runs(handle, 1)) == 1
    assert await handle.app.store.list_students(SPR) == students_before
    assert await handle.app.store.invariant_violations() == []
    leftovers = [p.name for p in handle.home().rglob("*") if p.is_file()]
    assert sorted(leftovers) == sorted(
        ["students.csv", "students_template.csv"]
        + [p.name for p in (handle.home() / "results").iterdir()]
    )
    free = os.statvfs(small_disk)
    assert free.f_bavail * free.f_frsize > MB  # the failed upload gave its space back

    # The server keeps serving: a small upload from both districts is processed.
    for district_id in (SPR, SHE):
        async with handle.connect(district_id) as conn, conn.start_sftp_client() as sftp:
            await put_bytes(sftp, "students.csv", roster(4))
    runs = await finished_runs(handle, 2)
    assert {r.state for r in runs} == {"done"} and first.run_id in {r.run_id for r in runs}
    assert len(await handle.app.store.list_students(SPR)) == 4
    [she_run] = await finished_runs(handle, 1, SHE)
    assert she_run.state == "done"
    await handle.app.stop()  # before the tmpfs is unmounted
    assert_invariant(handle.config_path)
