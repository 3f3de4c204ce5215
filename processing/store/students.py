"""Students and orders: a district's state loaded in bulk, written back in bulk.

Access pattern, chosen for 500,000-student districts: a run loads the
district's state with one query (`load_district`), decides in memory, and
writes everything back with `executemany` inside the run's one transaction.
An optimistic version number per district turns a concurrent writer (say
`eams process` while the server runs) into a `Conflict` the runner retries,
never a lost update. The students table's column order lives here only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, cast

import aiosqlite
from attrs import frozen

from processing.model import DistrictState, DistrictWrite, OrderTally, Student, iso, utc_now
from processing.store.connection import Conflict, Connection, chunks, serialized


@frozen
class KnownLines:
    """`Store.load_digests`: line digest -> student id, with the district's version and orders."""

    version: int
    orders: dict[str, OrderTally]
    digests: dict[bytes, str]


@frozen
class StudentRows:
    """A run's student rows for SQL, in `_INSERT_STUDENT`'s column order."""

    changed: list[tuple[Any, ...]]
    new: list[tuple[Any, ...]]
    digests: list[tuple[bytes, str, str]]  # (digest, district id, student id)


def student_rows(district_id: str, write: DistrictWrite) -> StudentRows:
    """Rows for `_INSERT_STUDENT`/`_UPSERT_STUDENT` (a worker thread: 500,000 of them).

    Changed students keep the file's order (a username one student gives up
    may be taken by a later row); new ones are sorted by Student ID, so the
    clustered table is written in key order (a 500,000-row first load).
    Unchanged students whose line restates them under a digest not stored yet
    get just that digest.
    """
    now = iso(utc_now())
    added, digests, passwords = write.added, write.digests, write.passwords
    changed: list[tuple[Any, ...]] = []
    new: list[tuple[Any, ...]] = []
    for student_id, s in write.students.items():
        password = passwords.get(student_id)
        (new if student_id in added else changed).append(
            (
                district_id,
                s.student_id,
                s.school_code,
                s.first_name,
                s.last_name,
                s.grade,
                s.username,
                s.username.lower(),
                s.class_name,
                int(s.active),
                s.order_id,
                password,
                s.password_mac if password is not None else None,
                now,
                digests.get(student_id),
            )
        )
    new.sort(key=itemgetter(1))
    restated = [
        (digest, district_id, student_id)
        for student_id, digest in digests.items()
        if digest is not None and student_id not in write.students
    ]
    return StudentRows(changed, new, restated)


# A Student's fields (rules.Student), in its order
_STUDENT_STATE = (
    "student_id, school_code, first_name, last_name, grade, username, class_name, active, "
    "order_id, password_mac"
)
_INSERT_STUDENT = """
    INSERT INTO students (district_id, student_id, school_code, first_name, last_name, grade,
        username, username_key, class_name, active, order_id, password_enc, password_mac,
        updated_at, line_digest)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_UPSERT_STUDENT = (
    _INSERT_STUDENT
    + """
    ON CONFLICT (district_id, student_id) DO UPDATE SET
        school_code = excluded.school_code, first_name = excluded.first_name,
        last_name = excluded.last_name, grade = excluded.grade, username = excluded.username,
        username_key = excluded.username_key, class_name = excluded.class_name,
        active = excluded.active, order_id = excluded.order_id,
        password_enc = coalesce(excluded.password_enc, students.password_enc),
        password_mac = coalesce(excluded.password_mac, students.password_mac),
        updated_at = excluded.updated_at, line_digest = excluded.line_digest
