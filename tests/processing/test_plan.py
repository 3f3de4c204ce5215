"""The unchanged-row fast path agrees with validate + decide (SPEC §5 "unchanged")."""

from __future__ import annotations

import pytest

from processing.config import DEFAULT_GRADES
from processing.model import RawRow, Student
from processing.rules import Outcome, decide, restates
from processing.validate import validate

SCHOOLS = frozenset({"0101", "0102"})
GRADES = frozenset(DEFAULT_GRADES)
CURRENT = Student("S1", "0101", "Ana", "Lee", "3", "alee", "Room 1", True, "E", b"mac")


def mac(password: str) -> bytes:
    return b"mac" if password == "secret-1" else b"other"


def fields(**changes: str) -> tuple[str, ...]:
    row = {
        "school": "0101",
        "id": "S1",
        "first": "Ana",
        "last": "Lee",
        "grade": "3",
        "user": "alee",
        "password": "",
        "class": "Room 1",
        "status": "A",
    }
    row.update(changes)
    return tuple(row.values())


def full_path(values: tuple[str, ...]) -> Outcome:
    checked = validate(RawRow(2, values), SCHOOLS, GRADES)
    assert not isinstance(checked, list), checked
    password = checked.password
    return decide(CURRENT, checked, mac(password) if password else None, "E", 5, False).outcome


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"grade": "03"},  # SIS exports pad grades
        {"grade": " 3 "},
        {"status": "i"},
        {"password": "secret-1"},
        {"first": " Ana "},
    ],
)
def test_rows_the_fast_path_takes_are_unchanged_on_the_full_path_too(
    changes: dict[str, str],
) -> None:
    values = fields(**changes)
    assert restates(CURRENT, values, "E", SCHOOLS, GRADES, mac)
    assert full_path(values) is Outcome.UNCHANGED


@pytest.mark.parametrize(
    "changes",
    [
        {"grade": "4"},
        {"grade": "04"},
        {"status": "D"},
        {"status": "X"},
        {"password": "secret-2"},
        {"school": "0102"},
        {"class": "Room 2"},
    ],
)
def test_any_real_difference_takes_the_full_path(changes: dict[str, str]) -> None:
    assert not restates(CURRENT, fields(**changes), "E", SCHOOLS, GRADES, mac)


def test_a_student_on_another_order_or_a_school_no_longer_configured_is_not_fast() -> None:
    assert not restates(CURRENT, fields(), "OTHER", SCHOOLS, GRADES, mac)
    assert not restates(CURRENT, fields(), "E", frozenset({"0102"}), GRADES, mac)
    kindergarten = Student("S1", "0101", "Ana", "Lee", "K", "alee", "Room 1", True, "E", b"m")
    assert restates(kindergarten, fields(grade="KG"), "E", SCHOOLS, GRADES, mac)
    assert not restates(kindergarten, fields(grade="KG"), "E", SCHOOLS, frozenset({"1"}), mac)
