"""The honest clients of the capacity benchmark: the districts' cron jobs. Each district
connects over SSH from its own loopback address, uploads its extract, polls results/ until
its result.json appears, downloads it and checks it against what the file implies (`night`,
`check`); `run_rush` starts them all within the window, `phase0` does the first loads,
`calibrate` runs a few districts one at a time to cost a district and a row, and `Rush`
collects the timings and errors. Kept apart from the server side and the report so that the
load generator is one module with one job.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
from capacity_observe import Sampler, Server, cpu_delta
from capacity_population import PASSWORD, Dist, Expected
from sftp_servers import LOOPBACK

T = TypeVar("T")

OP_TIMEOUT = 300.0  # any single client call
CHUNK = 256 * 1024
PHASE0_PARALLEL = 16


def progress(text: str) -> None:
    print(f"  .. {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


class LoopLag:
    """How late this process's event loop wakes up: if the clients lag, their figures do."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            start = time.monotonic()
            await asyncio.sleep(0.1)
            self.lags.append(time.monotonic() - start - 0.1)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class Rush:
    name: str
    start: float = 0.0  # monotonic, window start
    login: list[float] = field(default_factory=list)
    c2r_seen: list[float] = field(default_factory=list)
    c2r_server: list[float] = field(default_factory=list)
    by_size: list[tuple[int, float]] = field(default_factory=list)  # (file bytes, c2r server)
    seen_at: list[float] = field(default_factory=list)
    upload: list[float] = field(default_factory=list)
    slowest: dict[str, tuple[float, str]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    checked: int = 0
    sessions: int = 0
    peak_sessions: int = 0
    rows: int = 0
    lag: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def error(self, where: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.errors[f"{where}: {str(text)[:150]}"] += 1

    async def timed(self, what: str, who: str, awaitable: Awaitable[T]) -> T:
        start = time.monotonic()
        result = await asyncio.wait_for(awaitable, OP_TIMEOUT)
        took = time.monotonic() - start
        if took > self.slowest.get(what, (-1.0, ""))[0]:
            self.slowest[what] = (took, who)
        return result


def check(result: dict[str, Any], exp: Expected, full: bool) -> list[str]:
    want = {
        "state": "done",
        "rows": exp.rows,
        "added": exp.added,
        "updated": exp.updated,
        "unchanged": exp.unchanged,
        "deactivated": exp.deactivated,
        "missing": exp.missing,
        "activated": 0,
        "transferred": 0,
        "errors": 0,
        "dry_run": False,
        "sync": "full" if full else "delta",
    }
    bad = [f"{k} {result.get(k)!r} != {v!r}" for k, v in want.items() if result.get(k) != v]
    used = (result.get("licenses") or {}).get("used")
    if used != exp.used:
        bad.append(f"licenses.used {used!r} != {exp.used}")
    if (result.get("file") or {}).get("sha256") != exp.sha256:
        bad.append("file.sha256 differs from the upload")
    return bad


async def connect(
    d: Dist, port: int, key: asyncssh.SSHKey, address: str | None = None
) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        LOOPBACK,
        port,
        local_addr=(address or d.address, 0),
        username=d.id,
        password=PASSWORD if d.password else None,
        client_keys=None if d.password else [key],
        preferred_auth="password" if d.password else "publickey",
        known_hosts=None,
        agent_path=None,
        keepalive_interval=0,
    )


async def upload(rush: Rush, d: Dist, sftp: asyncssh.SFTPClient, data: bytes) -> None:
    handle = await rush.timed("open", d.id, sftp.open("/students.csv", "wb"))
    for offset in range(0, len(data), CHUNK):
        await rush.timed("write 256 KiB", d.id, handle.write(data[offset : offset + CHUNK], offset))
    await rush.timed("close (upload)", d.id, handle.close())


async def night(
    rush: Rush,
    d: Dist,
    path: Path,
    exp: Expected,
    at: float,
    port: int,
    key: asyncssh.SSHKey,
    results: Path,
    poll: float,
    result_timeout: float,
) -> None:
    """One district's cron job: connect, upload, poll results/, download, leave."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    data = path.read_bytes()
    conn: asyncssh.SSHClientConnection | None = None
    where = "connect"
    try:
        start = time.monotonic()
        conn = await asyncio.wait_for(connect(d, port, key), OP_TIMEOUT)
        rush.login.append(time.monotonic() - start)
        rush.sessions += 1
        rush.peak_sessions = max(rush.peak_sessions, rush.sessions)
        where = "sftp"
        sftp = await rush.timed("start sftp", d.id, conn.start_sftp_client())
        where = "upload"
        up = time.monotonic()
        await upload(rush, d, sftp, data)
        closed, closed_wall = time.monotonic(), time.time()
        rush.upload.append(closed - up)
        where = "poll"
        deadline = closed + result_timeout
        name = None
        while time.monotonic() < deadline:
            names = await rush.timed("listdir", d.id, sftp.listdir("/results"))
            fresh = sorted(
                str(n) for n in names if str(n).endswith(".result.json") and str(n) not in d.seen
            )
            if fresh:
                name = fresh[-1]
                break
            await asyncio.sleep(poll)
        if name is None:
            rush.error("result", f"none within {result_timeout:.0f} s")
            return
        seen = time.monotonic()
        where = "download"
        handle = await rush.timed("open", d.id, sftp.open(f"/results/{name}", "rb"))
        body = await rush.timed("read", d.id, handle.read())
        await rush.timed("close (read)", d.id, handle.close())
        d.seen.add(name)
        result = json.loads(body)
        rush.c2r_seen.append(seen - closed)
        rush.seen_at.append(seen)
        with contextlib.suppress(OSError):
            rush.c2r_server.append((results / name).stat().st_mtime - closed_wall)
            rush.by_size.append((exp.size, rush.c2r_server[-1]))
        bad = check(result, exp, d.full)
        if bad:
            rush.error("result differs", f"{d.id}: {'; '.join(bad[:3])}")
        else:
            rush.checked += 1
            rush.rows += exp.rows
        sftp.exit()
    except (OSError, asyncssh.Error, TimeoutError, ValueError) as exc:
        rush.error(where, exc)
    finally:
        if conn is not None:
            rush.sessions -= 1
            conn.close()
            with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
                await asyncio.wait_for(conn.wait_closed(), 30)


def start_times(dists: list[Dist], window: float, rng: random.Random) -> dict[str, float]:
    """40% within the first 2 s (cron at 02:00 on NTP clocks), the rest over the window."""
    return {
        d.id: rng.uniform(0, min(2.0, window)) if rng.random() < 0.4 else rng.uniform(0, window)
        for d in dists
    }


async def run_rush(
    rush: Rush,
    dists: list[Dist],
    files: dict[str, tuple[Path, Expected]],
    server: Server,
    key: asyncssh.SSHKey,
    args: argparse.Namespace,
) -> None:
    offsets = start_times(dists, args.window, random.Random(f"{args.seed}-{rush.name}"))
    lag = LoopLag()
    lag.start()
    rush.start = time.monotonic() + 1.0
    tasks = [
        asyncio.ensure_future(
            night(
                rush,
                d,
                *files[d.id],
                rush.start + offsets[d.id],
                server.port,
                key,
                server.results(d),
                args.poll,
                args.result_timeout,
            )
        )
        for d in dists
    ]
    bound = args.window + args.result_timeout + 2 * OP_TIMEOUT + 60
    done, pending = await asyncio.wait(tasks, timeout=bound)
    for task in pending:
        task.cancel()
        rush.error("district", f"not finished {bound:.0f} s after the window opened")
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            rush.error("district crashed", task.exception())  # type: ignore[arg-type]
    await asyncio.gather(*pending, return_exceptions=True)
    await lag.stop()
    rush.lag = lag.lags


# ---- phase 0 ---------------------------------------------------------------------------


async def phase0(
    dists: list[Dist], folder: Path, server: Server, key: asyncssh.SSHKey, info: dict[str, Any]
) -> None:
    files = {d.id: (folder / "p0" / f"{d.id}.csv") for d in dists}
    expected = {d.id: d.first_load(files[d.id]) for d in dists}
    gate = asyncio.Semaphore(PHASE0_PARALLEL)
    errors: Counter[str] = Counter()
    rush = Rush("phase 0")

    async def one(d: Dist) -> None:
        async with gate:
            try:
                conn = await asyncio.wait_for(connect(d, server.port, key), OP_TIMEOUT)
                async with conn:
                    sftp = await conn.start_sftp_client()
                    await upload(rush, d, sftp, files[d.id].read_bytes())
                    sftp.exit()
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                errors[f"phase 0 upload: {type(exc).__name__}: {exc}"[:160]] += 1

    start = time.monotonic()
    await asyncio.gather(*(one(d) for d in dists))
    info["upload_s"] = time.monotonic() - start
    progress(f"phase 0: {len(dists)} uploads in {info['upload_s']:.0f} s; waiting for results")
    waiting = {d.id: d for d in dists}
    deadline = time.monotonic() + 3600
    while waiting and time.monotonic() < deadline and server.running:
        for district_id, d in list(waiting.items()):
            names = [n for n in os.listdir(server.results(d)) if n.endswith(".result.json")]
            if names:
                result = json.loads((server.results(d) / names[0]).read_text())
                bad = check(result, expected[district_id], d.full)
                if bad:
                    errors[f"phase 0 result differs: {district_id}: {bad[:2]}"] += 1
                d.seen.add(names[0])
                del waiting[district_id]
        await asyncio.sleep(1.0)
    info["last_result_s"] = time.monotonic() - start
    if waiting:
        errors[f"phase 0: {len(waiting)} results missing (server running: {server.running})"] += 1
    info["errors"] = errors
    for path in files.values():
        path.unlink()


def database_size(server: Server) -> tuple[int, int]:
    """(database file, WAL) bytes after a passive checkpoint (readers and writers go on)."""
    with contextlib.closing(sqlite3.connect(server.database, timeout=60)) as db:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    wal = server.database.with_name(server.database.name + "-wal")
    return server.database.stat().st_size, wal.stat().st_size if wal.exists() else 0


async def calibrate(
    dists: list[Dist], folder: Path, server: Server, sampler: Sampler, key: asyncssh.SSHKey,
    args: argparse.Namespace,
) -> dict[str, float]:  # fmt: skip
    """Server CPU of one nightly run alone: the 20 smallest districts and the 2 largest,
    one at a time. Solves cpu = a + b x rows for a (per district) and b (per row)."""
    ordered = sorted(dists, key=lambda d: d.size)
    small, large = ordered[:20], ordered[-2:]
    rng = random.Random(f"{args.seed}-calibrate")
    rush = Rush("calibration")
    measured: dict[str, tuple[float, int]] = {}
    for group, members in (("small", small), ("large", large)):
        cpu = 0.0
        rows = 0
        for d in members:
            path = folder / "calibrate" / f"{d.id}.csv"
            exp = d.nightly(path, rng)
            before = sampler.cpu()
            await night(rush, d, path, exp, 0.0, server.port, key, server.results(d), 0.05, 600)
            await asyncio.sleep(0.3)  # the run's email and log lines
            cpu += sum(cpu_delta(before, sampler.cpu()).values())
            rows += exp.rows
        measured[group] = (cpu / len(members), rows // len(members))
    shutil.rmtree(folder / "calibrate", ignore_errors=True)
    (cpu_s, rows_s), (cpu_l, rows_l) = measured["small"], measured["large"]
    per_row = max(0.0, (cpu_l - cpu_s) / max(1, rows_l - rows_s))
    return {
        "per_district": max(0.0, cpu_s - per_row * rows_s),
        "per_row": per_row,
        "small_cpu": cpu_s,
        "small_rows": rows_s,
        "large_cpu": cpu_l,
        "large_rows": rows_l,
        "errors": sum(rush.errors.values()),
    }
