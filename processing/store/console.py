"""What the web console and the API read: every district at a glance, a district's
runs page by page, its license use over time, the audit log, student search.

Each page is a few queries whatever the number of districts or students
(bench/console.py measures them on 1,000 districts and 2,000,000 students).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from attrs import frozen

from processing.model import RunRecord, iso, parse_iso, utc_now
from processing.store.connection import Connection, serialized
from processing.store.runs import RUN_COLUMNS, run_record
from processing.store.students import student_object

# A student search matches a case-insensitive prefix of any of these (SQLite's lower()
# folds ASCII letters only, like the NOCASE collation) ...
SEARCH_FIELDS = ("lower(student_id)", "username_key", "lower(first_name)", "lower(last_name)")
# ... and finds them by these indexes (schema.py, migration 7), on (district_id, column):
# a value whose lower() is in [low, high) is in the same NOCASE range (NOCASE folds as
# lower() does; `high` may only grow by it), and the index holds the value itself, so a
# range is read from the index alone. lower() is still compared: the result is exact.
SEARCH_INDEXED = (
    "student_id COLLATE NOCASE",
    "username_key",
    "first_name COLLATE NOCASE",
    "last_name COLLATE NOCASE",
)
# How many students a search first reads in (district, Student ID) order (5-30 ms), and
# how many at most when the matches found in them point further on.
SEARCH_WINDOW = 10_000
SEARCH_SCAN_LIMIT = 200_000
_STUDENT_COLUMNS = (
    "district_id, student_id, school_code, first_name, last_name, grade, username, "
    "class_name, active, order_id"
)
# The district ids of students, in order, by one seek each (SQLite has no loose index scan).
_STUDENT_DISTRICTS = """ds(id) AS (
        SELECT min(district_id) FROM students
        UNION ALL
        SELECT (SELECT district_id FROM students WHERE district_id > ds.id
            ORDER BY district_id LIMIT 1) FROM ds WHERE ds.id IS NOT NULL)"""


@frozen
class DistrictSummary:
    """One row of the operator's overview."""

    district_id: str
    name: str
    last_upload_at: datetime | None
    configured_at: datetime | None
    stale_alerted: bool
    held_runs: int
    licenses: int  # the enterprise order's
    used: int
    last_run: RunRecord | None


@frozen
class AuditEntry:
    id: int
    at: datetime
    who: str
    action: str
    district_id: str | None
    detail: str
    address: str


_LAST_RUN_COLUMNS = ", ".join(f"last.{name.strip()}" for name in RUN_COLUMNS.split(","))
# The summary last made for each district, with the row it was made from (see `_summary`).
_SUMMARIES: dict[str, tuple[tuple[Any, ...], DistrictSummary]] = {}


def _summary(row: sqlite3.Row) -> DistrictSummary:
    """A `district_summaries` row as a summary.

    Parsing a district's last result JSON and its timestamps costs three times
    the query (40 ms for 1,000 districts, bench/console.py), and between two page
    loads most rows are unchanged: the summary made last time from the very same
    row values is returned again (summaries are immutable), else a new one is made
    and kept in its place, one per district.
    """
    values = tuple(row)
    kept = _SUMMARIES.get(values[0])
    if kept is not None and kept[0] == values:
        return kept[1]
    summary = DistrictSummary(
        district_id=row[0],
        name=row[1],
        last_upload_at=parse_iso(row[2]) if row[2] else None,
        configured_at=parse_iso(row[3]) if row[3] else None,
        stale_alerted=bool(row[4]),
        held_runs=row[5],
        licenses=row[6] or 0,
        used=row[7] or 0,
        last_run=run_record(row) if row["run_id"] is not None else None,
    )
    _SUMMARIES[values[0]] = (values, summary)
    return summary


