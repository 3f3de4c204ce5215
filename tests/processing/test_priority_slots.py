"""PrioritySlots: bounded, lowest key first, and a waiter that gives up never holds a slot."""

from __future__ import annotations

import asyncio

from processing.priority_slots import PrioritySlots
from tests.conftest import wait_for


async def test_a_freed_slot_goes_to_the_lowest_key_not_the_first_to_wait() -> None:
    slots = PrioritySlots(1)
    order: list[str] = []
    gate = asyncio.Event()

    async def holder() -> None:
        async with slots.slot(0):
            await gate.wait()

    async def waiter(name: str, key: float) -> None:
        async with slots.slot(key):
            order.append(name)

    first = asyncio.create_task(holder())
    await wait_for(lambda: slots.waiting == 0 and not gate.is_set(), message="holder in")
    tasks = [
        asyncio.create_task(waiter(name, key))
        for name, key in (("big, early", 50.0), ("small, late", 1.0), ("middle", 10.0))
    ]
    await wait_for(lambda: slots.waiting == 3, message="three waiting")
    gate.set()
    await asyncio.gather(first, *tasks)
    assert order == ["small, late", "middle", "big, early"]


async def test_equal_keys_keep_their_arrival_order() -> None:
    slots = PrioritySlots(1)
    order: list[int] = []
    await slots.acquire(0)

    async def waiter(n: int) -> None:
        async with slots.slot(5.0):
            order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(5)]
    await wait_for(lambda: slots.waiting == 5, message="five waiting")
    slots.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_never_more_holders_than_slots() -> None:
    slots = PrioritySlots(3)
    inside = peak = 0

    async def worker(n: int) -> None:
        nonlocal inside, peak
        async with slots.slot(n % 7):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(worker(n) for n in range(50)))
    assert peak == 3
    # All slots are free again: three can be taken at once without waiting.
    for _ in range(3):
        await asyncio.wait_for(slots.acquire(0), 1)


async def test_a_cancelled_waiter_is_skipped_and_loses_no_slot() -> None:
    slots = PrioritySlots(1)
    await slots.acquire(0)
    gone = asyncio.create_task(slots.acquire(1.0))
    stays = asyncio.create_task(slots.acquire(2.0))
    await wait_for(lambda: slots.waiting == 2, message="two waiting")
    gone.cancel()
    slots.release()
    await asyncio.wait_for(stays, 1)  # the slot skipped the cancelled waiter
    assert gone.cancelled()
    slots.release()
    await asyncio.wait_for(slots.acquire(0), 1)  # and it came back free
