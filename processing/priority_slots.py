"""A bounded number of slots that waiters get lowest key first (`PrioritySlots`).

Two places need more than an `asyncio.Semaphore`, which serves waiters in
arrival order: the processing queue (small files before big ones when every
district uploads at 02:00) and the password checks (addresses without failed
logins before those guessing). Both are measured in bench/capacity.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator


class PrioritySlots:
    """At most `slots` holders at once; a freed slot goes to the waiter with the
    lowest key (ties: the earliest). A waiter cancelled while waiting is skipped."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    @property
    def free(self) -> bool:
        """A slot would be taken at once (none free, or others already waiting: no)."""
        return self._free > 0 and not self._waiting

    @property
    def waiting(self) -> int:
        return sum(1 for *_, turn in self._waiting if not turn.done())

    async def acquire(self, key: float) -> None:
        """Wait for a slot; the caller must `release()` it exactly once."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (key, next(self._arrival), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # given the slot just as it was cancelled: pass it on
            raise

    def release(self) -> None:
        """Hand the slot straight to the next waiter, or free it."""
        while self._waiting:
            turn = heapq.heappop(self._waiting)[2]
            if not turn.done():  # a waiter that went away is skipped
                turn.set_result(None)
                return
        self._free += 1

    @contextlib.asynccontextmanager
    async def slot(self, key: float) -> AsyncIterator[None]:
        await self.acquire(key)
        try:
            yield
        finally:
            self.release()
