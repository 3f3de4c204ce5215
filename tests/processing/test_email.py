"""Email end to end (SPEC §6.4, §2 [smtp]/[operators]) against a REAL SMTP server.

Every test talks to an aiosmtpd server on 127.0.0.1 (a fixture; a free port is
picked by binding a socket), runs files through the real Runner (or `eams
process` / `eams serve`), and delivers with the real outbox Sender, configured
with short back-off so retries take about a second. Nothing waits with a bare
sleep: conditions are polled with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
import json
import logging
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from processing.config import Config
from processing.model import QueuedEmail, utc_now
from processing.notify import build_message, subject_for
from processing.passwords import StudentPasswords
from processing.runner import Runner, RunOutcome
from processing.sender import Sender
from processing.spool import accept
from processing.stale import check_stale
from processing.store import Store
from tests.conftest import (
    ORDERS,
    PASSWORD_MARK,
    SHE,
    SPR,
    csv_text,
    db_path,
    eams,
    make_config,
    pw,
    student,
)

PROJECT = Path(__file__).resolve().parents[2]
ENT, REG = ORDERS[SPR]
SENDER = "MY Access eAMS <eams-notices@myaccess.example>"
SENDER_ADDRESS = "eams-notices@myaccess.example"
OPERATOR = "support@myaccess.example"
DISTRICT_TO = {SPR: "sis-admin@springfield.k12.example", SHE: "sis-admin@shelbyville.k12.example"}
ACCENTED = "École Saint-Jérôme"
TIMEOUT = 15.0

_files = itertools.count(1)


# ---- students.csv rows (student() and pw() come from conftest) --------------------------


def ids(prefix: str, first: int, last: int) -> list[str]:
    return [f"{prefix}{n:03d}" for n in range(first, last + 1)]


BAD_HEADER = "School Code,Student ID,Last Name,First Name,Grade,Username,Password,Class Name,Status"


# ---- the SMTP server -------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes

    @property
    def msg(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def subject(self) -> str:
        return str(self.msg["Subject"])

    @property
    def body(self) -> str:
        part = self.msg.get_body(("plain",))
        assert part is not None
        text = part.get_content()
        assert isinstance(text, str)
        return text.replace("\r\n", "\n")

    @property
    def message_id(self) -> str:
        return str(self.msg["Message-ID"])


@dataclass
class MailServer:
    """An aiosmtpd server in its own thread that records what it accepts.

    `refuse` maps an address to the reply its RCPT gets; `rcpt_failures`
    gives an address that many 451 replies first; `data_failures` answers
    451 to that many DATA commands before accepting.
    """

    port: int
    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    rcpt_failures: dict[str, int] = field(default_factory=dict)
    data_failures: int = 0
    data_commands: int = 0
    _controller: Controller | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        with self._lock:
            if address in self.refuse:
                return self.refuse[address]
            if self.rcpt_failures.get(address, 0) > 0:
                self.rcpt_failures[address] -= 1
                return f"451 4.2.0 <{address}>: mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.data_commands += 1
            if self.data_failures > 0:
                self.data_failures -= 1
                return "451 4.3.0 temporary local problem, try again later"
            self.received.append(
                Received(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.content))
            )
        return "250 2.0.0 accepted"

    def start(self) -> None:
        assert self._controller is None
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def with_subject(self, subject: str) -> list[Received]:
        return [m for m in self.messages() if m.subject == subject]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def mail_server() -> Iterator[MailServer]:
    """A mail server on a free port, NOT started yet (for outage tests)."""
    server = MailServer(free_port())
    yield server
    server.stop()


@pytest.fixture
def smtp(mail_server: MailServer) -> MailServer:
    """A running mail server."""
    mail_server.start()
    return mail_server


# ---- polling ---------------------------------------------------------------------------------


async def wait_until(
    condition: Callable[[], Any | Awaitable[Any]], what: str, timeout: float = TIMEOUT
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


def poll_until(condition: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# ---- config and a runtime like `eams serve` builds ----------------------------------------------


def email_config(
    folder: Path,
    *,
    smtp_port: int | None,
    names: dict[str, str] | None = None,
    notify: dict[str, list[str]] | None = None,
    stale: dict[str, float] | None = None,
    operators: Sequence[str] | None = None,
    **overrides: Any,
) -> Path:
    """make_config plus [smtp], district names, notify lists, stale_after_hours, operators."""
    folder.mkdir(parents=True, exist_ok=True)
    extra = ""
    if smtp_port is not None:
        extra = f'\n[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nsender = {json.dumps(SENDER)}\n'
    path = make_config(folder, extra_toml=extra, **overrides)
    text = path.read_text(encoding="utf-8")
    for district_id, name in (names or {}).items():
        text = text.replace(f'name = "{_default_name(district_id)}"', f"name = {json.dumps(name)}")
    for district_id, addresses in (notify or {}).items():
        text = text.replace(
            f'notify = ["{DISTRICT_TO[district_id]}"]', f"notify = {json.dumps(addresses)}"
        )
    for district_id, hours in (stale or {}).items():
        header = f"[districts.{district_id}]\n"
        assert header in text
        text = text.replace(header, f"{header}stale_after_hours = {hours}\n", 1)
    if operators is not None:
        text = text.replace(f'notify = ["{OPERATOR}"]', f"notify = {json.dumps(list(operators))}")
    path.write_text(text, encoding="utf-8")
    return path


def _default_name(district_id: str) -> str:
    from tests.conftest import NAMES

    return NAMES[district_id]


class Env:
    """Store + Runner + (optionally) a running Sender on one config, as `eams serve` wires them."""

    def __init__(self, config: Config, store: Store, runner: Runner) -> None:
        self.config = config
        self.store = store
        self.runner = runner
        self.sender: Sender | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    @classmethod
    async def open(cls, config_path: Path) -> Env:
        config = Config.from_toml(config_path)
        store = await Store.open(config.server.data / "eams.sqlite3")
        await store.sync_config(config)
        passwords = StudentPasswords.from_data_dir(config.server.data)
        return cls(config, store, Runner(config, store, passwords))

    def start_sender(self, *, first_retry: float = 1.0, max_retry: float = 2.0) -> Sender:
        assert self.task is None
        self.sender = Sender(
            self.store,
            lambda: self.config.smtp,
            lambda: self.config.sender,
            self.config.server.data / "outbox",
            first_retry=first_retry,
            max_retry=max_retry,
            poll=0.1,
        )
        self.task = asyncio.create_task(self.sender.run(), name="test-sender")
        return self.sender

    async def stop_sender(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
            self.sender = None

    async def upload(
        self,
        rows: Sequence[Sequence[str] | str] = (),
        *,
        district: str = SPR,
        order: str | None = None,
        dry_run: bool = False,
        received_at: datetime | None = None,
        header: bool = True,
    ) -> RunOutcome:
        """A completed upload (students.csv, or check/students.csv when dry_run)."""
        source = self.config.server.homes.parent / "incoming" / f"{next(_files)}.csv"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(csv_text(rows, header=header), encoding="utf-8")
        job = accept(
            source,
            self.config.server.data,
            district,
            source="check/students.csv" if dry_run else "students.csv",
            dry_run=dry_run,
            order_id=order,
            received_at=received_at,
        )
        record = await self.runner.store.enqueue_run(job)
        outcome = await self.runner.run(record)
        if self.sender is not None:  # what the server's queue does after each run
            self.sender.wake()
        return outcome

    async def outbox(self) -> list[dict[str, Any]]:
        return await self.store.outbox()

    async def all_sent(self, count: int) -> bool:
        rows = await self.outbox()
        return len(rows) == count and all(r["state"] == "sent" for r in rows)

    async def close(self) -> None:
        if not self.closed:
            await self.stop_sender()
            await self.store.close()
            self.closed = True


@pytest.fixture
async def envs() -> AsyncIterator[Callable[[Path], Awaitable[Env]]]:
    opened: list[Env] = []

    async def open_env(config_path: Path) -> Env:
        env = await Env.open(config_path)
        opened.append(env)
        return env

    yield open_env
    for env in opened:
        await env.close()


def assert_no_password(messages: Sequence[Received]) -> None:
    """SPEC §4: passwords never appear in emails (raw bytes nor the decoded body)."""
    for message in messages:
        assert PASSWORD_MARK.encode() not in message.data, message.subject
        assert PASSWORD_MARK not in message.body, message.subject
        assert b"Zq9" not in message.data and "Zq9" not in message.body


def count_line(body: str, label: str, value: int) -> bool:
    return re.search(rf"^\s*{re.escape(label)}:\s+{value}\s*$", body, re.MULTILINE) is not None


# ---- 1. every kind of message --------------------------------------------------------------


@dataclass
class Scenario:
    env: Env
    smtp: MailServer
    outcomes: dict[str, RunOutcome]
    mail: dict[str, Received]


PARTIAL_ERRORS = [
    student("S020", "X"),  # STUDENT_EXISTS
    student("N901", "D"),  # STUDENT_NOT_FOUND
    student("N902", grade="13"),  # INVALID_GRADE
    student("N903", school="9999"),  # UNKNOWN_SCHOOL
    student("N904", "Q"),  # INVALID_STATUS
    student("N905", first=""),  # MISSING_FIELD
    student("N906", password=""),  # PASSWORD_REQUIRED
    student("N907", first="F" * 65),  # FIELD_TOO_LONG
    student("N908", username="bad name"),  # INVALID_FIELD
    student("N909"),  # DUPLICATE_STUDENT_ID (twice)
    student("N909", class_name="Room 2"),
    "0101,N910,Ana,Lee,5,un910," + pw("N910"),  # COLUMN_COUNT: 7 columns
    student("N911", password=PASSWORD_MARK + "L" * 70 + "Zq9"),  # password too long
]


async def run_scenario(env: Env, smtp: MailServer) -> Scenario:
    """Runs of every kind for one district, then a missing-upload alert; all delivered."""
    env.start_sender()
    outcomes: dict[str, RunOutcome] = {}
    # a first load onto the regular order: R001-R006 (success)
    outcomes["first"] = await env.upload([student(s) for s in ids("R", 1, 6)], order=REG)
    # success: R001-R005 move to the enterprise order, S001-S040 added, X001-X003 added inactive
    outcomes["success"] = await env.upload(
        [student(s) for s in ids("R", 1, 5)]
        + [student(s) for s in ids("S", 1, 40)]
        + [student(s, "X") for s in ids("X", 1, 3)]
    )
    # partial: 1 + 4 + 2 + 1 updated, 10 unchanged, 3 added, 13 errors
    outcomes["partial"] = await env.upload(
        PARTIAL_ERRORS
        + [student("S001", class_name="Room 9")]  # updated
        + [student(s, "D") for s in ids("S", 2, 5)]  # deactivated
        + [student(s, "A") for s in ids("X", 1, 2)]  # activated
        + [student("R006")]  # transferred from the regular order
        + [student(s) for s in ids("S", 10, 19)]  # unchanged
        + [student(s) for s in ids("N", 1, 3)]  # added
    )
    # held: 30 of the 47 active students deactivated at once
    outcomes["held"] = await env.upload([student(s, "D") for s in ids("S", 11, 40)])
    # failed: a header with two columns swapped
    outcomes["failed"] = await env.upload([BAD_HEADER, ",".join(student("S001"))], header=False)
    alerted = await check_stale(env.store, env.config, utc_now() + timedelta(hours=37))
    assert alerted == [SPR]
    assert env.sender is not None
    env.sender.wake()
    await wait_until(lambda: env.all_sent(6), "six emails sent")
    received = smtp.messages()
    assert len(received) == 6
    kinds = [row["kind"] for row in await env.outbox()]
    assert kinds == ["success", "success", "partial", "held", "failed", "stale"]
    mail = dict(
        zip(["first", "success", "partial", "held", "failed", "stale"], received, strict=True)
    )
    return Scenario(env, smtp, outcomes, mail)


@pytest.fixture
async def scenario(
    tmp_path: Path, smtp: MailServer, envs: Callable[[Path], Awaitable[Env]]
) -> Scenario:
    cfg = email_config(tmp_path, smtp_port=smtp.port, names={SPR: ACCENTED})
    return await run_scenario(await envs(cfg), smtp)


def run_id(s: Scenario, kind: str) -> str:
    value = s.outcomes[kind].result.run_id
    assert isinstance(value, str)
    return value


async def test_subjects_are_the_spec_texts(scenario: Scenario) -> None:
    subjects = {kind: m.subject for kind, m in scenario.mail.items()}
    assert subjects == {
        "first": f"MY Access eAMS: update succeeded for {ACCENTED}",
        "success": f"MY Access eAMS: update succeeded for {ACCENTED}",
        "partial": f"MY Access eAMS: update completed with 13 errors for {ACCENTED}",
        "held": f"MY Access eAMS: update HELD for {ACCENTED}",
        "failed": f"MY Access eAMS: update FAILED for {ACCENTED}",
        "stale": f"MY Access eAMS: no update received from {ACCENTED}",
    }
    for message in scenario.mail.values():
        raw_subject = next(
            line for line in message.data.split(b"\r\n") if line.startswith(b"Subject:")
        )
        assert raw_subject.isascii()  # RFC 2047-encoded on the wire, decoded above


async def test_recipients_operators_only_on_failed_held_and_stale(scenario: Scenario) -> None:
    district = DISTRICT_TO[SPR]
    for kind, message in scenario.mail.items():
        copied = kind in ("failed", "held", "stale")
        expected = (district, OPERATOR) if copied else (district,)
        assert message.rcpt_tos == expected, kind
        assert message.msg["To"] == district, kind
        assert message.msg["Cc"] == (OPERATOR if copied else None), kind
    rows = await scenario.env.outbox()
    assert [tuple(r["recipients"]) for r in rows] == [m.rcpt_tos for m in scenario.mail.values()]
    assert all(r["attempts"] == 1 and r["last_error"] is None for r in rows)


async def test_headers_date_message_id_from(scenario: Scenario) -> None:
    message_ids = set()
    for kind, message in scenario.mail.items():
        msg = message.msg
        assert message.mail_from == SENDER_ADDRESS, kind
        assert msg["From"] == SENDER, kind
        date = msg["Date"].datetime
        assert date is not None and date.tzinfo is not None, kind
        assert abs(date - utc_now()) < timedelta(hours=38), kind
        assert re.fullmatch(r"<[^<>@\s]+@[^<>@\s]+>", msg["Message-ID"]), msg["Message-ID"]
        message_ids.add(msg["Message-ID"])
        assert msg.get_content_type() == "text/plain"
        assert msg.get_content_charset() == "utf-8"
        assert_wire_format(message.data)
    assert len(message_ids) == 6


ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def assert_wire_format(data: bytes) -> None:
    """7-bit clean (no 8BITMIME needed), lines <= 998, a valid RFC 2047 Subject."""
    assert data.isascii()
    lines = data.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    header = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    subject = re.search(r"^Subject:.*(?:\r\n[ \t].*)*", header, re.MULTILINE)
    assert subject is not None
    for line in subject.group(0).split("\r\n"):
        assert len(line) <= 78, line
    for match in ENCODED_WORD.finditer(subject.group(0)):
        assert match.group(3), f"empty encoded-word in {subject.group(0)!r}"
        assert len(match.group(0)) <= 75, match.group(0)
    assert "?==?" not in subject.group(0)


@pytest.mark.parametrize(
    "name",
    [
        ACCENTED,
        "Springfield Public Schools",
        "Escuela Núm. 5 Benito Juárez de la Ciudad de México y área metropolitana",
        "Ωmega " * 20,
        "Routeraustausch und übriggebliebene",
    ],
)
@pytest.mark.parametrize("errors", [0, 1, 14, 1234])
def test_subject_wire_format_for_any_district_name(name: str, errors: int) -> None:
    """CPython's header folder can emit `=?utf-8?q??=` (gh-136052); strict servers refuse it."""
    subject = subject_for("done", errors, name)
    data = build_message(SENDER, ["a@example.org"], subject, "Body é\n", to=["a@example.org"])
    assert_wire_format(data)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert str(msg["Subject"]) == subject


