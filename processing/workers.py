"""Where a run executes: small files in this process, big ones in a worker process.

A run's parsing and deciding are pure-Python CPU work. In a thread it holds
the GIL in turns with the event loop that serves every district's SFTP
session: while a 500,000-row file was processed, a 6 KB upload from another
district took up to 3.9 s (bench/load.py, p99). A worker process has its own
GIL, so big runs go there. Small runs (almost all of them) stay in this
process, where they finish in milliseconds, with no hand-off.

The worker opens its own connection to the same SQLite database (WAL allows
that) and runs exactly `Runner.run`, so both paths commit the same way; the
per-district order is kept by the queue, which awaits one run at a time.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from processing.config import Config
from processing.passwords import StudentPasswords
from processing.runner import Runner, RunOutcome
from processing.store import RunRecord, Store, database_path

log = logging.getLogger("eams.workers")

BIG_RUN_BYTES = 4 * 1024 * 1024  # about 50,000 rows


class RunExecutor:
    def __init__(
        self, runner: Runner, *, workers: int = 2, big_run_bytes: int = BIG_RUN_BYTES
    ) -> None:
        self.runner = runner
        self.workers = workers
        self.big_run_bytes = big_run_bytes
        self._pool: ProcessPoolExecutor | None = None

    async def __call__(self, record: RunRecord) -> RunOutcome:
        if _size(record) < self.big_run_bytes:
            return await self.runner.run(record)
        if self._pool is None:  # started on the first big run only
            context = multiprocessing.get_context("spawn")  # no fork of a threaded process
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_init_worker
            )
        log.info("run %s %s goes to a worker process", record.district_id, record.run_id)
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(self._pool, run_in_worker, self.runner.config, record)
        if self.runner.on_finished is not None:
            self.runner.on_finished(outcome)
        return outcome

    def close(self) -> None:
        """Wait for runs in progress in worker processes, then end them."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _size(record: RunRecord) -> int:
    try:
        return os.path.getsize(record.spool_path) if record.spool_path else 0
    except OSError:
        return 0


def _init_worker() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s"
    )


def run_in_worker(config: Config, record: RunRecord) -> RunOutcome:
    """Entry point in the worker process: one run, with its own database connection."""
    return asyncio.run(_run(config, record))


async def _run(config: Config, record: RunRecord) -> RunOutcome:
    store = await Store.open(database_path(config.server.data))
    try:
        passwords = StudentPasswords.from_data_dir(config.server.data)
        return await Runner(config, store, passwords).run(record)
    finally:
        await store.close()
