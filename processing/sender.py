"""The outbox sender: delivers queued emails, never losing one (SPEC §6.4).

Emails are rows in the database, queued in the same transaction as the run
they report. This task picks due rows, delivers them with aiosmtplib
(STARTTLS and login when configured) and records the outcome:
- accepted by the server: `sent` (exactly once: the row is marked in the
  same step; a crash in the milliseconds between the server's 250 and that
  write is the only window for a duplicate);
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
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from email.utils import parseaddr
from pathlib import Path

import aiosmtplib

from processing.config import SmtpSettings
from processing.store import OutboxItem, Store, utc_now

log = logging.getLogger("eams.sender")

FIRST_RETRY = 30.0
MAX_RETRY = 600.0
POLL_SECONDS = 10.0  # emails queued by `eams process` in another process show up this fast
SMTP_TIMEOUT = 60.0


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
        """Deliver until `stop()`; pending emails are tried at once on start."""
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
        await self._settle(item, refused)

    async def _settle(self, item: OutboxItem, refused: Mapping[str, object]) -> None:
        """Delivered to the accepted recipients; retry 4xx ones, give up 5xx ones."""
        later = tuple(r for r, response in refused.items() if 400 <= _code(response) < 500)
        dropped = [f"{r} ({_code(resp)})" for r, resp in refused.items() if r not in later]
        for entry in dropped:
            log.error("email %d (%s): recipient refused for good: %s", item.id, item.kind, entry)
        if later:
            await self._retry(item, "temporarily refused: " + ", ".join(later), later)
            return
        error = ("refused: " + ", ".join(dropped)) if dropped else None
        state = "failed" if len(dropped) == len(item.recipients) else "sent"
        await self.store.mark_email(item, state=state, now=self.clock(), error=error)
        log.info(
            "email %d (%s) %s",
            item.id,
            item.kind,
            "sent to " + ", ".join(r for r in item.recipients if r not in refused)
            if state == "sent"
            else "refused for every recipient",
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
