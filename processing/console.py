"""What a person sees of eAMS (the web console, SPEC §8; the API, §9): service functions
over the store, one per page, so every edge shows the same facts.

No HTML here: values for the templates and the JSON API.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from attrs import frozen

from processing.config import Config, District
from processing.model import PlannedError, RunRecord, Student, UploadStatus, iso
from processing.stale import is_stale
from processing.store import DistrictSummary, Store

CHART_DAYS = 90
RUNS_PER_PAGE = 20


@frozen
class DistrictRow:
    """One district in the operator's overview."""

    summary: DistrictSummary
    district: District
    stale: bool

    @property
    def over_licenses(self) -> bool:
        return self.summary.used > self.summary.licenses

    @property
    def needs_attention(self) -> bool:
        """Failed, held, stale or over its licenses: what an operator looks at first."""
        last = self.summary.last_run
        failed = last is not None and last.state == "failed"
        return failed or self.summary.held_runs > 0 or self.stale or self.over_licenses


@frozen
class DistrictPage:
    row: DistrictRow
    orders: list[dict[str, object]]
    usage: list[tuple[datetime, int]]  # the enterprise order's used after each run, 90 days
    runs: list[RunRecord]
    held: list[RunRecord]
    older: str | None  # the run id to page from, when there are older runs


@frozen
class RunPage:
    record: RunRecord
    errors: list[PlannedError]
    missing: list[Student]
    files: list[str]  # result files on disk for this run


def district_row(summary: DistrictSummary, config: Config, now: datetime) -> DistrictRow:
    district = config.district(summary.district_id)
    status = UploadStatus(
        summary.district_id,
        summary.last_upload_at,
        summary.configured_at or now,
        False,  # the page says "stale" as long as it is, alerted or not
    )
    return DistrictRow(summary, district, is_stale(status, district.stale_after_hours, now))


async def overview(store: Store, config: Config, now: datetime) -> list[DistrictRow]:
    """Every configured district, for the operator's first page."""
    return [
        district_row(summary, config, now)
        for summary in await store.district_summaries()
        if summary.district_id in config.districts
    ]


async def district_page(
    store: Store, config: Config, district_id: str, now: datetime, *, before: str | None = None
) -> DistrictPage | None:
    """A district's sync status, licenses, chart, runs and held runs; None if unknown."""
    if district_id not in config.districts:
        return None
    summaries = await store.district_summaries(district_id)  # its row only, not 1,000
    if not summaries:
        return None
    summary = summaries[0]
    district = config.district(district_id)
    runs = await store.runs_page(district_id, limit=RUNS_PER_PAGE + 1, before=before)
    older = runs[RUNS_PER_PAGE - 1].run_id if len(runs) > RUNS_PER_PAGE else None
    return DistrictPage(
        row=district_row(summary, config, now),
        orders=await store.list_orders(district_id),
        usage=await store.license_use(
            district_id, district.order.id, now - timedelta(days=CHART_DAYS)
        ),
        runs=runs[:RUNS_PER_PAGE],
        held=await store.held_runs(district_id),
        older=older,
    )


async def run_page(store: Store, config: Config, district_id: str, run_id: str) -> RunPage | None:
    """A run's record, rejected rows, missing students and result files; None if unknown."""
    if district_id not in config.districts:
        return None
    runs = await store.find_runs(run_id, district_id)
    if not runs:
        return None
    record = runs[0]
    folder = config.server.homes / district_id / "results"
    files = [
        f"{run_id}.{suffix}"
        for suffix in RESULT_SUFFIXES
        if (folder / f"{run_id}.{suffix}").is_file()
    ]
    return RunPage(
        record,
        await store.run_errors(district_id, run_id),
        await store.run_missing(district_id, run_id),
        files,
    )


RESULT_SUFFIXES = ("result.txt", "result.json", "errors.csv", "missing.csv")


def result_file_name(run_id: str, name: str) -> bool:
    """Whether `name` is one of run `run_id`'s result file names (nothing else is served)."""
    return name in {f"{run_id}.{suffix}" for suffix in RESULT_SUFFIXES}


def error_codes(errors: Sequence[PlannedError]) -> list[str]:
    """The codes present, in first-seen order (the run page's filter)."""
    seen: dict[str, None] = {}
    for error in errors:
        seen.setdefault(str(error.code), None)
    return list(seen)


def run_object(record: RunRecord) -> dict[str, object]:
    """A run as result.json's object (SPEC §6.2), with its current state (a held run
    later approved reads `approved`, then `done`); a queued run has no result yet."""
    if record.result is not None:
        return {**record.result.to_json(), "state": record.state}
    return {
        "run_id": record.run_id,
        "district": record.district_id,
        "state": record.state,
        "received_at": iso(record.received_at),
        "finished_at": None,
        "dry_run": record.dry_run,
    }
