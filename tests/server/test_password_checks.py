"""The login pool: scrypt at most `threads` at once, clean addresses first, freed only
when a check really ends (server/password_checks.py)."""

from __future__ import annotations

import asyncio
import threading

from server.password_checks import PasswordChecks
from tests.conftest import wait_for


async def test_checks_run_in_named_threads_at_most_threads_at_once() -> None:
    checks = PasswordChecks(threads=2)
    lock = threading.Lock()
    inside = peak = 0
    names: set[str] = set()
    release = threading.Event()

    def check() -> bool:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
            names.add(threading.current_thread().name)
        release.wait(10)
        with lock:
            inside -= 1
        return True

    try:
        tasks = [asyncio.create_task(checks.run(0, check)) for _ in range(6)]
        await wait_for(lambda: inside == 2, message="two checks running")
        release.set()
        assert await asyncio.gather(*tasks) == [True] * 6
        assert peak == 2
        assert all(name.startswith("eams-login") for name in names)
    finally:
        release.set()
        checks.close()


async def test_an_address_with_failures_waits_behind_clean_ones() -> None:
    checks = PasswordChecks(threads=1)
    order: list[str] = []
    release = threading.Event()
    try:
        blocker = asyncio.create_task(checks.run(0, lambda: release.wait(10)))
        await wait_for(lambda: checks._slots.waiting == 0, message="blocker running")
        guesser = asyncio.create_task(checks.run(4, lambda: order.append("guesser")))
        await wait_for(lambda: checks._slots.waiting == 1, message="guesser waiting")
        clean = asyncio.create_task(checks.run(0, lambda: order.append("district")))
        await wait_for(lambda: checks._slots.waiting == 2, message="district waiting")
        release.set()
        await asyncio.gather(blocker, guesser, clean)
        assert order == ["district", "guesser"]
    finally:
        release.set()
        checks.close()


async def test_a_caller_that_goes_away_keeps_its_slot_until_the_check_ends() -> None:
    """A client that disconnects mid-scrypt must not let a second scrypt start beside it."""
    checks = PasswordChecks(threads=1)
    running = threading.Event()
    release = threading.Event()
    started: list[str] = []

    def slow() -> None:
        running.set()
        release.wait(10)

    try:
        caller = asyncio.create_task(checks.run(0, slow))
        await wait_for(running.is_set, message="check running")
        caller.cancel()
        follower = asyncio.create_task(checks.run(0, lambda: started.append("next")))
        await asyncio.sleep(0.05)  # give a wrongly freed slot the chance to show
        assert started == []
        release.set()
        await asyncio.wait_for(follower, 5)
        assert started == ["next"]
    finally:
        release.set()
        checks.close()
