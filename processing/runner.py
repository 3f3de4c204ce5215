"""One processing run: decode -> validate -> rules -> store -> result files.

`Runner.submit` records a spooled upload as a queued run; `Runner.run`
processes a queued run. Parsing and deciding are CPU work and run in a worker
thread (`asyncio.to_thread`), off the event loop; the server sends big files
to a worker process instead (`processing/workers.py`). The database is
touched only in bulk: one load before, one transaction after.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any

import attrs
from attrs import Factory, frozen

from processing.config import Config, District
from processing.decode import open_text
from processing.digests import Alone, LineDigest, Scan, digest_context, scan_file
from processing.jobs import adoptable_job, file_facts, spool_files
from processing.model import (
    Counts,
    DistrictState,
    FileProblem,
    FileRejected,
    OrderTally,
    PlannedError,
    RawRow,
    RunRecord,
    UploadJob,
    format_run_id,
    iso,
    utc_now,
)
from processing.notify import run_emails
from processing.passwords import StudentPasswords
from processing.plan import FirstPass, Plan, Tap, build_plan
from processing.reports import write_results
from processing.rules import guard_reason
from processing.store import Conflict, OrderWrite, Store
from processing.template import read_rows

log = logging.getLogger("eams.runner")

SCAN_MIN_BYTES = 1024 * 1024  # about 13,000 rows: smaller files skip the digest scan
RETRIES = 3


@frozen
class RunOutcome:
    record: RunRecord
    result: dict[str, Any]
    errors: tuple[PlannedError, ...]


class Runner:
    def __init__(self, config: Config, store: Store, passwords: StudentPasswords) -> None:
        self.config = config
        self.store = store
        self.passwords = passwords
        self.on_finished: Callable[[RunOutcome], None] | None = None  # e.g. wake the sender
        self.scan_min_bytes = SCAN_MIN_BYTES

    async def submit(self, job: UploadJob) -> RunRecord:
        """Record a spooled upload as a queued run; after this it cannot be lost."""
        return await self.store.enqueue_run(job)

    def results_dir(self, district_id: str) -> Path:
        return self.config.server.homes / district_id / "results"

    async def run(self, record: RunRecord) -> RunOutcome:
        """Process a queued (or approved) run to its end; idempotent after a crash."""
        for attempt in range(1, RETRIES + 1):
            try:
                outcome = await self._decide(record, commit=True)
            except Conflict as exc:
                if attempt == RETRIES:
                    raise
                log.warning("run %s: %s; deciding it again", record.run_id, exc)
                continue
            await self._after(outcome)
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
        return await self._decide(record, commit=False)

    async def _decide(self, record: RunRecord, *, commit: bool) -> RunOutcome:
        district = self.config.district(record.district_id)
        target = record.order_id or district.order.id
        path = Path(record.spool_path or "")
        digest = self.passwords.line_digest(
            digest_context(target, district.school_codes, district.grades)
        )
        facts = await asyncio.to_thread(file_facts, path, record.source)
        try:
            scanned = await self._scan(district, target, path, digest)
            if scanned is not None and scanned.scan.all_unchanged:
                encoding, orders, version = scanned.encoding, scanned.orders, scanned.version
                active = sum(tally.used for tally in orders.values())
                plan = Plan.unchanged(target, active, scanned.scan.rows)
            else:
                encoding, plan, state = await self._decide_rows(
                    district, target, path, digest, scanned
                )
                orders, version = state.orders, state.version
        except FileRejected as rejected:
            licenses = (await self.store.load_orders(district.id))[target]
            return await self._file_failed(
                record, district, licenses, rejected.problem, facts, commit
            )
        # A dry run is held too: it reports what the real upload would do (SPEC §6.2).
        held_reason = (
            None
            if record.state == "approved"
            else guard_reason(
                plan.counts.deactivated, plan.active_before, district.deactivation_guard
            )
        )
        run_state = "held" if held_reason else "done"
        result = build_result(
            record,
            state=run_state,
            encoding=encoding,
            counts=plan.counts,
            licenses=orders[target],
            file=facts,
            held_reason=held_reason,
        )
        if commit:
            apply = run_state == "done" and not record.dry_run
            rows = (
                await asyncio.to_thread(_student_rows, plan, district.id, self.passwords)
                if apply
                else StudentRows()
            )
            await self.store.finish_run(
                record,
                state=run_state,
                result=result,
                errors=plan.errors,
                emails=run_emails(self.config, district, result, plan.errors),
                expected_version=version if apply else None,
                students=rows.changed,
                new_students=rows.new,
                orders=[OrderWrite(t.id, t.used) for t in orders.values()] if apply else [],
                digests=rows.digests,
            )
        return RunOutcome(record, result, tuple(plan.errors))

    async def _scan(
        self, district: District, target: str, path: Path, digest: LineDigest
    ) -> Scanned | None:
        """Hash a nightly-sized file's lines against the stored digests (processing/digests.py).

        None for a file under SCAN_MIN_BYTES (a partial upload: loading every
        digest of a big district would cost more than it saves) or a district
        with no digest stored yet (a first load).
        """
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # open_text reports it
        if size < self.scan_min_bytes:
            return None
        known = await self.store.load_digests(district.id)
        if target not in known.orders:
            raise LookupError(f"district {district.id} has no order {target!r}")
        if not known.digests:
            return None
        limit = self.config.server.max_upload_bytes
        encoding, scan = await asyncio.to_thread(_scan_pass, path, limit, known.digests, digest)
        return Scanned(encoding, scan, known.orders, known.version)

    async def _decide_rows(
        self,
        district: District,
        target: str,
        path: Path,
        digest: LineDigest,
        scanned: Scanned | None,
    ) -> tuple[str, Plan, DistrictState]:
        """Load the state and decide the rows; returns the state decided on.

        After a scan whose misses can be decided alone (a nightly delta), only
        the students those rows name are loaded and only those rows decided;
        the hits are unchanged. Otherwise the whole district is loaded and the
        whole file decided (the full path).
        """
        alone = scanned.scan.alone() if scanned is not None else None

        async def load() -> DistrictState | None:
            """The state to decide on; None if the district changed since the scan."""
            with gc_paused():
                state = await (
                    self.store.load_district(district.id)
                    if alone is None
                    else self.store.load_students(district.id, alone.student_ids, alone.usernames)
                )
            if target not in state.orders:
                raise LookupError(f"district {district.id} has no order {target!r}")
            if scanned is not None and state.version != scanned.version:
                return None  # the scan's findings hold for the state it was taken on only
            return state

        state = await load()
        if state is None:
            return await self._decide_rows(district, target, path, digest, None)
        limit = self.config.server.max_upload_bytes
        hits = scanned.scan.hits if scanned is not None and alone is None else None
        passes = partial(_decide_pass, path, limit, district, target, self.passwords, digest, alone)
        encoding, plan, first = await asyncio.to_thread(passes, state, {}, frozenset(), hits)
        taken = await self.store.usernames_elsewhere(district.id, first.usernames)
        if first.duplicates or taken:
            # The one-pass plan assumed neither (true of almost every file):
            # decide again from the stored state, knowing both.
            state = await load()
            if state is None:
                return await self._decide_rows(district, target, path, digest, None)
            _, plan, _ = await asyncio.to_thread(passes, state, first.duplicates, taken, hits)
        if scanned is not None and alone is not None:
            plan.add_unchanged(len(scanned.scan.hits))
            encoding = scanned.encoding
        assert encoding is not None
        return encoding, plan, state

    async def _file_failed(
        self,
        record: RunRecord,
        district: District,
        licenses: OrderTally,
        problem: FileProblem,
        facts: dict[str, object],
        commit: bool,
    ) -> RunOutcome:
        result = build_result(
            record,
            state="failed",
            encoding=None,
            counts=Counts(),
            licenses=licenses,
            file=facts,
            file_error={"code": str(problem.code), "message": problem.message},
        )
        errors = [PlannedError(None, problem.code, problem.message, ())]
        if commit:
            await self.store.finish_run(
                record,
                state="failed",
                result=result,
                errors=errors,
                emails=run_emails(self.config, district, result, errors),
            )
        return RunOutcome(record, result, tuple(errors))

    async def rewrite_missing_results(self) -> int:
        """At start: result files of runs committed but never written out.

        A crash between a run's commit and its result files leaves the run
        recorded but invisible to the district; the database has everything
        needed to write them. Files a district deleted stay deleted: only
        runs never marked `results_written` qualify. Returns how many.
        """
        rewritten = 0
        for record in await self.store.runs_without_results():
            if await self._write_results(record, record.result or {}, None):
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

    async def _write_results(
        self, record: RunRecord, result: dict[str, Any], errors: Sequence[PlannedError] | None
    ) -> bool:
        """Write a run's result files off the event loop (fsync), then mark them written."""
        district = self.config.districts.get(record.district_id)
        if district is None or not result:
            return False
        if errors is None:
            errors = await self.store.run_errors(record.district_id, record.run_id)
        try:
            await asyncio.to_thread(
                write_results, self.results_dir(record.district_id), result, district.name, errors
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

    async def _after(self, outcome: RunOutcome) -> None:
        """After the commit: result files, and the spool copy is no longer needed."""
        record = outcome.record
        await self._write_results(record, outcome.result, outcome.errors)
        if outcome.result["state"] != "held" and record.spool_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record.spool_path)
        if self.on_finished is not None:
            self.on_finished(outcome)
        result = outcome.result
        log.info(
            "run %s %s: %s rows, %s added, %s updated, %s unchanged, %s errors%s",
            record.district_id,
            record.run_id,
            result["rows"],
            result["added"],
            result["updated"],
            result["unchanged"],
            result["errors"],
            f" ({result['file_error']['code']})" if result["file_error"] else "",
        )