"""
)


async def write_district(
    db: aiosqlite.Connection, district_id: str, write: DistrictWrite, rows: StudentRows
) -> None:
    """An applied run's students, digests and order counts, inside its transaction.

    `write.expected_version` is the district version the run was decided on;
    a mismatch raises `Conflict`.
    """
    cursor = await db.execute(
        "UPDATE districts SET version = version + 1 WHERE id = ? AND version = ?",
        (district_id, write.expected_version),
    )
    if cursor.rowcount != 1:
        raise Conflict(f"district {district_id} changed during the run")
    if rows.changed:  # changed ones first: they may free usernames new ones take
        await db.executemany(_UPSERT_STUDENT, rows.changed)
    if rows.new:
        await db.executemany(_INSERT_STUDENT, rows.new)
    if rows.digests:
        await db.executemany(
            "UPDATE students SET line_digest = ? WHERE district_id = ? AND student_id = ?",
            rows.digests,
        )
    await db.executemany(
        "UPDATE orders SET used = ? WHERE district_id = ? AND id = ?",
        [(used, district_id, order_id) for order_id, used in write.orders],
    )


def student_object(row: Sequence[Any]) -> dict[str, Any]:
    """SPEC §7's student object from student_id, school_code, first_name, last_name,
    grade, username, class_name, active, order_id in that order (never a password)."""
    return {
        "student_id": row[0],
        "school_code": row[1],
        "first_name": row[2],
        "last_name": row[3],
        "grade": row[4],
        "username": row[5],
        "class_name": row[6],
        "status": "active" if row[7] else "deactivated",
        "order": row[8],
    }


class StudentsTable(Connection):
    @serialized
    async def load_district(self, district_id: str) -> DistrictState:
        """The district's students and orders in three queries (no per-row round trips)."""
        version, orders = await self._version_and_orders(district_id)
        cursor = await self.db.execute(
            f"SELECT {_STUDENT_STATE} FROM students WHERE district_id = ?", (district_id,)
        )
        cursor.row_factory = None  # plain tuples: 500,000 sqlite3.Row objects cost a second
        cursor_rows = await cursor.fetchall()
        await cursor.close()
        # Building 500,000 students is CPU work: off the event loop.
        return await asyncio.to_thread(_state, district_id, version, orders, cursor_rows)

    @serialized
    async def load_students(
        self, district_id: str, student_ids: Iterable[str], username_keys: Iterable[str]
    ) -> DistrictState:
        """The district's orders, and only its students with these ids or usernames.

        A state that is complete for rows naming only these students and
        (lower-cased) usernames: each of them is loaded when it exists, with
        its owner. The runner decides a nightly file's changed rows this way
        instead of loading 500,000 students (processing/digests.py).
        """
        version, orders = await self._version_and_orders(district_id)
        found: dict[str, Any] = {}
        # By the primary key, and by the username index: "+district_id" keeps SQLite
        # from scanning the district's rows by primary key prefix instead (3 s for
        # 15,000 usernames in a 500,000-student district, bench/processing.py).
        by = (
            ("district_id = ? AND student_id", student_ids),
            ("+district_id = ? AND username_key", username_keys),
        )
        for where, keys in by:
            for chunk in chunks(set(keys)):
                marks = ",".join("?" * len(chunk))
                cursor = await self.db.execute(
                    f"SELECT {_STUDENT_STATE} FROM students WHERE {where} IN ({marks})",
                    (district_id, *chunk),
                )
                cursor.row_factory = None
                found.update((row[0], row) for row in await cursor.fetchall())
                await cursor.close()
        return _state(district_id, version, orders, found.values())

    @serialized
    async def load_orders(self, district_id: str) -> dict[str, OrderTally]:
        """The district's orders with their license counts, by order id."""
        return (await self._version_and_orders(district_id))[1]

    async def _version_and_orders(self, district_id: str) -> tuple[int, dict[str, OrderTally]]:
        rows = list(
            await self.db.execute_fetchall(
                "SELECT version FROM districts WHERE id = ?", (district_id,)
            )
        )
        if not rows:
            raise LookupError(f"unknown district {district_id!r}")
        orders = {
            row[0]: OrderTally(row[0], row[1], row[2], row[3])
            for row in await self.db.execute_fetchall(
                "SELECT id, kind, licenses, used FROM orders WHERE district_id = ?",
                (district_id,),
            )
        }
        return rows[0][0], orders

    @serialized
    async def load_digests(self, district_id: str) -> KnownLines:
        """The district's version and orders, and its students' line digests (no other data).

        What the digest scan needs: for a file that restates every student,
        this is the whole load (processing/digests.py).
        """
        version, orders = await self._version_and_orders(district_id)
        cursor = await self.db.execute(
            "SELECT line_digest, student_id FROM students "
            "WHERE district_id = ? AND line_digest IS NOT NULL",
            (district_id,),
        )
        cursor.row_factory = None
        pairs = cast("list[tuple[bytes, str]]", await cursor.fetchall())
        digests = dict(pairs)  # in C: 500,000 pairs in a few milliseconds
        await cursor.close()
        return KnownLines(version, orders, digests)

    @serialized
    async def active_student_ids(self, district_id: str) -> set[str]:
        """The district's active students, on any order (full sync, SPEC §5.6)."""
        cursor = await self.db.execute(
            "SELECT student_id FROM students WHERE district_id = ? AND active = 1",
            (district_id,),
        )
        cursor.row_factory = None
        ids = {row[0] for row in await cursor.fetchall()}
        await cursor.close()
        return ids

    @serialized
    async def usernames_elsewhere(self, district_id: str, keys: Iterable[str]) -> frozenset[str]:
        """Which of these lower-cased usernames belong to students of other districts."""
        taken: set[str] = set()
        for chunk in chunks(keys):
            marks = ",".join("?" * len(chunk))
            rows = await self.db.execute_fetchall(
                f"SELECT username_key FROM students WHERE username_key IN ({marks}) "
                "AND district_id != ?",
                (*chunk, district_id),
            )
            taken.update(row[0] for row in rows)
        return frozenset(taken)

    @serialized
    async def list_students(self, district_id: str) -> list[dict[str, Any]]:
        """The district's students as SPEC §7's objects (never a password)."""
        rows = await self.db.execute_fetchall(
            "SELECT student_id, school_code, first_name, last_name, grade, username, "
            "class_name, active, order_id FROM students WHERE district_id = ? "
            "ORDER BY student_id",
            (district_id,),
        )
        return [student_object(r) for r in rows]

    @serialized
    async def list_orders(self, district_id: str) -> list[dict[str, Any]]:
        """Orders with licenses, used and available; kind `past` shows as `regular`."""
        rows = await self.db.execute_fetchall(
            "SELECT id, kind, licenses, used FROM orders WHERE district_id = ? "
            "ORDER BY kind = 'enterprise' DESC, kind, id",
            (district_id,),
        )
        return [
            {
                "order": r[0],
                "kind": "enterprise" if r[1] == "enterprise" else "regular",
                "licenses": r[2],
                "used": r[3],
                "available": max(0, r[2] - r[3]),
            }
            for r in rows
        ]


def _state(
    district_id: str, version: int, orders: dict[str, OrderTally], rows: Iterable[Any]
) -> DistrictState:
    # Straight from the row tuple (`active` stays 0/1, which compares equal to a bool).
    make = Student._make
    students = {r[0]: make(r) for r in rows}
    return DistrictState(district_id, version, students, orders)
