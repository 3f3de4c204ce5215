"""Property tests: the §5 license invariant and "never crash" over random input.

(a) random rows through processing.plan.build_plan on an in-memory DistrictState;
(b) random bytes through decode.open_text + template.read_rows + validate;
(c) a few full runs through the real Runner and Store on random small files.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processing.config import DEFAULT_GRADES, Config
from processing.decode import open_text
from processing.model import (
    TEMPLATE_COLUMNS,
    DistrictState,
    FileRejected,
    OrderTally,
    RawRow,
    Row,
    RowError,
    Student,
)
from processing.passwords import StudentPasswords
from processing.plan import build_plan, file_findings
from processing.rules import restates
from processing.runner import Runner
from processing.store import Store
from processing.template import read_rows
from processing.validate import validate
from tests.conftest import ORDERS, SPR, csv_text, make_config, run_bytes

SCHOOL_CODES = frozenset({"0101", "0102", "0201"})
GRADES = frozenset(DEFAULT_GRADES)
STUDENT_IDS = ["S1", "S2", "S3", "S4", "S5", "S6", "S7"]
VALID_USERNAMES = ["bob", "Zed", "amy", "kim", "lee"]
KINDS = {"E": "enterprise", "R": "regular", "P": "past"}

VALID = {
    "school": ["0101", "0102", "0201"],
    "student_id": [*STUDENT_IDS, " S1 "],
    "first": ["Ana", "José", " Bo ", "=cmd"],
    "last": ["Lee", "Núñez"],
    "grade": ["K", "0", "3", "03", "5", "12", "KG"],
    "username": [*VALID_USERNAMES, "BOB"],
    "password": ["", "pw-1111", "pw-2222"],
    "class_name": ["", "Room 1", "Room 2"],
    "status": ["A", "D", "X", "I", "a", "d", "x", "i"],
}
INVALID = {
    "school": ["9999", "101", ""],
    "student_id": ["", "1.2E+05", "S 1", "S" * 33],
    "first": ["", "L" * 65],
    "last": ["", "a\nb"],
    "grade": ["13", "", "9th"],
    "username": ["xy", "", "a b"],
    "password": ["abc", "p" * 65],
    "class_name": ["c" * 65],
    "status": ["Q", "\u0391", "", "Active"],
}


@st.composite
def raw_fields(draw: st.DrawFn) -> tuple[str, ...]:
    """Mostly valid rows (so the status rules run), some with one or more bad fields."""
    mode = draw(st.integers(0, 9))
    if mode < 3:  # the stored data again: unchanged, or a status or order change only
        student_id = draw(st.sampled_from(STUDENT_IDS))
        password = draw(st.sampled_from(["", "", "pw-1111"]))
        status = draw(st.sampled_from(["A", "I", "D", "X"]))
        return (
            "0101",
            student_id,
            "Ana",
            "Lee",
            "5",
            own_username(student_id),
            password,
            "Room 1",
            status,
        )
    clean = mode < 8
    values = {
        name: draw(st.sampled_from(VALID[name] if clean else VALID[name] * 3 + INVALID[name]))
        for name in VALID
    }
    if values["username"] in VALID["username"] and draw(st.integers(0, 9)) < 7:
        values["username"] = own_username(values["student_id"])  # most keep their own
    fields = tuple(values.values())
    shape = draw(st.sampled_from(["ok"] * 12 + ["short", "long", "trailing"]))
    if shape == "short":
        return fields[: draw(st.integers(0, 8))]
    if shape == "long":
        return (*fields, "extra")
    if shape == "trailing":
        return (*fields, "", " ")
    return fields


def own_username(student_id: str) -> str:
    """A student's usual username ("usr-s1"; "USR-S1" tests case-insensitivity)."""
    name = f"usr-{student_id.strip()}"
    return name.upper() if student_id.strip() == "S2" else name.lower()


def _row_key(fields: tuple[str, ...]) -> str:
    return fields[1].strip() if len(fields) > 1 else ""


