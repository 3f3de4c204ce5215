"""One processing run as a service: decide -> record -> publish.

- decide (`processing/deciding.py`): read the spooled file, load the state it
  needs, walk the rows through the rules; nothing is written;
- record: ONE transaction (`Store.finish_run`): the students, the orders'
  counts, the run record, its row errors and its emails (SPEC §5.3);
- publish: the result files, the spool copy removed, the sender woken.

A district that changed between decide and record (another process wrote it)
raises `Conflict`, and the run is decided again. The server runs big files in
a worker process (processing/run_executor.py), which calls the same `run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
from attrs import frozen

from processing.config import Config, District
from processing.deciding import Decided, RunContext, decide_file
from processing.digests import digest_context
from processing.log_context import log_context
from processing.model import (
    Counts,
    DistrictWrite,
    FileError,
    FileFacts,
    FileRejected,
    Licenses,
    OrderTally,
    PlannedError,
    QueuedEmail,
    RunRecord,
    RunResult,
    Student,
    UploadJob,
    format_run_id,
    utc_now,
)
from processing.notify import run_emails
from processing.passwords import StudentPasswords
from processing.reports import write_results
from processing.rules import guard_reason
from processing.spool import adoptable_job, file_facts, spool_files
from processing.store import Conflict, Store

log = logging.getLogger("eams.runner")

SCAN_MIN_BYTES = 1024 * 1024  # about 13,000 rows: smaller files skip the digest scan
RETRIES = 3


@frozen
class RunOutcome:
    """A finished (or previewed) run: its record, its result.json and its errors."""

    record: RunRecord
    result: RunResult
    errors: tuple[PlannedError, ...]
    missing: tuple[Student, ...] = ()  # full sync: deactivated (or would be) for absence
    seconds: float = 0.0  # how long the run took (the metrics' histogram)


@frozen
class Decision:
    """What one run will record: its result, errors, emails and, when it applies, the
    district's writes (None for a failed, held or dry run)."""

    outcome: RunOutcome
    emails: tuple[QueuedEmail, ...]
    write: DistrictWrite | None


