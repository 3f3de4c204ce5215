"""The outbox sender: delivers queued emails, never losing one (SPEC §6.4).

Emails are rows in the database, queued in the same transaction as the run
they report. This task picks due rows, delivers them with aiosmtplib
(STARTTLS and login when configured) and records the outcome:
- accepted by the server: `sent`. The 250 is first appended to a small
  delivery ledger (`<outbox>/delivered.jsonl`, fsync'd, about a millisecond),
  then the outbox row is updated, which can wait seconds while a big run
  commits; the next start applies the ledger before sending anything, so a
  crash in between sends nothing twice. The only window for a duplicate is
  between the 250 and the ledger's fsync;
- unreachable server, a 4xx answer, or 4xx for some recipients: retried with
  exponential back-off (30 s doubling, capped at 10 minutes), only for the
  recipients still owed;
- a 5xx for a recipient: that recipient is given up with a logged reason,
  the others still get the message.

Without `[smtp]`, each message is written as `<data>/outbox/<id>-<kind>.eml`,
so the demo shows what a district would receive with no mail server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from email.utils import parseaddr
from pathlib import Path

import aiosmtplib

from processing.config import SmtpSettings
from processing.model import OutboxItem, utc_now
from processing.store import Store

log = logging.getLogger("eams.sender")

FIRST_RETRY = 30.0
MAX_RETRY = 600.0
POLL_SECONDS = 10.0  # emails queued by `eams process` in another process show up this fast
SMTP_TIMEOUT = 60.0


LEDGER_NAME = "delivered.jsonl"


class DeliveryLedger:
    """What the mail server accepted, durable the moment it answered.

    One JSON line per settled delivery: the outbox row's id and the state it
    must get (`sent`, `failed`, or `pending` with the recipients still owed).
    At most one line is outstanding (the sender settles one email at a time),
    and the file is emptied once the outbox row says the same.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, entry: dict[str, object]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, object]]:
        """The outstanding lines; a line cut by a crash is skipped (that delivery's 250
        was not recorded, so the email goes out again: the window that remains)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and isinstance(entry.get("id"), int):
                    found.append(entry)
        return found

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
                os.fsync(fd)
            finally:
                os.close(fd)


def backoff(attempts: int, first: float = FIRST_RETRY, cap: float = MAX_RETRY) -> float:
    """Seconds before retry number `attempts` (1-based): 30, 60, 120, ... capped."""
    return float(min(cap, first * 2.0 ** max(0, attempts - 1)))


class Sender:
    def __init__(
        self,
        store: Store,
        smtp: Callable[[], SmtpSettings | None],
        sender_address: Callable[[], str],
        outbox_dir: Path,
        *,
        clock: Callable[[], datetime] = utc_now,
        first_retry: float = FIRST_RETRY,
        max_retry: float = MAX_RETRY,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.smtp = smtp  # read on every attempt, so a config reload applies at once
        self.sender_address = sender_address
        self.outbox_dir = outbox_dir
        self.clock = clock
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.poll = poll
        self._wake = asyncio.Event()
        self._stopping = False
        self.ledger = DeliveryLedger(outbox_dir / LEDGER_NAME)
        self.on_sent: Callable[[], None] | None = None  # e.g. a metrics counter

    def wake(self) -> None:
        """New email queued in this process: look now instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the delivery in progress, then end `run()`.

        Cancelling instead could land between the mail server's 250 and the
        outbox update, and the message would go out again after the restart.
        """
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Deliver until `stop()`; pending emails are tried at once on start, after the
        deliveries a crash left only in the ledger are recorded."""
        await self.apply_ledger()
        await self.store.retry_pending_now(self.clock())
        while not self._stopping:
            self._wake.clear()  # before looking: a wake() during send_due is not lost
            try:
                await self.send_due()
                delay = self.poll
                due = await self.store.next_email_due()
                if due is not None:
                    delay = max(0.0, min(delay, (due - self.clock()).total_seconds()))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox sender: unexpected error; retrying shortly")
                delay = self.poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(delay, 0.05))

    async def apply_ledger(self) -> int:
        """Record in the outbox what the ledger says the mail server accepted."""
        entries = await asyncio.to_thread(self.ledger.entries)
        for entry in entries:
            recipients = entry.get("recipients")
            await self.store.mark_email(
                OutboxItem(int(str(entry["id"])), None, "", (), b"", 0),
                state=str(entry["state"]),
                now=self.clock(),
                error=str(entry["error"]) if entry.get("error") else None,
                retry_at=self.clock() if entry["state"] == "pending" else None,
                recipients=[str(r) for r in recipients] if isinstance(recipients, list) else None,
            )
            log.warning(
                "email %s: delivered before the last stop, recorded now (not sent again)",
                entry["id"],
            )
        await asyncio.to_thread(self.ledger.clear)
        return len(entries)

    async def send_due(self) -> int:
        """Attempt every email that is due now; return how many were attempted."""
        attempted = 0
        while True:
            items = await self.store.due_emails(self.clock())
            if not items:
                return attempted
            for item in items:
                if self._stopping:
                    return attempted
                try:
                    await self.deliver(item)
                except sqlite3.Error:  # the database itself: run() logs and tries again
                    raise
                except Exception as exc:  # one bad email must not hold up the others
                    log.exception("email %d (%s): unexpected error", item.id, item.kind)
                    await self._retry(item, f"unexpected error: {exc!r}", item.recipients)
                attempted += 1

    async def deliver(self, item: OutboxItem) -> None:
        smtp = self.smtp()
        if not item.recipients:
            await self._fail(item, "no recipients")
            return
        if smtp is None:
            await asyncio.to_thread(self._write_eml, item)
            await self.store.mark_email(item, state="sent", now=self.clock())
            if self.on_sent is not None:
                self.on_sent()
            log.info("email %d (%s) written to %s", item.id, item.kind, self.outbox_dir)
            return
        refused: Mapping[str, object]
        try:
            refused, _ = await aiosmtplib.send(
                item.message,
                sender=parseaddr(self.sender_address())[1],
                recipients=list(item.recipients),
                hostname=smtp.host,
                port=smtp.port,
                start_tls=smtp.starttls,
                use_tls=False,
                username=smtp.username or None,
                password=smtp.password or None,
                timeout=SMTP_TIMEOUT,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = {r.recipient: r for r in exc.recipients}
            if not refused:
                await self._retry(item, str(exc), item.recipients)
                return
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                await self._fail(item, f"{exc.code} {exc.message}")
            else:
                await self._retry(item, f"{exc.code} {exc.message}", item.recipients)
            return
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            await self._retry(item, f"mail server unreachable: {exc}", item.recipients)
            return
        answered = time.monotonic()
        await self._settle(item, refused, answered)

    async def _settle(
        self, item: OutboxItem, refused: Mapping[str, object], answered: float
    ) -> None:
        """Delivered to the accepted recipients; retry 4xx ones, give up 5xx ones.

        The ledger line comes first: from its fsync on, a crash cannot make this
        email go out again. The log line says how long each step took after the
        mail server's answer (the duplicate window, and the outbox update)."""
        later = tuple(r for r, response in refused.items() if 400 <= _code(response) < 500)
        dropped = [f"{r} ({_code(resp)})" for r, resp in refused.items() if r not in later]
        for refusal in dropped:
            log.error("email %d (%s): recipient refused for good: %s", item.id, item.kind, refusal)
        error = ("refused: " + ", ".join(dropped)) if dropped else None
        state = "failed" if len(dropped) == len(item.recipients) else "sent"
        if later:
            state, error = "pending", "temporarily refused: " + ", ".join(later)
        entry: dict[str, object] = {
            "id": item.id,
            "state": state,
            "error": error,
            "recipients": list(later) or None,
        }
        await asyncio.to_thread(self.ledger.write, entry)
        durable = time.monotonic()
        if state != "failed" and self.on_sent is not None:
            self.on_sent()
        if later:
            await self._retry(item, error or "", later)
        else:
            await self.store.mark_email(item, state=state, now=self.clock(), error=error)
        await asyncio.to_thread(self.ledger.clear)
        recorded = time.monotonic()
        log.info(
            "email %d (%s) %s; delivery durable %.1f ms after the mail server's answer, "
            "outbox updated after %.1f ms",
            item.id,
            item.kind,
            "sent to " + ", ".join(r for r in item.recipients if r not in refused)
            if state != "failed"
            else "refused for every recipient",
            (durable - answered) * 1000,
            (recorded - answered) * 1000,
        )

    async def _retry(self, item: OutboxItem, reason: str, recipients: tuple[str, ...]) -> None:
        delay = backoff(item.attempts + 1, self.first_retry, self.max_retry)
        retry_at = self.clock() + timedelta(seconds=delay)
        log.warning(
            "email %d (%s) not delivered (%s); retry in %.0f s", item.id, item.kind, reason, delay
        )
        await self.store.mark_email(
            item,
            state="pending",
            now=self.clock(),
            error=reason,
            retry_at=retry_at,
            recipients=recipients,
        )

    async def _fail(self, item: OutboxItem, reason: str) -> None:
        log.error(
            "email %d (%s) refused for good by the mail server: %s", item.id, item.kind, reason
        )
        await self.store.mark_email(item, state="failed", now=self.clock(), error=reason)

    def _write_eml(self, item: OutboxItem) -> None:
        self.outbox_dir.mkdir(parents=True, exist_ok=True)
        path = self.outbox_dir / f"{item.id:06d}-{item.kind}.eml"
        temp = path.with_suffix(".tmp")
        with open(temp, "wb") as handle:
            handle.write(item.message)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)


def _code(response: object) -> int:
    code = getattr(response, "code", 550)
    return code if isinstance(code, int) else 550
