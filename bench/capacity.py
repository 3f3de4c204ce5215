"""Capacity benchmark: the 02:00 night, when every district's cron job fires at once.

    .venv/bin/python bench/capacity.py --districts 200        # about 4 minutes
    .venv/bin/python bench/capacity.py                        # 2,000 districts, about 25 minutes
    .venv/bin/python bench/capacity.py --districts 500 --window 30 --json out.json --keep

What it does (see docs/capacity.md for the figures and what they mean):

- population: `--districts` N, sizes drawn from a log-normal like US K-12
  (median 1,100 students, most under 2,000, a tail clipped at 200,000; the
  histogram is printed), odd districts sign in with a password (scrypt, the
  default parameters of `eams hash-password`), even ones with an ed25519 key,
  every fourth has `sync = "full"`.
- server: `eams serve` in its own process (a 13-line script around `server.cli.main`
  that only gives each thread its Python name in /proc, so CPU can be told
  apart by thread: event loop, default thread pool, login pool, SQLite
  connections, worker processes). Its [server] limits are set to fit the
  wave: max_unauthenticated = N + 200 (the default 64 refuses a 02:00 wave;
  see the docs), everything else at its default (10 unauthenticated per
  address, 8 sessions per district, login_attempts 5). Each district connects
  from its own loopback address (127.a.b.c: Linux routes 127/8 to lo).
- phase 0: every district's first load over SFTP (16 at a time); time until the
  last result, database size, bytes per student.
- rush 1 (quiet): every district starts within `--window` seconds (40% in the
  first 2 s: clocks kept by NTP and `0 2 * * *`; the rest spread over the
  window: `sleep $RANDOM` and slow scripts), with a fresh SSH connection;
  uploads its extract (about 1% of rows changed, 0.2% leaving: a D row, or
  absent under full sync, 0.2% new), polls results/ every `--poll` s (5) until
  its result.json appears, downloads it, disconnects.
- rush 2 (hostile): the same plus 50 clients, each from its own address,
  trying wrong passwords in a loop, and 20 signed-in sessions listing
  results/ in a tight loop (a separate client process at nice 10, so its CPU
  shows apart from the honest clients').
- every result is checked: state done, rows/added/updated/unchanged/
  deactivated/missing exactly as the file implies, 0 row errors, licenses used
  as expected, the file's SHA-256; at the end, the license invariant over the
  whole database (`Store.invariant_violations`).
- extrapolation from the measured costs: one node's nightly capacity in a 2-hour
  window and what 13,000 districts with 49 million students need.

Figures are noisy on a shared 2-core machine: run it a few times and take medians.
Timing of a "request" is one client call: open, close, listdir, a 256 KiB
write, a read; close-to-result "seen" is what a polling script sees (up to
one poll interval late), "server" is from the CLOSE's answer to the
result.json file's mtime on disk (same machine, same clock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
from capacity_clients import (
    OP_TIMEOUT,
    Rush,
    calibrate,
    database_size,
    phase0,
    progress,
    run_rush,
)
from capacity_hostile import hostile_main, start_hostile
from capacity_observe import Sampler, Server, cpu_delta, scrypt_cpu
from capacity_population import Dist, histogram, population, write_config
from capacity_report import extrapolate, goal_lines, print_extrapolation, print_rush, rush_figures
from sftp_servers import VENV_BIN, stop_process, tail


async def rush_phase(
    name: str,
    dists: list[Dist],
    folder: Path,
    server: Server,
    sampler: Sampler,
    key: asyncssh.SSHKey,
    args: argparse.Namespace,
    hostile: Callable[[], tuple[subprocess.Popen[bytes], Path]] | None = None,
) -> Rush:
    rng = random.Random(f"{args.seed}-{name}-files")
    files = {}
    for d in dists:
        path = folder / name / f"{d.id}.csv"
        files[d.id] = (path, d.nightly(path, rng))
    rush = Rush(name)
    proc = out = None
    if hostile is not None:
        proc, out = hostile()
        await asyncio.sleep(5)  # the attackers are banned and the listers listing
    progress(f"{name}: {len(dists)} districts start within {args.window:.0f} s")
    cpu0, wait0, client0 = sampler.cpu(), sampler.waited(), time.process_time()
    spy = profile(args, server, name)
    await run_rush(rush, dists, files, server, key, args)
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            spy.wait(60)
        stop_process(spy, 10)
    rush.info["load"] = os.getloadavg()
    end = max(rush.seen_at, default=time.monotonic())
    rush.info["cpu"] = cpu_delta(cpu0, sampler.cpu())
    rush.info["waited"] = cpu_delta(wait0, sampler.waited())
    rush.info["wall"] = end - rush.start
    rush.info["client_cpu"] = time.process_time() - client0
    if proc is not None and out is not None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        with contextlib.suppress(OSError, ValueError):
            rush.info["hostile"] = json.loads(out.read_text())
    shutil.rmtree(folder / name, ignore_errors=True)
    return rush


async def main_async(
    args: argparse.Namespace, folder: Path, dists: list[Dist], server: Server,
    sampler: Sampler, key_path: Path, out: dict[str, Any],
) -> None:  # fmt: skip
    key = asyncssh.read_private_key(str(key_path))
    p0: dict[str, Any] = {}
    progress(f"phase 0: writing and uploading {len(dists)} first loads")
    cpu0 = sampler.cpu()
    start = time.monotonic()
    await phase0(dists, folder, server, key, p0)
    p0["cpu"] = cpu_delta(cpu0, sampler.cpu())
    p0["wall"] = time.monotonic() - start
    p0["students"] = sum(d.size for d in dists)
    db, wal = database_size(server)
    p0["db_bytes"], p0["wal_bytes"] = db, wal
    p0["cpu_per_row_us"] = sum(p0["cpu"].values()) / p0["students"] * 1e6
    out["phase0"] = p0
    print(
        f"\nPhase 0 (first loads): {p0['students']:,} students in {len(dists)} districts;"
        f" uploads {p0['upload_s']:.0f} s, last result {p0['last_result_s']:.0f} s;"
        f" server CPU {sum(p0['cpu'].values()):.0f} s ({p0['cpu_per_row_us']:.0f} us/row)"
    )
    print(
        f"  database {db / 1e6:.0f} MB (+ WAL {wal / 1e6:.0f} MB):"
        f" {db / p0['students']:.0f} bytes per student;"
        f" errors {sum(p0['errors'].values())}"
    )
    for text, count in p0["errors"].most_common(5):
        print(f"      {count:>5} x {text}")
    scrypt_s = scrypt_cpu()
    logins = sum(d.password for d in dists)
    progress("calibration: the 20 smallest and the 2 largest districts, one at a time")
    cal = await calibrate(dists, folder, server, sampler, key, args)
    quiet = await rush_phase("rush 1 (quiet)", dists, folder, server, sampler, key, args)
    qfig = rush_figures(quiet, sampler, args)
    print_rush(quiet, qfig, len(dists), scrypt_s, logins)
    out["quiet"], out["quiet_rush"] = qfig, quiet
    hfig = None
    if not args.skip_hostile:
        seconds = args.window + args.result_timeout + 2 * OP_TIMEOUT + 120
        hostile = await rush_phase(
            "rush 2 (hostile)", dists, folder, server, sampler, key, args,
            lambda: start_hostile(folder, server, dists, key_path, seconds),
        )  # fmt: skip
        hfig = rush_figures(hostile, sampler, args)
        print_rush(hostile, hfig, len(dists), scrypt_s, logins)
        out["hostile"], out["hostile_rush"] = hfig, hostile
    x = extrapolate(dists, quiet, qfig, p0, cal)
    print_extrapolation(x)
    out["extrapolation"], out["goals"] = x, goal_lines(qfig, hfig, x)


def profile(args: argparse.Namespace, server: Server, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy on the server (threads, idle stacks too) for the rush; None without --profile."""
    if args.profile is None or server.proc is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    out = args.profile / (name.split(" (")[0].replace(" ", "-") + ".txt")
    argv = [str(VENV_BIN / "py-spy"), "record", "-p", str(server.proc.pid), "-r", "20"]
    argv += ["-f", "raw", "-o", str(out), "--threads", "--idle", "--subprocesses", "--nonblocking"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def invariant(database: Path) -> list[str]:
    from processing.store import Store

    async def go() -> list[str]:
        store = await Store.open(database)
        try:
            return await store.invariant_violations()
        finally:
            await store.close()

    return asyncio.run(go())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--districts", type=int, default=2000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds the starts spread")
    parser.add_argument("--poll", type=float, default=5.0, help="results/ listing interval")
    parser.add_argument("--result-timeout", type=float, default=1800.0)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--skip-hostile", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the server during each rush (raw stacks here)"
    )
    parser.add_argument("--hostile-spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hostile_spec is not None:
        spec = json.loads(args.hostile_spec.read_text())
        Path(spec["out"]).write_text(json.dumps(asyncio.run(hostile_main(spec))))
        return 0

    began = time.monotonic()
    # SIGTERM (or a background job's SIGINT, which the shell ignores) still stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    dists = population(args.districts, args.seed)
    print("\n".join(histogram(dists)), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="eams-capacity-"))
    key_path = folder / "client_ed25519"
    private = asyncssh.generate_private_key("ssh-ed25519")
    private.write_private_key(str(key_path))
    public = private.export_public_key().decode().strip()
    server = Server(folder, write_config(folder, dists, public))
    out: dict[str, Any] = {}
    sampler: Sampler | None = None
    exit_code: int | None = None
    try:
        progress(f"starting eams serve ({len(dists)} districts); files in {folder}")
        server.start()
        assert server.proc is not None
        sampler = Sampler(server.proc.pid, server.port)
        sampler.start()
        asyncio.run(main_async(args, folder, dists, server, sampler, key_path, out))
    finally:
        progress("stopping eams serve (SIGTERM)")
        exit_code = server.stop()
        if sampler is not None:
            sampler.stop()
    violations = invariant(server.database)
    print(f"\nserver exit {exit_code}; license invariant: {len(violations)} violations")
    for line in violations[:5]:
        print(f"  {line}")
    log_lines = server.log.read_text(errors="replace").splitlines()
    worrying = [ln for ln in log_lines if " ERROR " in ln or "Traceback" in ln]
    print(f"server log: {len(log_lines)} lines, {len(worrying)} ERROR/Traceback")
    for line in worrying[:5]:
        print(f"  {line[:200]}")
    if exit_code != 0:
        print(tail(server.log))
    goals = out.get("goals", [])
    print("\nGoals (measured vs goal)")
    for label, measured, goal, ok in goals:
        print(f"  {'PASS' if ok else 'MISS'}  {label:<48} {measured:>10}   goal {goal}")
    print(f"\nbenchmark wall time {time.monotonic() - began:.0f} s")
    if args.json is not None:
        dump = {k: v for k, v in out.items() if not k.endswith("_rush")}
        args.json.write_text(json.dumps(dump, default=str, indent=1))
    if args.keep:
        print(f"kept {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    failed = violations or worrying or exit_code != 0 or not all(g[3] for g in goals[:2])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
