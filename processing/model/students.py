"""A stored student, an order's license tally, and a district's state as loaded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from attrs import define, field, frozen


class Student(NamedTuple):
    """A student as stored: `active` holds a license on `order_id` when True.

    A NamedTuple (not attrs) because a run builds 500,000 of them; the store
    makes them straight from its row tuples (`Student._make`).
    """

    student_id: str
    school_code: str
    first_name: str
    last_name: str
    grade: str
    username: str
    class_name: str
    active: bool
    order_id: str
    password_mac: bytes | None


@define
class OrderTally:
    """One order's license count while a run is being decided (mutable on purpose)."""

    id: str
    kind: str  # "enterprise", "regular" or "past"
    licenses: int
    used: int

    @property
    def available(self) -> int:
        return max(0, self.licenses - self.used)


@define
class DistrictState:
    """A district's students and orders as loaded by the store; mutated by `build_plan`."""

    district_id: str
    version: int
    students: dict[str, Student]
    orders: dict[str, OrderTally]
    owners: dict[str, str] = field(factory=dict)  # username.lower() -> student_id

    def __attrs_post_init__(self) -> None:
        if not self.owners:
            self.owners = {s.username.lower(): s.student_id for s in self.students.values()}

    @property
    def active_count(self) -> int:
        return sum(tally.used for tally in self.orders.values())

    @property
    def enterprise_order(self) -> str:
        for tally in self.orders.values():
            if tally.kind == "enterprise":
                return tally.id
        raise LookupError(f"district {self.district_id} has no enterprise order")


@frozen
class DistrictWrite:
    """What an applied run writes for its district, in the run's one transaction.

    The store turns it into rows (the SQL column order lives only there).
    """

    expected_version: int  # the district version the run was decided on
    students: Mapping[str, Student]  # changed and new students, in first-change order
    added: frozenset[str]  # which of `students` are new
    passwords: Mapping[str, bytes]  # new passwords, encrypted, by student id
    digests: Mapping[str, bytes | None]  # line digests to store (None: clear), by student id
    orders: tuple[tuple[str, int], ...]  # (order id, used) after the run
