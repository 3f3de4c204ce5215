"""Where district passwords are checked: scrypt in a small pool of its own.

At 02:00 every district signs in within a minute (bench/capacity.py). In the
default thread pool, which also completes uploads and reads, decides and
writes runs, password logins filled it: processing waited behind them. Here
hashing takes at most `threads` threads and queues only behind itself
(docs/capacity.md).

Checks wait in order of their address's failed logins, then of arrival, so an
address guessing passwords (failures 1-4 before its ban) waits behind every
district signing in cleanly, however fast it guesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from processing.priority_slots import PrioritySlots

T = TypeVar("T")

# One thread per core. Half the cores (one of two) made 40 password sign-ins at
# once wait up to 2 s at 200 districts and 43 s at 2,000 (bench/capacity.py),
# close to the 60 s login grace; the pool is still apart from the default one,
# so processing never waits for a thread behind the hashing.
LOGIN_THREADS = os.cpu_count() or 2


class PasswordChecks:
    """At most `threads` checks at once, in threads named `eams-login_N`, lower
    priority first. `close()` when the server stops."""

    def __init__(self, threads: int = LOGIN_THREADS) -> None:
        self._threads = threads
        self._slots = PrioritySlots(threads)
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, priority: int, check: Callable[[], T]) -> T:
        """`check()` in the pool once its turn comes (lower `priority` first).

        The slot is freed when the check ends in its thread, not when the caller
        stops waiting: a client that disconnects mid-check does not let a
        second scrypt start beside the first.
        """
        await self._slots.acquire(priority)
        loop = asyncio.get_running_loop()
        try:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="eams-login")
            job = self._pool.submit(check)
        except BaseException:
            self._slots.release()
            raise

        def finished(_: Future[T]) -> None:  # in a pool thread
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(self._slots.release)

        job.add_done_callback(finished)
        return await asyncio.wrap_future(job)

    def close(self) -> None:
        """Let the checks in progress end and the threads go (no new check starts)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