def row_lists(max_size: int = 12) -> st.SearchStrategy[list[tuple[str, ...]]]:
    """Rows whose Student IDs are mostly distinct, and sometimes repeated (DUPLICATE_STUDENT_ID)."""
    return st.one_of(
        st.lists(raw_fields(), max_size=max_size, unique_by=_row_key),
        st.lists(raw_fields(), max_size=max_size, unique_by=_row_key),
        st.lists(raw_fields(), max_size=max_size, unique_by=_row_key),
        st.lists(raw_fields(), max_size=max_size),
    )


def mac(password: str) -> bytes:
    return hashlib.blake2b(password.encode("utf-8"), digest_size=16).digest()


@st.composite
def district_states(draw: st.DrawFn) -> DistrictState:
    ids = draw(st.lists(st.sampled_from(STUDENT_IDS), unique=True, max_size=5))
    names = draw(
        st.lists(
            st.sampled_from(VALID_USERNAMES),
            unique_by=str.lower,
            min_size=len(ids),
            max_size=len(ids),
        )
    )
    students = {}
    for student_id, other in zip(ids, names, strict=True):
        username = own_username(student_id) if draw(st.integers(0, 4)) else other
        students[student_id] = Student(
            student_id=student_id,
            school_code="0101",
            first_name="Ana",
            last_name="Lee",
            grade="5",
            username=username,
            class_name="Room 1",
            active=draw(st.booleans()),
            order_id=draw(st.sampled_from(sorted(KINDS))),
            password_mac=mac(draw(st.sampled_from(["pw-1111", "pw-1111", "pw-2222"]))),
        )
    used = Counter(s.order_id for s in students.values() if s.active)
    orders = {
        order: OrderTally(order, kind, draw(st.integers(0, 4)), used[order])
        for order, kind in KINDS.items()
    }
    return DistrictState("d", 0, students, orders)


def check_state(state: DistrictState, start_used: dict[str, int]) -> None:
    active = Counter(s.order_id for s in state.students.values() if s.active)
    for order, tally in state.orders.items():
        assert tally.used == active[order], (order, tally)
        assert tally.used >= 0
        assert tally.used <= max(tally.licenses, start_used[order]), (order, tally)
    assert set(active) <= set(state.orders)
    keys = [s.username.lower() for s in state.students.values()]
    assert len(keys) == len(set(keys)), "two students share a username"
    assert state.owners == {s.username.lower(): sid for sid, s in state.students.items()}


