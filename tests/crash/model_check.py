"""The model: nothing half-applied, nothing applied twice.

The same files of every non-dry run, in run order, go through `eams process` on
a database of their own (`World.model_db`, no server, no kills). Each run must
give the same counts there as on the server, and afterwards the students and
orders tables must be equal. A kill that left a run half-applied, or a restart
that applied one twice, shows up as a difference.

After a difference the model is reset to a copy of the server's database, so
one fault is reported once rather than in every later cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3

from tests.crash.checks import CheckState, runs_of
from tests.crash.ledger import Ledger
from tests.crash.world import World, eams_quiet, query, regular_order

COUNTED = (
    "state",
    "rows",
    "added",
    "updated",
    "unchanged",
    "activated",
    "deactivated",
    "transferred",
    "errors",
)
STUDENT_COLUMNS = (
    "district_id, student_id, school_code, first_name, last_name, grade, username, "
    "class_name, active, order_id"
)


async def check_model(world: World, ledger: Ledger, state: CheckState) -> list[str]:
    """Apply the files of new non-dry runs to the model, in run order; compare."""
    problems = await compare_model(world, ledger, state)
    if problems:
        await asyncio.to_thread(resync_model, world)
    return problems


def resync_model(world: World) -> None:
    """After a divergence: the model restarts from the server's state (one report)."""
    with (
        contextlib.closing(sqlite3.connect(world.db, timeout=30)) as source,
        contextlib.closing(sqlite3.connect(world.model_db, timeout=30)) as target,
    ):
        source.backup(target)
    shutil.copy2(world.db.parent / "secret.key", world.model_db.parent / "secret.key")


async def compare_model(world: World, ledger: Ledger, state: CheckState) -> list[str]:
    problems = []
    for d in world.districts:
        problems += await _apply_new_runs(world, ledger, state, d)
    sql = f"SELECT {STUDENT_COLUMNS} FROM students ORDER BY district_id, student_id"
    ours_students = await asyncio.to_thread(query, world.db, sql)
    model_students = await asyncio.to_thread(query, world.model_db, sql)
    if ours_students != model_students:
        a, b = set(ours_students), set(model_students)
        sample = sorted(a - b)[:1] + sorted(b - a)[:1]
        problems.append(
            f"students table differs from the model: {len(a - b)} rows only in the server, "
            f"{len(b - a)} only in the model, e.g. {sample}"
        )
    sql = "SELECT district_id || '/' || id, used FROM orders"
    ours_orders, model_orders = dict(query(world.db, sql)), dict(query(world.model_db, sql))
    if ours_orders != model_orders:
        diff = {
            k: (v, model_orders.get(k)) for k, v in ours_orders.items() if v != model_orders.get(k)
        }
        problems.append(f"orders differ from the model (used: server, model): {diff}")
    return problems


async def _apply_new_runs(world: World, ledger: Ledger, state: CheckState, d: str) -> list[str]:
    """Feed the model the district's runs it has not seen; compare each run's counts."""
    problems = []
    runs = [r for r in runs_of(world.db, d) if not r[3]]
    by_run = {u.run_id: u for u in ledger.uploads[d] if u.run_id}
    for run_id, _seq, _state, _dry, result in runs[state.modeled[d] :]:
        up = by_run.get(run_id)
        state.modeled[d] += 1
        if up is None or result is None:
            continue
        if up.bad_token:
            continue  # a file error applies nothing; its state was compared by sig
        assert up.file is not None
        argv = ["process", "--district", d, "--config", str(world.model_config)]
        if up.style == "preload":
            argv += ["--order", regular_order(d)]
        code, output = await asyncio.to_thread(eams_quiet, [*argv, str(up.file)])
        last = query(
            world.model_db,
            "SELECT result_json FROM runs WHERE district_id = ? ORDER BY seq DESC LIMIT 1",
            (d,),
        )
        if code not in (0, 1) or not last:
            problems.append(f"model: eams process {up.uid} exited {code}: {output[-300:]}")
            continue
        model = json.loads(last[0][0])
        ours = {k: result.get(k) for k in COUNTED} | {"used": result["licenses"]["used"]}
        theirs = {k: model.get(k) for k in COUNTED} | {"used": model["licenses"]["used"]}
        if ours != theirs:
            diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
            problems.append(f"{d} run {run_id} ({up.uid}) differs from the model: {diff}")
    return problems
