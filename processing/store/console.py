"""What the web console and the API read: every district at a glance, a district's
runs page by page, its license use over time, the audit log, student search.

Each page is one or two queries whatever the number of districts or students
(bench/console.py measures them on 1,000 districts and 2,000,000 students).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from attrs import frozen

from processing.model import RunRecord, iso, parse_iso, utc_now
from processing.store.connection import Connection, serialized
from processing.store.runs import RUN_COLUMNS, run_record

SEARCH_FIELDS = ("lower(student_id)", "username_key", "lower(first_name)", "lower(last_name)")


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


class ConsoleTable(Connection):
    @serialized
    async def district_summaries(self) -> list[DistrictSummary]:
        """Every district with its last run, held runs and enterprise licenses."""
        rows = await self.db.execute_fetchall(
            f"""
            SELECT d.id, d.name, d.last_upload_at, d.configured_at, d.stale_alerted,
                (SELECT count(*) FROM runs h WHERE h.district_id = d.id AND h.state = 'held'
                    AND h.dry_run = 0) AS held,
                o.licenses, o.used, last.*
            FROM districts d
            LEFT JOIN orders o ON o.district_id = d.id AND o.kind = 'enterprise'
            LEFT JOIN (
                SELECT {RUN_COLUMNS} FROM runs r
                WHERE r.dry_run = 0 AND r.seq = (
                    SELECT max(seq) FROM runs m WHERE m.district_id = r.district_id
                    AND m.dry_run = 0)
            ) AS last ON last.district_id = d.id
            ORDER BY d.id
            """
        )
        return [
            DistrictSummary(
                district_id=r[0],
                name=r[1],
                last_upload_at=parse_iso(r[2]) if r[2] else None,
                configured_at=parse_iso(r[3]) if r[3] else None,
                stale_alerted=bool(r[4]),
                held_runs=r[5],
                licenses=r[6] or 0,
                used=r[7] or 0,
                last_run=run_record(r) if r["run_id"] is not None else None,
            )
            for r in rows
        ]

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
        (case-insensitive), in (district, Student ID) order; never a password."""
        low = prefix.lower()
        high = low[:-1] + chr(ord(low[-1]) + 1) if low else "\U0010ffff"
        where = " OR ".join(f"({field} >= ? AND {field} < ?)" for field in SEARCH_FIELDS)
        params: list[Any] = [v for _ in SEARCH_FIELDS for v in (low, high)]
        sql = (
            "SELECT district_id, student_id, school_code, first_name, last_name, grade, "
            f"username, class_name, active, order_id FROM students WHERE ({where})"
        )
        if district_id is not None:
            sql += " AND district_id = ?"
            params.append(district_id)
        sql += " ORDER BY district_id, student_id LIMIT ? OFFSET ?"
        params += [limit, offset]
        return [
            {
                "district": r[0],
                "student_id": r[1],
                "school_code": r[2],
                "first_name": r[3],
                "last_name": r[4],
                "grade": r[5],
                "username": r[6],
                "class_name": r[7],
                "status": "active" if r[8] else "deactivated",
                "order": r[9],
            }
            for r in await self.db.execute_fetchall(sql, params)
        ]

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
