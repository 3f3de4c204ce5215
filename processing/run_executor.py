"""Where a run executes: small files in this process, big ones in a worker process.

A run's parsing and deciding are pure-Python CPU work. In a thread it holds
the GIL in turns with the event loop that serves every district's SFTP
session: while a 500,000-row file was processed, a 6 KB upload from another
district took up to 3.9 s (bench/load.py, p99). A worker process has its own
GIL, so big runs go there. Small runs stay in this process, where they finish
in milliseconds, with no hand-off, except when the queue overflows them to an
idle worker (`in_worker=True`): at 02:00, with every district's run queued,
this process's one GIL was the limit and a core sat idle (bench/capacity.py).

Each worker keeps its event loop, its own connection to the same SQLite
database (WAL allows that) and its student-password key from one run to the
next, and runs exactly `Runner.run`, so both paths commit the same way; the
per-district order is kept by the queue, which awaits one run at a time. A
run is sent with a config of its district only (`Config.only`).

A worker ends with the server (SPEC §3.2). Killed with `kill -9`, the server
left its worker running with parent 1: it committed the run it had, while
the restarted server ran it again from the spool and logged an ERROR for the
run it found finished. So each worker asks Linux for SIGKILL when the
server's thread that started it ends (prctl PR_SET_PDEATHSIG; the pool starts
workers from the event loop's thread, which lives as long as the server), and
checks right after that the server had not already died. With the workers
gone, multiprocessing's resource tracker, whose pipe they held open too, ends.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import multiprocessing.util
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from processing.config import Config
from processing.model import RunRecord
from processing.passwords import StudentPasswords
from processing.runner import Runner, RunOutcome
from processing.store import Store, database_path

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

    async def __call__(self, record: RunRecord, *, in_worker: bool | None = None) -> RunOutcome:
        """Run `record`: in a worker process if `in_worker`, or (None) if its file is big."""
        if in_worker is None:
            in_worker = spool_size(record) >= self.big_run_bytes
        if not in_worker:
            return await self.runner.run(record)
        if self._pool is None:  # started on the first big run only
            context = multiprocessing.get_context("spawn")  # no fork of a threaded process
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(self.runner.config.server.data,),
            )
        log.info("run %s %s goes to a worker process", record.district_id, record.run_id)
        loop = asyncio.get_running_loop()
        config = self.runner.config.only(record.district_id)
        return await loop.run_in_executor(self._pool, run_in_worker, config, record)

    def close(self) -> None:
        """Wait for runs in progress in worker processes, then end them."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def spool_size(record: RunRecord) -> int:
    """The size of a run's file: what decides where it runs (and its lane in the queue)."""
    try:
        return os.path.getsize(record.spool_path) if record.spool_path else 0
    except OSError:
        return 0


class _Worker:
    """What one worker process keeps between runs: its event loop, its database
    connection and the student-password key (opening them per run cost more than
    a small run). Closed by multiprocessing's exit hook when the worker ends, so
    the connection's thread does not hold the process open."""

    def __init__(self, data: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = Store(database_path(data))
        self.passwords = StudentPasswords.from_data_dir(data)
        multiprocessing.util.Finalize(self, self.close, exitpriority=10)

    def run(self, config: Config, record: RunRecord) -> RunOutcome:
        return self.loop.run_until_complete(self._run(config, record))

    async def _run(self, config: Config, record: RunRecord) -> RunOutcome:
        await self.store.connect()
        return await Runner(config, self.store, self.passwords).run(record)

    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()


# A worker process's own state, set by the pool's initializer (a ProcessPoolExecutor
# hands state to its workers no other way); None in the server's own process.
_worker: _Worker | None = None


def _init_worker(data: Path) -> None:
    global _worker
    server = multiprocessing.parent_process()  # the spawning process, as spawn recorded it
    end_with(server.pid if server is not None and server.pid is not None else os.getppid())
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s"
    )
    _worker = _Worker(data)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def end_with(server: int) -> None:
    """Make this process end when process `server` (its parent) ends, on Linux.

    The signal is armed for the parent's thread that started this process;
    if the parent died before it was armed, this process ends now. Elsewhere
    (no prctl) nothing is done.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("worker %d cannot follow the server: prctl failed", os.getpid())
        return
    if os.getppid() != server:  # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def run_in_worker(config: Config, record: RunRecord) -> RunOutcome:
    """Entry point in the worker process: one run, on the worker's own connection."""
    assert _worker is not None, "runs only in a worker the pool started (_init_worker)"
    return _worker.run(config, record)
