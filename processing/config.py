"""config.toml as values (SPEC §2): `Config.from_toml` loads and validates it.

The config lives in `processing/` rather than `server/` because both halves
need it and the core must not depend on the SFTP edge: `server/` imports
`processing/`, never the other way round. The checks themselves, with their
key paths, are in processing/config_check.py.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path

from attrs import evolve, field, frozen

DISTRICT_ID = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
USERNAME = re.compile(r"[A-Za-z0-9._@-]{1,64}\Z")
NIGHTLY = re.compile(r"nightly@([01][0-9]|2[0-3]):([0-5][0-9])\Z")
SYNC_MODES = ("delta", "full")
LOG_FORMATS = ("text", "json")
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
    web_login: bool = True  # the district may sign in to the web console (SPEC §8)

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
class WebSettings:
    """`[web]` (SPEC §8): the web console and the operations endpoints."""

    listen: str = "127.0.0.1"
    port: int = 8080  # 0 = off
    tls_cert: str = ""
    tls_key: str = ""
    session_minutes: int = 480
    public_url: str = ""
    metrics_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


@frozen
class OperatorAccount:
    """`[operators.accounts.NAME]`: an operator's sign-in to the web console and API."""

    name: str  # the sign-in name (the table's key)
    display_name: str
    password_hash: str = field(repr=False)


@frozen
class Config:
    path: Path
    server: ServerSettings
    smtp: SmtpSettings | None
    sender: str
    operators_notify: tuple[str, ...]
    districts: Mapping[str, District] = field(repr=False)
    warnings: tuple[str, ...] = ()
    web: WebSettings | None = None
    operators: Mapping[str, OperatorAccount] = field(factory=dict, repr=False)

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
        from processing.config_check import check  # the checks need these types

        return check(path, raw)

    def only(self, district_id: str) -> Config:
        """This config with one district: what a worker process needs for one run (a
        2,000-district config pickled for every run cost more than the run)."""
        return evolve(self, districts={district_id: self.district(district_id)})

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
