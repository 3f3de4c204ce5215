"""Prometheus metrics (SPEC §9), on a registry of the server's own (no global state).

Counters are fed by the events the server already has: an upload accepted
(the queue), a run finished (the runner), a login refused (SFTP and web), an
email delivered (the sender). What lives in the database (licenses, when a
district last uploaded, the outbox) is read once per scrape, in one query, by
a collector; the queue depth and open SFTP sessions are read from the live
objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from processing.runner import RunOutcome

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.uploads = Counter("eams_uploads", "Uploads accepted", ["district", "kind"], registry=r)
        self.runs = Counter(
            "eams_runs", "Runs finished, by state", ["district", "state"], registry=r
        )
        self.rows = Counter(
            "eams_rows", "Rows processed, by outcome", ["district", "outcome"], registry=r
        )
        self.duration = Histogram(
            "eams_run_duration_seconds",
            "How long a run took, from its start to its commit",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.login_failures = Counter(
            "eams_login_failures", "Failed sign-ins", ["protocol"], registry=r
        )
        self.emails = Counter("eams_emails_sent", "Emails the mail server accepted", registry=r)
        for protocol in ("sftp", "web"):
            self.login_failures.labels(protocol)  # present at 0 from the start

    # ---- events ---------------------------------------------------------------------------

    def upload_accepted(self, district_id: str, dry_run: bool) -> None:
        self.uploads.labels(district_id, "check" if dry_run else "upload").inc()

    def run_finished(self, outcome: RunOutcome) -> None:
        result = outcome.result
        district = result.district
        self.runs.labels(district, result.state).inc()
        if result.state == "done" and not result.dry_run:
            for outcome_name, count in (
                ("added", result.added),
                ("updated", result.updated),
                ("unchanged", result.unchanged),
                ("error", result.errors),
                ("missing", result.missing),
            ):
                self.rows.labels(district, outcome_name).inc(count)
        if outcome.seconds:
            self.duration.observe(outcome.seconds)

    def login_failed(self, protocol: str) -> None:
        self.login_failures.labels(protocol).inc()

    def email_sent(self) -> None:
        self.emails.inc()

    # ---- scrapes --------------------------------------------------------------------------

    def add_live(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LiveFacts(Collector):
    """The gauges read at each scrape: queue, sessions, outbox, licenses, last uploads.

    `facts()` returns (orders, last uploads, outbox pending) from one database
    read, made by the caller before rendering (the collector itself must not await).
    """

    def __init__(self, queue_depth: Callable[[], int], sessions: Callable[[], int]) -> None:
        self.queue_depth = queue_depth
        self.sessions = sessions
        self.orders: list[tuple[str, str, str, int, int]] = []  # district, order, kind, total, used
        self.last_uploads: dict[str, float] = {}
        self.outbox_pending = 0

    def describe(self) -> list[Metric]:
        """Nothing to check at registration: the figures are only read at a scrape."""
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("eams_queue_depth", "Runs queued or running", self.queue_depth())
        yield GaugeMetricFamily(
            "eams_outbox_pending", "Emails waiting to be delivered", self.outbox_pending
        )
        yield GaugeMetricFamily("eams_sftp_sessions", "Open SFTP sessions", self.sessions())
        last = GaugeMetricFamily(
            "eams_last_upload_timestamp_seconds",
            "When each district's last upload arrived (Unix time)",
            labels=["district"],
        )
        for district, stamp in sorted(self.last_uploads.items()):
            last.add_metric([district], stamp)
        yield last
        licenses = GaugeMetricFamily(
            "eams_licenses",
            "Licenses of each order: total and used",
            labels=["district", "order", "kind"],
        )
        for district, order, _, total, used in self.orders:
            licenses.add_metric([district, order, "total"], total)
            licenses.add_metric([district, order, "used"], used)
        yield licenses
