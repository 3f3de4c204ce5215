"""Deciding a held run (SPEC §5.4): approve applies it, discard drops it.

One service for every edge that decides (`eams approve`/`discard`, and the web
console), so they can never disagree: find the held run, check it can be
decided, move its state, and for an approval run it again against the state
at approval time.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from processing.model import RunRecord
from processing.runner import Runner, RunOutcome
from processing.store import Conflict, Store


class CannotDecide(Exception):
    """The run cannot be approved or discarded; the message says why."""


class AmbiguousRun(CannotDecide):
    """The run id exists in several districts; the caller must name one."""


async def find_held(store: Store, run_id: str, district_id: str | None = None) -> RunRecord:
    """The held run `run_id` (of `district_id`, when the id is in several districts)."""
    runs = await store.find_runs(run_id, district_id)
    if not runs:
        where = f" for district {district_id}" if district_id else ""
        raise CannotDecide(f"no run {run_id}{where}")
    if len(runs) > 1:
        names = ", ".join(r.district_id for r in runs)
        raise AmbiguousRun(
            f"run id {run_id} exists for several districts ({names}): add --district"
        )
    run = runs[0]
    if run.dry_run:
        raise CannotDecide(
            f"run {run_id} is a dry run (check/): it shows what would be held; "
            "nothing can be approved"
        )
    if run.state != "held":
        raise CannotDecide(f"run {run_id} is {run.state}, not held")
    return run


async def approve(
    runner: Runner,
    run: RunRecord,
    *,
    by: str,
    address: str,
    execute: Callable[[RunRecord], Awaitable[RunOutcome]] | None = None,
) -> RunOutcome:
    """Apply a held run, decided again against the district's state now; the run and
    the audit log record who decided (`cli` for `eams approve`). `execute` runs it
    (the server's queue: a big file goes to a worker process); by default, here."""
    if not run.spool_path or not os.path.exists(run.spool_path):
        raise CannotDecide(f"run {run.run_id}: the uploaded file is no longer in the spool")
    try:
        await runner.store.set_run_state(run, "approved", expect="held", by=by)
    except Conflict:
        raise CannotDecide(f"run {run.run_id} was decided meanwhile") from None
    await runner.store.record_audit(
        who=by, action="approve", district_id=run.district_id, detail=run.run_id, address=address
    )
    approved = await runner.store.get_run(run.district_id, run.run_id)
    return await (execute or runner.run)(approved)


async def discard(store: Store, run: RunRecord, *, by: str, address: str) -> None:
    """Drop a held run: nothing is applied, its spooled file is removed."""
    try:
        await store.set_run_state(run, "discarded", expect="held", by=by)
    except Conflict:
        raise CannotDecide(f"run {run.run_id} was decided meanwhile") from None
    await store.record_audit(
        who=by, action="discard", district_id=run.district_id, detail=run.run_id, address=address
    )
    if run.spool_path:
        Path(run.spool_path).unlink(missing_ok=True)