def build_result(
    record: RunRecord,
    *,
    state: str,
    encoding: str | None,
    counts: Counts,
    licenses: Any,
    file: dict[str, object],
    file_error: dict[str, str] | None = None,
    held_reason: str | None = None,
) -> dict[str, Any]:
    """The result.json object of SPEC §6.2 (keys in the spec's order)."""
    result: dict[str, Any] = {
        "run_id": record.run_id,
        "district": record.district_id,
        "state": state,
        "received_at": iso(record.received_at),
        "finished_at": iso(utc_now()),
        "encoding": encoding,
        **attrs.asdict(counts),
        "file_error": file_error,
        "licenses": {
            "order": licenses.id,
            "licenses": licenses.licenses,
            "used": licenses.used,
            "available": licenses.available,
        },
        "dry_run": record.dry_run,
        "file": file,
    }
    if held_reason:
        result["held_reason"] = held_reason
    return result


_gc_pauses = 0
_gc_lock = threading.Lock()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a run builds 500,000 row objects.

    None of them form cycles, yet each allocation burst triggers full
    collections that walk every live object (a quarter of a 500k-row run,
    bench/processing.py). Counted, since runs of two districts overlap.
    """
    global _gc_pauses
    with _gc_lock:
        _gc_pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.enable()


def _scan_pass(
    path: Path, limit: int, known: dict[bytes, str], digest: LineDigest
) -> tuple[str, Scan]:
    """Decode the file and scan its records against the stored digests (a worker thread)."""
    text, encoding = open_text(path, limit)
    with text, gc_paused():
        return encoding, scan_file(text, known, digest)


def _decide_pass(
    path: Path,
    limit: int,
    district: District,
    target: str,
    passwords: StudentPasswords,
    digest: LineDigest,
    alone: Alone | None,
    state: DistrictState,
    duplicates: dict[str, list[int]],
    taken: frozenset[str],
    hits: dict[int, str] | None,
) -> tuple[str | None, Plan, FirstPass]:
    """Decide the scan's misses alone, or decode and decide the whole file (a worker thread).

    The file is read and decided in one streaming pass. The encoding is None
    for misses alone (the scan read the file).
    """
    decide = partial(
        _plan_rows,
        state=state,
        district=district,
        target=target,
        passwords=passwords,
        digest=digest,
        duplicates=duplicates,
        taken=taken,
        hits=hits,
    )
    if alone is not None:
        with gc_paused():
            return None, *decide(alone.rows)
    text, encoding = open_text(path, limit)
    with text, gc_paused():
        return encoding, *decide(read_rows(text))


def _plan_rows(
    raw_rows: Iterable[RawRow],
    *,
    state: DistrictState,
    district: District,
    target: str,
    passwords: StudentPasswords,
    digest: LineDigest,
    duplicates: dict[str, list[int]],
    taken: frozenset[str],
    hits: dict[int, str] | None,
) -> tuple[Plan, FirstPass]:
    tap = Tap(state.owners)
    plan = build_plan(
        tap(raw_rows),
        state,
        target=target,
        school_codes=district.school_codes,
        grades=district.grades,
        duplicates=duplicates,
        taken_elsewhere=taken,
        mac=passwords.mac,
        digest=digest,
        hits=hits,
    )
    return plan, tap.result()


@frozen
class Scanned:
    """A digest scan's findings with the district version and orders they were taken on."""

    encoding: str
    scan: Scan
    orders: dict[str, OrderTally]
    version: int