async def test_success_body_has_every_count(scenario: Scenario) -> None:
    body = scenario.mail["success"].body
    assert f"District: {ACCENTED} ({SPR})" in body
    assert f"Run: {run_id(scenario, 'success')}" in body
    for label, value in {
        "added": 43,
        "updated": 5,
        "unchanged": 0,
        "activated": 0,
        "deactivated": 0,
        "transferred": 5,
        "rejected rows": 0,
    }.items():
        assert count_line(body, label, value), (label, body)
    assert f"licenses available on order {ENT}: 55 of 100" in body
    assert "errors.csv" not in body and "rejected rows" in body


async def test_no_password_in_any_email(scenario: Scenario) -> None:
    """Student passwords (every one contains PASSWORD_MARK) never reach an email (SPEC §4)."""
    assert_no_password(list(scenario.mail.values()))


async def test_partial_body_counts_error_file_and_first_ten_errors(scenario: Scenario) -> None:
    body = scenario.mail["partial"].body
    result = scenario.outcomes["partial"].result
    expected = {
        "added": 3,
        "updated": 8,
        "unchanged": 10,
        "activated": 2,
        "deactivated": 4,
        "transferred": 1,
        "errors": 13,
    }
    assert {k: getattr(result, k) for k in expected} == expected
    for label, value in {**expected, "rejected rows": 13}.items():
        if label != "errors":
            assert count_line(body, label, value), (label, body)
    assert f"licenses available on order {ENT}: 53 of 100" in body
    assert f"/results/{run_id(scenario, 'partial')}.errors.csv" in body
    errors = scenario.outcomes["partial"].errors
    assert len(errors) == 13
    inline = re.findall(r"^  line (\d+): ([A-Z_]+): (.+)$", body, re.MULTILINE)
    assert inline == [(str(e.line), e.code, e.message) for e in errors[:10]]
    assert [int(line) for line, _, _ in inline] == list(range(2, 12))  # file lines, header = 1
    assert {code for _, code, _ in inline} >= {
        "STUDENT_EXISTS",
        "STUDENT_NOT_FOUND",
        "INVALID_GRADE",
        "UNKNOWN_SCHOOL",
        "INVALID_STATUS",
        "MISSING_FIELD",
        "PASSWORD_REQUIRED",
        "FIELD_TOO_LONG",
    }
    assert "... and 3 more in the error file" in body
    for later in errors[10:]:
        assert f"line {later.line}:" not in body
    assert_no_password([scenario.mail["partial"]])


