"""The outbox (SPEC §6.4): emails queued in a run's transaction, picked up by the sender;
and when each district last uploaded (the missing-upload alert)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiosqlite

from processing.model import OutboxItem, QueuedEmail, UploadStatus, iso, parse_iso, utc_now
from processing.store.connection import Connection, serialized


class OutboxTable(Connection):
    @serialized
    async def due_emails(self, now: datetime, limit: int = 20) -> list[OutboxItem]:
        rows = await self.db.execute_fetchall(
            "SELECT id, district_id, kind, recipients, message, attempts FROM outbox "
            "WHERE state = 'pending' AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (iso(now), limit),
        )
        return [
            OutboxItem(r[0], r[1], r[2], tuple(json.loads(r[3])), bytes(r[4]), r[5]) for r in rows
        ]

    @serialized
    async def retry_pending_now(self, now: datetime) -> int:
        """At start: every pending email is due at once (the mail server may be back)."""
        cursor = await self.db.execute(
            "UPDATE outbox SET next_attempt_at = ? WHERE state = 'pending' AND next_attempt_at > ?",
            (iso(now), iso(now)),
        )
        return cursor.rowcount

    @serialized
    async def next_email_due(self) -> datetime | None:
        rows = list(
            await self.db.execute_fetchall(
                "SELECT min(next_attempt_at) FROM outbox WHERE state = 'pending'"
            )
        )
        return parse_iso(rows[0][0]) if rows and rows[0][0] else None

    @serialized
    async def mark_email(
        self,
        item: OutboxItem,
        *,
        state: str,
        now: datetime,
        error: str | None = None,
        retry_at: datetime | None = None,
        recipients: Sequence[str] | None = None,
    ) -> None:
        """Record a delivery attempt: sent, failed for good, or pending until `retry_at`."""
        await self.db.execute(
            "UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, "
            "sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END, "
            "next_attempt_at = coalesce(?, next_attempt_at), "
            "recipients = coalesce(?, recipients) WHERE id = ? AND state = 'pending'",
            (
                state,
                error,
                state,
                iso(now),
                iso(retry_at) if retry_at else None,
                json.dumps(list(recipients)) if recipients is not None else None,
                item.id,
            ),
        )

    @serialized
    async def outbox(self) -> list[dict[str, Any]]:
        """Every queued email with its delivery state (tests and operators)."""
        rows = await self.db.execute_fetchall(
            "SELECT id, district_id, run_id, kind, recipients, state, attempts, last_error "
            "FROM outbox ORDER BY id"
        )
        return [
            {
                "id": r[0],
                "district": r[1],
                "run_id": r[2],
                "kind": r[3],
                "recipients": json.loads(r[4]),
                "state": r[5],
                "attempts": r[6],
                "last_error": r[7],
            }
            for r in rows
        ]

    @serialized
    async def upload_status(self) -> list[UploadStatus]:
        rows = await self.db.execute_fetchall(
            "SELECT id, last_upload_at, configured_at, stale_alerted FROM districts"
        )
        return [
            UploadStatus(
                r[0],
                parse_iso(r[1]) if r[1] else None,
                parse_iso(r[2]) if r[2] else utc_now(),
                bool(r[3]),
            )
            for r in rows
        ]

    @serialized
    async def queue_stale_alert(self, district_id: str, email: QueuedEmail) -> bool:
        """Mark the district alerted and queue the email, once until the next upload."""
        async with self.transaction():
            cursor = await self.db.execute(
                "UPDATE districts SET stale_alerted = 1 WHERE id = ? AND stale_alerted = 0",
                (district_id,),
            )
            queued = cursor.rowcount == 1
            if queued:
                await insert_emails(self.db, district_id, None, [email])
        return queued


async def insert_emails(
    db: aiosqlite.Connection,
    district_id: str | None,
    run_id: str | None,
    emails: Sequence[QueuedEmail],
) -> None:
    """Queue emails inside the caller's transaction (a run's, or a stale alert's)."""
    now = iso(utc_now())
    await db.executemany(
        "INSERT INTO outbox (district_id, run_id, kind, recipients, message, "
        "created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (district_id, run_id, e.kind, json.dumps(e.recipients), e.message, now, now)
            for e in emails
        ],
    )
