"""Crash campaign: `kill -9` a real `eams serve` at chosen points, restart it, check.

    .venv/bin/python bench/crash.py --cycles 20            # the long version (a table per cycle)
    .venv/bin/python bench/crash.py --cycles 5 --seed 7 --keep

tests/test_crash_campaign.py runs a short version of the same `Campaign` in CI.

Set-up (everything on 127.0.0.1, in a temp folder): a config with several
districts (one with a small Enterprise order, one with the default deactivation
guard), an [smtp] section pointing at an aiosmtpd server started here, and
`eams serve --config X --port P` as a child process. Before the first start each
district gets an initial load onto its regular order (`eams process --order`),
so later uploads also transfer students.

One cycle:
1. workload: one asyncssh client per district uploads 1-3 files (50 to
   `max_rows` rows; A/D/X/I rows with some row errors, duplicate ids, bad
   headers, repeat uploads, dry runs into check/), each either directly
   (OPEN/WRITE/CLOSE) or WinSCP-style (`.filepart`, CLOSE, REMOVE, RENAME) or as
   `.part` + posix-rename; districts in parallel;
2. `kill -9` of the server at the cycle's kill point (below); the mail server
   is stopped in some cycles so that emails stay queued;
3. restart (some kill points kill again during the restart). In some cycles the
   districts first delete their result files (SPEC §3 lets them; the restart
   rewrites them all), and a district with runs left queued uploads the moment
   the port accepts, before the restart is done (`--eager`, `--delete-results`);
4. once the server is idle (no queued run, every result file written, and with
   the mail server up, no pending email), the checks below.

Kill points: mid-upload (direct upload half written), mid-filepart, before-rename
(.filepart closed, not renamed), after-ack (the instant CLOSE/RENAME returns),
processing (a big run, random delay after the ack), result-writing (the instant
the run's commit or first result file is seen), email-queued (mail server down:
kill with the email pending, restart, kill again with it still pending, then
restart with the mail server up), email-sending (the server dies while the mail
server holds its DATA: the message is not accepted), email-250 (the server dies
the instant the mail server answered 250: the sender's documented duplicate
window), random (uniform time in the workload), startup (random, then a second
kill during the restart).

Checks after each restart (a failure names the upload/run):
- every acknowledged upload (CLOSE/RENAME answered OK) has exactly one run, in
  order, per district (matched by row count or the bad header's token); an upload
  cut before CLOSE/RENAME was sent has none; one whose CLOSE/RENAME was in flight
  at the kill ("in doubt") has at most one; no run comes from nowhere;
- no run is left queued; every done/failed/held run has result.json (agreeing with
  the database), result.txt, and errors.csv exactly when something was rejected;
- for every order, used == active students on it;
- every non-dry finished run queued exactly one email, and the mail server
  received exactly one message for it; dry runs queued none;
- `students.csv` in each home is the last acknowledged upload (or an in-doubt one);
- a model: the same files of every non-dry run, in run order, through
  `eams process` on a fresh database give the same counts for every run, and the
  same students and orders tables (nothing half-applied, nothing applied twice);
- held runs keep their spool file; no ERROR line or traceback in the server logs;
- a duplicate email is told apart when the kill fell between the mail server's
  250 and the outbox commit (sender.py documents that window): listed, not failed.
Leftovers that are not failures (spool copies, staging files) are printed as notes.
The exit status is 1 when any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import email
import email.policy
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # run as a script: bench/processing.py would shadow the package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
from processing.model import TEMPLATE_COLUMNS  # noqa: E402  (after the sys.path fix)

HEADER = list(TEMPLATE_COLUMNS)
SFTP_PASSWORD = "crash-campaign-sftp-2026"
DISTRICT_IDS = ("oak", "elm", "pine", "birch", "cedar")
LICENSES = {"oak": 30000, "elm": 30000, "pine": 4000, "birch": 30000, "cedar": 9000}
GUARDED = "oak"  # keeps the default deactivation guard (0.25); the others turn it off
REGULAR_LICENSES = 400
PRELOAD_ROWS = 300
POOL = 25000
SCHOOLS = ("0101", "0102", "0201")
GRADES = ("K", "1", "2", "3", "4", "5", "6", "7", "8")
FIRST_NAMES = ("Ann", "Bea", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal")
CLASSES = ("", "Math 3", "Reading", "Science 5")
CHUNK = 32 * 1024
OPERATOR = "support@myaccess.example"
KILL_POINTS = (
    "mid-upload",
    "mid-filepart",
    "before-rename",
    "after-ack",
    "processing",
    "result-writing",
    "email-queued",
    "email-sending",
    "email-250",
    "random",
    "startup",
)
SFTP_TIMEOUT = 30.0
IDLE_TIMEOUT = 90.0
START_TIMEOUT = 30.0
TERMINAL = ("acked", "doubt", "cut")
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
KNOWN_WINDOW = " [killed between the SMTP 250 and the outbox commit: sender.py's documented window]"


# ---- small helpers ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def digest(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()[:16]


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, poll: float = 0.02
) -> None:
    """Poll `predicate` until true; TimeoutError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(poll)


