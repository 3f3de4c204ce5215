"""Every rule of SPEC §5 in one place, pure (no I/O): (current student, row) -> decision.

- `decide`: the §5 table, one branch per cell;
- `restates`: when a row only restates its stored student ("unchanged");
- `duplicate_error`: a Student ID on several rows (§5.1);
- `guard_reason`: the deactivation guard (§5.4);
- `present_id`, `missing_students`, `deactivated_for_absence`: full-roster sync (§5.6);
- `normalize_grade`: what a grade is (§4), for rows and for config alike.

Every cell of the §5 table is one branch of `decide`, so each is a plain unit
test. License accounting is expressed as the decision's `take_from` /
`give_back` order ids; the caller (`processing/plan.py`) moves the counts.

"target" is the Enterprise order E, or the order named by
`eams process --order` (§5.5): the table reads with that order in place of E,
and any other order (regular, past enterprise, or E itself when targeting a
regular order) is "a regular order" from the target's point of view.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable
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


def normalize_grade(value: str) -> str | None:
    """`K`/`KG`/`0` -> `K`; `1`..`12` with optional leading zeros -> `1`..`12`; else None.

    Shared by config validation (district `grades`) and row validation so the
    two can never disagree about what a grade is.
    """
    text = value.strip().upper()
    if text in ("K", "KG"):
        return "K"
    if text.isascii() and text.isdigit():
        number = int(text)
        if number == 0:
            return "K"
        if 1 <= number <= 12:
            return str(number)
    return None


_KEEPS_ACTIVE = frozenset("AI")
_KEEPS_DEACTIVATED = frozenset("DI")


def restates(
    current: Student,
    fields: tuple[str, ...],
    target: str,
    school_codes: frozenset[str],
    grades: frozenset[str],
    mac: Callable[[str], bytes],
) -> bool:
    """Fast path for SPEC §5's "unchanged": the row restates the stored student exactly.

    Most rows of a nightly extract change nothing. When every trimmed value
    equals the stored (already validated) one, the status keeps the student
    as it is on the target order, and the password is blank or the same,
    `validate` + `decide` would only conclude UNCHANGED, so skip them. Any
    other difference takes the full path.
    """
    if current.order_id != target:
        return False
    keeps = _KEEPS_ACTIVE if current.active else _KEEPS_DEACTIVATED
    if fields[8].strip().upper() not in keeps:
        return False
    grade = fields[4].strip()
    if grade != current.grade and normalize_grade(grade) != current.grade:
        return False  # "03" and "KG" restate grades 3 and K (SIS exports often pad them)
    if (
        fields[0].strip() != current.school_code
        or fields[2].strip() != current.first_name
        or fields[3].strip() != current.last_name
        or fields[5].strip() != current.username
        or fields[7].strip() != current.class_name
        or current.school_code not in school_codes
        or current.grade not in grades
    ):
        return False
    password = fields[6].strip()
    return not password or mac(password) == current.password_mac


def duplicate_error(student_id: str, lines: list[int]) -> RowError:
    """SPEC §5.1: every row of a repeated Student ID is rejected; no row silently wins."""
    where = ", ".join(str(n) for n in lines[:10]) + (", ..." if len(lines) > 10 else "")
    return RowError(
        RowCode.DUPLICATE_STUDENT_ID,
        f'Student ID "{student_id}" appears on {len(lines)} rows (lines {where}): '
        "none of them was applied; send each student once",
    )


GUARD_MINIMUM = 25  # SPEC §5.4: never hold a run that deactivates 25 students or fewer


def guard_reason(
    deactivating: int, active: int, guard: float, *, empty_full_sync: bool = False
) -> str | None:
    """SPEC §5.4, the deactivation guard: why a run must be held, or None.

    `deactivating` is how many active students the run would deactivate (D
    rows and, in full sync, missing students), `active` how many the district
    has before it, `guard` the district's `deactivation_guard` share. A full
    sync file with no rows at all is always held (§5.6): it would empty the
    district, whatever its size."""
    if empty_full_sync:
        return (
            f"the file has no student rows: in full sync it would deactivate every one of the "
            f"district's {active} active students. An empty SIS extract looks like this."
        )
    if deactivating <= GUARD_MINIMUM or deactivating <= guard * active:
        return None
    share = deactivating / active if active else 1.0
    return (
        f"the file would deactivate {deactivating} of the district's {active} active students "
        f"({share:.0%}), more than the deactivation guard of {guard:.0%}. "
        "A partial or broken SIS extract looks like this."
    )


# ---- full-roster sync (SPEC §5.6) ------------------------------------------------------------


def present_id(fields: tuple[str, ...]) -> str | None:
    """The Student ID a row names, trimmed; None when empty. Any row counts, rejected
    ones too: a typo elsewhere in the row must not deactivate the student."""
    student_id = fields[1].strip() if len(fields) > 1 else ""
    return student_id or None


def missing_students(students: Iterable[Student], present: Container[str]) -> list[Student]:
    """The active students (on any order) whose Student ID is on no row of the file,
    in Student ID order."""
    return sorted(
        (s for s in students if s.active and s.student_id not in present),
        key=lambda s: s.student_id,
    )


def deactivated_for_absence(student: Student) -> Student:
    """A missing student after full sync: deactivated, on the order it was on (its
    license goes back to that order; a regular order's student stays there)."""
    return student._replace(active=False)
