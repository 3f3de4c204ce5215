"""Missing-upload alerts (SPEC §6.4): a district's nightly job failing silently.

When a district with `stale_after_hours` > 0 has sent nothing for that long,
one email goes to the district and the operators; the next one only after
another upload has arrived (`Store.enqueue_run` re-arms the alert). The
"alerted" mark is written with the queued email in one transaction, so a
restart neither loses nor repeats the alert. Time comes from the caller, so
tests drive it with a fake clock.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from processing.config import Config
from processing.model import UploadStatus
from processing.notify import stale_email
from processing.store import Store

log = logging.getLogger("eams.stale")


def is_stale(status: UploadStatus, hours: float, now: datetime) -> bool:
    """Pure: whether this district is overdue and not yet alerted."""
    if hours <= 0 or status.stale_alerted:
        return False
    since = status.last_upload_at or status.configured_at
    return now - since > timedelta(hours=hours)


async def check_stale(store: Store, config: Config, now: datetime) -> list[str]:
    """Queue an alert for every overdue district; return their ids."""
    alerted = []
    for status in await store.upload_status():
        district = config.districts.get(status.district_id)
        if district is None or not is_stale(status, district.stale_after_hours, now):
            continue
        if not district.notify and not config.operators_notify:
            log.info("no upload from %s for too long, but nobody to notify", district.id)
            continue
        email = stale_email(config, district, status.last_upload_at, now)
        if await store.queue_stale_alert(district.id, email):
            alerted.append(district.id)
    return alerted
