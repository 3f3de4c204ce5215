"""The database: the only module that speaks SQL.

SQLite through aiosqlite, WAL mode, foreign keys on, synchronous=FULL (a run
acknowledged to a district must survive a crash). Schema changes are ordered
migrations recorded in `schema_version`.

Access pattern, chosen for 500,000-student districts: a run loads the
district's state with one query (`load_district`), decides in memory, and
writes everything back with `executemany` inside ONE transaction
(`finish_run`) together with the run record, its row errors and its queued
emails (SPEC §5.3). An optimistic version number per district turns a
concurrent writer (say `eams process` while the server runs) into a
`Conflict` the runner retries, never a lost update.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import aiosqlite
from attrs import frozen

from processing.config import Config
from processing.model import (
    DistrictState,
    DistrictWrite,
    OrderTally,
    OutboxItem,
    PlannedError,
    QueuedEmail,
    RunRecord,
    RunResult,
    Student,
    UploadJob,
    UploadStatus,
    error_code,
    format_run_id,
    iso,
    parse_iso,
    utc_now,
)

__all__ = [  # the value types' old home: still importable from here
    "OutboxItem",
    "QueuedEmail",
    "RunRecord",
    "UploadStatus",
    "format_run_id",
    "iso",
    "utc_now",
]

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE districts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        run_seq INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 0,
        last_upload_at TEXT,
        stale_alerted INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE schools (
        district_id TEXT NOT NULL REFERENCES districts(id),
        code TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (district_id, code)
    );
    CREATE TABLE orders (
        district_id TEXT NOT NULL REFERENCES districts(id),
        id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('enterprise', 'regular', 'past')),
        licenses INTEGER NOT NULL CHECK (licenses >= 0),
        used INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
        PRIMARY KEY (district_id, id)
    );
    CREATE TABLE students (
        district_id TEXT NOT NULL REFERENCES districts(id),
        student_id TEXT NOT NULL,
        school_code TEXT NOT NULL,
        first_name TEXT NOT NULL,
        last_name TEXT NOT NULL,
        grade TEXT NOT NULL,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL UNIQUE,
        class_name TEXT NOT NULL,
        active INTEGER NOT NULL,
        order_id TEXT NOT NULL,
        password_enc BLOB,
        password_mac BLOB,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (district_id, student_id),
        FOREIGN KEY (district_id, order_id) REFERENCES orders(district_id, id)
    );
    CREATE TABLE runs (
        district_id TEXT NOT NULL REFERENCES districts(id),
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('queued', 'approved', 'done', 'failed', 'held', 'discarded')),
        dry_run INTEGER NOT NULL,
        order_id TEXT,
        source TEXT NOT NULL,
        spool_path TEXT,
        received_at TEXT NOT NULL,
        finished_at TEXT,
        result_json TEXT,
        PRIMARY KEY (district_id, run_id)
    );
    CREATE INDEX runs_by_state ON runs (state, district_id, seq);
    CREATE TABLE run_errors (
        district_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        pos INTEGER NOT NULL,
        line INTEGER,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        run_values TEXT NOT NULL,
        PRIMARY KEY (district_id, run_id, pos),
        FOREIGN KEY (district_id, run_id) REFERENCES runs(district_id, run_id)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        district_id TEXT,
        run_id TEXT,
        kind TEXT NOT NULL,
        recipients TEXT NOT NULL,
        message BLOB NOT NULL,
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        sent_at TEXT,
        last_error TEXT
    );
    CREATE INDEX outbox_pending ON outbox (sent_at, next_attempt_at);
    """,
    # 2: outbox states (pending/sent/failed) and when a district was first configured
    """
    ALTER TABLE outbox ADD COLUMN state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sent', 'failed'));
    DROP INDEX outbox_pending;
    CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
    ALTER TABLE districts ADD COLUMN configured_at TEXT;
    """,
    # 3: students clustered by (district, student id): a district's rows are stored
    # together, so loading 500,000 of them is one sequential read
    """
    CREATE TABLE students_clustered (
        district_id TEXT NOT NULL REFERENCES districts(id),
        student_id TEXT NOT NULL,
        school_code TEXT NOT NULL,
        first_name TEXT NOT NULL,
        last_name TEXT NOT NULL,
        grade TEXT NOT NULL,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL UNIQUE,
        class_name TEXT NOT NULL,
        active INTEGER NOT NULL,
        order_id TEXT NOT NULL,
        password_enc BLOB,
        password_mac BLOB,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (district_id, student_id),
        FOREIGN KEY (district_id, order_id) REFERENCES orders(district_id, id)
    ) WITHOUT ROWID;
    INSERT INTO students_clustered SELECT district_id, student_id, school_code, first_name,
        last_name, grade, username, username_key, class_name, active, order_id,
        password_enc, password_mac, updated_at FROM students;
    DROP TABLE students;
    ALTER TABLE students_clustered RENAME TO students;
    """,
    # 4: whether a finished run's result files were written (rewritten at start if not)
    """
    ALTER TABLE runs ADD COLUMN results_written INTEGER NOT NULL DEFAULT 1;
    """,
    # 5: the digest of the line that last restated each student (processing/digests.py)
    """
    ALTER TABLE students ADD COLUMN line_digest BLOB;
    """,
)


