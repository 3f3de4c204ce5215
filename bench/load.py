"""Load benchmark: many concurrent SFTP districts against one `eams serve`. It prints figures.

    .venv/bin/python bench/load.py                 # 120 s of phase 1, then phase 2
    .venv/bin/python bench/load.py --duration 30 --big-rows 100000 --keep

The server is `.venv/bin/eams serve` (bench/sftp_servers.py `EamsProcess`) on
127.0.0.1 with 100 districts d001..d100 (schools 0101/0102, an Enterprise order
of 5000 licenses each, ftp_refusal_port = 0). Odd districts log in with the
bench's ed25519 key, even districts with a password (scrypt `password_hash`).
Clients are asyncssh, all in this one process (its CPU use is printed: on a
small machine the clients compete with the server for the same cores).

Phase 1, `--duration` seconds (default 120): 200 SFTP sessions, 2 per district,
each its own SSH connection. Each session loops (bounded by the duration):
list results/, upload a 50-300-row students.csv (session 0 of a district
writes `students.csv` directly, session 1 writes `students.csv.filepart` and
renames it), then poll results/ (SFTP listdir every `--poll` s) until its run's
`.result.json` is listable, download it, and delete its own older results
every 3rd round. The two sessions of a district use disjoint Student IDs and
tell their results apart by the parity of `rows` (session 0 even, session 1
odd). Each round changes a few students (class, grade, password, A<->D for
under 3% of rows, new students when the file grows), so every run does work
and none trips the deactivation guard.
  close-to-result = upload's CLOSE (direct) or RENAME (filepart) returning ->
  the result.json first seen in a listdir (resolution: the poll interval).
  errors = any exception + any run whose state is not `done` + results not
  seen within `--result-timeout`.

Phase 2: d001 uploads a `--big-rows`-row file (default 500,000; the first
3,000 rows `A`, the rest `X`, so it is a real first load within 5000
licenses) with OpenSSH `sftp`; at the same moment 50 districts d002..d051,
already connected, each upload a 100-row file over and over (open+write+close
on the open connection, then wait for its result as in phase 1) until d001's
result.json exists (polled on disk every 50 ms). Big run: sftp start -> exit
(upload), exit -> result.json (processing).

Server RSS: /proc/<pid>/status VmRSS every second (peak and end per phase).
The server is stopped with SIGTERM in `finally`; its exit code is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from sftp_servers import LOOPBACK, EamsProcess, SftpClient, generate_key, tail

from tests.factories import password_hash, roster, student, write_csv

DISTRICTS = 100
PASSWORD = "load-bench-pw-2026"
SCHOOLS = ("0101", "0102")
GRADES = ("K", *(str(g) for g in range(1, 13)))
OP_TIMEOUT = 60.0  # any single SFTP request or connect
CONNECT_PARALLEL = 20
BIG_DISTRICT = "d001"
SMALL_DISTRICTS = [f"d{i:03d}" for i in range(2, 52)]
BIG_ACTIVE = 3000


def progress(text: str) -> None:
    print(f"  .. {text}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, int(-(-q * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def uses_password(district_id: str) -> bool:
    return int(district_id[1:]) % 2 == 0


# ---- server side: config, RSS/CPU sampling ---------------------------------------------


def passwords() -> dict[str, str]:
    """Even districts log in with a password: their `password_hash` (one scrypt for all)."""
    digest = password_hash(PASSWORD)
    ids = (f"d{i:03d}" for i in range(1, DISTRICTS + 1))
    return {district_id: digest for district_id in ids if uses_password(district_id)}


class Sampler:
    """VmRSS (kB) and utime+stime (s) of one pid, every second, in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, int, float]] = []  # (monotonic, rss_kb, cpu_s)
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def read(self) -> tuple[int, float] | None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return None
        rss = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._tick
        return rss, cpu

    def _run(self) -> None:
        while not self._stop.is_set():
            got = self.read()
            if got is not None:
                self.samples.append((time.monotonic(), *got))
            self._stop.wait(1.0)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)

    def window(self, start: float, end: float) -> dict[str, float]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return {}
        return {
            "peak_mb": max(s[1] for s in inside) / 1024,
            "end_mb": inside[-1][1] / 1024,
            "cpu_s": inside[-1][2] - inside[0][2],
            "span_s": inside[-1][0] - inside[0][0],
        }