async def test_failed_body_names_the_error_and_the_error_file(scenario: Scenario) -> None:
    body = scenario.mail["failed"].body
    file_error = scenario.outcomes["failed"].result.file_error
    assert file_error is not None and file_error.code == "HEADER_MISMATCH"
    assert f"  HEADER_MISMATCH: {file_error.message}" in body
    assert "NOTHING was applied" in body
    assert f"/results/{run_id(scenario, 'failed')}.errors.csv" in body


async def test_held_body_says_why_and_how_to_release(scenario: Scenario) -> None:
    body = scenario.mail["held"].body
    result = scenario.outcomes["held"].result
    assert result.state == "held" and result.deactivated == 30
    assert "HELD and nothing was applied" in body
    assert f"  {result.held_reason}\n" in body
    assert "would deactivate 30 of the district's 47 active students" in body
    assert f"eams approve {run_id(scenario, 'held')}" in body
    assert count_line(body, "deactivated", 30)


async def test_stale_body(scenario: Scenario) -> None:
    body = scenario.mail["stale"].body
    assert f"received no students.csv from {ACCENTED} for more than 36 hours" in body
    assert "The last students.csv arrived at" in body


# ---- 2-4. the mail server misbehaves ----------------------------------------------------------


async def test_smtp_down_then_up_delivers_without_restarting_the_sender(
    tmp_path: Path, mail_server: MailServer, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    env = await envs(email_config(tmp_path, smtp_port=mail_server.port))
    env.start_sender(first_retry=1.0, max_retry=2.0)
    down_at = time.monotonic()
    await env.upload([student("S001")])

    async def failed_twice() -> bool:
        rows = await env.outbox()
        attempts: int = rows[0]["attempts"]
        return attempts >= 2

    await wait_until(failed_twice, "two failed attempts while the server is down")
    row = (await env.outbox())[0]
    assert row["state"] == "pending"
    assert "mail server unreachable" in row["last_error"]
    # the outage lasts about 5 s in all (scenario time, not synchronisation)
    await asyncio.sleep(max(0.0, 5.0 - (time.monotonic() - down_at)))
    mail_server.start()
    await wait_until(lambda: env.all_sent(1), "delivery once the server is up", timeout=10)
    assert len(mail_server.messages()) == 1
    assert mail_server.messages()[0].subject.startswith("MY Access eAMS: update succeeded")
    row = (await env.outbox())[0]
    assert row["attempts"] >= 3 and row["last_error"] is None


async def test_451_then_250_is_delivered_once(
    tmp_path: Path, smtp: MailServer, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    smtp.data_failures = 1
    env = await envs(email_config(tmp_path, smtp_port=smtp.port))
    env.start_sender()
    await env.upload([student("S001")])
    await wait_until(lambda: env.all_sent(1), "delivery after the 451")
    assert smtp.data_commands == 2
    assert len(smtp.messages()) == 1
    row = (await env.outbox())[0]
    assert row["attempts"] == 2 and row["last_error"] is None


async def test_451_for_one_recipient_retries_only_that_recipient(
    tmp_path: Path, smtp: MailServer, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    smtp.rcpt_failures[OPERATOR] = 1
    env = await envs(email_config(tmp_path, smtp_port=smtp.port))
    env.start_sender()
    await env.upload([BAD_HEADER], header=False)  # failed: district + operator
    await wait_until(lambda: env.all_sent(1), "delivery to the busy mailbox")
    received = smtp.messages()
    assert [m.rcpt_tos for m in received] == [(DISTRICT_TO[SPR],), (OPERATOR,)]
    assert received[0].message_id == received[1].message_id


async def test_550_for_one_recipient_does_not_block_the_others(
    tmp_path: Path,
    smtp: MailServer,
    envs: Callable[[Path], Awaitable[Env]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gone = "gone@springfield.k12.example"
    smtp.refuse[gone] = "550 5.1.1 <gone@springfield.k12.example>: no such user"
    cfg = email_config(tmp_path, smtp_port=smtp.port, notify={SPR: [gone, DISTRICT_TO[SPR]]})
    env = await envs(cfg)
    env.start_sender()
    with caplog.at_level(logging.INFO, logger="eams.sender"):
        await env.upload([BAD_HEADER], header=False)  # failed: both district addresses + operator
        await wait_until(lambda: env.all_sent(1), "delivery to the other recipients")
    received = smtp.messages()
    assert len(received) == 1
    assert received[0].rcpt_tos == (DISTRICT_TO[SPR], OPERATOR)
    row = (await env.outbox())[0]
    assert row["state"] == "sent" and row["attempts"] == 1
    assert gone in row["last_error"] and "550" in row["last_error"]
    given_up = [r for r in caplog.records if r.levelno == logging.ERROR and gone in r.getMessage()]
    assert len(given_up) == 1 and "refused for good" in given_up[0].getMessage()


async def test_550_for_every_recipient_fails_the_email_and_does_not_block_the_outbox(
    tmp_path: Path, smtp: MailServer, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    smtp.refuse[DISTRICT_TO[SPR]] = "550 5.1.1 no such user"
    env = await envs(email_config(tmp_path, smtp_port=smtp.port))
    env.start_sender()
    await env.upload([student("S001")])  # success: district only -> refused
    await wait_until(lambda: _states(env, ["failed"]), "the email given up for its only recipient")
    smtp.refuse.clear()
    await env.upload([student("S002")])
    await wait_until(lambda: _states(env, ["failed", "sent"]), "the next email delivered")
    assert len(smtp.messages()) == 1


async def _states(env: Env, states: list[str]) -> bool:
    return [r["state"] for r in await env.outbox()] == states


# ---- 5. eams serve killed with a message queued -------------------------------------------------


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def start_serve(config: Path, log: Path, started: list[subprocess.Popen[bytes]]) -> None:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--config", str(config)],
            cwd=PROJECT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    started.append(proc)
    poll_until(
        lambda: proc.poll() is not None or b"eAMS SFTP listening" in log.read_bytes(),
        f"eams serve to start ({log})",
        timeout=30,
    )
    assert proc.poll() is None, log.read_text(encoding="utf-8", errors="replace")


def outbox_rows(config: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(db_path(config))) as db:
        db.row_factory = sqlite3.Row
        return [
            dict(r) for r in db.execute("SELECT id, kind, state, attempts FROM outbox ORDER BY id")
        ]


def test_killed_server_delivers_the_queued_email_once_after_restart(
    tmp_path: Path, mail_server: MailServer, servers: list[subprocess.Popen[bytes]]
) -> None:
    cfg = email_config(tmp_path, smtp_port=mail_server.port)  # nothing listens there yet
    csv_file = tmp_path / "students.csv"
    csv_file.write_text(csv_text([student("S001"), student("S002")]), encoding="utf-8")
    start_serve(cfg, tmp_path / "serve1.log", servers)
    code, _, err = eams("process", "--district", SPR, str(csv_file), config=cfg)
    assert code == 0, err
    # the running server's sender picks it up (it polls the database) and fails to deliver
    poll_until(
        lambda: [(r["state"], r["attempts"] >= 1) for r in outbox_rows(cfg)] == [("pending", True)],
        "a failed delivery attempt by the running server",
    )
    servers[-1].send_signal(signal.SIGKILL)
    assert servers[-1].wait(timeout=30) == -signal.SIGKILL
    mail_server.start()
    start_serve(cfg, tmp_path / "serve2.log", servers)
    poll_until(lambda: len(mail_server.messages()) == 1, "the queued email after the restart")
    poll_until(lambda: outbox_rows(cfg)[0]["state"] == "sent", "the email marked sent")
    first = mail_server.messages()[0]
    assert first.subject == "MY Access eAMS: update succeeded for Springfield Public Schools"
    servers[-1].send_signal(signal.SIGTERM)
    assert servers[-1].wait(timeout=30) == 0
    # another restart: a second email queued meanwhile arrives, the first is not resent
    code, _, err = eams("process", "--district", SPR, str(csv_file), config=cfg)
    assert code == 0, err
    start_serve(cfg, tmp_path / "serve3.log", servers)
    poll_until(lambda: len(mail_server.messages()) >= 2, "the second email")
    servers[-1].send_signal(signal.SIGTERM)
    assert servers[-1].wait(timeout=30) == 0
    received = mail_server.messages()
    assert len(received) == 2
    assert [m.message_id for m in received].count(first.message_id) == 1
    assert [r["state"] for r in outbox_rows(cfg)] == ["sent", "sent"]


# ---- 6. no duplicates when the sender restarts ---------------------------------------------------


async def test_sender_restart_does_not_resend(
    tmp_path: Path, smtp: MailServer, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    env = await envs(email_config(tmp_path, smtp_port=smtp.port))
    env.start_sender()
    await env.upload([student("S001")])
    await wait_until(lambda: env.all_sent(1), "the first email")
    await env.stop_sender()
    await env.upload([student("S002")])  # queued while no sender runs
    env.start_sender()
    await wait_until(lambda: env.all_sent(2), "the second email")
    received = smtp.messages()
    assert len(received) == 2
    assert received[0].message_id != received[1].message_id
    assert [r["attempts"] for r in await env.outbox()] == [1, 1]
    # and a sender over a re-opened store (a process restart) does not resend either
    await env.stop_sender()
    await env.store.close()
    env.store = await Store.open(env.config.server.data / "eams.sqlite3")
    env.runner.store = env.store
    env.start_sender()
    await env.upload([student("S003")])
    await wait_until(lambda: env.all_sent(3), "the third email")
    assert len(smtp.messages()) == 3


# ---- 7. .eml files without [smtp] ------------------------------------------------------------


async def test_eml_files_without_smtp(
    tmp_path: Path, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    env = await envs(email_config(tmp_path, smtp_port=None, names={SPR: ACCENTED}))
    assert env.config.smtp is None
    env.start_sender()
    await env.upload([student("S001")])
    await env.upload([BAD_HEADER], header=False)
    assert await check_stale(env.store, env.config, utc_now() + timedelta(hours=40)) == [SPR]
    assert env.sender is not None
    env.sender.wake()
    await wait_until(lambda: env.all_sent(3), "three .eml files")
    outbox = env.config.server.data / "outbox"
    files = sorted(outbox.iterdir())
    assert [f.name for f in files] == [
        "000001-success.eml",
        "000002-failed.eml",
        "000003-stale.eml",
    ]
    subjects = []
    for path in files:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        assert msg["From"] == "eams@myaccess.example"
        assert msg["Message-ID"] and msg["Date"]
        subjects.append(str(msg["Subject"]))
    assert subjects == [
        f"MY Access eAMS: update succeeded for {ACCENTED}",
        f"MY Access eAMS: update FAILED for {ACCENTED}",
        f"MY Access eAMS: no update received from {ACCENTED}",
    ]


# ---- 8. missing-upload alerts ------------------------------------------------------------------


async def test_stale_alert_once_per_silence_and_across_restarts(
    tmp_path: Path, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    cfg = email_config(tmp_path, smtp_port=None, districts=(SPR, SHE), stale={SPR: 36, SHE: 0})
    start = utc_now()
    env = await envs(cfg)

    async def check(hours: float) -> list[str]:
        return await check_stale(env.store, env.config, start + timedelta(hours=hours))

    async def stale_rows() -> list[dict[str, Any]]:
        return [r for r in await env.outbox() if r["kind"] == "stale"]

    assert await check(35.9) == []
    assert await check(36.1) == [SPR]
    rows = await stale_rows()
    assert len(rows) == 1
    assert rows[0]["district"] == SPR
    assert rows[0]["recipients"] == [DISTRICT_TO[SPR], OPERATOR]
    assert await check(37) == []
    assert await check(500) == []
    # a restart (the store re-opened) neither repeats nor forgets the alert
    await env.store.close()
    env = await envs(cfg)
    assert await check(600) == []
    assert len(await stale_rows()) == 1
    # a dry run (check/) is not an upload: no email, no re-arming
    dry = await env.upload([student("S001")], dry_run=True, received_at=start + timedelta(hours=40))
    assert dry.result.dry_run is True
    assert [r["kind"] for r in await env.outbox()] == ["stale"]
    # a real upload re-arms it; another silence alerts once more
    await env.upload([student("S001")], received_at=start + timedelta(hours=40))
    assert [r["kind"] for r in await env.outbox()] == ["stale", "success"]
    assert await check(41) == []
    assert await check(75.9) == []
    assert await check(76.1) == [SPR]
    assert await check(77) == []
    assert len(await stale_rows()) == 2
    # shelbyville (stale_after_hours = 0) is never alerted
    assert await check(10_000) == []
    assert {r["district"] for r in await stale_rows()} == {SPR}


async def test_stale_alert_delivered_and_without_recipients_blocks_nothing(
    tmp_path: Path, smtp: MailServer, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    """A district with no notify list and no operators: no alert can go out, nothing stalls."""
    cfg = email_config(
        tmp_path,
        smtp_port=smtp.port,
        districts=(SPR, SHE),
        notify={SPR: []},
        operators=[],
    )
    env = await envs(cfg)
    env.start_sender()
    await check_stale(env.store, env.config, utc_now() + timedelta(hours=37))
    assert env.sender is not None
    env.sender.wake()
    await env.upload([student("S001")], district=SHE)

    def delivered() -> bool:
        subjects = [m.subject for m in smtp.messages()]
        return len(subjects) == 2

    await wait_until(delivered, "shelbyville's alert and run email")
    assert sorted(m.subject for m in smtp.messages()) == [
        "MY Access eAMS: no update received from Shelbyville Unified",
        "MY Access eAMS: update succeeded for Shelbyville Unified",
    ]
    # the mail server has both; the outbox marks them sent right after its 250
    await wait_until(lambda: _states(env, ["sent", "sent"]), "both marked sent")
    rows = await env.outbox()
    assert [(r["district"], r["kind"], r["state"]) for r in rows] == [
        (SHE, "stale", "sent"),
        (SHE, "success", "sent"),
    ]


async def test_an_email_without_recipients_does_not_block_the_outbox(
    tmp_path: Path, smtp: MailServer, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    """Such a row (say, a stale alert queued before notify lists existed) fails; others go."""
    env = await envs(email_config(tmp_path, smtp_port=smtp.port))
    nobody = QueuedEmail(kind="stale", recipients=(), message=b"Subject: x\r\n\r\nx\r\n")
    assert await env.store.queue_stale_alert(SPR, nobody)
    env.start_sender()
    await env.upload([student("S001")])
    await wait_until(lambda: len(smtp.messages()) == 1, "the run's email behind it")
    await wait_until(lambda: _states(env, ["failed", "sent"]), "the empty one given up")
    assert (await env.outbox())[0]["last_error"] == "no recipients"


# ---- 9. eams process queues what an upload queues; dry runs queue nothing --------------------


async def test_eams_process_queues_the_same_emails_as_uploads(
    tmp_path: Path, smtp: MailServer, envs: Callable[[Path], Awaitable[Env]]
) -> None:
    files: dict[str, list[list[str] | str]] = {
        "partial": [student("S001"), student("S002"), student("S001", "X"), student("N1", "D")],
        "failed": [BAD_HEADER],
    }
    # the same files uploaded (Runner) in one installation and `eams process`ed in another
    upload_env = await envs(email_config(tmp_path / "upload", smtp_port=smtp.port))
    for name, rows in files.items():
        await upload_env.upload(rows, header=name != "failed")
    cli_cfg = email_config(tmp_path / "cli", smtp_port=smtp.port)
    for name, rows in files.items():
        path = tmp_path / f"{name}.csv"
        path.write_text(csv_text(rows, header=name != "failed"), encoding="utf-8")
        code, _, err = await asyncio.to_thread(
            eams, "process", "--district", SPR, str(path), config=cli_cfg
        )
        assert code == (0 if name == "partial" else 1), err
        # --dry-run queues nothing
        code, out, err = await asyncio.to_thread(
            eams, "process", "--district", SPR, "--dry-run", str(path), config=cli_cfg
        )
        assert "DRY RUN" in out, err
    # a check/ dry run through the Runner queues nothing either
    await upload_env.upload(files["partial"], dry_run=True)
    cli_env = await envs(cli_cfg)
    upload_rows, cli_rows = await upload_env.outbox(), await cli_env.outbox()
    assert [(r["kind"], r["recipients"]) for r in upload_rows] == [
        ("partial", [DISTRICT_TO[SPR]]),
        ("failed", [DISTRICT_TO[SPR], OPERATOR]),
    ]
    assert [(r["kind"], r["recipients"]) for r in cli_rows] == [
        (r["kind"], r["recipients"]) for r in upload_rows
    ]
    upload_env.start_sender()
    await wait_until(lambda: upload_env.all_sent(2), "the uploads' emails")
    cli_env.start_sender()
    await wait_until(lambda: cli_env.all_sent(2), "eams process's emails")
    received = smtp.messages()
    assert len(received) == 4
    by_upload, by_cli = received[:2], received[2:]
    for a, b in zip(by_upload, by_cli, strict=True):
        assert a.subject == b.subject
        assert a.rcpt_tos == b.rcpt_tos
        assert _normalized(a.body) == _normalized(b.body)


def _normalized(body: str) -> str:
    body = re.sub(r"\d{8}-\d{6}-\d+", "<run>", body)
    return re.sub(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", "<time>", body)