class Runner:
    def __init__(self, config: Config, store: Store, passwords: StudentPasswords) -> None:
        self.config = config
        self.store = store
        self.passwords = passwords
        self.scan_min_bytes = SCAN_MIN_BYTES

    def results_dir(self, district_id: str) -> Path:
        return self.config.server.homes / district_id / "results"

    async def run(self, record: RunRecord) -> RunOutcome:
        """Process a queued (or approved) run to its end; idempotent after a crash."""
        started = time.monotonic()
        with log_context(district=record.district_id, run_id=record.run_id):
            outcome = await self._run(record, started)
        return outcome

    async def _run(self, record: RunRecord, started: float) -> RunOutcome:
        for attempt in range(1, RETRIES + 1):
            decision = await self.decide(record)
            try:
                await self.record(decision)
            except Conflict as exc:
                if attempt == RETRIES:
                    raise
                log.warning("run %s: %s; deciding it again", record.run_id, exc)
                continue
            outcome = attrs.evolve(decision.outcome, seconds=time.monotonic() - started)
            await self.publish(outcome)
            return outcome
        raise AssertionError("unreachable")

    async def preview(self, job: UploadJob) -> RunOutcome:
        """`eams process --dry-run`: decide everything, write and record nothing."""
        record = RunRecord(
            district_id=job.district_id,
            run_id=format_run_id(job.received_at, 0),
            seq=0,
            state="queued",
            dry_run=True,
            order_id=job.order_id,
            source=job.source,
            spool_path=str(job.spool_path),
            received_at=job.received_at,
            result=None,
        )
        return (await self.decide(record)).outcome

    # ---- decide ---------------------------------------------------------------------------

    async def decide(self, record: RunRecord) -> Decision:
        """Decide the run against the district's current state; nothing is written."""
        district = self.config.district(record.district_id)
        target = record.order_id or district.order.id
        # `eams process --order` loads part of a district: it never deactivates (SPEC §5.6).
        sync = "full" if district.sync == "full" and record.order_id is None else "delta"
        context = RunContext(
            path=Path(record.spool_path or ""),
            max_bytes=self.config.server.max_upload_bytes,
            district=district,
            target=target,
            passwords=self.passwords,
            digest=self.passwords.line_digest(
                digest_context(target, district.school_codes, district.grades)
            ),
            full_sync=sync == "full",
        )
        facts = await asyncio.to_thread(file_facts, context.path, record.source)
        try:
            decided = await decide_file(self.store, context, scan_min_bytes=self.scan_min_bytes)
        except FileRejected as rejected:
            orders = await self.store.load_orders(district.id)
            problem = rejected.problem
            result = run_result(
                record,
                state="failed",
                encoding=None,
                counts=Counts(),
                licenses=orders[target],
                file=facts,
                sync=sync,
                file_error=FileError(str(problem.code), problem.message),
            )
            errors = (PlannedError(None, problem.code, problem.message, ()),)
            return self._decision(district, RunOutcome(record, result, errors), None)
        plan = decided.plan
        # A dry run is held too: it reports what the real upload would do (SPEC §6.2).
        held_reason = (
            None
            if record.state == "approved"
            else guard_reason(
                plan.counts.deactivated,
                plan.active_before,
                district.deactivation_guard,
                empty_full_sync=sync == "full" and plan.counts.rows == 0,
            )
        )
        state = "held" if held_reason else "done"
        result = run_result(
            record,
            state=state,
            encoding=decided.encoding,
            counts=plan.counts,
            licenses=decided.orders[target],
            file=facts,
            sync=sync,
            held_reason=held_reason,
        )
        applies = state == "done" and not record.dry_run
        write = await self._district_write(decided) if applies else None
        outcome = RunOutcome(record, result, tuple(plan.errors), tuple(plan.missing))
        return self._decision(district, outcome, write)

    def _decision(
        self, district: District, outcome: RunOutcome, write: DistrictWrite | None
    ) -> Decision:
        emails = run_emails(self.config, district, outcome.result, outcome.errors)
        return Decision(outcome, tuple(emails), write)

    async def _district_write(self, decided: Decided) -> DistrictWrite:
        """The plan's writes; new passwords are encrypted here, off the event loop."""
        plan = decided.plan
        encrypted = await asyncio.to_thread(
            self.passwords.encrypt_many, list(plan.new_passwords.values())
        )
        return DistrictWrite(
            expected_version=decided.version,
            students=plan.changes,
            added=frozenset(plan.added),
            passwords=dict(zip(plan.new_passwords, encrypted, strict=True)),
            digests=plan.digests,
            orders=tuple((tally.id, tally.used) for tally in decided.orders.values()),
        )

    # ---- record ---------------------------------------------------------------------------

    async def record(self, decision: Decision) -> None:
        """Commit the run: everything it changes, in one transaction (SPEC §5.3)."""
        outcome = decision.outcome
        await self.store.finish_run(
            outcome.record,
            result=outcome.result,
            errors=outcome.errors,
            missing=outcome.missing,
            emails=decision.emails,
            write=decision.write,
        )

    # ---- publish --------------------------------------------------------------------------

    async def publish(self, outcome: RunOutcome) -> None:
        """After the commit: result files, the spool copy removed, listeners told."""
        record, result = outcome.record, outcome.result
        await self._write_results(record, result, outcome.errors, outcome.missing)
        if result.state != "held" and record.spool_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record.spool_path)
        log.info(
            "run %s %s: %s rows, %s added, %s updated, %s unchanged, %s errors%s",
            record.district_id,
            record.run_id,
            result.rows,
            result.added,
            result.updated,
            result.unchanged,
            result.errors,
            f" ({result.file_error.code})" if result.file_error else "",
        )

    async def _write_results(
        self,
        record: RunRecord,
        result: RunResult,
        errors: Sequence[PlannedError] | None,
        missing: Sequence[Student] | None,
    ) -> bool:
        """Write a run's result files off the event loop (fsync), then mark them written.
        Errors and missing students not given are read back from the database."""
        district = self.config.districts.get(record.district_id)
        if district is None:
            return False
        if errors is None:
            errors = await self.store.run_errors(record.district_id, record.run_id)
        if missing is None:
            missing = await self.store.run_missing(record.district_id, record.run_id)
        try:
            await asyncio.to_thread(
                write_results,
                self.results_dir(record.district_id),
                result,
                district.name,
                errors,
                missing,
            )
        except OSError as exc:
            # The run is committed; the files are written from the database at the next start.
            log.error(
                "run %s %s is recorded, but its result files could not be written (%s); "
                "they are written at the next start",
                record.district_id,
                record.run_id,
                exc,
            )
            return False
        await self.store.mark_results_written(record)
        return True

    # ---- at start ---------------------------------------------------------------------------

    async def rewrite_missing_results(self) -> int:
        """At start: result files of runs committed but never written out.

        A crash between a run's commit and its result files leaves the run
        recorded but invisible to the district; the database has everything
        needed to write them. Files a district deleted stay deleted: only
        runs never marked `results_written` qualify. Returns how many.
        """
        rewritten = 0
        for record in await self.store.runs_without_results():
            if record.result is not None and await self._write_results(
                record, record.result, None, None
            ):
                rewritten += 1
        return rewritten

    async def settle_spool(self) -> tuple[int, int]:
        """At start (before listening): give every spool file its run, or remove it.

        - a file whose run is queued, approved or held stays;
        - a file whose run finished is removed (a crash came before clean-up);
        - a file with no run at all is an upload completed just before a crash,
          before its run record was written: it becomes a queued run now
          (uploads and check/ uploads; an `eams process` file is removed, its
          operator saw the command fail).
        Returns (adopted, removed).
        """
        states = await self.store.spool_states()
        adopted = removed = 0
        for district_id, path in await asyncio.to_thread(spool_files, self.config.server.data):
            state = states.get(str(path))
            if state in ("queued", "approved", "held"):
                continue
            job = adoptable_job(path, district_id) if state is None else None
            if job is not None and district_id in self.config.districts:
                record = await self.store.enqueue_run(job)
                log.warning(
                    "adopted spooled upload %s as run %s %s", path.name, district_id, record.run_id
                )
                adopted += 1
            else:
                path.unlink(missing_ok=True)
                removed += 1
        return adopted, removed


def run_result(
    record: RunRecord,
    *,
    state: str,
    encoding: str | None,
    counts: Counts,
    licenses: OrderTally,
    file: FileFacts,
    sync: str,
    file_error: FileError | None = None,
    held_reason: str | None = None,
) -> RunResult:
    """The run's result.json (SPEC §6.2)."""
    return RunResult(
        run_id=record.run_id,
        district=record.district_id,
        state=state,
        received_at=record.received_at,
        finished_at=utc_now(),
        encoding=encoding,
        rows=counts.rows,
        added=counts.added,
        updated=counts.updated,
        unchanged=counts.unchanged,
        activated=counts.activated,
        deactivated=counts.deactivated,
        transferred=counts.transferred,
        errors=counts.errors,
        file_error=file_error,
        licenses=Licenses(licenses.id, licenses.licenses, licenses.used, licenses.available),
        sync=sync,
        missing=counts.missing,
        dry_run=record.dry_run,
        file=file,
        held_reason=held_reason,
    )