# ---- client side -------------------------------------------------------------------------


@dataclass
class Stats:
    uploads: int = 0
    runs_done: int = 0
    runs_with_row_errors: int = 0
    row_errors: int = 0
    upload_lat: list[float] = field(default_factory=list)
    c2r: list[float] = field(default_factory=list)
    c2r_during: list[float] = field(default_factory=list)  # phase 2: closed after the big CLOSE
    errors: Counter[str] = field(default_factory=Counter)
    deleted: int = 0
    connect: list[float] = field(default_factory=list)

    def error(self, where: str, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.errors[f"{where}: {str(text)[:160]}"] += 1

    def run_result(self, where: str, result: dict[str, Any]) -> None:
        """Count a run's result.json: done (with or without row errors), or an error."""
        if result.get("state") == "done":
            self.runs_done += 1
            if result.get("errors"):
                self.runs_with_row_errors += 1
                self.row_errors += int(result["errors"])
        else:
            self.error(where, f"{result.get('state')} {result.get('file_error')}")


async def op(awaitable, timeout: float = OP_TIMEOUT):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(awaitable, timeout)


class Client:
    """One SSH connection + SFTP session as one district."""

    def __init__(self, district_id: str, port: int, key: asyncssh.SSHKey) -> None:
        self.district_id = district_id
        self.port = port
        self.key = key
        self.conn: asyncssh.SSHClientConnection | None = None
        self.sftp: asyncssh.SFTPClient | None = None

    async def connect(self) -> None:
        password = PASSWORD if uses_password(self.district_id) else None
        self.conn = await op(
            asyncssh.connect(
                LOOPBACK,
                self.port,
                username=self.district_id,
                password=password,
                client_keys=None if password else [self.key],
                preferred_auth="password" if password else "publickey",
                known_hosts=None,
                agent_path=None,
            )
        )
        self.sftp = await op(self.conn.start_sftp_client())

    async def close(self) -> None:
        if self.sftp is not None:
            self.sftp.exit()
        if self.conn is not None:
            self.conn.close()
            with contextlib.suppress(TimeoutError, OSError, asyncssh.Error):
                await op(self.conn.wait_closed(), 10)
        self.conn = self.sftp = None

    async def listdir(self, path: str = "/results") -> list[str]:
        assert self.sftp is not None
        return [str(n) for n in await op(self.sftp.listdir(path))]

    async def put(self, data: bytes, *, filepart: bool) -> None:
        assert self.sftp is not None
        name = "/students.csv.filepart" if filepart else "/students.csv"
        async with await op(self.sftp.open(name, "wb")) as handle:
            await op(handle.write(data))
        if filepart:
            await op(self.sftp.rename("/students.csv.filepart", "/students.csv"))

    async def read(self, path: str) -> bytes:
        assert self.sftp is not None
        async with await op(self.sftp.open(path, "rb")) as handle:
            return bytes(await op(handle.read()))

    async def wait_result(
        self, before: set[str], parity: int | None, poll: float, timeout: float
    ) -> tuple[str, dict[str, Any], float] | None:
        """Poll results/ until a new result.json of ours; (name, result, seen at)."""
        others: set[str] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = await self.listdir()
            seen = time.monotonic()
            for name in sorted(set(names) - before - others):
                if not name.endswith(".result.json"):
                    continue
                try:
                    result = json.loads(await self.read(f"/results/{name}"))
                except asyncssh.SFTPNoSuchFile:  # the other session deleted its own
                    others.add(name)
                    continue
                rows = result.get("rows")
                if parity is None or (isinstance(rows, int) and rows % 2 == parity):
                    return name, result, seen
                others.add(name)
            await asyncio.sleep(poll)
        return None


@dataclass
class Student:
    school: str
    grade: str
    klass: str
    password: str
    status: str = "A"


class Roster:
    """A district session's students, changed a little every round."""

    def __init__(self, district_id: str, tag: str, rng: random.Random) -> None:
        self.district_id, self.tag, self.rng = district_id, tag, rng
        self.students: dict[int, Student] = {}

    def row(self, n: int, s: Student) -> list[str]:
        return student(
            f"{self.tag.upper()}{n:06d}",
            s.status,
            school=s.school,
            first=f"First{n}",
            last=f"Last{n}",
            grade=s.grade,
            username=f"{self.district_id}.{self.tag}.{n}",
            password=s.password,
            class_name=s.klass,
        )

    def next_file(self, rows: int, churn: bool = True) -> bytes:
        rng = self.rng
        out = []
        for n in range(1, rows + 1):
            s = self.students.get(n)
            if s is None:
                s = self.students[n] = Student(
                    school=SCHOOLS[n % 2],
                    grade=GRADES[n % len(GRADES)],
                    klass=f"Room {n % 30}",
                    password=f"Pw-{n:06d}",
                )
            elif churn:
                r = rng.random()
                if s.status == "D":
                    if r < 0.5:
                        s.status = "A"
                elif r < 0.02:
                    s.status = "D"
                elif r < 0.08:
                    s.klass = f"Room {rng.randrange(30)}"
                elif r < 0.10:
                    s.grade = rng.choice(GRADES)
                elif r < 0.11:
                    s.password = f"Pw-{rng.randrange(10**8):08d}"
            out.append(self.row(n, s))
        return roster(out)


async def connect_all(clients: list[Client], stats: Stats) -> list[Client]:
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one(client: Client) -> Client | None:
        async with gate:
            start = time.monotonic()
            try:
                await client.connect()
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                stats.error(f"connect {client.district_id}", exc)
                return None
            stats.connect.append(time.monotonic() - start)
            return client

    return [c for c in await asyncio.gather(*(one(c) for c in clients)) if c is not None]


async def reconnect(client: Client, stats: Stats) -> bool:
    await client.close()
    try:
        await client.connect()
        return True
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        stats.error(f"reconnect {client.district_id}", exc)
        return False


# ---- phase 1 ----------------------------------------------------------------------------


async def session_loop(
    client: Client, index: int, deadline: float, args: argparse.Namespace, stats: Stats
) -> None:
    rng = random.Random(f"{client.district_id}-{index}")
    roster = Roster(client.district_id, f"l{index}", rng)
    mine: list[str] = []  # our run ids, oldest first
    rounds = 0
    where = "direct" if index == 0 else "filepart"
    while time.monotonic() < deadline:
        rounds += 1
        rows = rng.randrange(50, 301)
        if rows % 2 != index:
            rows += 1 if rows < 300 else -1
        data = roster.next_file(rows, churn=rounds > 1)
        try:
            before = set(await client.listdir())
            start = time.monotonic()
            await client.put(data, filepart=index == 1)
            closed = time.monotonic()
            stats.uploads += 1
            stats.upload_lat.append(closed - start)
            found = await client.wait_result(before, index, args.poll, args.result_timeout)
            if found is None:
                stats.error(f"{where} result", f"none within {args.result_timeout:.0f} s")
                continue
            name, result, seen = found
            stats.c2r.append(seen - closed)
            mine.append(name.removesuffix(".result.json"))
            stats.run_result(f"{where} run state", result)
            if rounds % 3 == 0 and len(mine) > 1:
                names = set(await client.listdir())
                for run_id in mine[:-1]:
                    for suffix in (".result.json", ".result.txt", ".errors.csv"):
                        if run_id + suffix in names:
                            await op(client.sftp.remove(f"/results/{run_id}{suffix}"))  # type: ignore[union-attr]
                            stats.deleted += 1
                del mine[:-1]
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            stats.error(where, exc)
            lost = client.conn is None or client.conn.is_closed()
            if lost and not await reconnect(client, stats):
                await asyncio.sleep(1)


async def phase1(
    port: int, key: asyncssh.SSHKey, args: argparse.Namespace
) -> tuple[Stats, dict[str, Any]]:
    stats = Stats()
    clients = [Client(f"d{i:03d}", port, key) for i in range(1, DISTRICTS + 1) for _ in range(2)]
    progress(f"phase 1: connecting {len(clients)} sessions")
    t_conn = time.monotonic()
    connected = await connect_all(clients, stats)
    info = {"connected": len(connected), "connect_wall": time.monotonic() - t_conn}
    progress(f"phase 1: {len(connected)} connected; running {args.duration:.0f} s")
    start = time.monotonic()
    cpu0 = time.process_time()
    deadline = start + args.duration
    tasks = [session_loop(c, clients.index(c) % 2, deadline, args, stats) for c in connected]
    hard = args.duration + args.result_timeout + 120
    done, pending = await asyncio.wait([asyncio.ensure_future(t) for t in tasks], timeout=hard)
    for task in pending:
        task.cancel()
        stats.error("session", f"still running {hard:.0f} s after start: cancelled")
    for task in done:
        if task.exception() is not None:
            stats.error("session crashed", task.exception())  # type: ignore[arg-type]
    info["wall"] = time.monotonic() - start
    info["client_cpu"] = time.process_time() - cpu0
    info["start"], info["end"] = start, time.monotonic()
    await asyncio.gather(*(c.close() for c in connected))
    return stats, info


# ---- phase 2 ----------------------------------------------------------------------------


def write_big(path: Path, district_id: str, rows: int) -> Path:
    """The first BIG_ACTIVE rows A, the rest X: a real first load within 5000 licenses."""
    return write_csv(path, (big_row(district_id, n) for n in range(1, rows + 1)))


def big_row(district_id: str, n: int) -> list[str]:
    return student(
        f"B{n:07d}",
        "A" if n <= BIG_ACTIVE else "X",
        school=SCHOOLS[n % 2],
        first=f"First{n}",
        last=f"Last{n}",
        grade=GRADES[n % 13],
        username=f"{district_id}.b{n}",
        password=f"Pw-{n:07d}",
        class_name=f"Room {n % 30}",
    )


async def small_loop(
    client: Client,
    stop: asyncio.Event,
    marks: dict[str, Any],
    args: argparse.Namespace,
    stats: Stats,
) -> None:
    roster = Roster(client.district_id, "p", random.Random(client.district_id))
    rounds = 0
    while not stop.is_set():
        rounds += 1
        data = roster.next_file(100, churn=rounds > 1)
        try:
            before = set(await client.listdir())
            start = time.monotonic()
            await client.put(data, filepart=False)
            closed = time.monotonic()
            stats.uploads += 1
            stats.upload_lat.append(closed - start)
            found = await client.wait_result(before, None, args.poll, args.result_timeout)
            if found is None:
                stats.error("small result", f"none within {args.result_timeout:.0f} s")
                continue
            _, result, seen = found
            stats.c2r.append(seen - closed)
            big_closed = marks.get("big_closed")
            if big_closed is not None and closed >= big_closed:
                stats.c2r_during.append(seen - closed)
            stats.run_result("small run state", result)
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            stats.error("small", exc)
            lost = client.conn is None or client.conn.is_closed()
            if lost and not await reconnect(client, stats):
                await asyncio.sleep(1)


async def phase2(
    eams: EamsProcess, key: asyncssh.SSHKey, sftp_client: SftpClient, big: Path,
    args: argparse.Namespace,
) -> tuple[Stats, dict[str, Any]]:  # fmt: skip
    stats = Stats()
    clients = [Client(d, eams.port, key) for d in SMALL_DISTRICTS]
    progress(f"phase 2: connecting {len(clients)} small districts")
    connected = await connect_all(clients, stats)
    info: dict[str, Any] = {"connected": len(connected)}
    big_dir = eams.results(BIG_DISTRICT)
    before_big = set(os.listdir(big_dir))
    batch = sftp_client.batch([f"put {big} /students.csv"])
    stop = asyncio.Event()
    marks: dict[str, Any] = {}
    progress(
        f"phase 2: {BIG_DISTRICT} uploads {args.big_rows:,} rows; 50 districts upload 100 rows"
    )
    start = time.monotonic()
    cpu0 = time.process_time()
    proc = await asyncio.create_subprocess_exec(
        *sftp_client.argv(BIG_DISTRICT, eams.port, batch),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    tasks = [asyncio.ensure_future(small_loop(c, stop, marks, args, stats)) for c in connected]
    _, err = await asyncio.wait_for(proc.communicate(), args.big_timeout)
    marks["big_closed"] = closed = time.monotonic()
    info["big_sftp_rc"] = proc.returncode
    info["big_upload_s"] = closed - start
    if proc.returncode != 0:
        stats.error("big sftp", f"exit {proc.returncode}: {err.decode(errors='replace')[-300:]}")
    result_name = None
    deadline = closed + args.big_timeout
    while proc.returncode == 0 and time.monotonic() < deadline:
        fresh = sorted(
            n for n in set(os.listdir(big_dir)) - before_big if n.endswith(".result.json")
        )
        if fresh:
            result_name = fresh[0]
            break
        await asyncio.sleep(0.05)
    seen = time.monotonic()
    stop.set()
    if result_name is None:
        stats.error("big result", f"none within {args.big_timeout:.0f} s")
    else:
        info["big_process_s"] = seen - closed
        info["big_total_s"] = seen - start
        big_result = json.loads((big_dir / result_name).read_text())
        info["big_result"] = {
            k: big_result.get(k) for k in ("state", "rows", "added", "errors", "file_error")
        }
        if big_result.get("state") != "done":
            stats.error("big run state", str(info["big_result"]))
    done, pending = await asyncio.wait(tasks, timeout=args.result_timeout + 60)
    for task in pending:
        task.cancel()
        stats.error("small session", "did not finish after the big run: cancelled")
    for task in done:
        if task.exception() is not None:
            stats.error("small session crashed", task.exception())  # type: ignore[arg-type]
    info["client_cpu"] = time.process_time() - cpu0
    info["start"], info["end"] = start, time.monotonic()
    await asyncio.gather(*(c.close() for c in connected))
    return stats, info


# ---- report -----------------------------------------------------------------------------


def fmt_s(values: list[float]) -> str:
    top = max(values, default=float("nan"))
    return (
        f"p50 {pct(values, 50):.3f} s, p99 {pct(values, 99):.3f} s, max {top:.3f} s"
        f" (n={len(values)})"
    )


def print_errors(stats: Stats) -> None:
    total = sum(stats.errors.values())
    print(f"  errors: {total}")
    for text, count in stats.errors.most_common(8):
        print(f"    {count:>5} x {text}")


def print_server(sampler: Sampler | None, info: dict[str, Any]) -> None:
    w = sampler.window(info["start"], info["end"]) if sampler else {}
    if w:
        print(
            f"  server RSS: peak {w['peak_mb']:.0f} MB, end {w['end_mb']:.0f} MB;"
            f" server CPU {w['cpu_s']:.0f} s in {w['span_s']:.0f} s;"
            f" client CPU {info['client_cpu']:.0f} s"
        )


def report(args: argparse.Namespace, results: dict[str, Any], sampler: Sampler | None) -> None:
    print()
    nan = float("nan")
    if "p1" in results:
        s, info = results["p1"]
        print(
            f"Phase 1: {info['connected']}/200 sessions connected in"
            f" {info['connect_wall']:.1f} s (connect+auth {fmt_s(s.connect)})"
        )
        print(
            f"  duration {args.duration:.0f} s (last rounds end at {info['wall']:.1f} s),"
            f" poll every {args.poll} s"
        )
        print(
            f"  uploads completed: {s.uploads}   runs done: {s.runs_done}"
            f" ({s.runs_with_row_errors} with row errors, {s.row_errors} rows)"
            f"   result files deleted: {s.deleted}"
        )
        print_errors(s)
        print(f"  upload (open+write+close[+rename]): {fmt_s(s.upload_lat)}")
        print(f"  close-to-result: {fmt_s(s.c2r)}")
        print_server(sampler, info)
    if "p2" in results:
        s, info = results["p2"]
        print(
            f"Phase 2: {args.big_rows:,}-row run of {BIG_DISTRICT};"
            f" {info['connected']}/50 small districts"
        )
        if "big_upload_s" in info:
            print(
                f"  big: upload (sftp run) {info['big_upload_s']:.1f} s, close->result"
                f" {info.get('big_process_s', nan):.1f} s,"
                f" total {info.get('big_total_s', nan):.1f} s"
            )
            print(f"  big result: {info.get('big_result')}")
        print(
            f"  small uploads completed: {s.uploads}, runs done: {s.runs_done}"
            f" ({s.runs_with_row_errors} with row errors)"
        )
        print_errors(s)
        print(f"  small upload latency (open+write+close): {fmt_s(s.upload_lat)}")
        print(f"  small close-to-result (all): {fmt_s(s.c2r)}")
        print(f"  small close-to-result (closed after the big CLOSE): {fmt_s(s.c2r_during)}")
        print_server(sampler, info)
    if "exit" in results:
        print(f"server exit code after SIGTERM: {results['exit']} ({results['stop_s']:.1f} s)")
    for line in results.get("log", []):
        print(f"server log: {line}")


def log_summary(log: Path) -> list[str]:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ["(no log)"]
    bad = [
        ln for ln in lines if any(w in ln for w in ("WARNING", "ERROR", "Traceback", "CRITICAL"))
    ]
    kinds = Counter(" ".join(ln.split()[2:8]) for ln in bad)
    out = [f"{len(lines)} lines, {len(bad)} WARNING/ERROR/Traceback"]
    out += [f"  {n} x {k}" for k, n in kinds.most_common(6)]
    return out


# ---- main -------------------------------------------------------------------------------


async def run(args: argparse.Namespace, tmp: Path, eams: EamsProcess, key_path: Path,
              big: Path, results: dict[str, Any]) -> None:  # fmt: skip
    key = asyncssh.read_private_key(str(key_path))
    if not args.skip_phase1:
        results["p1"] = await phase1(eams.port, key, args)
    if not args.skip_phase2:
        results["p2"] = await phase2(eams, key, SftpClient(key_path, tmp), big, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="phase 1 seconds")
    parser.add_argument("--poll", type=float, default=0.25, help="results/ listdir interval (s)")
    parser.add_argument("--result-timeout", type=float, default=300.0)
    parser.add_argument("--big-rows", type=int, default=500_000)
    parser.add_argument("--big-timeout", type=float, default=1800.0)
    parser.add_argument("--skip-phase1", action="store_true")
    parser.add_argument("--skip-phase2", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument(
        "--eams", type=Path, default=None, help="the eams executable (default .venv/bin/eams)"
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="eams-bench-load-"))
    results: dict[str, Any] = {}
    sampler: Sampler | None = None
    eams: EamsProcess | None = None
    try:
        key_path = tmp / "client_ed25519"
        public_key = generate_key(key_path, "eams-load")
        eams = EamsProcess(tmp / "eams", public_key, DISTRICTS, args.eams, passwords=passwords())
        big = tmp / "big.csv"
        if not args.skip_phase2:
            progress(f"writing the {args.big_rows:,}-row file")
            write_big(big, BIG_DISTRICT, args.big_rows)
        eams.start()
        assert eams.proc is not None
        print(f"eams serve pid {eams.proc.pid} on {LOOPBACK}:{eams.port}; files: {tmp}", flush=True)
        sampler = Sampler(eams.proc.pid)
        sampler.start()
        asyncio.run(run(args, tmp, eams, key_path, big, results))
    finally:
        if eams is not None:
            t = time.monotonic()
            progress("stopping eams serve (SIGTERM)")
            results["exit"] = eams.stop()
            results["stop_s"] = time.monotonic() - t
            results["log"] = log_summary(eams.log)
            if results["exit"] != 0:
                results["log"].append("tail:\n" + tail(eams.log))
        if sampler is not None:
            sampler.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        report(args, results, sampler)
    failed = any(sum(results[k][0].errors.values()) for k in ("p1", "p2") if k in results)
    return 1 if failed or results.get("exit") != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