def query(db_file: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not db_file.exists():
        return []
    with contextlib.closing(sqlite3.connect(db_file, timeout=30)) as db:
        return list(db.execute(sql, params).fetchall())


def eams_quiet(argv: list[str]) -> tuple[int, str]:
    """`eams ARGV` in this process (call it from a worker thread); (exit code, output)."""
    from server.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    return code, out.getvalue()


# ---- files --------------------------------------------------------------------------------


def student_row(district: str, i: int, rng: random.Random, status: str) -> list[str]:
    school = SCHOOLS[i % 3] if rng.random() > 0.1 else rng.choice(SCHOOLS)
    grade = GRADES[(i // 3) % 9] if rng.random() > 0.05 else rng.choice(GRADES)
    first = FIRST_NAMES[i % 8] if rng.random() > 0.3 else rng.choice(FIRST_NAMES)
    password = f"pw-{i:05d}"
    roll = rng.random()
    if roll < 0.05:
        password = f"pw-{i:05d}-{rng.randrange(9)}"
    elif roll < 0.08:
        password = ""  # keeps the current one; PASSWORD_REQUIRED for a new user
    klass = CLASSES[i % 4] if rng.random() > 0.2 else rng.choice(CLASSES)
    return [
        school,
        f"S{i:06d}",
        first,
        f"L{i}",
        grade,
        f"{district}.{i:05d}",
        password,
        klass,
        status,
    ]


def damage(row: list[str], rng: random.Random) -> list[str]:
    """One row error of SPEC §5.1."""
    kind = rng.randrange(7)
    if kind == 0:
        row[4] = "14"  # INVALID_GRADE
    elif kind == 1:
        row[0] = "9999"  # UNKNOWN_SCHOOL
    elif kind == 2:
        row[2] = ""  # MISSING_FIELD
    elif kind == 3:
        row[8] = "Q"  # INVALID_STATUS
    elif kind == 4:
        row.append("extra")  # COLUMN_COUNT
    elif kind == 5:
        row[1] = "1.23457E+11"  # INVALID_FIELD (Excel)
    else:
        row[2] = "N" * 70  # FIELD_TOO_LONG
    return row


def make_file(
    district: str,
    rows: int,
    rng: random.Random,
    *,
    purge: bool = False,
    bad_token: str | None = None,
) -> bytes:
    """A students.csv of exactly `rows` data rows (a bad header when `bad_token`)."""
    header = list(HEADER)
    if bad_token:
        header[2] = f"Nom {bad_token}"
    ids = rng.sample(range(POOL), rows)
    if rng.random() < 0.3 and rows > 10:  # DUPLICATE_STUDENT_ID: a few ids twice
        for k in range(rng.randint(1, 3)):
            ids[-1 - k] = ids[rng.randrange(rows - 4)]
    weights = (
        (0.15, 0.05, 0.7, 0.05, 0.05)
        if purge
        else (
            0.6,
            0.1,
            0.12,
            0.1,
            0.08,
        )
    )
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=rng.choice(("\r\n", "\n")))
    writer.writerow(header)
    for i in ids:
        status = rng.choices(("A", "I", "D", "X", "lower"), weights)[0]
        if status == "lower":
            status = rng.choice(("a", "d", "i"))
        row = student_row(district, i, rng, status)
        if rng.random() < 0.03:
            row = damage(row, rng)
        writer.writerow(row)
    return out.getvalue().encode(rng.choice(("utf-8", "utf-8", "utf-8-sig")))


# ---- the mail server ----------------------------------------------------------------------


_RUN_LINE = re.compile(r"^Run: (\S+)\r?$", re.M)
_DISTRICT_LINE = re.compile(r"^District: .* \(([a-z0-9-]+)\)\r?$", re.M)


class MailSink:
    """aiosmtpd on 127.0.0.1 in its own thread, counting messages per (district, run).

    `arm("hold")`: the next DATA signals `trigger` and is held until the client
    is gone (then not accepted). `arm("after-250")`: the next DATA is accepted
    and signals `trigger` as it answers 250.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: Counter[tuple[str, str]] = Counter()
        self.total = 0
        self.held_dropped = 0
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self._mode = "normal"
        self._signal: Callable[[], None] | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is None:
            self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def arm(self, mode: str, loop: asyncio.AbstractEventLoop, trigger: asyncio.Event) -> None:
        with self._lock:
            self._mode = mode
            self._signal = lambda: loop.call_soon_threadsafe(trigger.set)

    def disarm(self) -> None:
        with self._lock:
            self._mode, self._signal = "normal", None

    def counts(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self.received)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        run = _RUN_LINE.search(text)
        district = _DISTRICT_LINE.search(text)
        key = (district.group(1) if district else "?", run.group(1) if run else "?")
        with self._lock:
            mode, fire = self._mode, self._signal
            if mode != "normal":
                self._mode, self._signal = "normal", None
        if mode == "hold" and fire is not None:
            fire()
            try:
                for _ in range(500):  # until the client is gone (at most 5 s)
                    if server.transport is None or server.transport.is_closing():
                        with self._lock:
                            self.held_dropped += 1
                        return "451 4.3.0 client gone"
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:  # aiosmtpd cancels the handler when the client goes
                with self._lock:
                    self.held_dropped += 1
                raise
        with self._lock:
            self.received[key] += 1
            self.total += 1
        if mode == "after-250" and fire is not None:
            fire()
        return "250 2.0.0 accepted"


# ---- uploads ------------------------------------------------------------------------------


@dataclass
class Upload:
    uid: str
    district: str
    cycle: int
    data: bytes
    rows: int
    dry_run: bool = False
    style: str = "direct"  # direct | winscp | posix | preload
    bad_token: str | None = None
    kind: str = "normal"  # normal | repeat | bad-header | purge | dry | preload
    state: str = "planned"  # planned -> writing/closing/written/removing/renaming -> TERMINAL
    run_id: str | None = None
    file: Path | None = None  # a copy for the model

    @property
    def sig(self) -> tuple[bool, str]:
        return (self.dry_run, f"bad:{self.bad_token}" if self.bad_token else f"rows:{self.rows}")


def run_sig(dry_run: bool, result: dict[str, Any] | None) -> tuple[bool, str]:
    if result is None:
        return (dry_run, "?")
    problem = result.get("file_error")
    if problem:
        token = re.search(r"Nom ([\w-]+)", problem.get("message", ""))
        return (dry_run, f"bad:{token.group(1)}" if token else f"file-error:{problem}")
    return (dry_run, f"rows:{result['rows']}")


@dataclass
class Victim:
    """The upload at which a cycle's kill is triggered, and how."""

    point: str
    uid: str
    fired: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class CycleRecord:
    cycle: int
    point: str
    at_kill: str = ""
    acked: int = 0
    cut: int = 0
    doubt: str = ""
    runs: int = 0
    mails: int = 0
    failures: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)  # duplicates in the sender's documented window
    seconds: float = 0.0


@dataclass
class Summary:
    cycles: list[CycleRecord]
    uploads: Counter[str]
    runs: Counter[str]
    mails: int
    info: list[str]
    seconds: float
    workdir: Path
    landed: Counter[str] = field(default_factory=Counter)

    @property
    def failures(self) -> list[str]:
        return [f"cycle {c.cycle} ({c.point}): {f}" for c in self.cycles for f in c.failures]

    @property
    def known(self) -> list[str]:
        return [f"cycle {c.cycle} ({c.point}): {f}" for c in self.cycles for f in c.known]


# ---- the campaign -------------------------------------------------------------------------


class Campaign:
    def __init__(
        self,
        workdir: Path,
        *,
        cycles: int,
        seed: int,
        districts: int = 4,
        max_rows: int = 20000,
        kill_points: list[str] | None = None,
        host_keys: Path | None = None,
        password_hash: str | None = None,
        eager: float = 0.6,
        delete_results: float = 0.4,
        out: Callable[[str], None] = print,
    ) -> None:
        if not 1 <= districts <= len(DISTRICT_IDS):
            raise ValueError(f"districts: 1..{len(DISTRICT_IDS)}")
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.seed = seed
        self.districts = list(DISTRICT_IDS[:districts])
        self.max_rows = max(max_rows, 100)
        if kill_points is None:
            kill_points = []
            while len(kill_points) < cycles:
                batch = list(KILL_POINTS)
                self.rng.shuffle(batch)
                kill_points += batch
        self.points = kill_points[:cycles]
        self.out = out
        self.eager = eager  # chance of an upload the moment the restarted server's port accepts
        self.delete_results = delete_results  # chance that districts delete their results first
        self.deleted_results: set[tuple[str, str]] = set()  # (district, run id) deleted on purpose
        self.host_keys_source = host_keys
        self.password_hash = password_hash
        self.port = free_port()
        self.mail = MailSink(free_port())
        self.proc: asyncio.subprocess.Process | None = None
        self.log: Path | None = None
        self.starts = 0
        self.uploads: dict[str, list[Upload]] = {d: [] for d in self.districts}
        self.used_rows: dict[str, set[int]] = {d: {PRELOAD_ROWS} for d in self.districts}
        self.matched: dict[str, tuple[int, int]] = {d: (0, 0) for d in self.districts}
        self.modeled: dict[str, int] = {d: 0 for d in self.districts}  # runs applied to model
        self.expected_csv: dict[tuple[str, str], set[str | None]] = {}
        self.reported: set[str] = set()
        self.mails_seen = 0
        self.info: list[str] = []
        self.serial = 0
        self.timing = random.Random(seed + 1)  # kill delays and think times, apart from the plan
        self.killed = asyncio.Event()
        self.killing = False
        self.client_errors: list[str] = []
        self.window: set[tuple[str, str]] = set()
        self.landed: Counter[str] = Counter()  # what the kills left behind
        self.config = workdir / "server" / "config.toml"
        self.model_config = workdir / "model" / "config.toml"

    # ---- paths and config --------------------------------------------------------------

    @property
    def db(self) -> Path:
        return self.workdir / "server" / "data" / "eams.sqlite3"

    @property
    def model_db(self) -> Path:
        return self.workdir / "model" / "data" / "eams.sqlite3"

    def home(self, district: str) -> Path:
        return self.workdir / "server" / "homes" / district

    def write_config(self, folder: Path, *, smtp: bool) -> Path:
        q = json.dumps
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            "[server]",
            'listen = "127.0.0.1"',
            "port = 0",
            "ftp_refusal_port = 0",
            f"host_keys = {q(str(self.workdir / 'host_keys'))}",
            f"homes = {q(str(folder / 'homes'))}",
            f"data = {q(str(folder / 'data'))}",
            "",
            "[operators]",
            f"notify = [{q(OPERATOR)}]",
        ]
        if smtp:
            lines += [
                "",
                "[smtp]",
                'host = "127.0.0.1"',
                f"port = {self.mail.port}",
                'sender = "eams@myaccess.example"',
            ]
        for d in self.districts:
            lines += [
                "",
                f"[districts.{d}]",
                f"name = {q(d.title() + ' School District')}",
                f"username = {q(d)}",
                f"password_hash = {q(self.password_hash)}",
                f'notify = ["sis-admin@{d}.k12.example"]',
                "stale_after_hours = 0",
            ]
            if d != GUARDED:
                lines.append("deactivation_guard = 1")
            lines += [
                "",
                f"[districts.{d}.order]",
                f'id = "ENT-{d.upper()}-2026"',
                f"licenses = {LICENSES[d]}",
                "",
                f"[[districts.{d}.regular_orders]]",
                f'id = "REG-{d.upper()}-1001"',
                f"licenses = {REGULAR_LICENSES}",
            ]
            for code in SCHOOLS:
                lines += ["", f"[[districts.{d}.schools]]", f'code = "{code}"']
                lines += [f'name = "School {code}"']
        path = folder / "config.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    # ---- the server process ------------------------------------------------------------

    async def start_server(self) -> None:
        """Spawn `eams serve`; returns at once (use `wait_listening` or connect-retry)."""
        self.starts += 1
        self.log = self.workdir / "logs" / f"serve-{self.starts:02d}.log"
        self.log.parent.mkdir(exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(ROOT),
            )
        self.killed = asyncio.Event()
        self.killing = False

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log else ""

    async def wait_listening(self) -> None:
        def listening() -> bool:
            if self.proc is None or self.proc.returncode is not None:
                raise RuntimeError(f"eams serve exited; log:\n{self.log_text()[-3000:]}")
            return f"listening on 127.0.0.1:{self.port}" in self.log_text()

        await until(listening, START_TIMEOUT, "eams serve listening")

    async def kill(self) -> str:
        """kill -9 the server (once); return what the database looked like at that moment."""
        if self.proc is None or self.killed.is_set():
            return ""
        self.killing = True
        moving = sum(
            u.state not in (*TERMINAL, "planned") for ups in self.uploads.values() for u in ups
        )
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.killed.set()
        # Messages the mail server accepted whose outbox row is still pending: the kill
        # fell between the SMTP 250 and the sender's commit; a resend will follow.
        pending = set(
            query(self.db, "SELECT district_id, run_id FROM outbox WHERE state = 'pending'")
        )
        self.window |= {key for key in self.mail.counts() if key in pending}
        return await asyncio.to_thread(self.snapshot, moving)

    def snapshot(self, moving: int) -> str:
        queued = query(self.db, "SELECT count(*) FROM runs WHERE state IN ('queued','approved')")
        finished = query(
            self.db, "SELECT district_id, run_id FROM runs WHERE state IN ('done','failed','held')"
        )
        missing = sum(
            not (self.home(d) / "results" / f"{r}.result.json").exists() for d, r in finished
        )
        pending = query(self.db, "SELECT count(*) FROM outbox WHERE state = 'pending'")
        q = queued[0][0] if queued else 0
        p = pending[0][0] if pending else 0
        self.landed["kills"] += 1
        for what, count in (
            ("runs queued", q),
            ("results missing", missing),
            ("emails pending", p),
            ("uploads in flight", moving),
        ):
            self.landed[what] += count > 0
        return f"queued={q} nores={missing} mail={p} xfer={moving}"

    async def stop_server(self) -> int | None:
        """SIGTERM and wait (SIGKILL after a bound); the exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()
        return self.proc.returncode

    # ---- clients -----------------------------------------------------------------------

    async def connect(self, district: str, timeout: float) -> asyncssh.SSHClientConnection:
        """Connect as soon as the port accepts (bounded retries)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await asyncssh.connect(
                    "127.0.0.1",
                    self.port,
                    username=district,
                    password=SFTP_PASSWORD,
                    known_hosts=None,
                    client_keys=None,
                    agent_path=None,
                    connect_timeout=10,
                    login_timeout=20,
                )
            except (OSError, asyncssh.Error):
                if self.killing or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    def plan_upload(self, district: str, cycle: int, *, kind: str | None = None) -> Upload:
        rng = self.rng
        self.serial += 1
        uid = f"{district}-u{self.serial:03d}"
        previous = [u for u in self.uploads[district] if not u.dry_run and not u.bad_token]
        if kind is None:
            roll = rng.random()
            if roll < 0.12 and previous:
                kind = "repeat"
            elif roll < 0.17:
                kind = "bad-header"
            elif roll < 0.27:
                kind = "dry"
            elif roll < 0.32 and district == GUARDED:
                kind = "purge"
            else:
                kind = "normal"
        style = rng.choices(("direct", "winscp", "posix"), (0.5, 0.3, 0.2))[0]
        if kind == "repeat" and previous:
            src = previous[-1]
            upload = Upload(uid, district, cycle, src.data, src.rows, style=style, kind=kind)
            upload.file = src.file
            return upload
        if kind == "bad-header":
            data = make_file(district, 5, rng, bad_token=uid)
            return Upload(uid, district, cycle, data, 0, style=style, bad_token=uid, kind=kind)
        rows = self.pick_rows(district, big=kind == "big")
        data = make_file(district, rows, rng, purge=kind == "purge")
        upload = Upload(uid, district, cycle, data, rows, dry_run=kind == "dry", style=style)
        upload.kind = kind
        return upload

    def pick_rows(self, district: str, *, big: bool = False) -> int:
        rng, top = self.rng, self.max_rows
        roll = rng.random()
        if big:
            n = rng.randint(min(8000, top // 2), top)
        elif roll < 0.45:
            n = rng.randint(50, 400)
        elif roll < 0.8:
            n = rng.randint(400, min(4000, top))
        else:
            n = rng.randint(min(4000, top), top)
        used = self.used_rows[district]
        while n in used:
            n = n + 1 if n < top else rng.randint(50, top)
        used.add(n)
        return n

    def save(self, upload: Upload) -> None:
        if upload.file is None and not upload.dry_run and not upload.bad_token:
            upload.file = self.workdir / "uploads" / f"{upload.uid}.csv"
            upload.file.parent.mkdir(exist_ok=True)
            upload.file.write_bytes(upload.data)

    def expect(self, upload: Upload, content: bytes | None, *, certain: bool) -> None:
        key = (upload.district, "check" if upload.dry_run else "top")
        if certain:
            self.expected_csv[key] = {digest(content)}
        else:
            self.expected_csv.setdefault(key, {None}).add(digest(content))

    async def upload(self, sftp: asyncssh.SFTPClient, up: Upload, victim: Victim | None) -> None:
        """One upload, its state kept current for the checks; raises when the server dies."""
        mine = victim is not None and victim.uid == up.uid
        folder = "check/" if up.dry_run else ""
        target = f"{folder}students.csv"
        name = {"direct": target, "winscp": f"{target}.filepart", "posix": f"{target}.part"}[
            up.style
        ]
        pieces = [(o, up.data[o : o + CHUNK]) for o in range(0, len(up.data), CHUNK)]
        if len(pieces) == 1:
            half = len(up.data) // 2
            pieces = [(0, up.data[:half]), (half, up.data[half:])]
        self.save(up)
        up.state = "writing"
        handle = await asyncio.wait_for(sftp.open(name, "wb"), SFTP_TIMEOUT)
        for index, (offset, piece) in enumerate(pieces):
            midway = mine and victim and index == len(pieces) // 2
            if midway and victim and victim.point in ("mid-upload", "mid-filepart"):
                await self.fire(victim)
            await asyncio.wait_for(handle.write(piece, offset), SFTP_TIMEOUT)
        if up.style == "direct":
            up.state = "closing"
            await asyncio.wait_for(handle.close(), SFTP_TIMEOUT)
        else:
            await asyncio.wait_for(handle.close(), SFTP_TIMEOUT)  # completes nothing
            up.state = "written"
            if mine and victim and victim.point == "before-rename":
                await self.fire(victim)
            if up.style == "winscp" and await sftp.exists(target):
                up.state = "removing"
                await asyncio.wait_for(sftp.remove(target), SFTP_TIMEOUT)
                self.expect(up, None, certain=True)
            up.state = "renaming"
            rename = sftp.rename if up.style == "winscp" else sftp.posix_rename
            await asyncio.wait_for(rename(name, target), SFTP_TIMEOUT)
        up.state = "acked"
        self.expect(up, up.data, certain=True)
        if mine and victim:
            await self.after_ack(victim)

    def settle(self, up: Upload) -> None:
        """The server died during `up`: was its CLOSE/RENAME sent (in doubt) or not (cut)?"""
        if up.state in ("closing", "renaming"):
            up.state = "doubt"
            self.expect(up, up.data, certain=False)
        elif up.state == "removing":
            up.state = "cut"
            self.expect(up, None, certain=False)
        elif up.state in ("writing", "written"):
            up.state = "cut"

    async def fire(self, victim: Victim) -> None:
        """The victim asks for the kill now and waits until the server is dead."""
        victim.fired.set()
        await asyncio.wait_for(self.killed.wait(), SFTP_TIMEOUT)

    async def after_ack(self, victim: Victim) -> None:
        point = victim.point
        if point == "after-ack":
            await self.fire(victim)
        elif point in ("processing", "result-writing", "email-queued"):
            victim.fired.set()  # the controller takes it from here (it knows the run)

    async def session(
        self, district: str, plan: list[Upload], victim: Victim | None, *, eager: bool = False
    ) -> None:
        """One district's SFTP session: its planned uploads in order, until the server dies."""
        conn: asyncssh.SSHClientConnection | None = None
        current: Upload | None = None
        try:
            conn = await self.connect(district, START_TIMEOUT if eager else 10)
            async with conn.start_sftp_client() as sftp:
                for up in plan:
                    if self.killed.is_set():
                        break
                    current = up
                    self.uploads[district].append(up)
                    await self.upload(sftp, up, victim)
                    current = None
                    await asyncio.sleep(self.timing.uniform(0, 0.25))
        except (OSError, asyncssh.Error, TimeoutError, EOFError) as exc:
            if not self.killing:  # the server is alive: this upload failed for real
                where = f" in {current.uid} ({current.style}, {current.state})" if current else ""
                self.client_errors.append(f"{district} client error{where}: {exc!r}")
        finally:
            if current is not None:
                self.settle(current)
            if conn is not None:
                conn.abort()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.wait_closed(), 5)

    # ---- one cycle ---------------------------------------------------------------------

    def plan_cycle(self, cycle: int, point: str) -> tuple[dict[str, list[Upload]], Victim]:
        rng = self.rng
        plans = {
            d: [self.plan_upload(d, cycle) for _ in range(rng.randint(1, 3))]
            for d in self.districts
        }
        victim_district = rng.choice(self.districts)
        kind = {"processing": "big", "result-writing": "normal"}.get(point, "normal")
        special = self.plan_upload(victim_district, cycle, kind=kind)
        if point == "mid-upload":
            special.style = "direct"
        elif point == "mid-filepart":
            special.style = "winscp"
        elif point == "before-rename":
            special.style = rng.choice(("winscp", "posix"))
        plan = plans[victim_district]
        plan.insert(rng.randint(0, len(plan) - 1), special)
        return plans, Victim(point, special.uid)

    async def kill_controller(self, victim: Victim) -> str:
        """Wait for the kill point, kill; returns the snapshot at the kill."""
        point = victim.point
        loop = asyncio.get_running_loop()
        if point in ("email-sending", "email-250"):
            self.mail.arm("hold" if point == "email-sending" else "after-250", loop, victim.fired)
        if point in ("random", "startup"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(victim.fired.wait(), self.timing.uniform(0.3, 3.0))
            return await self.kill()
        await victim.fired.wait()
        if point == "email-sending":
            dropped = self.mail.held_dropped
            snapshot = await self.kill()
            try:
                await until(lambda: self.mail.held_dropped > dropped, 6, "the held DATA")
            except TimeoutError:
                return snapshot + " | held DATA NOT dropped"
            return snapshot + " | held DATA dropped"
        if point == "processing":
            await asyncio.sleep(self.timing.uniform(0.0, 0.6))
        elif point in ("result-writing", "email-queued"):
            up = next(u for ups in self.uploads.values() for u in ups if u.uid == victim.uid)
            await self.wait_victim_run(up, point)
        return await self.kill()

    async def wait_victim_run(self, up: Upload, point: str) -> None:
        rows = query(
            self.db,
            "SELECT run_id FROM runs WHERE district_id = ? ORDER BY seq DESC LIMIT 1",
            (up.district,),
        )
        if not rows:
            return
        run_id = rows[0][0]
        results = self.home(up.district) / "results"

        def reached() -> bool:
            state = query(
                self.db,
                "SELECT state FROM runs WHERE district_id = ? AND run_id = ?",
                (up.district, run_id),
            )
            finished = bool(state) and state[0][0] not in ("queued", "approved")
            if point == "result-writing":
                return finished or any(results.glob(f"{run_id}.*"))
            tried = query(
                self.db,
                "SELECT count(*) FROM outbox WHERE district_id = ? AND run_id = ? "
                "AND state = 'pending' AND attempts >= 1",
                (up.district, run_id),
            )
            return finished and bool(tried) and tried[0][0] > 0

        with contextlib.suppress(TimeoutError):
            await until(reached, 20, f"run {run_id} at {point}", poll=0.001)

    async def workload(self, record: CycleRecord) -> None:
        plans, victim = self.plan_cycle(record.cycle, record.point)
        self.mail.disarm()
        if record.point == "email-queued" or (
            record.point not in ("email-sending", "email-250") and self.rng.random() < 0.25
        ):
            self.mail.stop()
        sessions = [asyncio.create_task(self.session(d, p, victim)) for d, p in plans.items()]
        controller = asyncio.create_task(self.kill_controller(victim))
        done = asyncio.gather(*sessions)
        await asyncio.wait({controller, done}, timeout=90, return_when=asyncio.FIRST_COMPLETED)
        if not controller.done():
            # The uploads are over; the kill point may still come (a run being processed,
            # an email on its way). Wait for it within a bound, else kill anyway.
            await asyncio.wait({controller}, timeout=30)
        if controller.done():
            record.at_kill = controller.result()
        else:
            controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await controller
            record.at_kill = "(fallback) " + await self.kill()
        self.mail.disarm()
        await asyncio.wait_for(done, 60)

    async def recover(self, record: CycleRecord) -> None:
        """Restart (maybe killing again), with an eager upload in some cycles; wait idle."""
        rng = self.rng
        if record.point == "email-queued":
            # Restart with the mail server still down: the email must stay queued.
            await self.start_server()
            await self.wait_listening()
            await self.wait_idle(drain=False)
            pending = query(self.db, "SELECT count(*) FROM outbox WHERE state = 'pending'")
            record.at_kill += f" | 2nd kill: mail={pending[0][0] if pending else 0}"
            if not pending or pending[0][0] == 0:
                record.failures.append("email-queued: no email left pending, mail server down")
            await self.kill()
        self.mail.start()
        if record.point == "startup":
            await self.start_server()
            await asyncio.sleep(self.timing.uniform(0.05, 1.5))
            record.at_kill += " | restart killed: " + (await self.kill())
        if rng.random() < self.delete_results:
            # District scripts delete result files once fetched (SPEC §3: read and delete);
            # those stay deleted. Only runs whose files were never written (the crash
            # came between commit and write) get them at the restart.
            for d in self.districts:
                for path in (self.home(d) / "results").glob("*"):
                    self.deleted_results.add((d, path.name.split(".", 1)[0]))
                    path.unlink()
            record.at_kill += " | results deleted"
        queued = [
            r[0]
            for r in query(self.db, "SELECT DISTINCT district_id FROM runs WHERE state = 'queued'")
        ]
        await self.start_server()
        eager: asyncio.Task[None] | None = None
        if rng.random() < self.eager:
            # An upload the moment the port accepts, by a district with runs left queued.
            district = rng.choice(sorted(queued) or self.districts)
            up = self.plan_upload(district, record.cycle, kind="normal")
            eager = asyncio.create_task(self.session(district, [up], None, eager=True))
            record.at_kill += f" | eager {district}"
        try:
            await self.wait_listening()
            if eager is not None:
                await asyncio.wait_for(eager, 60)
            await self.wait_idle(drain=True)
        except (TimeoutError, RuntimeError) as exc:
            record.failures.append(str(exc).splitlines()[0])

    async def wait_idle(self, *, drain: bool) -> None:
        def idle() -> bool:
            if self.proc is None or self.proc.returncode is not None:
                raise RuntimeError(f"eams serve exited; log:\n{self.log_text()[-3000:]}")
            if query(self.db, "SELECT 1 FROM runs WHERE state IN ('queued','approved') LIMIT 1"):
                return False
            for d, r in query(
                self.db,
                "SELECT district_id, run_id FROM runs WHERE state IN ('done','failed','held')",
            ):
                if (d, r) in self.deleted_results:
                    continue
                if not (self.home(d) / "results" / f"{r}.result.json").exists():
                    return False
            return not (
                drain and query(self.db, "SELECT 1 FROM outbox WHERE state = 'pending' LIMIT 1")
            )

        await until(idle, IDLE_TIMEOUT, "the restarted server to be idle", poll=0.05)

    # ---- checks ------------------------------------------------------------------------

    def runs_of(self, district: str) -> list[tuple[str, int, str, bool, dict[str, Any] | None]]:
        rows = query(
            self.db,
            "SELECT run_id, seq, state, dry_run, result_json, spool_path FROM runs "
            "WHERE district_id = ? ORDER BY seq",
            (district,),
        )
        return [(r[0], r[1], r[2], bool(r[3]), json.loads(r[4]) if r[4] else None) for r in rows]

    def check_runs(self) -> list[str]:
        """Acknowledged uploads <-> runs, per district, in order (incremental)."""
        problems = []
        for d in self.districts:
            runs = self.runs_of(d)
            ups = self.uploads[d]
            run_at, up_at = self.matched[d]
            while up_at < len(ups) and ups[up_at].state in TERMINAL:
                up = ups[up_at]
                up_at += 1
                if up.state == "cut":
                    continue
                run = runs[run_at] if run_at < len(runs) else None
                if run is not None and run_sig(run[3], run[4]) == up.sig:
                    up.run_id = run[0]
                    run_at += 1
                elif up.state == "acked":
                    problems.append(
                        f"{up.uid} ({up.style}, {up.sig[1]}) acknowledged but no run for it"
                        + (f" (next run {run[0]} is {run_sig(run[3], run[4])[1]})" if run else "")
                    )
            for run in runs[run_at:]:
                sig = run_sig(run[3], run[4])
                cut = [u.uid for u in ups if u.state == "cut" and u.sig == sig]
                problems.append(
                    f"{d} run {run[0]} ({sig[1]}, {run[2]}) matches no acknowledged upload"
                    + (f": it is the cut upload {cut[-1]}" if cut else "")
                )
            self.matched[d] = (len(runs), up_at)
            for run in runs:
                if run[2] in ("queued", "approved"):
                    problems.append(f"{d} run {run[0]} still {run[2]} when idle")
        return problems

    def check_results(self) -> list[str]:
        problems = []
        for d in self.districts:
            folder = self.home(d) / "results"
            for run_id, _seq, state, _dry, result in self.runs_of(d):
                if state not in ("done", "failed", "held") or (d, run_id) in self.deleted_results:
                    continue
                path = folder / f"{run_id}.result.json"
                if not path.exists():
                    problems.append(f"{d} run {run_id} ({state}): no result.json")
                    continue
                on_disk = json.loads(path.read_text(encoding="utf-8"))
                if result is None or on_disk.get("state") != state or on_disk != result:
                    problems.append(f"{d} run {run_id}: result.json differs from the database")
                if not (folder / f"{run_id}.result.txt").exists():
                    problems.append(f"{d} run {run_id}: no result.txt")
                rejected = bool(result and (result["errors"] or result["file_error"]))
                if (folder / f"{run_id}.errors.csv").exists() != rejected:
                    problems.append(
                        f"{d} run {run_id}: errors.csv {'missing' if rejected else 'unexpected'}"
                    )
        return problems

    def check_invariant(self) -> list[str]:
        rows = query(
            self.db,
            "SELECT o.district_id, o.id, o.used, (SELECT count(*) FROM students s "
            "WHERE s.district_id = o.district_id AND s.order_id = o.id AND s.active = 1) "
            "FROM orders o",
        )
        return [f"{d}/{o}: used {u} but {a} active students" for d, o, u, a in rows if u != a]

    def check_emails(self, *, drained: bool) -> list[str]:
        problems = []
        outbox = query(
            self.db,
            "SELECT district_id, run_id, state, last_error FROM outbox WHERE run_id IS NOT NULL",
        )
        queued: Counter[tuple[str, str]] = Counter()
        for d, r, state, error in outbox:
            queued[(d, r)] += 1
            if state == "failed" or (drained and state != "sent"):
                problems.append(f"email of {d} run {r} is {state} ({error})")
        runs = query(self.db, "SELECT district_id, run_id, state, dry_run FROM runs")
        finished = {(d, r): bool(dry) for d, r, s, dry in runs if s in ("done", "failed", "held")}
        for key, dry in finished.items():
            want = 0 if dry else 1
            if queued[key] != want:
                problems.append(f"{key[0]} run {key[1]}: {queued[key]} email(s) queued, not {want}")
        received = self.mail.counts()
        for key, count in received.items():
            if key not in queued:
                problems.append(f"mail server got {count} message(s) for unknown run {key}")
            elif count > queued[key]:
                problems.append(
                    f"DUPLICATE: {key[0]} run {key[1]} received {count} times "
                    f"(queued {queued[key]})" + (KNOWN_WINDOW if key in self.window else "")
                )
        if drained:
            for key, count in queued.items():
                if received[key] < count:
                    problems.append(
                        f"{key[0]} run {key[1]}: queued {count}, received {received[key]}"
                    )
        return problems

    def check_homes(self) -> list[str]:
        problems = []
        for (d, where), allowed in self.expected_csv.items():
            path = self.home(d) / ("check" if where == "check" else "") / "students.csv"
            actual = digest(path.read_bytes()) if path.exists() else None
            if actual not in allowed:
                problems.append(
                    f"{d} {where}/students.csv is {actual}, "
                    f"expected one of {sorted(map(str, allowed))}"
                )
        return problems

    def check_spool(self) -> list[str]:
        problems = []
        held = query(
            self.db, "SELECT district_id, run_id, spool_path FROM runs WHERE state = 'held'"
        )
        keep = set()
        for d, r, spool in held:
            keep.add(spool)
            if not spool or not Path(spool).exists():
                problems.append(f"held run {d} {r} lost its spool file (cannot be approved)")
        spool_root = self.workdir / "server" / "data" / "spool"
        finished = {
            r[0] for r in query(self.db, "SELECT spool_path FROM runs WHERE state != 'held'")
        }
        orphans = [p for p in spool_root.rglob("*.csv") if str(p) not in keep]
        of_runs = sum(str(p) in finished for p in orphans)
        if of_runs:
            self.note(f"spool: {of_runs} file(s) of finished runs left (kill after the commit)")
        if len(orphans) - of_runs:
            self.note(
                f"spool: {len(orphans) - of_runs} file(s) of no run left (kill between the "
                "spool copy and the queued-run insert)"
            )
        staging = [p for d in self.districts for p in self.home(d).rglob(".eams-staging-*")]
        if staging:
            self.note(f"homes: {len(staging)} staging file(s) left by killed uploads")
        return problems

    def check_logs(self) -> list[str]:
        """ERROR lines and tracebacks in the server logs since the last check."""
        problems = []
        for log in sorted((self.workdir / "logs").glob("serve-*.log")):
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
            for number, line in enumerate(lines):
                if " ERROR " in line or " CRITICAL " in line:
                    cause = next(
                        (
                            x
                            for x in lines[number + 1 : number + 60]
                            if re.match(r"^\w+(Error|Exception)", x)
                        ),
                        "",
                    )
                    problems.append(f"{log.name}: {line[24:]}{' -> ' + cause if cause else ''}")
        return problems

    def note(self, text: str) -> None:
        """Info that is not a check failure; the latest count per kind is kept."""
        kind = re.sub(r"\d+", "N", text)
        self.info = [t for t in self.info if re.sub(r"\d+", "N", t) != kind] + [text]

    def resync_model(self) -> None:
        """After a divergence: the model restarts from the server's state (one report)."""
        with (
            contextlib.closing(sqlite3.connect(self.db, timeout=30)) as source,
            contextlib.closing(sqlite3.connect(self.model_db, timeout=30)) as target,
        ):
            source.backup(target)
        shutil.copy2(self.db.parent / "secret.key", self.model_db.parent / "secret.key")

    async def check_model(self) -> list[str]:
        """Apply the files of new non-dry runs to the model, in run order; compare."""
        problems = await self.compare_model()
        if problems:
            await asyncio.to_thread(self.resync_model)
        return problems

    async def compare_model(self) -> list[str]:
        problems = []
        for d in self.districts:
            runs = [r for r in self.runs_of(d) if not r[3]]
            by_run = {u.run_id: u for u in self.uploads[d] if u.run_id}
            for run_id, _seq, _state, _dry, result in runs[self.modeled[d] :]:
                up = by_run.get(run_id)
                self.modeled[d] += 1
                if up is None or result is None:
                    continue
                if up.bad_token:
                    continue  # a file error applies nothing; its state was compared by sig
                assert up.file is not None
                argv = ["process", "--district", d, "--config", str(self.model_config)]
                if up.style == "preload":
                    argv += ["--order", f"REG-{d.upper()}-1001"]
                code, output = await asyncio.to_thread(eams_quiet, [*argv, str(up.file)])
                last = query(
                    self.model_db,
                    "SELECT result_json FROM runs WHERE district_id = ? ORDER BY seq DESC LIMIT 1",
                    (d,),
                )
                if code not in (0, 1) or not last:
                    problems.append(f"model: eams process {up.uid} exited {code}: {output[-300:]}")
                    continue
                model = json.loads(last[0][0])
                keys = COUNTED
                ours = {k: result.get(k) for k in keys} | {"used": result["licenses"]["used"]}
                theirs = {k: model.get(k) for k in keys} | {"used": model["licenses"]["used"]}
                if ours != theirs:
                    diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
                    problems.append(f"{d} run {run_id} ({up.uid}) differs from the model: {diff}")
        columns = (
            "district_id, student_id, school_code, first_name, last_name, grade, username, "
            "class_name, active, order_id"
        )
        sql = f"SELECT {columns} FROM students ORDER BY district_id, student_id"
        ours_students = await asyncio.to_thread(query, self.db, sql)
        model_students = await asyncio.to_thread(query, self.model_db, sql)
        if ours_students != model_students:
            a, b = set(ours_students), set(model_students)
            sample = sorted(a - b)[:1] + sorted(b - a)[:1]
            problems.append(
                f"students table differs from the model: {len(a - b)} rows only in the server, "
                f"{len(b - a)} only in the model, e.g. {sample}"
            )
        sql = "SELECT district_id || '/' || id, used FROM orders"
        ours_orders, model_orders = dict(query(self.db, sql)), dict(query(self.model_db, sql))
        if ours_orders != model_orders:
            diff = {
                k: (v, model_orders.get(k))
                for k, v in ours_orders.items()
                if v != model_orders.get(k)
            }
            problems.append(f"orders differ from the model (used: server, model): {diff}")
        return problems

    async def check(self, record: CycleRecord, *, drained: bool = True) -> None:
        runs_before = sum(self.matched[d][0] for d in self.districts)
        problems = self.check_runs()
        record.runs = sum(self.matched[d][0] for d in self.districts) - runs_before
        problems += self.check_results()
        problems += self.check_invariant()
        problems += self.check_emails(drained=drained)
        problems += self.check_homes()
        problems += self.check_spool()
        problems += await self.check_model()
        problems += self.client_errors
        self.client_errors = []
        problems += self.check_logs()
        record.mails = self.mail.total - self.mails_seen
        self.mails_seen = self.mail.total
        for problem in problems:
            if problem not in self.reported:
                self.reported.add(problem)
                (record.known if KNOWN_WINDOW in problem else record.failures).append(problem)
        cycle_ups = [u for ups in self.uploads.values() for u in ups if u.cycle == record.cycle]
        record.acked = sum(u.state == "acked" for u in cycle_ups)
        record.cut = sum(u.state == "cut" for u in cycle_ups)
        doubts = [u for u in cycle_ups if u.state == "doubt"]
        record.doubt = "/".join("run" if u.run_id else "none" for u in doubts) if doubts else "-"

    # ---- the whole campaign ------------------------------------------------------------

    async def prepare(self) -> None:
        if self.password_hash is None:
            from server.accounts import hash_password

            self.password_hash = await asyncio.to_thread(hash_password, SFTP_PASSWORD)
        if self.host_keys_source is not None:
            shutil.copytree(self.host_keys_source, self.workdir / "host_keys")
        self.config = self.write_config(self.workdir / "server", smtp=True)
        self.model_config = self.write_config(self.workdir / "model", smtp=False)
        for d in self.districts:  # initial loads onto the regular orders, server and model
            self.serial += 1
            data = make_file(d, PRELOAD_ROWS, random.Random(f"{self.seed}-{d}"))
            data = data.replace(b",X\r\n", b",A\r\n").replace(b",X\n", b",A\n")
            up = Upload(f"{d}-preload", d, 0, data, PRELOAD_ROWS, style="preload", kind="preload")
            self.save(up)
            assert up.file is not None
            argv = ["process", "--district", d, "--order", f"REG-{d.upper()}-1001"]
            code, output = await asyncio.to_thread(
                eams_quiet, [*argv, "--config", str(self.config), str(up.file)]
            )
            if code not in (0, 1):
                raise RuntimeError(f"initial load of {d} failed ({code}): {output}")
            up.state = "acked"
            self.uploads[d].append(up)

    def row(self, record: CycleRecord) -> str:
        verdict = f"FAIL ({len(record.failures)})" if record.failures else "OK"
        if record.known:
            verdict += f" +{len(record.known)} dup (known window)"
        return (
            f"{record.cycle:>3}  {record.point:<14} {record.at_kill:<58} {record.acked:>3} "
            f"{record.cut:>3} {record.doubt:<9} {record.runs:>4} {record.mails:>4} "
            f"{record.seconds:>5.1f}  {verdict}"
        )

    async def run(self) -> Summary:
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        records: list[CycleRecord] = []
        try:
            await self.prepare()
            self.mail.start()
            await self.start_server()
            await self.wait_listening()
            self.out(
                f"crash campaign: {len(self.points)} cycles, seed {self.seed}, districts "
                f"{', '.join(self.districts)}, up to {self.max_rows} rows, in {self.workdir}"
            )
            self.out(
                "cyc  kill point     at the kill (runs queued, results missing, mails pending, "
                "uploads moving)  ack cut doubt     runs mail  secs  checks"
            )
            for cycle, point in enumerate(self.points, start=1):
                record = CycleRecord(cycle, point)
                t0 = time.monotonic()
                await self.workload(record)
                await self.recover(record)
                await self.check(record)
                record.seconds = time.monotonic() - t0
                records.append(record)
                self.out(self.row(record))
                for failure in record.failures:
                    self.out(f"       FAIL {failure}")
                for known in record.known:
                    self.out(f"       known {known}")
            status = await self.stop_server()
            if status != 0 or "stopped" not in self.log_text():
                records[-1].failures.append(f"SIGTERM: exit status {status}, not a clean stop")
        finally:
            if self.proc is not None and self.proc.returncode is None:
                self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()
            self.mail.stop()
        uploads: Counter[str] = Counter(
            u.state if u.state != "doubt" else f"doubt->{'run' if u.run_id else 'none'}"
            for ups in self.uploads.values()
            for u in ups
            if u.style != "preload"
        )
        states: Counter[str] = Counter(
            r[0]
            for r in query(
                self.db, "SELECT CASE WHEN dry_run THEN 'dry ' || state ELSE state END FROM runs"
            )
        )
        return Summary(
            records,
            uploads,
            states,
            self.mail.total,
            self.info,
            time.monotonic() - started,
            self.workdir,
            self.landed,
        )


def print_summary(summary: Summary, out: Callable[[str], None] = print) -> None:
    cycles = summary.cycles
    ok = sum(not c.failures for c in cycles)
    out("")
    out(f"summary: {ok}/{len(cycles)} cycles OK in {summary.seconds:.0f} s")
    out(f"  kill points: {dict(Counter(c.point for c in cycles))}")
    out(f"  uploads: {dict(summary.uploads)}")
    out(f"  runs: {dict(summary.runs)}")
    out(f"  emails received: {summary.mails}")
    kills = summary.landed.pop("kills", 0)
    out(f"  {kills} kills; how many left: {dict(summary.landed)}")
    for line in summary.info:
        out(f"  note: {line}")
    known = summary.known
    out(f"  duplicate emails in the sender's documented 250->commit window: {len(known)}")
    for line in known:
        out(f"    {line}")
    failures = summary.failures
    out(f"  failures: {len(failures)}")
    for failure in failures:
        out(f"    {failure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--districts", type=int, default=4, help="3-5")
    parser.add_argument("--max-rows", type=int, default=20000)
    parser.add_argument("--points", help="comma-separated kill points (default: all, shuffled)")
    parser.add_argument("--eager", type=float, default=0.6, help="chance of an eager upload")
    parser.add_argument(
        "--delete-results", type=float, default=0.4, help="chance results are deleted first"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    points = args.points.split(",") if args.points else None
    if points and set(points) - set(KILL_POINTS):
        parser.error(f"unknown kill points; known: {', '.join(KILL_POINTS)}")
    workdir = Path(tempfile.mkdtemp(prefix="eams-crash-"))
    campaign = Campaign(
        workdir,
        cycles=args.cycles,
        seed=args.seed,
        districts=args.districts,
        max_rows=args.max_rows,
        kill_points=points,
        eager=args.eager,
        delete_results=args.delete_results,
        out=lambda line: print(line, flush=True),
    )
    summary = asyncio.run(campaign.run())
    print_summary(summary)
    if args.keep or summary.failures:
        print(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not summary.failures else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