class ConsoleTable(Connection):
    @serialized
    async def district_summaries(self, district_id: str | None = None) -> list[DistrictSummary]:
        """Every district (or just `district_id`) with its last run, held runs and
        enterprise licenses.

        One query: per district, its last run found walking `runs_by_seq`
        backwards, its held runs by `runs_by_state`. Rows are turned into
        summaries by `_summary`, which reuses the previous page's while a row is
        unchanged.
        """
        sql = f"""
            SELECT d.id, d.name, d.last_upload_at, d.configured_at, d.stale_alerted,
                (SELECT count(*) FROM runs h WHERE h.district_id = d.id AND h.state = 'held'
                    AND h.dry_run = 0) AS held,
                o.licenses, o.used, {_LAST_RUN_COLUMNS}
            FROM districts d
            LEFT JOIN orders o ON o.district_id = d.id AND o.kind = 'enterprise'
            LEFT JOIN runs last ON last.district_id = d.id AND last.run_id = (
                SELECT m.run_id FROM runs m WHERE m.district_id = d.id AND m.dry_run = 0
                ORDER BY m.seq DESC LIMIT 1)
            {"WHERE d.id = ?" if district_id is not None else ""}
            ORDER BY d.id
            """
        params = (district_id,) if district_id is not None else ()
        return [_summary(row) for row in await self.db.execute_fetchall(sql, params)]

    @serialized
    async def runs_page(
        self, district_id: str, *, limit: int, before: str | None = None
    ) -> list[RunRecord]:
        """The district's runs, newest first, `limit` of them older than run `before`."""
        sql = f"SELECT {RUN_COLUMNS} FROM runs WHERE district_id = ?"
        params: list[Any] = [district_id]
        if before is not None:
            sql += " AND seq < (SELECT seq FROM runs WHERE district_id = ? AND run_id = ?)"
            params += [district_id, before]
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(limit)
        return [run_record(row) for row in await self.db.execute_fetchall(sql, params)]

    @serialized
    async def held_runs(self, district_id: str) -> list[RunRecord]:
        rows = await self.db.execute_fetchall(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE district_id = ? AND state = 'held' "
            "AND dry_run = 0 ORDER BY seq",
            (district_id,),
        )
        return [run_record(row) for row in rows]

    @serialized
    async def license_use(
        self, district_id: str, order_id: str, since: datetime
    ) -> list[tuple[datetime, int]]:
        """(finished at, licenses used) after each applied run on `order_id` since `since`."""
        rows = await self.db.execute_fetchall(
            "SELECT finished_at, json_extract(result_json, '$.licenses.used') FROM runs "
            "WHERE district_id = ? AND state = 'done' AND dry_run = 0 AND finished_at >= ? "
            "AND json_extract(result_json, '$.licenses.order') = ? ORDER BY seq",
            (district_id, iso(since), order_id),
        )
        return [(parse_iso(r[0]), int(r[1])) for r in rows if r[0] and r[1] is not None]

    @serialized
    async def search_students(
        self, prefix: str, *, district_id: str | None, limit: int, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Students whose Student ID, username, first or last name starts with `prefix`
        (case-insensitive), in (district, Student ID) order; never a password.

        Two ways to the same rows, the cheap one first. A common prefix ("ma")
        matches students everywhere: reading students in order and keeping the
        matches fills the page within a few hundred rows, where collecting the
        matches by index would sort 500,000 of them (`_search_in_order`). A rare
        one is found by the indexes (`_search_by_index`): a few thousand matches
        at most, unless they all sit far on in the order.
        """
        low = prefix.lower()
        high = low[:-1] + chr(ord(low[-1]) + 1) if low else "\U0010ffff"
        params: dict[str, Any] = {
            "low": low,
            "high": high,
            "district": district_id,
            "limit": limit,
            "offset": offset,
        }
        matches = " OR ".join(f"({field} >= :low AND {field} < :high)" for field in SEARCH_FIELDS)
        in_scope = " AND district_id = :district" if district_id is not None else ""
        sql = f"SELECT {_STUDENT_COLUMNS} FROM students WHERE ({matches}){in_scope}"
        page = " ORDER BY district_id, student_id LIMIT :limit OFFSET :offset"
        rows: Iterable[sqlite3.Row] | None
        if limit < 0 or offset < 0:  # no page (SQLite reads these as "all"): asked as is
            rows = await self.db.execute_fetchall(sql + page, params)
        else:
            rows = await self._search_in_order(sql, page, params, district_id)
            if rows is None:
                rows = await self._search_by_index(params, by_district=district_id is not None)
        return [{"district": r[0], **student_object(tuple(r)[1:])} for r in rows]

    async def _search_in_order(
        self, sql: str, page: str, params: dict[str, Any], district_id: str | None
    ) -> list[sqlite3.Row] | None:
        """The page of `sql` read from the first SEARCH_WINDOW students in order (a
        primary-key range), or None when they do not hold it.

        When they hold some matches, the page is about `window * needed / found`
        students in: up to SEARCH_SCAN_LIMIT, a further window that far (twice
        that, to be safe) is tried too (a deep page of a common prefix).
        """
        offset, need = params["offset"], params["offset"] + params["limit"]
        in_scope = " WHERE district_id = :district" if district_id is not None else ""
        window = SEARCH_WINDOW
        while True:
            params["window"] = window
            bound = list(
                await self.db.execute_fetchall(
                    f"SELECT district_id, student_id FROM students{in_scope} "
                    "ORDER BY district_id, student_id LIMIT 1 OFFSET :window",
                    params,
                )
            )
            if not bound:  # the window is every student in scope: this is the answer
                return list(await self.db.execute_fetchall(sql + page, params))
            params["last_district"], params["last_student"] = bound[0]
            if district_id is not None:  # (a row value after district_id = ? is no range)
                upto = sql + " AND student_id <= :last_student"
            else:
                upto = sql + " AND (district_id, student_id) <= (:last_district, :last_student)"
            rows = list(await self.db.execute_fetchall(upto + page, params))
            if len(rows) == params["limit"]:
                return rows
            found = offset + len(rows)  # matches in the window
            if not rows and offset:
                params["need"] = need
                counted = await self.db.execute_fetchall(
                    f"SELECT count(*) FROM ({upto} LIMIT :need)", params
                )
                found = next(iter(counted))[0]
            window = max(window + 1, need * window // found * 2) if found else 0
            if not window or window > SEARCH_SCAN_LIMIT:
                return None

    async def _search_by_index(
        self, params: dict[str, Any], *, by_district: bool
    ) -> Iterable[sqlite3.Row]:
        """`search_students` by its indexes: each field's range read from its index
        alone (in each district in turn, for a search across districts), the keys
        merged, the page's keys taken in order, then only their rows read."""
        if by_district:
            source, scope, districts = "students", "district_id = :district", ""
        else:
            source, scope = "ds CROSS JOIN students", "district_id = ds.id"
            districts = f"{_STUDENT_DISTRICTS}, "
        branches = []
        for field, indexed in zip(SEARCH_FIELDS, SEARCH_INDEXED, strict=True):
            ranges = [f"{field} >= :low AND {field} < :high"]
            if indexed != field:
                ranges.insert(0, f"{indexed} >= :low AND {indexed} < :high")
            branches.append(
                f"SELECT district_id, student_id FROM {source} WHERE {scope} AND "
                + " AND ".join(ranges)
            )
        hits = " UNION ".join(branches)
        return await self.db.execute_fetchall(
            f"WITH RECURSIVE {districts}hits(district_id, student_id) AS ({hits}) "
            f"SELECT {_STUDENT_COLUMNS} FROM students WHERE (district_id, student_id) IN ("
            "SELECT district_id, student_id FROM hits ORDER BY district_id, student_id "
            "LIMIT :limit OFFSET :offset) ORDER BY district_id, student_id",
            params,
        )

    @serialized
    async def record_audit(
        self, *, who: str, action: str, district_id: str | None, detail: str, address: str
    ) -> None:
        """One line of the audit log (sign-ins, decisions, reloads, tokens)."""
        await self.db.execute(
            "INSERT INTO audit (at, who, action, district_id, detail, address) "
            "VALUES (datetime('now'), ?, ?, ?, ?, ?)",
            (who, action, district_id, detail, address),
        )

    @serialized
    async def audit_log(self, *, limit: int, before: int | None = None) -> list[AuditEntry]:
        sql = "SELECT id, at, who, action, district_id, detail, address FROM audit"
        params: list[Any] = []
        if before is not None:
            sql += " WHERE id < ?"
            params.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [
            AuditEntry(
                r[0],
                datetime.fromisoformat(r[1] + "+00:00"),
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
            )
            for r in await self.db.execute_fetchall(sql, params)
        ]


@frozen
class ApiToken:
    name: str
    created_at: datetime
    last_used_at: datetime | None


@frozen
class MetricFacts:
    """What a metrics scrape reads from the database, in one go."""

    orders: list[tuple[str, str, str, int, int]]  # district, order, kind, licenses, used
    last_uploads: dict[str, float]  # district -> Unix time
    outbox_pending: int


class OperationsTable(Connection):
    """API tokens and what the metrics read (SPEC §9)."""

    @serialized
    async def metric_facts(self) -> MetricFacts:
        orders = await self.db.execute_fetchall(
            "SELECT district_id, id, kind, licenses, used FROM orders ORDER BY district_id, id"
        )
        uploads = await self.db.execute_fetchall(
            "SELECT id, last_upload_at FROM districts WHERE last_upload_at IS NOT NULL"
        )
        pending = await self.db.execute_fetchall(
            "SELECT count(*) FROM outbox WHERE state = 'pending'"
        )
        return MetricFacts(
            [(r[0], r[1], r[2], r[3], r[4]) for r in orders],
            {r[0]: parse_iso(r[1]).timestamp() for r in uploads},
            int(next(iter(pending))[0]),
        )

    @serialized
    async def create_token(self, name: str, token_hash: str) -> bool:
        """False when a token of that name exists already."""
        cursor = await self.db.execute(
            "INSERT OR IGNORE INTO api_tokens (name, token_hash, created_at) VALUES (?, ?, ?)",
            (name, token_hash, iso(utc_now())),
        )
        return cursor.rowcount == 1

    @serialized
    async def revoke_token(self, name: str) -> bool:
        cursor = await self.db.execute("DELETE FROM api_tokens WHERE name = ?", (name,))
        return cursor.rowcount == 1

    @serialized
    async def list_tokens(self) -> list[ApiToken]:
        rows = await self.db.execute_fetchall(
            "SELECT name, created_at, last_used_at FROM api_tokens ORDER BY name"
        )
        return [ApiToken(r[0], parse_iso(r[1]), parse_iso(r[2]) if r[2] else None) for r in rows]

    @serialized
    async def token_user(self, token_hash: str) -> str | None:
        """The name of the token with this hash (its last use recorded), or None."""
        rows = list(
            await self.db.execute_fetchall(
                "UPDATE api_tokens SET last_used_at = ? WHERE token_hash = ? RETURNING name",
                (iso(utc_now()), token_hash),
            )
        )
        return str(rows[0][0]) if rows else None
