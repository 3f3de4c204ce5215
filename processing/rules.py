"""The status rules of SPEC §5: (current student, row) -> decision. Pure, no I/O.

Every cell of the §5 table is one branch of `decide`, so each is a plain unit
test. License accounting is expressed as the decision's `take_from` /
`give_back` order ids; the caller (`processing/plan.py`) moves the counts.

"target" is the Enterprise order E, or the order named by
`eams process --order` (§5.5): the table reads with that order in place of E,
and any other order (regular, past enterprise, or E itself when targeting a
regular order) is "a regular order" from the target's point of view.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from processing.model import Row, RowCode, RowError, Student


class Outcome(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    ERROR = "error"


class Decision(NamedTuple):
    outcome: Outcome
    student: Student | None = None  # the student after the row; None on error
    error: RowError | None = None
    activated: bool = False
    deactivated: bool = False
    transferred: bool = False
    take_from: str | None = None  # order charged one license
    give_back: str | None = None  # order credited one license
    password_changed: bool = False


def reject(code: RowCode, message: str) -> Decision:
    return Decision(Outcome.ERROR, error=RowError(code, message))


def no_license(target: str) -> Decision:
    return reject(
        RowCode.NO_LICENSE_AVAILABLE,
        f"no license available on order {target}: every license is in use. "
        "Deactivate students who left (status D) or ask your account manager for more licenses",
    )


def decide(
    current: Student | None,
    row: Row,
    row_mac: bytes | None,
    target: str,
    target_free: int,
    username_taken: bool,
) -> Decision:
    """Apply one row to one student.

    `row_mac` is the keyed digest of the row's password (None when blank),
    `target_free` the free licenses on the target order (the Holding Bin),
    `username_taken` whether another student, in any district, holds the
    row's username (case-insensitive).
    """
    status = row.status
    if current is None:
        if status in ("D", "I"):
            return reject(
                RowCode.STUDENT_NOT_FOUND,
                f'student "{row.student_id}" does not exist: status {status} only updates '
                "existing students (use A to create an active student, X a deactivated one)",
            )
        if row_mac is None:
            return reject(
                RowCode.PASSWORD_REQUIRED,
                f'a password is required to create student "{row.student_id}"',
            )
        if username_taken:
            return _username_taken(row)
        if status == "A":
            if target_free <= 0:
                return no_license(target)
            return Decision(
                Outcome.ADDED,
                student=_from_row(row, row_mac, active=True, order_id=target),
                take_from=target,
                password_changed=True,
            )
        return Decision(
            Outcome.ADDED,
            student=_from_row(row, row_mac, active=False, order_id=target),
            password_changed=True,
        )

    if status == "X":
        return reject(
            RowCode.STUDENT_EXISTS,
            f'student "{row.student_id}" already exists: status X only creates new students '
            "(use A, D or I to update an existing one)",
        )
    if username_taken:
        return _username_taken(row)

    mac = current.password_mac if row_mac is None else row_mac
    password_changed = mac != current.password_mac
    activated = deactivated = transferred = False
    take_from = give_back = None
    order_id = current.order_id
    active = current.active

    if current.active:
        if status == "D":
            active = False
            deactivated = True
            give_back = current.order_id
        elif current.order_id != target:  # A or I on another order: transfer
            if target_free <= 0:
                return no_license(target)
            transferred = True
            give_back, take_from, order_id = current.order_id, target, target
    elif status == "A":
        if target_free <= 0:
            return no_license(target)
        active = activated = True
        take_from = order_id = target
    else:  # deactivated, D or I: moved to the target, no license
        order_id = target

    new = _from_row(row, mac, active=active, order_id=order_id)
    outcome = Outcome.UNCHANGED if new == current else Outcome.UPDATED
    return Decision(
        outcome,
        student=new,
        activated=activated,
        deactivated=deactivated,
        transferred=transferred,
        take_from=take_from,
        give_back=give_back,
        password_changed=password_changed,
    )


def _username_taken(row: Row) -> Decision:
    return reject(
        RowCode.USERNAME_TAKEN,
        f'username "{row.username}" is already used by another student '
        "(usernames are unique across all MY Access districts, ignoring case)",
    )


def _from_row(row: Row, mac: bytes | None, *, active: bool, order_id: str) -> Student:
    return Student(
        student_id=row.student_id,
        school_code=row.school_code,
        first_name=row.first_name,
        last_name=row.last_name,
        grade=row.grade,
        username=row.username,
        class_name=row.class_name,
        active=active,
        order_id=order_id,
        password_mac=mac,
    )
