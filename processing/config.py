"""config.toml: loading and validation (SPEC §2).

The config lives in `processing/` rather than `server/` because both halves
need it and the core must not depend on the SFTP edge: `server/` imports
`processing/`, never the other way round.

Validation collects *every* problem with its key path
(`districts.springfield.order.licenses: must be >= 0`) instead of stopping at
the first, so an operator fixes a broken file in one pass.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrs import field, frozen

from processing.passwords import scrypt_problem
from processing.rules import normalize_grade

DISTRICT_ID = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}\Z")
NIGHTLY = re.compile(r"nightly@([01][0-9]|2[0-3]):([0-5][0-9])\Z")
SYNC_MODES = ("delta", "full")
DEFAULT_GRADES = ("K", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12")


@frozen
class Order:
    id: str
    licenses: int


@frozen
class School:
    code: str
    name: str


@frozen
class District:
    id: str
    name: str
    username: str
    password_hash: str | None
    authorized_keys: tuple[str, ...]
    notify: tuple[str, ...]
    grades: frozenset[str]
    schedule: str  # "on-upload" or "nightly@HH:MM"
    stale_after_hours: float
    deactivation_guard: float
    order: Order
    regular_orders: tuple[Order, ...]
    schools: tuple[School, ...]
    sync: str = "delta"  # or "full": the file is the whole roster (SPEC §5.6)

    @property
    def school_codes(self) -> frozenset[str]:
        return frozenset(s.code for s in self.schools)

    @property
    def nightly_at(self) -> tuple[int, int] | None:
        """(hour, minute) for `nightly@HH:MM` districts, None for on-upload."""
        match = NIGHTLY.match(self.schedule)
        return (int(match.group(1)), int(match.group(2))) if match else None


@frozen
class ServerSettings:
    listen: str = "0.0.0.0"
    port: int = 22
    host_keys: Path = Path("host_keys")
    homes: Path = Path("homes")
    data: Path = Path("data")
    ftp_refusal_port: int = 21
    max_upload_mb: int = 200
    login_attempts: int = 5
    ban_minutes: float = 15
    results_retention_days: int = 90
    log_format: str = "text"  # or "json" (SPEC §9)
    # SPEC §3.2: what one address or one district can hold at once.
    max_unauthenticated: int = 64
    max_unauthenticated_per_address: int = 10
    max_sessions_per_district: int = 8
    max_handles_per_session: int = 32
    temp_files_per_district: int = 10

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


@frozen
class SmtpSettings:
    host: str = "localhost"
    port: int = 25
    starttls: bool = False
    username: str = ""
    password: str = ""
    sender: str = "eams@myaccess.example"


@frozen
class Config:
    path: Path
    server: ServerSettings
    smtp: SmtpSettings | None
    sender: str
    operators_notify: tuple[str, ...]
    districts: Mapping[str, District] = field(repr=False)
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_toml(cls, path: Path | str) -> Config:
        """Load and validate; raises ConfigError listing every problem."""
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot read: {exc}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        return _Parser(path).parse(raw)

    def district(self, district_id: str) -> District:
        try:
            return self.districts[district_id]
        except KeyError:
            raise KeyError(f"unknown district {district_id!r}") from None


class ConfigError(Exception):
    """A config with problems; `problems` holds one `key.path: reason` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_SERVER_KEYS = {
    "listen": str,
    "port": int,
    "host_keys": str,
    "homes": str,
    "data": str,
    "ftp_refusal_port": int,
    "max_upload_mb": int,
    "login_attempts": int,
    "ban_minutes": (int, float),
    "results_retention_days": int,
    "log_format": str,
    "max_unauthenticated": int,
    "max_unauthenticated_per_address": int,
    "max_sessions_per_district": int,
    "max_handles_per_session": int,
    "temp_files_per_district": int,
}
_LIMIT_KEYS = (
    "max_upload_mb",
    "login_attempts",
    "max_unauthenticated",
    "max_unauthenticated_per_address",
    "max_sessions_per_district",
    "max_handles_per_session",
    "temp_files_per_district",
)
LOG_FORMATS = ("text", "json")
_SMTP_KEYS = {
    "host": str,
    "port": int,
    "starttls": bool,
    "username": str,
    "password": str,
    "sender": str,
}
_DISTRICT_KEYS = {
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
    "order",
    "regular_orders",
    "schools",
}