@settings(max_examples=400, deadline=None)
@given(
    state=district_states(),
    rows=row_lists(),
    target=st.sampled_from(["E", "E", "R"]),
    taken=st.frozensets(st.sampled_from(["usr-s1", "usr-s6", "bob", "zed", "amy", "other"])),
)
def test_build_plan_keeps_the_license_invariant(
    state: DistrictState, rows: list[tuple[str, ...]], target: str, taken: frozenset[str]
) -> None:
    before = dict(state.students)
    start_used = {order: tally.used for order, tally in state.orders.items()}
    check_state(state, start_used)
    taken = taken - set(state.owners)  # a username lives in one district only
    # the line's text stands for itself: the "digest" is the text, to check below
    raws = [RawRow(line, fields, "\x1f".join(fields)) for line, fields in enumerate(rows, start=2)]
    found = file_findings(raws)
    plan = build_plan(
        raws,
        state,
        target=target,
        school_codes=SCHOOL_CODES,
        grades=GRADES,
        duplicates=found.duplicates,
        taken_elsewhere=taken,
        mac=mac,
        digest=str.encode,
    )
    check_state(state, start_used)
    # A digest is recorded only for a line that restates its student as the run left it
    # (processing/digests.py); a changed student without one has its old one cleared.
    for student_id, line_digest in plan.digests.items():
        if line_digest is None:
            assert student_id in plan.changes
            continue
        fields = tuple(line_digest.decode().split("\x1f"))
        assert fields[1].strip() == student_id
        assert restates(state.students[student_id], fields, target, SCHOOL_CODES, GRADES, mac)
    counts = plan.counts
    assert counts.rows == len(raws)
    assert counts.rows == counts.added + counts.updated + counts.unchanged + counts.errors
    assert len({e.line for e in plan.errors}) == counts.errors
    assert {e.line for e in plan.errors} <= {r.line for r in raws}
    assert counts.added == len(set(state.students) - set(before))
    for student_id, new in plan.changes.items():
        assert state.students[student_id] is new
        assert new != before.get(student_id)
    for student_id, old in before.items():
        if student_id not in plan.changes:
            assert state.students[student_id] == old
    for student_id in found.duplicates:
        assert student_id not in plan.changes
    for student_id, new in plan.changes.items():
        previous = before.get(student_id)
        if previous is None or previous.username.lower() != new.username.lower():
            assert new.username.lower() not in taken
    for error in plan.errors:
        if len(error.values) > 6 and error.values[6].strip():
            assert error.values[6] == "***"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=400).map(lambda b: (",".join(TEMPLATE_COLUMNS) + "\r\n").encode() + b),
        st.text(max_size=300).map(
            lambda s: (",".join(TEMPLATE_COLUMNS) + "\n" + s).encode("utf-8")
        ),
        st.lists(raw_fields(), max_size=6).flatmap(
            lambda rows: st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]).map(
                lambda enc: csv_text(rows).encode(enc, errors="replace")
            )
        ),
        st.binary(max_size=300).map(lambda b: b"\xff\xfe" + b),
        st.binary(max_size=300).map(lambda b: b"\xef\xbb\xbf" + b),
    )
)
def test_any_bytes_give_a_file_error_or_rows(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "students.csv"
    path.write_bytes(data)
    try:
        text, _ = open_text(path, 10 * 1024 * 1024)
    except FileRejected:
        return
    with text:
        try:
            rows = read_rows(text)
        except FileRejected:
            return
        for raw in rows:
            checked = validate(raw, SCHOOL_CODES, GRADES)
            if isinstance(checked, list):
                assert checked and all(isinstance(e, RowError) for e in checked)
            else:
                assert isinstance(checked, Row)


# ---- (c) the real Runner ---------------------------------------------------------


@pytest.fixture(scope="module")
def runner_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_config(tmp_path_factory.mktemp("runner"), licenses=3, regular_licenses=2)


async def _one_run(config_path: Path, data: bytes, order: str | None, dry_run: bool) -> None:
    config = Config.from_toml(config_path)
    store = await Store.open(config.server.data / "eams.sqlite3")
    try:
        await store.sync_config(config)
        runner = Runner(config, store, StudentPasswords.from_data_dir(config.server.data))
        outcome = await run_bytes(runner, data, order_id=order, dry_run=dry_run)
        result: dict[str, Any] = outcome.result.to_json()
        assert result["state"] in ("done", "failed")
        assert result["rows"] == (
            result["added"] + result["updated"] + result["unchanged"] + result["errors"]
        )
        assert await store.invariant_violations() == []
        for order_row in await store.list_orders(SPR):
            assert 0 <= order_row["used"] <= order_row["licenses"], order_row
    finally:
        await store.close()


@settings(max_examples=30, deadline=None)
@given(
    data=st.one_of(
        row_lists(10).map(lambda rows: csv_text(rows).encode("utf-8")),
        row_lists(10).map(lambda rows: csv_text(rows).encode("utf-16")),
        st.binary(max_size=200),
    ),
    order=st.sampled_from([None, None, None, ORDERS[SPR][1]]),
    dry_run=st.booleans(),
)
def test_runner_keeps_the_store_invariant(
    runner_config: Path, data: bytes, order: str | None, dry_run: bool
) -> None:
    asyncio.run(_one_run(runner_config, data, order, dry_run))
