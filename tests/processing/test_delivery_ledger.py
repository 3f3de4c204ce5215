"""A crash between the mail server's 250 and the outbox update sends nothing twice
(issue 9): the sender writes the 250 to its delivery ledger first, and the next start
records it before sending anything. Against a live aiosmtpd server."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from processing.config import Config, SmtpSettings
from processing.model import utc_now
from processing.notify import stale_email
from processing.sender import LEDGER_NAME, Sender
from processing.store import Store, database_path
from tests.conftest import SPR, make_config
from tests.processing.test_email import MailServer, free_port, wait_until


class KilledAfterTheAnswer(Store):
    """The process dies right after the mail server's 250: the outbox row is never
    updated (the same as a kill -9 while a big run holds the database)."""

    async def mark_email(self, *args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("the server was killed")


def sender_for(store: Store, config: Config, port: int) -> Sender:
    smtp = SmtpSettings(host="127.0.0.1", port=port)
    return Sender(store, lambda: smtp, lambda: smtp.sender, config.server.data / "outbox")


async def test_a_delivery_recorded_only_in_the_ledger_is_not_sent_again(tmp_path: Path) -> None:
    config = Config.from_toml(make_config(tmp_path))
    mail = MailServer(free_port())
    mail.start()
    try:
        path = database_path(config.server.data)
        setup = await Store.open(path)
        await setup.sync_config(config)
        district = config.district(SPR)
        email = stale_email(config, district, None, utc_now())
        assert await setup.queue_stale_alert(SPR, email)
        await setup.close()

        doomed = await KilledAfterTheAnswer.open(path)
        first = sender_for(doomed, config, mail.port)
        try:
            await first.send_due()
        except sqlite3.OperationalError:
            pass  # the "crash"
        finally:
            await doomed.close()
        assert len(mail.messages()) == 1
        ledger = config.server.data / "outbox" / LEDGER_NAME
        assert ledger.read_text(encoding="utf-8").strip()  # the 250 is on disk

        store = await Store.open(path)  # the restart
        second = sender_for(store, config, mail.port)
        task = asyncio.create_task(second.run())
        try:
            await wait_until(
                lambda: _states(path) == ["sent"], "the email recorded as sent", timeout=10
            )
        finally:
            second.stop()
            await asyncio.wait_for(task, 10)
            await store.close()
        assert len(mail.messages()) == 1  # not sent again
        assert ledger.read_text(encoding="utf-8") == ""
    finally:
        mail.stop()


def _states(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT state FROM outbox ORDER BY id")]


def test_ledger_lines_cut_by_a_crash_are_skipped(tmp_path: Path) -> None:
    from processing.sender import DeliveryLedger

    ledger = DeliveryLedger(tmp_path / LEDGER_NAME)
    ledger.write({"id": 7, "state": "sent", "error": None, "recipients": None})
    with open(ledger.path, "a", encoding="utf-8") as handle:
        handle.write('{"id": 8, "sta')  # the fsync never came
    assert [e["id"] for e in ledger.entries()] == [7]
    ledger.clear()
    assert ledger.entries() == []