DB_FILE = "eams.sqlite3"
# `eams students --json` / `eams licenses --json` objects (SPEC §7), in display order
STUDENT_FIELDS = (
    "student_id",
    "school_code",
    "first_name",
    "last_name",
    "grade",
    "username",
    "class_name",
    "status",
    "order",
)
ORDER_FIELDS = ("order", "kind", "licenses", "used", "available")


def database_path(data: Path) -> Path:
    """The database inside the `[server] data` folder."""
    return data / DB_FILE


class Conflict(Exception):
    """The district changed between load and write; the run must be decided again."""


class AlreadyFinished(Exception):
    """Another process finished this run first (e.g. two `eams approve` at once)."""


class RunNotFound(LookupError):
    pass


def _run_record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        district_id=row["district_id"],
        run_id=row["run_id"],
        seq=row["seq"],
        state=row["state"],
        dry_run=bool(row["dry_run"]),
        order_id=row["order_id"],
        source=row["source"],
        spool_path=row["spool_path"],
        received_at=parse_iso(row["received_at"]),
        result=RunResult.from_json(json.loads(row["result_json"])) if row["result_json"] else None,
    )


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


def _student_rows(district_id: str, write: DistrictWrite) -> StudentRows:
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
_RUN_COLUMNS = (
    "district_id, run_id, seq, state, dry_run, order_id, source, spool_path, "
    "received_at, result_json"
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


P = ParamSpec("P")
T = TypeVar("T")


def serialized(
    method: Callable[Concatenate[Store, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Store, P], Coroutine[Any, Any, T]]:
    """Run a Store method alone on its connection.

    Several runs (districts) share one connection; without this, one run's
    statements would land inside another run's open transaction.
    """

    @functools.wraps(method)
    async def wrapper(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._lock:
            return await method(self, *args, **kwargs)

    return wrapper


class Store:
    """One aiosqlite connection. Open with `await Store.open(path)`.

    The server opens two: one for processing runs (long bulk transactions)
    and one for recording completed uploads, so an upload is acknowledged
    without waiting behind another district's run.
    """

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("PRAGMA busy_timeout = 30000")
        # 64 MiB page cache: a 500,000-student upsert overflows the 2 MiB default
        # and runs twice as slow (bench/processing.py).
        await db.execute("PRAGMA cache_size = -65536")
        store = cls(db, path)
        await store._migrate()
        return store

    async def close(self) -> None:
        await self.db.close()

    async def _migrate(self) -> None:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            await self.db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            rows = list(await self.db.execute_fetchall("SELECT version FROM schema_version"))
            current = rows[0][0] if rows else 0
            if not rows:
                await self.db.execute("INSERT INTO schema_version VALUES (0)")
            for number, script in enumerate(MIGRATIONS, start=1):
                if number > current:
                    for statement in _statements(script):
                        await self.db.execute(statement)
                    await self.db.execute("UPDATE schema_version SET version = ?", (number,))
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise

    # ---- config mirror -------------------------------------------------

    @serialized
    async def sync_config(self, config: Config) -> list[str]:
        """Mirror districts, schools and orders from config; return warnings.

        A changed `order.id` keeps the previous Enterprise order as a `past`
        order (SPEC §2); students on it move to the new one as they appear.
        """
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            for district in config.districts.values():
                await self.db.execute(
                    "INSERT INTO districts (id, name, configured_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                    "configured_at = coalesce(districts.configured_at, excluded.configured_at)",
                    (district.id, district.name, iso(utc_now())),
                )
                await self.db.executemany(
                    "INSERT INTO schools (district_id, code, name) VALUES (?, ?, ?) "
                    "ON CONFLICT (district_id, code) DO UPDATE SET name = excluded.name",
                    [(district.id, s.code, s.name) for s in district.schools],
                )
                await self.db.execute(
                    "UPDATE orders SET kind = 'past' WHERE district_id = ? "
                    "AND kind = 'enterprise' AND id != ?",
                    (district.id, district.order.id),
                )
                configured = [(district.order, "enterprise")] + [
                    (order, "regular") for order in district.regular_orders
                ]
                for order, kind in configured:
                    await self.db.execute(
                        "INSERT INTO orders (district_id, id, kind, licenses) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (district_id, id) DO UPDATE SET kind = excluded.kind, "
                        "licenses = excluded.licenses",
                        (district.id, order.id, kind, order.licenses),
                    )
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        return await self._license_warnings(config)

    @serialized
    async def license_warnings(self, config: Config) -> list[str]:
        """Orders whose configured `licenses` is below what is in use (SPEC §2: allowed)."""
        return await self._license_warnings(config)

    async def _license_warnings(self, config: Config) -> list[str]:
        rows = await self.db.execute_fetchall("SELECT district_id, id, used FROM orders")
        used = {(r[0], r[1]): r[2] for r in rows}
        warnings = []
        for district in config.districts.values():
            for order in (district.order, *district.regular_orders):
                in_use = used.get((district.id, order.id), 0)
                if in_use > order.licenses:
                    warnings.append(
                        f"districts.{district.id}: order {order.id} has {order.licenses} "
                        f"licenses but {in_use} are in use; no new licenses can be taken "
                        "until the count is back under the total"
                    )
        return warnings

    # ---- runs ------------------------------------------------------------

    @serialized
    async def enqueue_run(self, job: UploadJob) -> RunRecord:
        """Record a completed upload as a `queued` run and allocate its run id (SPEC §6.1)."""
        district_id, received_at, dry_run = job.district_id, job.received_at, job.dry_run
        source, order_id, spool_path = job.source, job.order_id, str(job.spool_path)
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            rows = await self.db.execute_fetchall(
                "UPDATE districts SET run_seq = run_seq + 1 WHERE id = ? RETURNING run_seq",
                (district_id,),
            )
            rows = list(rows)
            if not rows:
                raise LookupError(f"unknown district {district_id!r}")
            seq = rows[0][0]
            run_id = format_run_id(received_at, seq)
            await self.db.execute(
                "INSERT INTO runs (district_id, run_id, seq, state, dry_run, order_id, source, "
                "spool_path, received_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (
                    district_id,
                    run_id,
                    seq,
                    int(dry_run),
                    order_id,
                    source,
                    spool_path,
                    iso(received_at),
                ),
            )
            if not dry_run:
                await self.db.execute(
                    "UPDATE districts SET last_upload_at = ?, stale_alerted = 0 WHERE id = ?",
                    (iso(received_at), district_id),
                )
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        return RunRecord(
            district_id=district_id,
            run_id=run_id,
            seq=seq,
            state="queued",
            dry_run=dry_run,
            order_id=order_id,
            source=source,
            spool_path=spool_path,
            received_at=received_at,
            result=None,
        )

    @serialized
    async def pending_runs(self) -> list[RunRecord]:
        """Runs acknowledged but not finished (a crash or a stop came first), oldest first."""
        rows = await self.db.execute_fetchall(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ('queued', 'approved') "
            "ORDER BY district_id, seq"
        )
        return [_run_record(row) for row in rows]

    @serialized
    async def find_runs(self, run_id: str, district_id: str | None = None) -> list[RunRecord]:
        return await self._find_runs(run_id, district_id)

    async def _find_runs(self, run_id: str, district_id: str | None) -> list[RunRecord]:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?"
        params: tuple[Any, ...] = (run_id,)
        if district_id is not None:
            sql += " AND district_id = ?"
            params += (district_id,)
        return [_run_record(row) for row in await self.db.execute_fetchall(sql, params)]

    @serialized
    async def get_run(self, district_id: str, run_id: str) -> RunRecord:
        runs = await self._find_runs(run_id, district_id)
        if not runs:
            raise RunNotFound(f"no run {run_id} for district {district_id}")
        return runs[0]

    @serialized
    async def list_runs(self, district_id: str | None = None) -> list[RunRecord]:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        params: tuple[Any, ...] = ()
        if district_id is not None:
            sql += " WHERE district_id = ?"
            params = (district_id,)
        sql += " ORDER BY received_at DESC, seq DESC, district_id"
        return [_run_record(row) for row in await self.db.execute_fetchall(sql, params)]

    @serialized
    async def runs_without_results(self) -> list[RunRecord]:
        """Finished runs whose result files were never written (a crash came between)."""
        rows = await self.db.execute_fetchall(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE state IN ('done', 'failed', 'held') "
            "AND results_written = 0 ORDER BY district_id, seq"
        )
        return [_run_record(row) for row in rows]

    @serialized
    async def mark_results_written(self, run: RunRecord) -> None:
        await self.db.execute(
            "UPDATE runs SET results_written = 1 WHERE district_id = ? AND run_id = ?",
            (run.district_id, run.run_id),
        )

    @serialized
    async def spool_states(self) -> dict[str, str]:
        """Spool file -> the state of the run that owns it (runs that still have one)."""
        rows = await self.db.execute_fetchall(
            "SELECT spool_path, state FROM runs WHERE spool_path IS NOT NULL"
        )
        return {row[0]: row[1] for row in rows}

    @serialized
    async def set_run_state(self, run: RunRecord, state: str, *, expect: str) -> None:
        """Move a run between states (approve/discard); refuse if it moved meanwhile."""
        cursor = await self.db.execute(
            "UPDATE runs SET state = ? WHERE district_id = ? AND run_id = ? AND state = ?",
            (state, run.district_id, run.run_id, expect),
        )
        if cursor.rowcount != 1:
            raise Conflict(f"run {run.run_id} is no longer {expect}")

    @serialized
    async def run_errors(self, district_id: str, run_id: str) -> list[PlannedError]:
        rows = await self.db.execute_fetchall(
            "SELECT line, code, message, run_values FROM run_errors "
            "WHERE district_id = ? AND run_id = ? ORDER BY pos",
            (district_id, run_id),
        )
        return [
            PlannedError(row[0], error_code(row[1]), row[2], tuple(json.loads(row[3])))
            for row in rows
        ]

    # ---- district state ---------------------------------------------------

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
            for chunk in _chunks(set(keys)):
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
    async def usernames_elsewhere(self, district_id: str, keys: Iterable[str]) -> frozenset[str]:
        """Which of these lower-cased usernames belong to students of other districts."""
        taken: set[str] = set()
        for chunk in _chunks(keys):
            marks = ",".join("?" * len(chunk))
            rows = await self.db.execute_fetchall(
                f"SELECT username_key FROM students WHERE username_key IN ({marks}) "
                "AND district_id != ?",
                (*chunk, district_id),
            )
            taken.update(row[0] for row in rows)
        return frozenset(taken)

    # ---- finishing a run: ONE transaction ------------------------------------

    @serialized
    async def finish_run(
        self,
        run: RunRecord,
        *,
        result: RunResult,
        errors: Sequence[PlannedError],
        emails: Sequence[QueuedEmail],
        write: DistrictWrite | None = None,
    ) -> None:
        """Write a run's record, errors and emails, and (when it applies) its students and
        order counts, in ONE transaction (SPEC §5.3).

        `write.expected_version` is the district version the run was decided
        on; a mismatch, or a username another district took meanwhile, raises
        `Conflict` and nothing is written.
        """
        rows = await asyncio.to_thread(_student_rows, run.district_id, write) if write else None
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            cursor = await self.db.execute(
                "UPDATE runs SET state = ?, finished_at = ?, result_json = ?, results_written = 0 "
                "WHERE district_id = ? AND run_id = ? AND state IN ('queued', 'approved')",
                (
                    result.state,
                    iso(result.finished_at),
                    json.dumps(result.to_json()),
                    run.district_id,
                    run.run_id,
                ),
            )
            if cursor.rowcount != 1:
                raise AlreadyFinished(f"run {run.run_id} was already finished")
            if write is not None and rows is not None:
                await self._write_district(run.district_id, write, rows)
            await self.db.execute(
                "DELETE FROM run_errors WHERE district_id = ? AND run_id = ?",
                (run.district_id, run.run_id),
            )
            if errors:
                await self.db.executemany(
                    "INSERT INTO run_errors (district_id, run_id, pos, line, code, message, "
                    "run_values) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            run.district_id,
                            run.run_id,
                            pos,
                            e.line,
                            str(e.code),
                            e.message,
                            json.dumps(e.values, ensure_ascii=False),
                        )
                        for pos, e in enumerate(errors)
                    ],
                )
            await self._insert_emails(run.district_id, run.run_id, emails)
            await self.db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            await self.db.execute("ROLLBACK")
            raise Conflict(f"a constraint failed while writing run {run.run_id}: {exc}") from exc
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise

    async def _write_district(
        self, district_id: str, write: DistrictWrite, rows: StudentRows
    ) -> None:
        cursor = await self.db.execute(
            "UPDATE districts SET version = version + 1 WHERE id = ? AND version = ?",
            (district_id, write.expected_version),
        )
        if cursor.rowcount != 1:
            raise Conflict(f"district {district_id} changed during the run")
        if rows.changed:  # changed ones first: they may free usernames new ones take
            await self.db.executemany(_UPSERT_STUDENT, rows.changed)
        if rows.new:
            await self.db.executemany(_INSERT_STUDENT, rows.new)
        if rows.digests:
            await self.db.executemany(
                "UPDATE students SET line_digest = ? WHERE district_id = ? AND student_id = ?",
                rows.digests,
            )
        await self.db.executemany(
            "UPDATE orders SET used = ? WHERE district_id = ? AND id = ?",
            [(used, district_id, order_id) for order_id, used in write.orders],
        )

    # ---- listings (eams students / licenses) -----------------------------------

    @serialized
    async def list_students(self, district_id: str) -> list[dict[str, Any]]:
        rows = await self.db.execute_fetchall(
            "SELECT student_id, school_code, first_name, last_name, grade, username, "
            "class_name, active, order_id FROM students WHERE district_id = ? "
            "ORDER BY student_id",
            (district_id,),
        )
        return [
            dict(
                zip(
                    STUDENT_FIELDS, (*r[:7], "active" if r[7] else "deactivated", r[8]), strict=True
                )
            )
            for r in rows
        ]

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

    # ---- outbox (SPEC §6.4): queued in a run's transaction, sent by the sender ----------

    @serialized
    async def due_emails(self, now: datetime, limit: int = 20) -> list[OutboxItem]:
        rows = await self.db.execute_fetchall(
            "SELECT id, district_id, kind, recipients, message, attempts FROM outbox "
            "WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (iso(now), limit),
        )
        return [
            OutboxItem(r[0], r[1], r[2], tuple(json.loads(r[3])), bytes(r[4]), r[5]) for r in rows
        ]

    @serialized
    async def retry_pending_now(self, now: datetime) -> int:
        """At start: every pending email is due at once (the mail server may be back)."""
        cursor = await self.db.execute(
            "UPDATE outbox SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?",
            (iso(now), iso(now)),
        )
        return cursor.rowcount

    @serialized
    async def next_email_due(self) -> datetime | None:
        rows = list(
            await self.db.execute_fetchall(
                "SELECT min(next_attempt_at) FROM outbox WHERE state = 'pending'"
            )
        )
        return parse_iso(rows[0][0]) if rows and rows[0][0] else None

    @serialized
    async def mark_email(
        self,
        item: OutboxItem,
        *,
        state: str,
        now: datetime,
        error: str | None = None,
        retry_at: datetime | None = None,
        recipients: Sequence[str] | None = None,
    ) -> None:
        """Record a delivery attempt: sent, failed for good, or pending until `retry_at`."""
        await self.db.execute(
            "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, "
            "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END, "
            "next_attempt_at = coalesce(?, next_attempt_at), "
            "recipients = coalesce(?, recipients) WHERE id = ? AND state = 'pending'",
            (
                state,
                error,
                state,
                iso(now),
                iso(retry_at) if retry_at else None,
                json.dumps(list(recipients)) if recipients is not None else None,
                item.id,
            ),
        )

    @serialized
    async def outbox(self) -> list[dict[str, Any]]:
        """Every queued email with its delivery state (tests and operators)."""
        rows = await self.db.execute_fetchall(
            "SELECT id, district_id, run_id, kind, recipients, state, attempts, last_error "
            "FROM outbox ORDER BY id"
        )
        return [
            {
                "id": r[0],
                "district": r[1],
                "run_id": r[2],
                "kind": r[3],
                "recipients": json.loads(r[4]),
                "state": r[5],
                "attempts": r[6],
                "last_error": r[7],
            }
            for r in rows
        ]

    # ---- missing-upload alerts (SPEC §6.4) -----------------------------------------

    @serialized
    async def upload_status(self) -> list[UploadStatus]:
        rows = await self.db.execute_fetchall(
            "SELECT id, last_upload_at, configured_at, stale_alerted FROM districts"
        )
        return [
            UploadStatus(
                r[0],
                parse_iso(r[1]) if r[1] else None,
                parse_iso(r[2]) if r[2] else utc_now(),
                bool(r[3]),
            )
            for r in rows
        ]

    @serialized
    async def queue_stale_alert(self, district_id: str, email: QueuedEmail) -> bool:
        """Mark the district alerted and queue the email, once until the next upload."""
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            cursor = await self.db.execute(
                "UPDATE districts SET stale_alerted = 1 WHERE id = ? AND stale_alerted = 0",
                (district_id,),
            )
            queued = cursor.rowcount == 1
            if queued:
                await self._insert_emails(district_id, None, [email])
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        return queued

    async def _insert_emails(
        self, district_id: str | None, run_id: str | None, emails: Sequence[QueuedEmail]
    ) -> None:
        now = iso(utc_now())
        await self.db.executemany(
            "INSERT INTO outbox (district_id, run_id, kind, recipients, message, "
            "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (district_id, run_id, e.kind, json.dumps(e.recipients), e.message, now, now)
                for e in emails
            ],
        )

    @serialized
    async def backup(self, target: Path) -> None:
        """A consistent copy of the live database (SQLite's online backup API)."""
        destination = await aiosqlite.connect(target)
        try:
            await self.db.backup(destination)
        finally:
            await destination.close()

    @serialized
    async def invariant_violations(self) -> list[str]:
        """Orders whose `used` differs from the count of active students on them (SPEC §5)."""
        rows = await self.db.execute_fetchall(
            "SELECT o.district_id, o.id, o.used, "
            "(SELECT count(*) FROM students s WHERE s.district_id = o.district_id "
            " AND s.order_id = o.id AND s.active = 1) AS counted FROM orders o"
        )
        return [
            f"{r[0]}/{r[1]}: used {r[2]} but {r[3]} active students" for r in rows if r[2] != r[3]
        ]


def _state(
    district_id: str, version: int, orders: dict[str, OrderTally], rows: Iterable[Any]
) -> DistrictState:
    # Straight from the row tuple (`active` stays 0/1, which compares equal to a bool).
    make = Student._make
    students = {r[0]: make(r) for r in rows}
    return DistrictState(district_id, version, students, orders)


def _chunks(keys: Iterable[str], size: int = 900) -> Iterator[list[str]]:
    """Keys in lists of at most `size`: SQLite allows 999 bound parameters per statement."""
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