@frozen
class StudentRows:
    """What `Store.finish_run` writes for a plan's students."""

    changed: list[tuple[Any, ...]] = Factory(list)
    new: list[tuple[Any, ...]] = Factory(list)
    digests: list[tuple[bytes, str]] = Factory(list)


def _student_rows(plan: Plan, district_id: str, passwords: StudentPasswords) -> StudentRows:
    """The plan's rows for Store.finish_run; passwords encrypted here, off the loop.

    Changed students keep the file's order (a username one student gives up
    may be taken by a later row); new ones are sorted by Student ID, so the
    clustered table is written in key order (a 500,000-row first load).
    """
    now = iso(utc_now())
    added, digests = plan.added, plan.digests
    encrypted = dict(
        zip(plan.new_passwords, passwords.encrypt_many(plan.new_passwords.values()), strict=True)
    )
    rows = StudentRows()
    for student_id, s in plan.changes.items():
        password = encrypted.get(student_id)
        # Student: student_id, school_code, first_name, last_name, grade, username,
        # class_name, active, order_id, password_mac (by position: 500,000 rows a run)
        (rows.new if student_id in added else rows.changed).append(
            (
                district_id,
                *s[:6],
                s[5].lower(),
                s[6],
                int(s[7]),
                s[8],
                password,
                s[9] if password is not None else None,
                now,
                digests.get(student_id),
            )
        )
    rows.new.sort(key=itemgetter(1))
    rows.digests.extend(
        (digest, student_id)
        for student_id, digest in digests.items()
        if digest is not None and student_id not in plan.changes
    )
    return rows
