"""The processing queue: each district's runs strictly in order, districts in parallel.

A district's runs must apply in upload order (each sees the state the one
before left), so every district has its own FIFO and one worker task. Runs
of different districts proceed in parallel up to `parallel` at once: the
CPU-heavy part of a run is in a worker thread, and two cores serve two runs.

`nightly@HH:MM` districts keep their queued runs until that local time.
Runs left queued by a crash or a stop are picked up by `resume()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from processing.config import District
from processing.jobs import UploadJob
from processing.runner import Runner
from processing.store import RunRecord, Store

log = logging.getLogger("eams.queue")


def seconds_until(at: tuple[int, int], now: datetime) -> float:
    """Seconds from local `now` until the next local HH:MM (0 < result <= 1 day)."""
    target = now.replace(hour=at[0], minute=at[1], second=0, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()


class ProcessingQueue:
    def __init__(
        self,
        runner: Runner,
        intake: Store,
        *,
        parallel: int = 2,
        local_now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.runner = runner
        self.intake = intake  # a separate connection, so acknowledging is never slow
        self._slots = asyncio.Semaphore(parallel)
        self._queues: dict[str, asyncio.Queue[RunRecord]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._active: set[str] = set()  # districts with a run in progress
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._local_now = local_now
        self.finished: list[RunRecord] = []  # for logs and tests; bounded below

    async def submit(self, job: UploadJob) -> RunRecord:
        """Record the spooled upload as a queued run (durable), then queue it."""
        record = await self.intake.enqueue_run(job)
        self._put(record)
        return record

    async def resume(self) -> int:
        """Queue runs acknowledged before a crash or stop; return how many."""
        pending = await self.runner.store.pending_runs()
        for record in pending:
            self._put(record)
        return len(pending)

    def _put(self, record: RunRecord) -> None:
        if self._stopping:
            return  # stays queued in the database; processed at the next start
        queue = self._queues.get(record.district_id)
        if queue is None:
            queue = self._queues[record.district_id] = asyncio.Queue()
            self._workers[record.district_id] = asyncio.create_task(
                self._work(record.district_id, queue), name=f"runs-{record.district_id}"
            )
        self._busy += 1
        self._idle.clear()
        queue.put_nowait(record)

    def _district(self, district_id: str) -> District | None:
        return self.runner.config.districts.get(district_id)

    async def _work(self, district_id: str, queue: asyncio.Queue[RunRecord]) -> None:
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
                    delay = seconds_until(district.nightly_at, self._local_now())
                    log.info(
                        "run %s %s waits %.0f s for %s",
                        district_id,
                        record.run_id,
                        delay,
                        district.schedule,
                    )
                    await asyncio.sleep(delay)
                async with self._slots:
                    if self._stopping:
                        continue
                    self._active.add(district_id)
                    self._quiet.clear()
                    try:
                        await self.runner.run(record)
                    finally:
                        self._active.discard(district_id)
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
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

    async def wait_idle(self) -> None:
        """Until every queued run has finished (tests and graceful stops)."""
        await self._idle.wait()

    async def stop(self) -> None:
        """Let runs in progress finish; runs not yet started stay queued in the database."""
        self._stopping = True
        for district_id, worker in self._workers.items():
            if district_id not in self._active:
                worker.cancel()
        await self._quiet.wait()
        for worker in self._workers.values():
            worker.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
