"""Districts, schools and orders mirrored from config.toml; backup; the license invariant."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from processing.config import Config
from processing.model import iso, utc_now
from processing.store.connection import Connection, serialized


class DistrictsTable(Connection):
    # ---- config mirror -------------------------------------------------

    @serialized
    async def sync_config(self, config: Config) -> list[str]:
        """Mirror districts, schools and orders from config; return warnings.

        A changed `order.id` keeps the previous Enterprise order as a `past`
        order (SPEC §2); students on it move to the new one as they appear.
        """
        async with self.transaction():
            for district in config.districts.values():
                await self.db.execute(
                    "INSERT INTO districts (id, name, configured_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                    "configured_at = coalesce(districts.configured_at, excluded.configured_at)",
                    (district.id, district.name, iso(utc_now())),
                )
                await self.db.executemany(
                    "INSERT INTO schools (district_id, code, name) VALUES (?, ?, ?) "
                    "ON CONFLICT (district_id, code) DO UPDATE SET name = excluded.name",
                    [(district.id, s.code, s.name) for s in district.schools],
                )
                await self.db.execute(
                    "UPDATE orders SET kind = 'past' WHERE district_id = ? "
                    "AND kind = 'enterprise' AND id != ?",
                    (district.id, district.order.id),
                )
                configured = [(district.order, "enterprise")] + [
                    (order, "regular") for order in district.regular_orders
                ]
                for order, kind in configured:
                    await self.db.execute(
                        "INSERT INTO orders (district_id, id, kind, licenses) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (district_id, id) DO UPDATE SET kind = excluded.kind, "
                        "licenses = excluded.licenses",
                        (district.id, order.id, kind, order.licenses),
                    )
        return await self._license_warnings(config)

    @serialized
    async def license_warnings(self, config: Config) -> list[str]:
        """Orders whose configured `licenses` is below what is in use (SPEC §2: allowed)."""
        return await self._license_warnings(config)

    async def _license_warnings(self, config: Config) -> list[str]:
        rows = await self.db.execute_fetchall("SELECT district_id, id, used FROM orders")
        used = {(r[0], r[1]): r[2] for r in rows}
        warnings = []
        for district in config.districts.values():
            for order in (district.order, *district.regular_orders):
                in_use = used.get((district.id, order.id), 0)
                if in_use > order.licenses:
                    warnings.append(
                        f"districts.{district.id}: order {order.id} has {order.licenses} "
                        f"licenses but {in_use} are in use; no new licenses can be taken "
                        "until the count is back under the total"
                    )
        return warnings

    @serialized
    async def backup(self, target: Path) -> None:
        """A consistent copy of the live database (SQLite's online backup API)."""
        destination = await aiosqlite.connect(target)
        try:
            await self.db.backup(destination)
        finally:
            await destination.close()

    @serialized
    async def invariant_violations(self) -> list[str]:
        """Orders whose `used` differs from the count of active students on them (SPEC §5)."""
        rows = await self.db.execute_fetchall(
            "SELECT o.district_id, o.id, o.used, "
            "(SELECT count(*) FROM students s WHERE s.district_id = o.district_id "
            " AND s.order_id = o.id AND s.active = 1) AS counted FROM orders o"
        )
        return [
            f"{r[0]}/{r[1]}: used {r[2]} but {r[3]} active students" for r in rows if r[2] != r[3]
        ]
