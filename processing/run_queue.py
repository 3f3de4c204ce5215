"""The processing queue: each district's runs strictly in order, districts in parallel.

A district's runs must apply in upload order (each sees the state the one
before left), so every district has its own FIFO and one worker task. Runs
of different districts proceed in parallel, in two lanes (docs/capacity.md):

- small files: up to `parallel` (SMALL_PARALLEL) plus the executor's
  `workers` at once. A small run spends much of its time waiting (its file
  read and decided in a worker thread, SQLite, fsyncs of the spool, results
  and email), so several overlap. One alone runs in this process; while this
  process has one in progress, the next goes to an idle worker process
  (`_place`): this process has one GIL, shared with every SSH session, and at
  02:00 it, not the cores, was the limit (bench/capacity.py);
- files the executor sends to a worker process (`big_run_bytes`, 4 MiB): up to
  its `workers` at once, in slots of their own, so a big district's run never
  holds up the small runs behind it (and a small run never waits in a worker
  behind a big one: it goes to a worker only when one is idle).

In a lane, waiting runs start by arrival plus a handicap for their size (one
second per SIZE_HANDICAP bytes): when every district uploads at 02:00, the
small files (most districts) go first, and a bigger file is passed by at most
its handicap's worth of later arrivals, never starved. A district's scripts
poll results/ until their result is there, so the sooner most results are
written the less the server spends answering polls.

`nightly@HH:MM` districts keep their queued runs until that local time: a run
is due at the first HH:MM after its upload was received, so every upload
queued before the nightly time is processed then (in order), and a run whose
nightly time passed while the server was down is processed at once.
Runs left queued by a crash or a stop are picked up by `resume()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from processing.config import District
from processing.model import RunRecord, UploadJob
from processing.priority_slots import PrioritySlots
from processing.run_executor import spool_size
from processing.runner import Runner, RunOutcome
from processing.store import Store

log = logging.getLogger("eams.queue")

INTAKE_WAIT = 0.5  # seconds a CLOSE waits for its run record before it is answered anyway
RECORD_RETRY_FIRST = 0.5  # a run record that could not be written is tried again after this
RECORD_RETRY_MAX = 30.0  # ... doubling up to this
SMALL_PARALLEL = 2  # in-process runs at once, besides the workers (bench/load.py: 2 beat 4)
SIZE_HANDICAP = 20_000  # bytes a waiting run's file adds one second to its arrival


def nightly_due(at: tuple[int, int], received: datetime) -> datetime:
    """The first local HH:MM strictly after local `received` (both naive local times)."""
    target = received.replace(hour=at[0], minute=at[1], second=0, microsecond=0)
    if target <= received:
        target += timedelta(days=1)
    return target


class ProcessingQueue:
    def __init__(
        self,
        runner: Runner,
        intake: Store,
        *,
        parallel: int = SMALL_PARALLEL,
        local_now: Callable[[], datetime] = datetime.now,
        execute: Callable[..., Awaitable[RunOutcome]] | None = None,
        on_finished: Callable[[RunOutcome], None] | None = None,
    ) -> None:
        self.runner = runner
        # The server gives its RunExecutor (small runs here, big ones in a worker process).
        self.execute: Callable[..., Awaitable[RunOutcome]] = execute or runner.run
        # Told of every finished run, wherever it ran (wake the sender, count metrics).
        self.on_finished = on_finished
        self.intake = intake  # a separate connection, so acknowledging is never slow
        # The executor's worker processes, when it has them (processing/run_executor.py).
        self._big_bytes: int | None = getattr(self.execute, "big_run_bytes", None)
        self._workers_n: int = (
            getattr(self.execute, "workers", 0) if self._big_bytes is not None else 0
        )
        self._slots = PrioritySlots(parallel + self._workers_n)  # small files
        self._big_slots = PrioritySlots(max(1, self._workers_n))  # files for the workers
        self._running_here = 0
        self._running_in_workers = 0
        self._queues: dict[str, asyncio.Queue[RunRecord]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._intake_locks: dict[str, asyncio.Lock] = {}
        self._intakes: set[asyncio.Task[RunRecord]] = set()  # records being written
        self._closing_event = asyncio.Event()  # stop(): record retries give up
        self._queued: set[tuple[str, str]] = set()  # (district, run id) not yet finished
        self._active: set[str] = set()  # queue keys with a run in progress
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._local_now = local_now
        self.finished: list[RunRecord] = []  # for logs and tests; bounded below
        self.on_accepted: Callable[[UploadJob], None] | None = None  # e.g. a metrics counter

    @property
    def depth(self) -> int:
        """Runs queued or in progress (the health check and the metrics)."""
        return self._busy

    async def submit(self, job: UploadJob, *, wait: float = INTAKE_WAIT) -> RunRecord | None:
        """Record the spooled upload as a queued run, then queue it.

        The job's spool file is already durable, so the upload is safe to
        acknowledge either way. Recording normally takes milliseconds; but
        while another district's run commits (a 500,000-student first load
        holds SQLite's write lock for seconds) it waits. After `wait` seconds
        this returns None and the record follows in the background, so the
        client's CLOSE is not held up; a crash meanwhile is covered by
        `Runner.settle_spool` adopting the file at the next start. A district's
        records are written one at a time, in arrival order.

        Never raises for a database error: the upload is spooled, so it is
        acknowledged exactly once (a client told "failed" would send it again
        and make two runs), and its record is retried in the background
        until it is written, exactly once (a failed INSERT rolled back).
        """
        if self.on_accepted is not None:
            self.on_accepted(job)
        lock = self._intake_locks.setdefault(job.district_id, asyncio.Lock())
        task = asyncio.create_task(self._record(job, lock))
        self._intakes.add(task)
        task.add_done_callback(self._recorded)
        done, _ = await asyncio.wait({task}, timeout=wait)
        if done and task.exception() is None:
            return task.result()
        return None

    async def _record(self, job: UploadJob, lock: asyncio.Lock) -> RunRecord:
        """Write the run record, retrying database errors with back-off, holding the
        district's lock so that its later uploads cannot overtake this one. Gives up
        only when the server stops: the spool file is adopted at the next start."""
        delay = RECORD_RETRY_FIRST
        async with lock:
            while True:
                try:
                    record = await self.intake.enqueue_run(job)
                    break
                except sqlite3.Error as exc:
                    if self._closing:
                        raise
                    log.error(
                        "the run of an upload by %s could not be recorded (%s); "
                        "trying again in %.1f s (the upload is safe in the spool)",
                        job.district_id,
                        exc,
                        delay,
                    )
                    await self._closed_or(delay)
                    delay = min(delay * 2, RECORD_RETRY_MAX)
        self._put(record)  # no await between: queue order is record order
        return record

    async def _closed_or(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the server begins to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing_event.wait(), seconds)

    @property
    def _closing(self) -> bool:
        return self._closing_event.is_set()

    def _recorded(self, task: asyncio.Task[RunRecord]) -> None:
        self._intakes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "an upload's run could not be recorded (%s); its spool file is adopted "
                "at the next start",
                task.exception(),
            )

    async def resume(self) -> int:
        """Queue runs acknowledged before a crash or stop; return how many."""
        pending = await self.runner.store.pending_runs()
        for record in pending:
            self._put(record)
        return len(pending)

    def _put(self, record: RunRecord) -> None:
        if self._stopping:
            return  # stays queued in the database; processed at the next start
        ident = (record.district_id, record.run_id)
        if ident in self._queued:
            return  # already waiting (resume() and a fresh submit can both see it)
        self._queued.add(ident)
        # Dry runs (check/) change nothing, so they need no place in the district's
        # order: their own FIFO keeps them from waiting behind a nightly run.
        key = f"{record.district_id}/check" if record.dry_run else record.district_id
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self._workers[key] = asyncio.create_task(
                self._work(key, record.district_id, queue), name=f"runs-{key}"
            )
        self._busy += 1
        self._idle.clear()
        queue.put_nowait(record)

    def _district(self, district_id: str) -> District | None:
        return self.runner.config.districts.get(district_id)

    async def _work(self, key: str, district_id: str, queue: asyncio.Queue[RunRecord]) -> None:
        while True:
            record = await queue.get()
            try:
                district = self._district(district_id)
                if district is None:
                    log.error(
                        "run %s: district %s is no longer configured; left queued",
                        record.run_id,
                        district_id,
                    )
                    continue
                if district.nightly_at and not record.dry_run:
                    # Due at the nightly time after the upload, not after "now": the
                    # second of two uploads queued before 02:00 must not wait a day.
                    received = record.received_at.astimezone().replace(tzinfo=None)
                    due = nightly_due(district.nightly_at, received)
                    delay = (due - self._local_now()).total_seconds()
                    if delay > 0:
                        log.info(
                            "run %s %s waits %.0f s for %s",
                            district_id,
                            record.run_id,
                            delay,
                            district.schedule,
                        )
                        await asyncio.sleep(delay)
                size = spool_size(record)
                big = self._big_bytes is not None and size >= self._big_bytes
                lane = self._big_slots if big else self._slots
                async with lane.slot(record.received_at.timestamp() + size / SIZE_HANDICAP):
                    if self._stopping:
                        continue
                    in_worker = self._place(big)
                    self._active.add(key)
                    self._quiet.clear()
                    try:
                        await self.run_now(record, in_worker=in_worker)
                    finally:
                        self._placed(in_worker, -1)
                        self._active.discard(key)
                        if not self._active:
                            self._quiet.set()
                self.finished.append(record)
                del self.finished[:-1000]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "run %s %s failed unexpectedly; it stays queued and is "
                    "retried at the next start",
                    district_id,
                    record.run_id,
                )
            finally:
                self._queued.discard((record.district_id, record.run_id))
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

    def _place(self, big: bool) -> bool | None:
        """Where a run that got its slot executes: True in a worker process, False here,
        None when there are no workers (the executor decides).

        A big file always goes to a worker. A small one goes to an idle worker when
        this process already has a run in progress (the backlog of 02:00, when this
        process's one GIL, shared with every SSH session, was the limit), and runs
        here otherwise: alone, a small run is fastest without a hand-off.
        """
        if self._workers_n == 0:
            in_worker = None
        elif big:
            in_worker = True
        else:
            in_worker = self._running_here > 0 and self._running_in_workers < self._workers_n
        self._placed(in_worker, +1)
        return in_worker

    def _placed(self, in_worker: bool | None, change: int) -> None:
        if in_worker:
            self._running_in_workers += change
        else:
            self._running_here += change

    async def run_now(self, record: RunRecord, *, in_worker: bool | None = None) -> RunOutcome:
        """Execute one run and tell `on_finished`: the queue's own runs, and an approved
        held run, decided from the console at once. `in_worker` (None: the executor
        decides by size) is given to an executor that has worker processes."""
        if in_worker is None:
            outcome = await self.execute(record)
        else:
            outcome = await self.execute(record, in_worker=in_worker)
        if self.on_finished is not None:
            self.on_finished(outcome)
        return outcome

    async def wait_idle(self) -> None:
        """Until every submitted upload is recorded and every queued run has finished."""
        while self._intakes:
            await asyncio.gather(*self._intakes, return_exceptions=True)
        await self._idle.wait()

    async def stop(self) -> None:
        """Let runs in progress finish; runs not yet started stay queued in the database."""
        self._closing_event.set()  # a record still failing is left to the spool adoption
        if self._intakes:  # acknowledged uploads: their records first
            await asyncio.gather(*self._intakes, return_exceptions=True)
        self._stopping = True
        for key, worker in self._workers.items():
            if key not in self._active:
                worker.cancel()
        await self._quiet.wait()
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
