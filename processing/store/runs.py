"""Runs: recorded when an upload is accepted, finished in ONE transaction with everything
the run changes (SPEC §5.3): its students and orders, its errors and its emails."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from processing.model import (
    DistrictWrite,
    PlannedError,
    QueuedEmail,
    RunRecord,
    RunResult,
    Student,
    UploadJob,
    error_code,
    format_run_id,
    iso,
    parse_iso,
    utc_now,
)
from processing.store.connection import Conflict, Connection, serialized
from processing.store.outbox import insert_emails
from processing.store.students import student_rows, write_district


class AlreadyFinished(Exception):
    """Another process finished this run first (e.g. two `eams approve` at once)."""


class RunNotFound(LookupError):
    pass


RUN_COLUMNS = (
    "district_id, run_id, seq, state, dry_run, order_id, source, spool_path, "
    "received_at, result_json, decided_by, decided_at"
)


def run_record(row: sqlite3.Row) -> RunRecord:
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
        decided_by=row["decided_by"],
        decided_at=parse_iso(row["decided_at"]) if row["decided_at"] else None,
    )


class RunsTable(Connection):
    @serialized
    async def enqueue_run(self, job: UploadJob) -> RunRecord:
        """Record a completed upload as a `queued` run and allocate its run id (SPEC §6.1)."""
        district_id, received_at, dry_run = job.district_id, job.received_at, job.dry_run
        source, order_id, spool_path = job.source, job.order_id, str(job.spool_path)
        async with self.transaction():
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
            f"SELECT {RUN_COLUMNS} FROM runs WHERE state IN ('queued', 'approved') "
            "ORDER BY district_id, seq"
        )
        return [run_record(row) for row in rows]

    @serialized
    async def find_runs(self, run_id: str, district_id: str | None = None) -> list[RunRecord]:
        return await self._find_runs(run_id, district_id)

    async def _find_runs(self, run_id: str, district_id: str | None) -> list[RunRecord]:
        sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?"
        params: tuple[Any, ...] = (run_id,)
        if district_id is not None:
            sql += " AND district_id = ?"
            params += (district_id,)
        return [run_record(row) for row in await self.db.execute_fetchall(sql, params)]

    @serialized
    async def get_run(self, district_id: str, run_id: str) -> RunRecord:
        runs = await self._find_runs(run_id, district_id)
        if not runs:
            raise RunNotFound(f"no run {run_id} for district {district_id}")
        return runs[0]

    @serialized
    async def list_runs(self, district_id: str | None = None) -> list[RunRecord]:
        sql = f"SELECT {RUN_COLUMNS} FROM runs"
        params: tuple[Any, ...] = ()
        if district_id is not None:
            sql += " WHERE district_id = ?"
            params = (district_id,)
        sql += " ORDER BY received_at DESC, seq DESC, district_id"
        return [run_record(row) for row in await self.db.execute_fetchall(sql, params)]

    @serialized
    async def runs_without_results(self) -> list[RunRecord]:
        """Finished runs whose result files were never written (a crash came between)."""
        rows = await self.db.execute_fetchall(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE state IN ('done', 'failed', 'held') "
            "AND results_written = 0 ORDER BY district_id, seq"
        )
        return [run_record(row) for row in rows]

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
    async def set_run_state(
        self, run: RunRecord, state: str, *, expect: str, by: str | None = None
    ) -> None:
        """Move a run between states (approve/discard), recording who decided and when;
        refuse if it moved meanwhile."""
        cursor = await self.db.execute(
            "UPDATE runs SET state = ?, decided_by = coalesce(?, decided_by), "
            "decided_at = CASE WHEN ? IS NULL THEN decided_at ELSE ? END "
            "WHERE district_id = ? AND run_id = ? AND state = ?",
            (state, by, by, iso(utc_now()), run.district_id, run.run_id, expect),
        )
        if cursor.rowcount != 1:
            raise Conflict(f"run {run.run_id} is no longer {expect}")

    @serialized
    async def run_missing(self, district_id: str, run_id: str) -> list[Student]:
        """The students a full-sync run deactivated (or would have) for being absent."""
        rows = await self.db.execute_fetchall(
            "SELECT student_id, school_code, first_name, last_name, grade, username, "
            "class_name FROM run_missing WHERE district_id = ? AND run_id = ? ORDER BY pos",
            (district_id, run_id),
        )
        # Only what missing.csv shows was kept: not the order, the state or the password.
        return [Student(r[0], r[1], r[2], r[3], r[4], r[5], r[6], True, "", None) for r in rows]

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

    # ---- finishing a run: ONE transaction ------------------------------------

    @serialized
    async def finish_run(
        self,
        run: RunRecord,
        *,
        result: RunResult,
        errors: Sequence[PlannedError],
        emails: Sequence[QueuedEmail],
        missing: Sequence[Student] = (),
        write: DistrictWrite | None = None,
    ) -> None:
        """Write a run's record, errors and emails, and (when it applies) its students and
        order counts, in ONE transaction (SPEC §5.3).

        `write.expected_version` is the district version the run was decided
        on; a mismatch, or a username another district took meanwhile, raises
        `Conflict` and nothing is written.
        """
        rows = await asyncio.to_thread(student_rows, run.district_id, write) if write else None
        try:
            async with self.transaction():
                cursor = await self.db.execute(
                    "UPDATE runs SET state = ?, finished_at = ?, result_json = ?, "
                    "results_written = 0 WHERE district_id = ? AND run_id = ? "
                    "AND state IN ('queued', 'approved')",
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
                    await write_district(self.db, run.district_id, write, rows)
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
                await self.db.execute(
                    "DELETE FROM run_missing WHERE district_id = ? AND run_id = ?",
                    (run.district_id, run.run_id),
                )
                if missing:
                    await self.db.executemany(
                        "INSERT INTO run_missing (district_id, run_id, pos, student_id, "
                        "school_code, first_name, last_name, grade, username, class_name) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (run.district_id, run.run_id, pos, *_missing_values(s))
                            for pos, s in enumerate(missing)
                        ],
                    )
                await insert_emails(self.db, run.district_id, run.run_id, emails)
        except sqlite3.IntegrityError as exc:  # rolled back by the door
            raise Conflict(f"a constraint failed while writing run {run.run_id}: {exc}") from exc


def _missing_values(student: Student) -> tuple[str, ...]:
    return (
        student.student_id,
        student.school_code,
        student.first_name,
        student.last_name,
        student.grade,
        student.username,
        student.class_name,
    )
