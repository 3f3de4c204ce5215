"""The duplicate-email window under a big run: the mail server's 250 -> our durable record.

    .venv/bin/python bench/email_window.py                   # 500,000-row run, 4 small districts
    .venv/bin/python bench/email_window.py --rows 20000      # smoke, a few seconds
    .venv/bin/python bench/email_window.py --repo /tmp/eams-before   # another checkout's code

Delivery is at-least-once: a crash after the mail server's 250 and before we
have recorded it sends the email again. That record was the outbox row, and a
big run's commit holds SQLite's write lock for seconds; the sender now fsyncs
the 250 to `outbox/delivered.jsonl` first. This measures both, under load.

In a temp folder, on 127.0.0.1 only: an aiosmtpd server (own thread) and
`EamsServer(Config.from_toml(...), port=0)` in this process, `[smtp]` pointing
at it. District `big` uploads a --rows first load over SFTP (over 4 MiB it runs
in a worker process); until its result.json exists, one of --small districts
uploads a 40-row file every 0.5 s. No run finishes while the big one commits,
so an email is answered during that commit only if the sender was handing it
over as the commit began: the mail server answers DATA after --smtp-delay
(0.3 s, a relay with a content filter), which makes that common.

Per email, matched by Message-ID, on time.monotonic() (one clock for all processes):
250 = the mail server's handle_DATA answering; row = a read-only SQLite
connection polling every 5 ms first sees the outbox row settled (committed:
what a crash keeps); durable = the ledger fsync, from the sender's log line
("durable X ms ..., outbox updated after Y ms", caught on "eams.sender") and
when it is emitted (old code has no ledger: the row is its record). The big
commit runs from the big run's `Store.finish_run` starting (wrapped, here and
in the worker) until its run row is seen committed; an email whose 250->row
span overlaps it counts as "during the big commit".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import re
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncssh
from aiosmtpd.controller import Controller

LOOPBACK = "127.0.0.1"
BIG = "big"
POLL = 0.005
UPLOAD_EVERY = 0.5
SMALL_ROWS = 40
SETTLE_SECONDS = 120.0
HEADER = "School Code,Student ID,First Name,Last Name,Grade,Username,Password,Class Name,Status"
MARKS_ENV = "EAMS_EMAIL_WINDOW_MARKS"
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.IGNORECASE | re.MULTILINE)
SENT_LINE = re.compile(r"email (\d+) \(.*?\) sent to .*?(?:durable ([\d.]+) ms.* ([\d.]+) ms)?$")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile; nan when empty."""
    ordered = sorted(values) or [float("nan")]
    return ordered[min(len(ordered), max(1, int(-(-len(ordered) * q // 100)))) - 1]


def time_big_commit() -> None:
    """Wrap Store.finish_run: when the big run's one write transaction starts and ends."""
    from processing.store import Store

    finish = Store.finish_run

    def mark(label: str) -> None:
        with open(os.environ[MARKS_ENV], "a", encoding="ascii") as out:
            out.write(f"{label} {time.monotonic():.6f}\n")

    async def timed(self: Any, run: Any, *args: Any, **kwargs: Any) -> Any:
        if run.district_id == BIG:
            mark("start")
        try:
            return await finish(self, run, *args, **kwargs)
        finally:
            if run.district_id == BIG:
                mark("end")

    Store.finish_run = timed  # type: ignore[method-assign]


def worker_init() -> None:
    """The pool's initializer, in the spawned worker (where the project's is still in place)."""
    executor_module()._init_worker()
    time_big_commit()


class MailServer:
    def __init__(self, delay: float) -> None:
        with socket.socket() as probe:  # a free port
            probe.bind((LOOPBACK, 0))
            self.port, self.delay = int(probe.getsockname()[1]), delay
        self.answered: dict[bytes, list[float]] = {}  # Message-ID -> each 250's time
        self.controller = Controller(self, hostname=LOOPBACK, port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(self.delay)
        found = MESSAGE_ID.search(envelope.content)
        self.answered.setdefault(found[1] if found else b"?", []).append(time.monotonic())
        return "250 2.0.0 accepted"


class RowWatcher(threading.Thread):
    """When each outbox row is first seen settled by another (read-only) connection."""

    def __init__(self, db: Path) -> None:
        super().__init__(name="outbox-watcher", daemon=True)
        self.db, self.total, self.stopping = db, 0, threading.Event()
        self.settled: dict[int, float] = {}  # outbox id -> first seen settled
        self.message_ids: dict[int, bytes] = {}
        self.big_committed: float | None = None  # the big run's row first seen finished

    def run(self) -> None:
        uri = f"file:{self.db}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, check_same_thread=False)) as conn:
            while not self.stopping.wait(POLL):
                with contextlib.suppress(sqlite3.Error):
                    self.poll(conn)

    def poll(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT id, state != 'pending' FROM outbox").fetchall()
        big = conn.execute("SELECT 1 FROM runs WHERE district_id = ? AND state != 'queued'", (BIG,))
        seen = time.monotonic()
        if self.big_committed is None and big.fetchone():
            self.big_committed = seen
        self.total = len(rows)
        for outbox_id, done in rows:
            if done and outbox_id not in self.settled:
                self.settled[outbox_id] = seen
                message = conn.execute("SELECT message FROM outbox WHERE id = ?", (outbox_id,))
                found = MESSAGE_ID.search(bytes(message.fetchone()[0]))
                self.message_ids[outbox_id] = found[1] if found else b"?"


class SenderLines(logging.Handler):
    """The sender's "email N (...) sent to ..." lines: when emitted, and X and Y if given."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.sent: dict[int, tuple[float, float | None, float | None]] = {}  # id -> (at, X, Y)

    def emit(self, record: logging.LogRecord) -> None:
        at, found = time.monotonic(), SENT_LINE.match(record.getMessage())
        if found:
            durable, updated = (float(v) if v else None for v in found.group(2, 3))
            self.sent[int(found[1])] = (at, durable, updated)


def write_big(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(HEADER + "\r\n")
        out.writelines(
            f"{('0101', '0102')[n % 2]},B{n:07d},First{n},Last{n},{n % 12 + 1},"
            f"{BIG}.b{n},Pw-{n:07d},Room {n % 30},A\r\n"
            for n in range(1, rows + 1)
        )


def small_file(district: str, round_no: int) -> bytes:
    rows = [
        f"0101,{district.upper()}{n:04d},First{n},Last{n},5,{district}.s{n},Pw-{n:04d},"
        f"Room {(n + round_no) % 30},A\r\n"  # a new class for every student: real updates
        for n in range(1, SMALL_ROWS + 1)
    ]
    return (HEADER + "\r\n" + "".join(rows)).encode()


def write_config(folder: Path, smtp_port: int, districts: list[str], key: str, rows: int) -> Path:
    lines = ["[server]", f'listen = "{LOOPBACK}"', 'host_keys = "host_keys"', 'homes = "homes"']
    lines += ['data = "data"', "ftp_refusal_port = 0", "max_upload_mb = 1024", ""]
    lines += ["[smtp]", f'host = "{LOOPBACK}"', f"port = {smtp_port}"]
    lines += ['sender = "eams@bench.example"', "", "[operators]", 'notify = ["ops@bench.example"]']
    for district in districts:
        lines += ["", f"[districts.{district}]", f'name = "District {district}"']
        lines += [f'username = "{district}"', f'authorized_keys = ["{key}"]']
        lines += [f'notify = ["sis@{district}.example"]', 'schedule = "on-upload"', ""]
        lines += [f"[districts.{district}.order]", f'id = "ENT-{district.upper()}"']
        lines += [f"licenses = {rows + 1000}"]
        for code in ("0101", "0102"):
            lines += ["", f"[[districts.{district}.schools]]", f'code = "{code}"', 'name = "S"']
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def small_uploads(clients: list[tuple[str, Any]], stop: asyncio.Event) -> int:
    """One small district uploads every UPLOAD_EVERY s, in turn, until `stop`."""
    uploads = 0
    while not stop.is_set():
        district, sftp = clients[uploads % len(clients)]
        async with await sftp.open("/students.csv", "wb") as handle:
            await handle.write(small_file(district, uploads))
        uploads += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), UPLOAD_EVERY)
    return uploads


def executor_module() -> Any:
    """processing.run_executor (processing.workers in a checkout from before its rename)."""
    try:
        return importlib.import_module("processing.run_executor")
    except ImportError:
        return importlib.import_module("processing.workers")


async def scenario(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    workers = executor_module()
    from processing.config import Config
    from processing.store import database_path
    from server.app import EamsServer

    os.environ[MARKS_ENV] = str(folder / "marks.txt")
    time_big_commit()
    workers._init_worker = worker_init
    districts = [BIG, *(f"s{i:02d}" for i in range(1, args.small + 1))]
    key = asyncssh.generate_private_key("ssh-ed25519")
    mail, lines = MailServer(args.smtp_delay), SenderLines()
    public = key.export_public_key().decode().strip()
    config = write_config(folder, mail.port, districts, public, args.rows)
    await asyncio.to_thread(write_big, folder / "big.csv", args.rows)
    sender_log = logging.getLogger("eams.sender")
    sender_log.setLevel(logging.INFO)
    sender_log.addHandler(lines)
    mail.controller.start()  # everything started from here is stopped in `finally`
    app = EamsServer(Config.from_toml(config), port=0)
    watcher = RowWatcher(database_path(folder / "data"))
    conns: list[asyncssh.SSHClientConnection] = []
    found: dict[str, Any] = {"mail": mail, "lines": lines, "watcher": watcher}
    try:
        await app.start()
        watcher.start()
        for district in districts:
            options = {"client_keys": [key], "known_hosts": None, "agent_path": None}
            conns.append(await asyncssh.connect(LOOPBACK, app.port, username=district, **options))
        sftps = [await c.start_sftp_client() for c in conns]
        stop = asyncio.Event()
        smalls = asyncio.create_task(
            small_uploads(list(zip(districts[1:], sftps[1:], strict=True)), stop)
        )
        start = time.monotonic()
        await asyncio.wait_for(sftps[0].put(str(folder / "big.csv"), "/students.csv"), 900)
        found["closed"] = closed = time.monotonic()
        found["upload_s"] = closed - start
        results, deadline = folder / "homes" / BIG / "results", closed + args.timeout
        while time.monotonic() < deadline and not list(results.glob("*.result.json")):
            await asyncio.sleep(0.1)
        found["result_s"] = time.monotonic() - closed
        stop.set()
        found["uploads"] = await asyncio.wait_for(smalls, 120)
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline and len(watcher.settled) < max(1, watcher.total):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the last one's log line
    finally:
        for conn in conns:
            conn.close()
        try:
            await app.stop()
        finally:
            watcher.stopping.set()
            if watcher.is_alive():
                watcher.join(10)
            mail.controller.stop()
            sender_log.removeHandler(lines)
    marks = dict(line.split() for line in (folder / "marks.txt").read_text().splitlines())
    found["finish"] = (float(marks.get("start", "nan")), float(marks.get("end", "nan")))
    return found


def stats(values: list[float]) -> str:
    p50, p95, top = pct(values, 50), pct(values, 95), pct(values, 100)
    return f"n={len(values):<3} p50 {p50:7.1f}  p95 {p95:7.1f}  max {top:7.1f}"


def report(args: argparse.Namespace, found: dict[str, Any]) -> None:
    import processing

    mail, lines, watcher, closed = found["mail"], found["lines"], found["watcher"], found["closed"]
    begin, finished = found["finish"]
    end = watcher.big_committed or finished  # the run row committed: the write lock is free
    code = Path(processing.__file__).resolve().parent.parent
    print(f"code: {code}; mail server answers DATA after {args.smtp_delay} s")
    print(
        f"big run: {args.rows:,} rows; upload {found['upload_s']:.1f} s, CLOSE -> result.json"
        f" {found['result_s']:.1f} s; {found['uploads']} small uploads, {args.small} districts"
    )
    print(
        f"big commit: {end - begin:.1f} s (CLOSE +{begin - closed:.1f} s to +{end - closed:.1f} s;"
        f" finish_run returned after its checkpoint at +{finished - closed:.1f} s)"
    )
    got: dict[str, list[float]] = {k: [] for k in ("durable", "x", "row", "log", "cd", "cr")}
    during = []
    for outbox_id, seen in sorted(watcher.settled.items()):
        t250 = mail.answered.get(watcher.message_ids.get(outbox_id, b""), [None])[0]
        if t250 is None:
            continue
        row_ms = (seen - t250) * 1000
        at, durable_x, updated_y = lines.sent.get(outbox_id, (None, None, None))
        durable_ms = row_ms  # no ledger: the row is the record
        if at is not None and durable_x is not None and updated_y is not None:
            durable_ms = (at - (updated_y - durable_x) / 1000 - t250) * 1000
            got["x"].append(durable_x)
        if at is not None:
            got["log"].append((at - t250) * 1000)
        got["durable"].append(durable_ms)
        got["row"].append(row_ms)
        if begin <= seen and t250 <= end:  # the 250->row span overlaps the big commit
            got["cd"].append(durable_ms)
            got["cr"].append(row_ms)
            during.append(
                f"  email {outbox_id}: 250 at CLOSE {t250 - closed:+.2f} s; durable after"
                f" {durable_ms:.1f} ms, row committed after {row_ms:.1f} ms"
            )
    twice = sum(len(v) - 1 for v in mail.answered.values())
    print(
        f"emails: {watcher.total} queued, {len(mail.answered)} accepted by the mail server"
        f" ({twice} twice), {len(got['row'])} matched to their row; ms after the 250:"
    )
    print(f"  (a) durable (ledger fsync; old: row) {stats(got['durable'])}")
    print(f"      sender's log 'durable X ms'      {stats(got['x'])}")
    print(f"  (b) outbox row committed (5 ms poll) {stats(got['row'])}")
    print(f"      sender's 'sent to' line logged   {stats(got['log'])}")
    print(f"  during the big commit: (a)           {stats(got['cd'])}")
    print(f"                         (b)           {stats(got['cr'])}")
    for line in during:
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000, help="the big first load")
    parser.add_argument("--small", type=int, default=4, help="small districts")
    parser.add_argument("--smtp-delay", type=float, default=0.3, help="DATA answered after (s)")
    parser.add_argument("--repo", type=Path, help="import server/processing from this checkout")
    parser.add_argument("--timeout", type=float, default=1800.0, help="for the big run (s)")
    args = parser.parse_args()
    # Ahead of bench/ (sys.path[0]): a bench file named like a package must not shadow it.
    sys.path.insert(0, str((args.repo or Path(__file__).resolve().parent.parent).resolve()))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # INFO only to SenderLines
    sys.setswitchinterval(0.001)  # as `eams serve` does
    folder = Path(tempfile.mkdtemp(prefix="eams-email-window-"))
    try:
        found = asyncio.run(scenario(args, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    report(args, found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
