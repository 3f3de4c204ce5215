"""`eams process` end to end on realistic files (SPEC §4-§7), through server.cli.main.

Every test checks the license invariant after each command (the `process`
helper does) and once more at teardown.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import sqlite3
import stat
import zipfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from processing.model import TEMPLATE_COLUMNS, TEMPLATE_HEADER
from processing.passwords import StudentPasswords
from tests.conftest import (
    ORDERS,
    SHE,
    SPR,
    assert_invariant,
    csv_text,
    db_path,
    eams,
    eams_json,
    make_config,
    pw,
    student,
    write_csv,
)

ENT, REG = ORDERS[SPR]
ERRORS_HEADER = ["Line", "Error Code", "Message", *TEMPLATE_COLUMNS]
RESULT_KEYS = {
    "run_id",
    "district",
    "state",
    "received_at",
    "finished_at",
    "encoding",
    "rows",
    "added",
    "updated",
    "unchanged",
    "activated",
    "deactivated",
    "transferred",
    "errors",
    "file_error",
    "licenses",
    "dry_run",
}
STUDENT_KEYS = {
    "student_id",
    "school_code",
    "first_name",
    "last_name",
    "grade",
    "username",
    "class_name",
    "status",
    "order",
}
LICENSE_KEYS = {"order", "kind", "licenses", "used", "available"}
ALL_ROW_CODES = {
    "STUDENT_EXISTS",
    "STUDENT_NOT_FOUND",
    "NO_LICENSE_AVAILABLE",
    "INVALID_STATUS",
    "MISSING_FIELD",
    "INVALID_FIELD",
    "FIELD_TOO_LONG",
    "UNKNOWN_SCHOOL",
    "INVALID_GRADE",
    "GRADE_NOT_IN_PROGRAM",
    "USERNAME_TAKEN",
    "PASSWORD_REQUIRED",
    "DUPLICATE_STUDENT_ID",
    "COLUMN_COUNT",
}
RUN_ID = re.compile(r"\d{8}-\d{6}-\d+\Z")
_files = itertools.count(1)


@dataclass
class Run:
    code: int
    out: str
    err: str
    run_id: str | None
    result: dict[str, Any] | None
    errors: list[dict[str, str]] | None


def results_dir(cfg: Path, district: str = SPR) -> Path:
    return cfg.parent / "homes" / district / "results"


def read_errors(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ERRORS_HEADER
    assert all(len(row) == len(ERRORS_HEADER) for row in rows)
    return [dict(zip(ERRORS_HEADER, row, strict=True)) for row in rows[1:]]


def process(cfg: Path, path: Path, *extra: str, district: str = SPR) -> Run:
    code, out, err = eams("process", "--district", district, *extra, str(path), config=cfg)
    assert_invariant(cfg)
    match = re.search(r"^Run:\s+(\S+)$", out, re.MULTILINE)
    run_id = match.group(1) if match else None
    result = errors = None
    if run_id is not None and "--dry-run" not in extra:
        assert RUN_ID.match(run_id), run_id
        folder = results_dir(cfg, district)
        result = json.loads((folder / f"{run_id}.result.json").read_text("utf-8"))
        assert (folder / f"{run_id}.result.txt").is_file()
        errors_file = folder / f"{run_id}.errors.csv"
        errors = read_errors(errors_file) if errors_file.exists() else None
    return Run(code, out, err, run_id, result, errors)


def upload(cfg: Path, rows: list[Any], *extra: str, district: str = SPR, **write: Any) -> Run:
    path = write_csv(cfg.parent / f"upload-{next(_files)}.csv", rows, **write)
    return process(cfg, path, *extra, district=district)


def seed(cfg: Path, rows: list[Any], *extra: str, district: str = SPR) -> Run:
    run = upload(cfg, rows, *extra, district=district)
    assert run.code == 0, run.out + run.err
    assert run.result is not None and run.result["errors"] == 0, run.errors
    return run


def students(cfg: Path, district: str = SPR) -> dict[str, dict[str, Any]]:
    listed = eams_json("students", "--district", district, config=cfg)
    for item in listed:
        assert set(item) == STUDENT_KEYS
    return {item["student_id"]: item for item in listed}


def licenses(cfg: Path, district: str = SPR) -> dict[str, dict[str, Any]]:
    listed = eams_json("licenses", "--district", district, config=cfg)
    for item in listed:
        assert set(item) == LICENSE_KEYS
        assert item["available"] == max(0, item["licenses"] - item["used"])
    return {item["order"]: item for item in listed}


def runs(cfg: Path, *args: str) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = eams_json("runs", *args, config=cfg)
    return listed


def codes_by_line(errors: list[dict[str, str]] | None) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for error in errors or []:
        found.setdefault(error["Line"], set()).add(error["Error Code"])
    return found


def check_result(run: Run, *, state: str = "done", **counts: Any) -> dict[str, Any]:
    assert run.result is not None, run.out + run.err
    result = run.result
    assert set(result) >= RESULT_KEYS
    assert result["run_id"] == run.run_id
    assert result["state"] == state
    assert result["dry_run"] is False
    assert result["rows"] == (
        result["added"] + result["updated"] + result["unchanged"] + result["errors"]
    )
    assert set(result["licenses"]) == {"order", "licenses", "used", "available"}
    for key, value in counts.items():
        assert result[key] == value, (key, result)
    return result


@pytest.fixture(autouse=True)
def _invariant_at_teardown(tmp_path: Path) -> Iterator[None]:
    yield
    config = tmp_path / "config.toml"
    if config.exists():
        assert_invariant(config)


# ---- encodings and line endings ----------------------------------------------------


def test_excel_utf8_bom_crlf_file(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    rows = [
        student("100001", first="José", last="Núñez", grade="03"),
        student("100002", school="0102", first="Zoë", last="O'Neil", grade="K"),
        student("100003", school="0201", first="Li", last="Wang", grade="12", class_name=""),
    ]
    run = upload(cfg, rows, encoding="utf-8-sig")
    assert run.code == 0, run.err
    result = check_result(run, rows=3, added=3, updated=0, unchanged=0, errors=0)
    assert result["encoding"].startswith("utf-8")
    assert result["file_error"] is None and run.errors is None
    assert result["district"] == SPR
    assert result["licenses"] == {"order": ENT, "licenses": 100, "used": 3, "available": 97}
    listed = students(cfg)
    assert listed["100001"] == {
        "student_id": "100001",
        "school_code": "0101",
        "first_name": "José",
        "last_name": "Núñez",
        "grade": "3",
        "username": "u100001",
        "class_name": "Room 1",
        "status": "active",
        "order": ENT,
    }
    assert listed["100002"]["grade"] == "K"
    assert listed["100003"]["class_name"] == ""


def test_windows_1252_file_is_read_and_reported(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    rows = [
        student("200001", first="José", last="Núñez"),
        student("200002", first="Françoise", last="Müller"),
        student("200003", first="Ægir", last="O’Brien"),  # ’ is 0x92 in Windows-1252
    ]
    run = upload(cfg, rows, encoding="cp1252")
    assert run.code == 0, run.err
    assert check_result(run, added=3, errors=0)["encoding"] == "windows-1252"
    listed = students(cfg)
    assert (listed["200001"]["first_name"], listed["200001"]["last_name"]) == ("José", "Núñez")
    assert (listed["200002"]["first_name"], listed["200002"]["last_name"]) == (
        "Françoise",
        "Müller",
    )
    assert listed["200003"]["last_name"] == "O’Brien"


def test_utf16_with_bom(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    rows = [student("300001", first="Łukasz", last="Żółć"), student("300002", first="Zoë")]
    run = upload(cfg, rows, encoding="utf-16")
    assert run.code == 0, run.err
    assert check_result(run, added=2, errors=0)["encoding"] == "utf-16"
    assert students(cfg)["300001"]["last_name"] == "Żółć"


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"], ids=["crlf", "lf", "cr"])
def test_line_numbers_count_the_header_and_blank_lines(tmp_path: Path, newline: str) -> None:
    cfg = make_config(tmp_path)
    rows: list[Any] = [
        student("S1"),  # line 2
        student("S2", first=f"Multi{newline}Line"),  # lines 3-4: one record, rejected at 3
        "",  # line 5: blank, skipped
        student("S3", school="9999"),  # line 6
        student("S4"),  # line 7
    ]
    run = upload(cfg, rows, newline=newline)
    assert run.code == 0, run.err
    check_result(run, rows=4, added=2, errors=2)
    assert codes_by_line(run.errors) == {"3": {"INVALID_FIELD"}, "6": {"UNKNOWN_SCHOOL"}}
    assert set(students(cfg)) == {"S1", "S4"}


# ---- file errors -------------------------------------------------------------------


def _file_failed(cfg: Path, run: Run, code: str) -> dict[str, str]:
    assert run.code == 1, run.out + run.err
    result = check_result(run, state="failed", rows=0, added=0, updated=0, errors=0)
    assert result["file_error"]["code"] == code
    assert run.errors is not None and len(run.errors) == 1
    error = run.errors[0]
    assert error["Line"] == ""
    assert error["Error Code"] == code
    assert error["Message"] == result["file_error"]["message"]
    assert all(error[column] == "" for column in TEMPLATE_COLUMNS)
    assert students(cfg) == {}
    assert licenses(cfg)[ENT]["used"] == 0
    [listed] = runs(cfg)
    assert listed["state"] == "failed" and listed["run_id"] == run.run_id
    return error


def test_semicolon_separated_file_fails_with_a_hint(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    path = tmp_path / "semicolons.csv"
    lines = [TEMPLATE_HEADER.replace(",", ";"), ";".join(student("S1")), ";".join(student("S2"))]
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    error = _file_failed(cfg, process(cfg, path), "HEADER_MISMATCH")
    assert "semicolon" in error["Message"]


def test_empty_file(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    _file_failed(cfg, process(cfg, path), "EMPTY_FILE")


def test_header_only_file_is_valid_with_zero_rows(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    run = upload(cfg, [])
    assert run.code == 0, run.err
    check_result(run, rows=0, added=0, updated=0, unchanged=0, errors=0)
    assert run.result is not None and run.result["file_error"] is None
    assert run.errors is None


def test_random_binary_is_not_text(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    path = tmp_path / "garbage.csv"
    path.write_bytes(bytes(range(256)) * 8)
    _file_failed(cfg, process(cfg, path), "NOT_TEXT")


def test_xlsx_renamed_to_csv_is_not_text(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    path = tmp_path / "students.csv"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as workbook:
        workbook.writestr("[Content_Types].xml", "<Types/>")
        workbook.writestr("xl/worksheets/sheet1.xml", csv_text([student("S1")]))
    path.write_bytes(buffer.getvalue())
    error = _file_failed(cfg, process(cfg, path), "NOT_TEXT")
    assert "xlsx" in error["Message"]


def test_file_too_large(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, max_upload_mb=1)
    rows = [student(f"S{i:06d}") for i in range(20000)]
    path = write_csv(tmp_path / "big.csv", rows)
    assert path.stat().st_size > 1024 * 1024
    _file_failed(cfg, process(cfg, path), "FILE_TOO_LARGE")


# ---- row errors --------------------------------------------------------------------


def test_excel_scientific_student_id_gets_a_hint(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    run = upload(cfg, [student("1.23457E+11", username="jdoe"), student("123456789012")])
    check_result(run, added=1, errors=1)
    [error] = run.errors or []
    assert (error["Line"], error["Error Code"]) == ("2", "INVALID_FIELD")
    assert "Text" in error["Message"] and "scientific" in error["Message"]
    assert error["Student ID"] == "1.23457E+11"


def test_greek_alpha_status_gets_a_hint(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    run = upload(cfg, [student("S1", "\u0391"), student("S2", "a")])
    check_result(run, added=1, errors=1)
    [error] = run.errors or []
    assert error["Error Code"] == "INVALID_STATUS"
    assert 'did you mean "A"?' in error["Message"]
    assert set(students(cfg)) == {"S2"}


def test_every_row_error_code_at_once_and_valid_rows_still_apply(tmp_path: Path) -> None:
    grades = ["K", "1", "2", "3", "4", "5", "6", "7", "8"]
    cfg = make_config(tmp_path, licenses=3, grades=grades)
    seed(cfg, [student("S1", username="alee"), student("S2")])
    rows: list[Any] = [
        student("S10"),  # 2: added, takes the last license
        student("S11"),  # 3
        student("S1", "X", username="alee"),  # 4
        student("S99", "D"),  # 5
        student("S20", "Q"),  # 6
        student("S21", first=""),  # 7
        student("S 22"),  # 8
        student("S23", last="L" * 65),  # 9
        [  # 10: every value a spreadsheet would run as a formula
            "9999",
            "-24",
            "=SUM(A1)",
            "+Lee",
            "5",
            "u24",
            pw("24"),
            "@evil",
            "X",
        ],
        student("S25", grade="13"),  # 11
        student("S26", grade="9"),  # 12
        student("S27", "X", username="ALEE"),  # 13
        student("S28", "X", password=""),  # 14
        student("S29", "X"),  # 15
        "",  # 16: blank
        student("S29", "X", first="Other"),  # 17
        "0101,S30,Ann,Smith, Jr.,5,u30,,Room 1,X",  # 18: unquoted comma
        student("S31", "X", class_name="Room\n31"),  # 19-20: one record
        student("S32", "X"),  # 21: added, deactivated
        student("S2", "I", class_name="Room 9"),  # 22: updated
    ]
    run = upload(cfg, rows, newline="\n")
    assert run.code == 0, run.err
    check_result(
        run, rows=19, added=2, updated=1, unchanged=0, errors=16, activated=0, deactivated=0
    )
    assert run.result is not None
    assert run.result["licenses"] == {"order": ENT, "licenses": 3, "used": 3, "available": 0}
    assert codes_by_line(run.errors) == {
        "3": {"NO_LICENSE_AVAILABLE"},
        "4": {"STUDENT_EXISTS"},
        "5": {"STUDENT_NOT_FOUND"},
        "6": {"INVALID_STATUS"},
        "7": {"MISSING_FIELD"},
        "8": {"INVALID_FIELD"},
        "9": {"FIELD_TOO_LONG"},
        "10": {"UNKNOWN_SCHOOL"},
        "11": {"INVALID_GRADE"},
        "12": {"GRADE_NOT_IN_PROGRAM"},
        "13": {"USERNAME_TAKEN"},
        "14": {"PASSWORD_REQUIRED"},
        "15": {"DUPLICATE_STUDENT_ID"},
        "17": {"DUPLICATE_STUDENT_ID"},
        "18": {"COLUMN_COUNT"},
        "19": {"INVALID_FIELD"},
    }
    assert {e["Error Code"] for e in run.errors or []} == ALL_ROW_CODES
    by_line = {e["Line"]: e for e in run.errors or []}
    injected = by_line["10"]
    assert injected["Student ID"] == "'-24"
    assert injected["First Name"] == "'=SUM(A1)"
    assert injected["Last Name"] == "'+Lee"
    assert injected["Class Name"] == "'@evil"
    assert injected["Password"] == "***"
    assert by_line["3"]["Password"] == "***"
    assert by_line["14"]["Password"] == ""
    assert by_line["3"]["Student ID"] == "S11" and by_line["3"]["Status"] == "A"
    assert by_line["19"]["Class Name"] == "Room\n31"
    listed = students(cfg)
    assert set(listed) == {"S1", "S2", "S10", "S32"}
    assert listed["S32"]["status"] == "deactivated"
    assert listed["S2"]["class_name"] == "Room 9"
    assert listed["S1"]["username"] == "alee"
    assert licenses(cfg)[ENT]["used"] == 3


def test_duplicate_student_ids_reject_every_row_of_that_id(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    rows = [student("S1"), student("S2"), student(" S1 ", username="other"), student("S3")]
    run = upload(cfg, rows)
    check_result(run, rows=4, added=2, errors=2)
    assert codes_by_line(run.errors) == {
        "2": {"DUPLICATE_STUDENT_ID"},
        "4": {"DUPLICATE_STUDENT_ID"},
    }
    assert set(students(cfg)) == {"S2", "S3"}
    assert licenses(cfg)[ENT]["used"] == 2


def test_username_taken_across_districts_case_insensitively(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, districts=(SPR, SHE))
    seed(cfg, [student("S1", username="ALee")])
    run = upload(cfg, [student("T1", username="alee"), student("T2", username="bob")], district=SHE)
    check_result(run, added=1, errors=1)
    assert codes_by_line(run.errors) == {"2": {"USERNAME_TAKEN"}}
    run = upload(cfg, [student("T2", username="ALEE")], district=SHE)
    check_result(run, updated=0, errors=1)
    assert codes_by_line(run.errors) == {"2": {"USERNAME_TAKEN"}}
    assert students(cfg, SHE)["T2"]["username"] == "bob"
    assert set(students(cfg, SHE)) == {"T2"}
    assert students(cfg)["S1"]["username"] == "ALee"


def test_no_license_available_when_the_order_is_full(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, licenses=2)
    rows = [
        student("S1"),  # 2: license 1
        student("S2"),  # 3: license 2
        student("S3"),  # 4: none left
        student("S4", "X"),  # 5: created deactivated, needs no license
    ]
    run = upload(cfg, rows)
    check_result(run, added=3, errors=1)
    assert codes_by_line(run.errors) == {"4": {"NO_LICENSE_AVAILABLE"}}
    assert licenses(cfg)[ENT] == {
        "order": ENT,
        "kind": "enterprise",
        "licenses": 2,
        "used": 2,
        "available": 0,
    }
    # each row sees the state the rows above left: a D frees a license for a later A
    run = upload(cfg, [student("S4", "A"), student("S1", "D"), student("S5")])
    check_result(run, added=1, updated=1, deactivated=1, activated=0, errors=1)
    assert codes_by_line(run.errors) == {"2": {"NO_LICENSE_AVAILABLE"}}
    listed = students(cfg)
    assert listed["S4"]["status"] == "deactivated"
    assert listed["S1"]["status"] == "deactivated"
    assert listed["S5"]["status"] == "active"
    assert licenses(cfg)[ENT]["used"] == 2


# ---- orders ------------------------------------------------------------------------


def test_students_on_the_regular_order_transfer_to_the_enterprise_order(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, licenses=2, regular_licenses=40)
    seeded = seed(cfg, [student(f"S{i}") for i in range(1, 5)], "--order", REG)
    assert seeded.result is not None and seeded.result["licenses"]["order"] == REG
    assert {s["order"] for s in students(cfg).values()} == {REG}
    assert (licenses(cfg)[REG]["used"], licenses(cfg)[ENT]["used"]) == (4, 0)
    assert licenses(cfg)[REG]["kind"] == "regular"

    rows = [
        student("S1", "A"),
        student("S2", "I", class_name="Room 2"),
        student("S3", "D"),
        student("S4", "A"),  # the Holding Bin is empty now: nothing changes
    ]
    run = upload(cfg, rows)
    check_result(run, updated=3, transferred=2, deactivated=1, errors=1)
    assert codes_by_line(run.errors) == {"5": {"NO_LICENSE_AVAILABLE"}}
    listed = students(cfg)
    assert (listed["S1"]["order"], listed["S2"]["order"]) == (ENT, ENT)
    assert listed["S2"]["class_name"] == "Room 2"
    assert listed["S3"]["status"] == "deactivated"
    assert (listed["S4"]["order"], listed["S4"]["status"]) == (REG, "active")
    orders = licenses(cfg)
    assert (orders[REG]["used"], orders[ENT]["used"]) == (1, 2)

    # a deactivated student on the regular order moves to E (no license) when it appears
    run = upload(cfg, [student("S3", "I")])
    check_result(run, updated=1, errors=0)
    assert students(cfg)["S3"]["order"] == ENT
    assert students(cfg)["S3"]["status"] == "deactivated"
    assert (licenses(cfg)[REG]["used"], licenses(cfg)[ENT]["used"]) == (1, 2)


def test_past_enterprise_order_after_a_new_contract_year(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, licenses=10)
    seed(cfg, [student("S1"), student("S2"), student("S3"), student("S4", "X")])
    make_config(tmp_path, licenses=10, order_id="ENT-SPR-2027")
    orders = licenses(cfg)
    assert orders["ENT-SPR-2027"]["kind"] == "enterprise"
    assert orders["ENT-SPR-2027"]["used"] == 0
    assert orders[ENT]["kind"] == "regular" and orders[ENT]["used"] == 3

    run = upload(cfg, [student("S1", "A"), student("S4", "I")])
    check_result(run, updated=2, transferred=1, errors=0)
    assert run.result is not None and run.result["licenses"]["order"] == "ENT-SPR-2027"
    listed = students(cfg)
    assert listed["S1"]["order"] == "ENT-SPR-2027" and listed["S1"]["status"] == "active"
    assert listed["S4"]["order"] == "ENT-SPR-2027" and listed["S4"]["status"] == "deactivated"
    assert listed["S2"]["order"] == ENT and listed["S3"]["order"] == ENT
    orders = licenses(cfg)
    assert (orders[ENT]["used"], orders["ENT-SPR-2027"]["used"]) == (2, 1)


def test_lowering_licenses_below_used_warns_and_takes_no_new_licenses(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, licenses=5)
    seed(cfg, [student(f"S{i}") for i in range(1, 5)])
    make_config(tmp_path, licenses=2)
    code, out, err = eams("licenses", "--district", SPR, "--json", config=cfg)
    assert code == 0
    assert "warning" in err and ENT in err and "no new licenses" in err
    [order] = [o for o in json.loads(out) if o["order"] == ENT]
    assert (order["licenses"], order["used"], order["available"]) == (2, 4, 0)

    rows = [
        student("S5"),  # 2: 4 of 2 in use
        student("S1", "D"),  # 3: 3 of 2
        student("S6"),  # 4: still over
        student("S2", "D"),  # 5: 2 of 2
        student("S7"),  # 6: full
        student("S3", "D"),  # 7: 1 of 2
        student("S8"),  # 8: takes it
    ]
    run = upload(cfg, rows)
    check_result(run, added=1, updated=3, deactivated=3, errors=3)
    assert "warning" in run.err
    assert codes_by_line(run.errors) == {
        "2": {"NO_LICENSE_AVAILABLE"},
        "4": {"NO_LICENSE_AVAILABLE"},
        "6": {"NO_LICENSE_AVAILABLE"},
    }
    assert run.result is not None
    assert run.result["licenses"] == {"order": ENT, "licenses": 2, "used": 2, "available": 0}


# ---- idempotency, the guard, dry runs ---------------------------------------------


def test_processing_the_same_file_twice_is_safe(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    rows = [student("S1"), student("S2", school="0102"), student("S3", "X"), student("S4", "D")]
    first = upload(cfg, rows)
    check_result(first, added=3, updated=0, unchanged=0, errors=1)
    assert licenses(cfg)[ENT]["used"] == 2
    before = students(cfg)
    for encoding, newline in (("utf-8", "\r\n"), ("utf-8-sig", "\r")):
        again = upload(cfg, rows, encoding=encoding, newline=newline)
        assert again.code == 0
        check_result(again, rows=4, added=0, updated=0, unchanged=2, activated=0, errors=2)
        assert codes_by_line(again.errors) == {
            "4": {"STUDENT_EXISTS"},
            "5": {"STUDENT_NOT_FOUND"},
        }
        assert licenses(cfg)[ENT]["used"] == 2
        assert students(cfg) == before


def _seed_active(cfg: Path, count: int) -> list[str]:
    ids = [f"S{i:03d}" for i in range(1, count + 1)]
    seed(cfg, [student(i) for i in ids])
    return ids


def test_deactivation_guard_holds_then_approve_and_discard(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    ids = _seed_active(cfg, 40)
    first = upload(cfg, [student(i, "D") for i in ids[:30]] + [student(i) for i in ids[30:]])
    assert first.code == 1
    check_result(first, state="held", deactivated=30)
    assert first.run_id is not None
    assert "HELD" in (results_dir(cfg) / f"{first.run_id}.result.txt").read_text("utf-8")
    second = upload(cfg, [student(i, "D") for i in ids[10:]])
    assert second.code == 1
    check_result(second, state="held", deactivated=30)
    assert second.run_id is not None
    assert all(s["status"] == "active" for s in students(cfg).values())
    assert licenses(cfg)[ENT]["used"] == 40
    states = {r["run_id"]: r["state"] for r in runs(cfg)}
    assert states[first.run_id] == states[second.run_id] == "held"

    code, _, err = eams("discard", second.run_id, config=cfg)
    assert code == 0, err
    assert_invariant(cfg)
    assert all(s["status"] == "active" for s in students(cfg).values())

    code, out, err = eams("approve", first.run_id, config=cfg)
    assert code == 0, out + err
    assert_invariant(cfg)
    listed = students(cfg)
    assert [i for i in ids if listed[i]["status"] == "active"] == ids[30:]
    assert licenses(cfg)[ENT]["used"] == 10
    approved = json.loads((results_dir(cfg) / f"{first.run_id}.result.json").read_text("utf-8"))
    assert approved["state"] == "done" and approved["deactivated"] == 30
    states = {r["run_id"]: r["state"] for r in runs(cfg)}
    assert states[first.run_id] == "done"
    assert states[second.run_id] == "discarded"

    for command, run_id in (("approve", first.run_id), ("approve", second.run_id)):
        code, _, err = eams(command, run_id, config=cfg)
        assert code == 1, err
        assert err.startswith("eams: ") and err.count("\n") == 1
    assert licenses(cfg)[ENT]["used"] == 10


@pytest.mark.parametrize(
    ("active", "deactivate", "held"),
    [(30, 25, False), (100, 26, True), (120, 29, False), (26, 26, True)],
)
def test_deactivation_guard_thresholds(
    tmp_path: Path, active: int, deactivate: int, held: bool
) -> None:
    cfg = make_config(tmp_path, licenses=200)
    ids = _seed_active(cfg, active)
    run = upload(cfg, [student(i, "D") for i in ids[:deactivate]])
    assert run.code == (1 if held else 0)
    check_result(run, state="held" if held else "done", deactivated=deactivate)
    expected = active if held else active - deactivate
    assert licenses(cfg)[ENT]["used"] == expected


def _snapshot(cfg: Path) -> tuple[Any, ...]:
    with closing(sqlite3.connect(db_path(cfg))) as db:
        outbox = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    folder = results_dir(cfg)
    spool = cfg.parent / "data" / "spool"
    return (
        students(cfg),
        licenses(cfg),
        runs(cfg),
        sorted(p.name for p in folder.iterdir()),
        sorted(p.name for p in spool.rglob("*")),
        outbox,
    )


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, licenses=5)
    seed(cfg, [student("S1"), student("S2"), student("S3", "X")])
    before = _snapshot(cfg)
    rows = [student("S1", "D"), student("S3", "A"), student("S4"), student("S2", "X")]
    run = upload(cfg, rows, "--dry-run")
    assert run.code == 0, run.err
    assert "DRY RUN" in run.out
    assert re.search(r"^Added:\s+1$", run.out, re.MULTILINE)
    assert re.search(r"^Errors:\s+1$", run.out, re.MULTILINE)
    assert _snapshot(cfg) == before


# ---- passwords ---------------------------------------------------------------------


def _everything_written(cfg: Path, outputs: list[str]) -> list[tuple[str, bytes]]:
    """Every file under the test's folders, and every command output, as bytes."""
    found = [(f"output {i}", text.encode("utf-8")) for i, text in enumerate(outputs)]
    for folder in ("homes", "data"):
        for path in (cfg.parent / folder).rglob("*"):
            if path.is_file() and path.name != "secret.key":
                found.append((str(path), path.read_bytes()))
    return found