class _Parser:
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
            names = {str: "a string", int: "an integer", bool: "true or false"}
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

    def parse(self, raw: Mapping[str, Any]) -> Config:
        self.unknown_keys(raw, {"server", "smtp", "operators", "districts"}, "(top level)")
        if "server" not in raw:  # SPEC 3.2: never 0.0.0.0:22 by accident
            self.problem("server", "required: a [server] table (listen, port, homes, data, ...)")
        server = self.parse_server(self.table(raw, "server", "server"))
        smtp = None
        if "smtp" in raw:
            smtp = self.parse_smtp(self.table(raw, "smtp", "smtp"))
        operators = self.table(raw, "operators", "operators")
        if "sender" in operators:
            # Accepted once and never used: the From address is [smtp] sender.
            self.problem("operators.sender", "not a setting: set the From address as [smtp] sender")
        self.unknown_keys(operators, {"notify", "sender"}, "operators")
        notify = self.address_list(operators, "notify", "operators")
        districts = self.parse_districts(self.table(raw, "districts", "districts"))
        if not raw.get("districts"):  # SPEC 3.2: a SIGHUP with it would sign every district out
            self.problem("districts", "required: at least one [districts.<id>] table")
        if self.problems:
            raise ConfigError(self.problems)
        sender = smtp.sender if smtp else SmtpSettings().sender
        return Config(
            path=self.path,
            server=server,
            smtp=smtp,
            sender=sender,
            operators_notify=notify,
            districts=districts,
            warnings=tuple(self.warnings),
        )

    def parse_server(self, table: Mapping[str, Any]) -> ServerSettings:
        self.unknown_keys(table, _SERVER_KEYS, "server")
        values: dict[str, Any] = {}
        for key, kind in _SERVER_KEYS.items():
            if key in table:
                value = self.typed(table, key, kind, "server")
                if value is not None:
                    values[key] = value
        for key in ("port", "ftp_refusal_port"):
            if key in values and not 0 <= values[key] <= 65535:
                self.problem(f"server.{key}", "must be between 0 and 65535")
        for key in _LIMIT_KEYS:
            if key in values and values[key] < 1:
                self.problem(f"server.{key}", "must be >= 1")
        if "log_format" in values and values["log_format"] not in LOG_FORMATS:
            self.problem("server.log_format", 'must be "text" or "json"')
        for key in ("ban_minutes", "results_retention_days"):
            if key in values and values[key] < 0:
                self.problem(f"server.{key}", "must be >= 0")
        for key in ("host_keys", "homes", "data"):
            if key in values:
                values[key] = (self.base / values[key]).resolve()
            else:
                values[key] = (self.base / getattr(ServerSettings(), key)).resolve()
        return ServerSettings(**values)

    def parse_smtp(self, table: Mapping[str, Any]) -> SmtpSettings:
        self.unknown_keys(table, _SMTP_KEYS, "smtp")
        values: dict[str, Any] = {}
        for key, kind in _SMTP_KEYS.items():
            if key in table:
                value = self.typed(table, key, kind, "smtp")
                if value is not None:
                    values[key] = value
        if "port" in values and not 1 <= values["port"] <= 65535:
            self.problem("smtp.port", "must be between 1 and 65535")
        if "sender" in values and "@" not in values["sender"]:
            self.problem("smtp.sender", "must be an email address")
        return SmtpSettings(**values)

    def address_list(self, table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(f"{where}.{key}", "must be a list of email addresses")
            return ()
        for i, address in enumerate(value):
            if "@" not in address or any(c.isspace() for c in address):
                self.problem(f"{where}.{key}[{i}]", f"{address!r} is not an email address")
        return tuple(value)

    def parse_order(self, raw: Any, where: str) -> Order | None:
        if not isinstance(raw, dict):
            self.problem(where, "must be a table with id and licenses")
            return None
        self.unknown_keys(raw, {"id", "licenses"}, where)
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
        self.unknown_keys(raw, _DISTRICT_KEYS, where)
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
            self.unknown_keys(item, {"code", "name"}, key)
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
