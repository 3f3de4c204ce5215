"""config.toml's district tables (SPEC §2): each district, its orders, grades, schools."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from processing.config import (
    DEFAULT_GRADES,
    DISTRICT_ID,
    NIGHTLY,
    SYNC_MODES,
    USERNAME,
    District,
    Order,
    School,
)
from processing.passwords import scrypt_problem
from processing.rules import normalize_grade

DISTRICT_KEYS = {
    "name",
    "username",
    "password_hash",
    "authorized_keys",
    "notify",
    "grades",
    "schedule",
    "stale_after_hours",
    "deactivation_guard",
    "sync",
    "web_login",
    "order",
    "regular_orders",
    "schools",
}
ORDER_KEYS = frozenset({"id", "licenses"})
SCHOOL_KEYS = frozenset({"code", "name"})


class ProblemLog:
    """One pass over the raw TOML that records problems instead of raising."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(f"{key}: {reason}")

    def typed(self, table: Mapping[str, Any], key: str, kind: Any, where: str) -> Any:
        value = table[key]
        ok = isinstance(value, kind) and not (
            kind in (int, (int, float)) and isinstance(value, bool)
        )
        if not ok:
            names = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
            wanted = names.get(kind, "a number") if not isinstance(kind, tuple) else "a number"
            self.problem(f"{where}.{key}", f"must be {wanted}")
            return None
        return value

    def table(self, raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            self.problem(where, "must be a table")
            return {}
        return value

    def unknown_keys(self, table: Mapping[str, Any], known: Any, where: str) -> None:
        for key in table:
            if key not in known:
                self.problem(f"{where}.{key}", "unknown key")

    def address_list(self, table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(f"{where}.{key}", "must be a list of email addresses")
            return ()
        for i, address in enumerate(value):
            if "@" not in address or any(c.isspace() for c in address):
                self.problem(f"{where}.{key}[{i}]", f"{address!r} is not an email address")
        return tuple(value)


class DistrictChecks(ProblemLog):
    """The `[districts.<id>]` tables' checks."""

    def parse_order(self, raw: Any, where: str) -> Order | None:
        if not isinstance(raw, dict):
            self.problem(where, "must be a table with id and licenses")
            return None
        self.unknown_keys(raw, ORDER_KEYS, where)
        order_id, licenses = raw.get("id"), raw.get("licenses")
        ok = True
        if not isinstance(order_id, str) or not order_id.strip():
            self.problem(f"{where}.id", "required: a non-empty string")
            ok = False
        if not isinstance(licenses, int) or isinstance(licenses, bool):
            self.problem(f"{where}.licenses", "required: an integer")
            ok = False
        elif licenses < 0:
            self.problem(f"{where}.licenses", "must be >= 0")
            ok = False
        if not ok:
            return None
        assert isinstance(order_id, str) and isinstance(licenses, int)
        return Order(id=order_id.strip(), licenses=licenses)

    def parse_districts(self, table: Mapping[str, Any]) -> dict[str, District]:
        districts: dict[str, District] = {}
        usernames: dict[str, str] = {}
        order_owner: dict[str, str] = {}
        for district_id, raw in table.items():
            where = f"districts.{district_id}"
            if not DISTRICT_ID.match(district_id):
                self.problem(where, "district id must match [a-z0-9][a-z0-9-]*")
            if not isinstance(raw, dict):
                self.problem(where, "must be a table")
                continue
            district = self.parse_district(district_id, raw, where)
            if district is None:
                continue
            other = usernames.get(district.username.lower())
            if other is not None:
                self.problem(
                    f"{where}.username",
                    f"{district.username!r} is already the login of districts.{other}",
                )
            usernames[district.username.lower()] = district_id
            for order in (district.order, *district.regular_orders):
                owner = order_owner.get(order.id)
                if owner is not None and owner != district_id:
                    self.problem(
                        f"{where}.order",
                        f"order id {order.id!r} is already used by districts.{owner}",
                    )
                order_owner[order.id] = district_id
            districts[district_id] = district
        return districts

    def parse_district(
        self, district_id: str, raw: Mapping[str, Any], where: str
    ) -> District | None:
        before = len(self.problems)
        self.unknown_keys(raw, DISTRICT_KEYS, where)
        if "password" in raw:
            self.problem(
                f"{where}.password",
                "plain-text passwords are not accepted: "
                "use password_hash from `eams hash-password`",
            )
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            self.problem(f"{where}.name", "required: a non-empty string")
            name = district_id
        username = raw.get("username")
        if not isinstance(username, str) or not USERNAME.match(username):
            self.problem(f"{where}.username", "required: 1-64 of A-Z a-z 0-9 . _ @ -")
            username = district_id
        password_hash = raw.get("password_hash")
        if password_hash is not None:
            problem = (
                scrypt_problem(password_hash)
                if isinstance(password_hash, str)
                else "must be a value from `eams hash-password`"
            )
            if problem is not None:
                self.problem(f"{where}.password_hash", problem)
                password_hash = None
        keys = raw.get("authorized_keys", [])
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            self.problem(f"{where}.authorized_keys", "must be a list of public key lines")
            keys = []
        for i, key in enumerate(keys):
            if not _looks_like_public_key(key):
                self.problem(
                    f"{where}.authorized_keys[{i}]",
                    "not an OpenSSH public key line (ssh-ed25519 AAAA... comment)",
                )
        if password_hash is None and not keys and "password_hash" not in raw:
            self.problem(where, "needs password_hash or authorized_keys to log in")
        notify = self.address_list(raw, "notify", where)
        grades = self.parse_grades(raw, where)
        schedule = raw.get("schedule", "on-upload")
        if not isinstance(schedule, str) or not (
            schedule == "on-upload" or NIGHTLY.match(schedule)
        ):
            self.problem(f"{where}.schedule", 'must be "on-upload" or "nightly@HH:MM"')
            schedule = "on-upload"
        stale = raw.get("stale_after_hours", 36)
        if not isinstance(stale, int | float) or isinstance(stale, bool) or stale < 0:
            self.problem(f"{where}.stale_after_hours", "must be a number >= 0 (0 = off)")
            stale = 36
        guard = raw.get("deactivation_guard", 0.25)
        if not isinstance(guard, int | float) or isinstance(guard, bool) or not 0 <= guard <= 1:
            self.problem(f"{where}.deactivation_guard", "must be a number between 0 and 1")
            guard = 0.25
        sync = raw.get("sync", "delta")
        if sync not in SYNC_MODES:
            self.problem(
                f"{where}.sync",
                'must be "delta" (only the rows in the file change anything) or "full" '
                "(the file is the whole roster: students not in it are deactivated)",
            )
            sync = "delta"
        web_login = raw.get("web_login", True)
        if not isinstance(web_login, bool):
            self.problem(f"{where}.web_login", "must be true or false")
            web_login = True
        order = self.parse_order(raw.get("order"), f"{where}.order")
        regular: list[Order] = []
        raw_regular = raw.get("regular_orders", [])
        if not isinstance(raw_regular, list):
            self.problem(f"{where}.regular_orders", "must be an array of tables")
            raw_regular = []
        for i, item in enumerate(raw_regular):
            parsed = self.parse_order(item, f"{where}.regular_orders[{i}]")
            if parsed is not None:
                regular.append(parsed)
        ids = [o.id for o in ([order] if order else []) + regular]
        for order_id in {i for i in ids if ids.count(i) > 1}:
            self.problem(f"{where}.regular_orders", f"order id {order_id!r} appears twice")
        schools = self.parse_schools(raw, where)
        if len(self.problems) > before or order is None:
            return None
        return District(
            id=district_id,
            name=name.strip(),
            username=username,
            password_hash=password_hash,
            authorized_keys=tuple(keys),
            notify=notify,
            grades=grades,
            schedule=schedule,
            stale_after_hours=float(stale),
            deactivation_guard=float(guard),
            sync=sync,
            web_login=web_login,
            order=order,
            regular_orders=tuple(regular),
            schools=schools,
        )

    def parse_grades(self, raw: Mapping[str, Any], where: str) -> frozenset[str]:
        grades = raw.get("grades", list(DEFAULT_GRADES))
        if not isinstance(grades, list) or not grades:
            self.problem(f"{where}.grades", "must be a non-empty list of grades (K, 1-12)")
            return frozenset(DEFAULT_GRADES)
        normalized = set()
        for i, grade in enumerate(grades):
            value = normalize_grade(grade) if isinstance(grade, str) else None
            if value is None:
                self.problem(f"{where}.grades[{i}]", f"{grade!r} is not K or 1-12 (as a string)")
            else:
                normalized.add(value)
        return frozenset(normalized)

    def parse_schools(self, raw: Mapping[str, Any], where: str) -> tuple[School, ...]:
        items = raw.get("schools", [])
        if not isinstance(items, list) or not items:
            self.problem(f"{where}.schools", "at least one [[...schools]] entry is required")
            return ()
        schools: list[School] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            key = f"{where}.schools[{i}]"
            if not isinstance(item, dict):
                self.problem(key, "must be a table with code and name")
                continue
            self.unknown_keys(item, SCHOOL_KEYS, key)
            code, name = item.get("code"), item.get("name")
            if not isinstance(code, str) or not code.strip():
                self.problem(
                    f"{key}.code", 'required: a string (quote it: "0101", leading zeros matter)'
                )
                continue
            if code.strip() in seen:
                self.problem(f"{key}.code", f"school code {code!r} appears twice")
            seen.add(code.strip())
            if not isinstance(name, str) or not name.strip():
                self.problem(f"{key}.name", "required: a non-empty string")
                name = code
            schools.append(School(code=code.strip(), name=name.strip()))
        return tuple(schools)


_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-", "sk-ssh-ed25519", "sk-ecdsa-sha2-")


def _looks_like_public_key(line: str) -> bool:
    parts = line.split()
    return len(parts) >= 2 and parts[0].startswith(_KEY_TYPES) and parts[1].startswith("AAAA")