def test_passwords_are_never_echoed_and_are_stored_encrypted(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    long_password = "Lp-" + "k" * 70
    secrets = [pw("S1"), pw("S2"), pw("S3"), "New-S1-pass-88", long_password, pw("S5")]
    outputs: list[str] = []
    first = upload(cfg, [student("S1"), student("S2"), student("S3", "X")])
    second = upload(
        cfg,
        [
            student("S1", password="New-S1-pass-88"),  # changed
            student("S2", password=""),  # kept
            student("S4", password=long_password),  # FIELD_TOO_LONG, not quoted
            student("S5", school="9999"),  # rejected: values echoed, password masked
            student("S3", "X"),  # STUDENT_EXISTS with its password
        ],
    )
    check_result(second, updated=1, unchanged=1, errors=3)
    assert {e["Error Code"] for e in second.errors or []} == {
        "FIELD_TOO_LONG",
        "UNKNOWN_SCHOOL",
        "STUDENT_EXISTS",
    }
    assert all(e["Password"] == "***" for e in second.errors or [])
    for run in (first, second):
        outputs += [run.out, run.err]
    for args in (("students", "--district", SPR), ("runs",), ("licenses", "--district", SPR)):
        for extra in ((), ("--json",)):
            code, out, err = eams(*args, *extra, config=cfg)
            assert code == 0
            outputs += [out, err]
    for where, data in _everything_written(cfg, outputs):
        for secret in secrets:
            assert secret.encode("utf-8") not in data, f"{secret!r} found in {where}"

    data_dir = tmp_path / "data"
    key = data_dir / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    passwords = StudentPasswords.from_data_dir(data_dir)
    with closing(sqlite3.connect(db_path(cfg))) as db:
        stored = dict(db.execute("SELECT student_id, password_enc FROM students").fetchall())
        blobs = b"".join(
            bytes(v) if isinstance(v, bytes) else str(v).encode()
            for row in db.execute("SELECT * FROM students").fetchall()
            for v in row
            if v is not None
        )
    assert key.read_bytes() not in blobs
    assert passwords.decrypt(stored["S1"]) == "New-S1-pass-88"
    assert passwords.decrypt(stored["S2"]) == pw("S2")
    assert passwords.decrypt(stored["S3"]) == pw("S3")


@pytest.mark.parametrize(
    "line",
    [
        "0101,S5,Ann,Smith, Jr.,5,u5,Leak-pass-5551,Room 1,A",  # unquoted comma: 10 columns
        "0101,S5,Ann,Smith,5,u5,Leak-pass-5551,A",  # a column missing: 8 columns
        '0101,S5,"Ann,Smith,5,u5,Leak-pass-5551,Room 1,A',  # unclosed quote eats the rest
    ],
    ids=["10-columns", "8-columns", "unclosed-quote"],
)
def test_a_column_count_row_does_not_leak_its_password(tmp_path: Path, line: str) -> None:
    cfg = make_config(tmp_path)
    run = upload(cfg, [student("S1"), line, student("S6")])
    assert run.result is not None and run.result["errors"] >= 1
    assert "COLUMN_COUNT" in {e["Error Code"] for e in run.errors or []}
    for where, data in _everything_written(cfg, [run.out, run.err]):
        for secret in ("Leak-pass-5551", pw("S6")):
            assert secret.encode("utf-8") not in data, f"{secret!r} found in {where}"


# ---- the command line: listings and exit codes ------------------------------------


def test_runs_json_lists_result_objects_newest_first(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, districts=(SPR, SHE))
    a = upload(cfg, [student("S1")])
    b = upload(cfg, [student("S1"), student("S2", school="9999")])
    c = upload(cfg, [student("T1")], district=SHE)
    listed = runs(cfg)
    assert [r["run_id"] for r in listed if r["district"] == SPR] == [b.run_id, a.run_id]
    assert len(listed) == 3
    for item in listed:
        assert set(item) >= RESULT_KEYS
    assert listed[[r["run_id"] for r in listed].index(b.run_id)] == {
        **(b.result or {}),
        "state": "done",
    }
    only_she = runs(cfg, "--district", SHE)
    assert [r["run_id"] for r in only_she] == [c.run_id]
    assert listed == sorted(listed, key=lambda r: r["received_at"], reverse=True)


def _one_line_usage_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("eams: ")
    assert err.count("\n") == 1, err


def test_exit_2_for_an_unknown_district(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    path = write_csv(tmp_path / "s.csv", [student("S1")])
    code, _, err = eams("process", "--district", "nowhere", str(path), config=cfg)
    _one_line_usage_error(code, err)
    assert "nowhere" in err
    code, _, err = eams("students", "--district", "nowhere", config=cfg)
    _one_line_usage_error(code, err)


def test_exit_2_for_a_missing_file(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    code, _, err = eams("process", "--district", SPR, str(tmp_path / "nope.csv"), config=cfg)
    _one_line_usage_error(code, err)
    assert "nope.csv" in err


def test_exit_2_for_an_unknown_order_and_nothing_is_recorded(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    path = write_csv(tmp_path / "s.csv", [student("S1")])
    code, _, err = eams("process", "--district", SPR, "--order", "REG-NOPE", str(path), config=cfg)
    _one_line_usage_error(code, err)
    assert "REG-NOPE" in err
    assert runs(cfg) == [] and students(cfg) == {}
    assert not any((tmp_path / "data" / "spool").rglob("*.csv"))


def test_exit_2_for_a_bad_config(tmp_path: Path) -> None:
    good = make_config(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(
        good.read_text("utf-8").replace("licenses = 100", "licenses = -1"), encoding="utf-8"
    )
    path = write_csv(tmp_path / "s.csv", [student("S1")])
    code, _, err = eams("process", "--district", SPR, str(path), config=bad)
    _one_line_usage_error(code, err)
    assert "districts.springfield.order.licenses: must be >= 0" in err
    code, _, err = eams("process", "--district", SPR, str(path), config=tmp_path / "missing.toml")
    _one_line_usage_error(code, err)
    code, _, err = eams("check-config", config=bad)
    assert code == 2 and "districts.springfield.order.licenses: must be >= 0" in err
    assert not (tmp_path / "data" / "eams.sqlite3").exists()


def test_process_exit_status_follows_the_run_state(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert upload(cfg, [student("S1")]).code == 0
    partial = upload(cfg, [student("S2"), student("S3", school="9999")])
    assert partial.code == 0 and partial.result is not None and partial.result["errors"] == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("Student ID,School Code\r\n", encoding="utf-8")
    assert process(cfg, bad).code == 1
    assert os.listdir(tmp_path / "data" / "spool" / SPR) == []
