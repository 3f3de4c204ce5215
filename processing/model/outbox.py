"""Emails: queued in a run's transaction, picked up by the sender; a district's uploads."""

from __future__ import annotations

from datetime import datetime

from attrs import frozen


@frozen
class QueuedEmail:
    """A message to queue with a run (or a missing-upload alert)."""

    kind: str
    recipients: tuple[str, ...]
    message: bytes


@frozen
class OutboxItem:
    """A queued message as the sender sees it."""

    id: int
    district_id: str | None
    kind: str
    recipients: tuple[str, ...]
    message: bytes
    attempts: int


@frozen
class UploadStatus:
    """When a district last uploaded, for the missing-upload alert (SPEC §6.4)."""

    district_id: str
    last_upload_at: datetime | None
    configured_at: datetime
    stale_alerted: bool
