"""SPEC §5, cell by cell, on the pure rules: (current student, row) -> decision."""

from __future__ import annotations

import pytest

from processing.model import Row, RowCode, Student
from processing.rules import Decision, Outcome, decide

E = "ENT-1"
R = "REG-1"
MAC = b"mac-of-password1"
MAC2 = b"mac-of-password2"


def row(status: str, *, password: str | None = "password1", **changes: str) -> Row:
    values = dict(
        line=2,
        school_code="0101",
        student_id="S1",
        first_name="Ana",
        last_name="Lee",
        grade="3",
        username="alee",
        password=password,
        class_name="Room 1",
        status=status,
    )
    values.update(changes)
    return Row(**values)  # type: ignore[arg-type]


def student(*, active: bool, order: str = E, **changes: object) -> Student:
    values: dict[str, object] = dict(
        student_id="S1",
        school_code="0101",
        first_name="Ana",
        last_name="Lee",
        grade="3",
        username="alee",
        class_name="Room 1",
        active=active,
        order_id=order,
        password_mac=MAC,
    )
    values.update(changes)
    return Student(**values)  # type: ignore[arg-type]


def run(
    current: Student | None, r: Row, *, free: int = 10, taken: bool = False, mac: bytes | None = MAC
) -> Decision:
    return decide(current, r, mac if r.password is not None else None, E, free, taken)


# ---- user now: active ----------------------------------------------------------


@pytest.mark.parametrize("flag", ["A", "I"])
def test_active_a_or_i_same_data_is_unchanged(flag: str) -> None:
    d = run(student(active=True), row(flag))
    assert d.outcome is Outcome.UNCHANGED
    assert d.take_from is None and d.give_back is None
    assert d.student == student(active=True)


@pytest.mark.parametrize("flag", ["A", "I"])
def test_active_a_or_i_updates_data_status_unchanged(flag: str) -> None:
    d = run(student(active=True), row(flag, school_code="0102", grade="4"))
    assert d.outcome is Outcome.UPDATED
    assert d.student is not None
    assert d.student.active is True and d.student.school_code == "0102"
    assert not (d.activated or d.deactivated or d.transferred)
    assert d.take_from is None and d.give_back is None


@pytest.mark.parametrize("flag", ["A", "I"])
def test_active_on_regular_order_is_transferred_to_enterprise(flag: str) -> None:
    d = run(student(active=True, order=R), row(flag))
    assert d.outcome is Outcome.UPDATED and d.transferred
    assert d.give_back == R and d.take_from == E
    assert d.student is not None and d.student.order_id == E and d.student.active


@pytest.mark.parametrize("flag", ["A", "I"])
def test_active_transfer_with_empty_holding_bin_changes_nothing(flag: str) -> None:
    d = run(student(active=True, order=R), row(flag, grade="5"), free=0)
    assert d.outcome is Outcome.ERROR
    assert d.error is not None and d.error.code is RowCode.NO_LICENSE_AVAILABLE
    assert d.student is None and d.take_from is None and d.give_back is None


def test_active_on_enterprise_needs_no_license_even_when_bin_empty() -> None:
    d = run(student(active=True), row("A", grade="4"), free=0)
    assert d.outcome is Outcome.UPDATED and d.take_from is None


def test_active_d_deactivates_and_returns_license_to_its_order() -> None:
    d = run(student(active=True, order=R), row("D", grade="4"))
    assert d.outcome is Outcome.UPDATED and d.deactivated
    assert d.give_back == R and d.take_from is None
    assert d.student is not None and not d.student.active and d.student.order_id == R
    assert d.student.grade == "4"


def test_active_d_on_enterprise_returns_license_to_holding_bin() -> None:
    d = run(student(active=True), row("D"))
    assert d.deactivated and d.give_back == E


def test_active_x_is_student_exists_and_nothing_changes() -> None:
    d = run(student(active=True), row("X", grade="9"))
    assert d.outcome is Outcome.ERROR
    assert d.error is not None and d.error.code is RowCode.STUDENT_EXISTS
    assert d.student is None


# ---- user now: deactivated ------------------------------------------------------


def test_deactivated_a_activates_with_license_from_bin_and_moves_to_enterprise() -> None:
    d = run(student(active=False, order=R), row("A"))
    assert d.outcome is Outcome.UPDATED and d.activated
    assert d.take_from == E and d.give_back is None
    assert d.student is not None and d.student.active and d.student.order_id == E


