"""config.toml's checks (SPEC §2): every problem with its key path, all at once.

Validation collects *every* problem with its key path
(`districts.springfield.order.licenses: must be >= 0`) instead of stopping at
the first, so an operator fixes a broken file in one pass. `Config.from_toml`
calls `check`; `eams check-config` and a SIGHUP both go through it, so a file
refused by one is refused by the other.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from processing.config import (
    LOG_FORMATS,
    USERNAME,
    Config,
    ConfigError,
    OperatorAccount,
    ServerSettings,
    SmtpSettings,
    WebSettings,
)
from processing.config_districts import DISTRICT_KEYS, ORDER_KEYS, SCHOOL_KEYS, DistrictChecks
from processing.passwords import scrypt_problem


def check(path: Path, raw: Mapping[str, Any]) -> Config:
    """The Config `raw` (parsed TOML from `path`) describes; ConfigError lists every problem."""
    return _Parser(path).parse(raw)


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
_WEB_KEYS: dict[str, Any] = {
    "listen": str,
    "port": int,
    "tls_cert": str,
    "tls_key": str,
    "session_minutes": int,
    "public_url": str,
    "metrics_allow": list,
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
_SMTP_KEYS = {
    "host": str,
    "port": int,
    "starttls": bool,
    "username": str,
    "password": str,
    "sender": str,
}
_TOP_KEYS = frozenset({"server", "smtp", "operators", "districts", "web"})
_OPERATOR_KEYS = frozenset({"notify", "accounts"})
_ACCOUNT_KEYS = frozenset({"name", "password_hash"})

CONFIG_KEYS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "": _TOP_KEYS,
        "server": frozenset(_SERVER_KEYS),
        "smtp": frozenset(_SMTP_KEYS),
        "operators": _OPERATOR_KEYS,
        "operators.accounts.<name>": _ACCOUNT_KEYS,
        "web": frozenset(_WEB_KEYS),
        "districts.<id>": frozenset(DISTRICT_KEYS),
        "districts.<id>.order": ORDER_KEYS,
        "districts.<id>.regular_orders[]": ORDER_KEYS,
        "districts.<id>.schools[]": SCHOOL_KEYS,
    }
)
"""Every key the checks accept, by the table that holds it ("" is the top level;
`<id>` and `<name>` stand for a district's id and an operator's name; `[]` marks an
array of tables). docs/config.md documents exactly these (tests/test_docs.py)."""


class _Parser(DistrictChecks):
    """The whole file: server, smtp, operators, web, and (DistrictChecks) the districts."""

    def parse(self, raw: Mapping[str, Any]) -> Config:
        self.unknown_keys(raw, _TOP_KEYS, "(top level)")
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
        self.unknown_keys(operators, {*_OPERATOR_KEYS, "sender"}, "operators")
        notify = self.address_list(operators, "notify", "operators")
        districts = self.parse_districts(self.table(raw, "districts", "districts"))
        accounts = self.parse_accounts(self.table(operators, "accounts", "operators.accounts"))
        usernames = {d.username.lower(): d.id for d in districts.values()}
        for name in accounts:
            if name.lower() in usernames:
                self.problem(
                    f"operators.accounts.{name}",
                    f"the name is district {usernames[name.lower()]}'s SFTP username: "
                    "an operator and a district must sign in with different names",
                )
        web = self.parse_web(self.table(raw, "web", "web")) if "web" in raw else None
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
            web=web,
            operators=accounts,
        )

    def parse_web(self, table: Mapping[str, Any]) -> WebSettings:
        self.unknown_keys(table, _WEB_KEYS, "web")
        values: dict[str, Any] = {}
        for key, kind in _WEB_KEYS.items():
            if key in table:
                value = self.typed(table, key, kind, "web")
                if value is not None:
                    values[key] = value
        if "port" in values and not 0 <= values["port"] <= 65535:
            self.problem("web.port", "must be between 0 and 65535 (0 = off)")
        if "session_minutes" in values and values["session_minutes"] < 1:
            self.problem("web.session_minutes", "must be >= 1")
        if bool(values.get("tls_cert")) != bool(values.get("tls_key")):
            self.problem("web.tls_cert", "tls_cert and tls_key go together: set both or neither")
        for key in ("tls_cert", "tls_key"):
            if values.get(key):
                values[key] = str((self.base / values[key]).resolve())
        if "metrics_allow" in values:
            allowed = values["metrics_allow"]
            for i, network in enumerate(allowed):
                try:
                    ipaddress.ip_network(network, strict=False)
                except (TypeError, ValueError):
                    self.problem(
                        f"web.metrics_allow[{i}]", f"{network!r} is not a network (10.0.0.0/8)"
                    )
            values["metrics_allow"] = tuple(str(n) for n in allowed)
        return WebSettings(**values)

    def parse_accounts(self, table: Mapping[str, Any]) -> dict[str, OperatorAccount]:
        accounts = {}
        for name, raw in table.items():
            where = f"operators.accounts.{name}"
            if not USERNAME.match(name):
                self.problem(where, "the name must be 1-64 of A-Z a-z 0-9 . _ @ -")
                continue
            if not isinstance(raw, dict):
                self.problem(where, "must be a table with name and password_hash")
                continue
            self.unknown_keys(raw, _ACCOUNT_KEYS, where)
            display = raw.get("name", name)
            if not isinstance(display, str) or not display.strip():
                self.problem(f"{where}.name", "must be a non-empty string")
                continue
            password_hash = raw.get("password_hash")
            problem = (
                scrypt_problem(password_hash)
                if isinstance(password_hash, str)
                else "required: a value from `eams hash-password`"
            )
            if problem is not None:
                self.problem(f"{where}.password_hash", problem)
                continue
            assert isinstance(password_hash, str)
            accounts[name] = OperatorAccount(name, display.strip(), password_hash)
        return accounts

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
