"""`/healthz` and `/metrics` (SPEC §9): what a load balancer and Prometheus ask.

`/healthz` needs no sign-in and answers within a second whatever the server is
doing: the database is probed on a fresh connection in a worker thread, with
a deadline, so a big run's transaction or a locked file cannot hold it up.
`/metrics` answers only addresses in `[web] metrics_allow`, judged by the
connection's peer address (never a forwarded-for header).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sqlite3
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from server.metrics import CONTENT_TYPE, LiveFacts, Metrics

HEALTH_DEADLINE = 0.8  # seconds for the database probe; the answer comes within 1 s


class Operations:
    def __init__(
        self,
        *,
        database: Callable[[], Path],
        sftp_accepting: Callable[[], bool],
        queue_depth: Callable[[], int],
        metrics: Metrics,
        live: LiveFacts,
        store_facts: Callable[[], object],
        allowed: Callable[[], tuple[str, ...]],
        remote: Callable[[web.Request], str],
    ) -> None:
        self.database = database
        self.sftp_accepting = sftp_accepting
        self.queue_depth = queue_depth
        self.metrics = metrics
        self.live = live
        self.store_facts = store_facts  # async: () -> MetricFacts
        self.allowed = allowed
        self.remote = remote

    def add_routes(self, app: web.Application) -> None:
        app.add_routes([web.get("/healthz", self.healthz), web.get("/metrics", self.scrape)])

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        sftp = self.sftp_accepting()
        try:
            pending = await asyncio.wait_for(
                asyncio.to_thread(_probe, self.database()), HEALTH_DEADLINE
            )
        except (TimeoutError, sqlite3.Error, OSError):
            pending = None
        database = pending is not None
        ok = sftp and database
        body = {
            "status": "ok" if ok else "failing",
            "sftp": sftp,
            "database": database,
            "queue_depth": self.queue_depth(),
            "outbox_pending": pending if pending is not None else 0,
        }
        return web.json_response(body, status=200 if ok else 503)

    async def scrape(self, request: web.Request) -> web.StreamResponse:
        if not _allowed(self.remote(request), self.allowed()):
            return web.json_response(
                {"error": "metrics are not available from your address", "code": "FORBIDDEN"},
                status=403,
            )
        facts = await self.store_facts()  # type: ignore[misc]
        self.live.orders = facts.orders
        self.live.last_uploads = facts.last_uploads
        self.live.outbox_pending = facts.outbox_pending
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _probe(path: Path) -> int:
    """Open the database read-only, read one figure, close: fails when the file is
    unreadable or locked past the deadline."""
    uri = f"file:{path}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=HEALTH_DEADLINE / 2)) as db:
        row = db.execute("SELECT count(*) FROM outbox WHERE state = 'pending'").fetchone()
    return int(row[0])


def _allowed(address: str, networks: tuple[str, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)