def test_deactivated_a_with_empty_bin_changes_nothing() -> None:
    d = run(student(active=False), row("A"), free=0)
    assert d.error is not None and d.error.code is RowCode.NO_LICENSE_AVAILABLE
    assert d.student is None and d.take_from is None


@pytest.mark.parametrize("flag", ["D", "I"])
def test_deactivated_d_or_i_same_data_is_unchanged(flag: str) -> None:
    d = run(student(active=False), row(flag))
    assert d.outcome is Outcome.UNCHANGED


@pytest.mark.parametrize("flag", ["D", "I"])
def test_deactivated_d_or_i_updates_data(flag: str) -> None:
    d = run(student(active=False), row(flag, last_name="Lee-Smith"))
    assert d.outcome is Outcome.UPDATED and not d.activated and not d.deactivated
    assert d.student is not None and not d.student.active
    assert d.take_from is None and d.give_back is None


@pytest.mark.parametrize("flag", ["D", "I"])
def test_deactivated_on_regular_order_moves_to_enterprise_without_license(flag: str) -> None:
    d = run(student(active=False, order=R), row(flag), free=0)
    assert d.outcome is Outcome.UPDATED
    assert d.student is not None and d.student.order_id == E and not d.student.active
    assert d.take_from is None and d.give_back is None


def test_deactivated_x_is_student_exists() -> None:
    d = run(student(active=False), row("X"))
    assert d.error is not None and d.error.code is RowCode.STUDENT_EXISTS


# ---- user now: none ---------------------------------------------------------------


def test_none_a_creates_active_on_enterprise_with_a_license() -> None:
    d = run(None, row("A"))
    assert d.outcome is Outcome.ADDED and d.take_from == E
    assert d.student is not None and d.student.active and d.student.order_id == E
    assert d.password_changed


def test_none_a_with_empty_bin_is_no_license() -> None:
    d = run(None, row("A"), free=0)
    assert d.error is not None and d.error.code is RowCode.NO_LICENSE_AVAILABLE


def test_none_x_creates_deactivated_without_license() -> None:
    d = run(None, row("X"), free=0)
    assert d.outcome is Outcome.ADDED and d.take_from is None
    assert d.student is not None and not d.student.active and d.student.order_id == E


@pytest.mark.parametrize("flag", ["D", "I"])
def test_none_d_or_i_is_student_not_found(flag: str) -> None:
    d = run(None, row(flag))
    assert d.error is not None and d.error.code is RowCode.STUDENT_NOT_FOUND


# ---- state-dependent row errors ------------------------------------------------------


@pytest.mark.parametrize("flag", ["A", "X"])
def test_creating_without_password_is_password_required(flag: str) -> None:
    d = run(None, row(flag, password=None))
    assert d.error is not None and d.error.code is RowCode.PASSWORD_REQUIRED
    assert "password1" not in d.error.message


def test_blank_password_keeps_the_current_one() -> None:
    d = run(student(active=True), row("A", password=None))
    assert d.outcome is Outcome.UNCHANGED and not d.password_changed
    assert d.student is not None and d.student.password_mac == MAC


def test_new_password_is_an_update() -> None:
    d = run(student(active=True), row("A", password="password2"), mac=MAC2)
    assert d.outcome is Outcome.UPDATED and d.password_changed


def test_username_taken_when_creating() -> None:
    d = run(None, row("A"), taken=True)
    assert d.error is not None and d.error.code is RowCode.USERNAME_TAKEN


def test_username_taken_when_updating() -> None:
    d = run(student(active=True), row("A", username="bob"), taken=True)
    assert d.error is not None and d.error.code is RowCode.USERNAME_TAKEN


def test_target_order_reads_in_place_of_enterprise() -> None:
    """SPEC §5.5: with --order REG-1, a student on E is 'on another order'."""
    d = decide(student(active=True, order=E), row("A"), MAC, R, 5, False)
    assert d.transferred and d.give_back == E and d.take_from == R


# ---- the deactivation guard (SPEC §5.4) -------------------------------------------------


def test_the_guard_holds_only_past_both_the_share_and_25_students() -> None:
    from processing.rules import guard_reason

    assert guard_reason(25, 30, 0.25) is None  # 25 or fewer never hold
    assert guard_reason(26, 200, 0.25) is None  # 13% of the district
    assert guard_reason(50, 200, 0.25) is None  # exactly the share
    reason = guard_reason(51, 200, 0.25)
    assert reason is not None
    assert "deactivate 51 of the district's 200 active students (26%)" in reason
    assert guard_reason(1000, 1000, 1.0) is None  # deactivation_guard = 1 turns it off
