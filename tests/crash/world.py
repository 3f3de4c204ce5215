"""The campaign's world: its districts and their config.toml, the folders of the server
and of the model, and the read-only ways every part looks into them.

Everything lives in one temp folder (`World.workdir`):

    server/config.toml, server/data/, server/homes/<district>/   what `eams serve` uses
    model/config.toml, model/data/                              the model's `eams process`
    host_keys/   uploads/ (a copy of every file sent)   logs/serve-NN.log

The server and the model get the same districts from one `write_config`, so the
model can only differ in what it was fed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.factories import District, config_toml, server_table

DISTRICT_IDS = ("oak", "elm", "pine", "birch", "cedar")
LICENSES = {"oak": 30000, "elm": 30000, "pine": 4000, "birch": 30000, "cedar": 9000}
GUARDED = "oak"  # keeps the default deactivation guard (0.25); the others turn it off
REGULAR_LICENSES = 400
SCHOOLS = ("0101", "0102", "0201")
SFTP_PASSWORD = "crash-campaign-sftp-2026"


def regular_order(district: str) -> str:
    """The regular order each district's initial load goes onto."""
    return f"REG-{district.upper()}-1001"


@dataclass(frozen=True)
class World:
    """Paths of one campaign's folder, and its config writer."""

    workdir: Path
    districts: tuple[str, ...]

    @property
    def db(self) -> Path:
        return self.workdir / "server" / "data" / "eams.sqlite3"

    @property
    def model_db(self) -> Path:
        return self.workdir / "model" / "data" / "eams.sqlite3"

    @property
    def config(self) -> Path:
        return self.workdir / "server" / "config.toml"

    @property
    def model_config(self) -> Path:
        return self.workdir / "model" / "config.toml"

    @property
    def spool(self) -> Path:
        return self.workdir / "server" / "data" / "spool"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def saved_uploads(self) -> Path:
        return self.workdir / "uploads"

    def home(self, district: str) -> Path:
        return self.workdir / "server" / "homes" / district

    def write_config(self, folder: Path, *, password_hash: str, smtp_port: int | None) -> Path:
        """config.toml in `folder` (the server's with `[smtp]`, the model's without)."""
        folder.mkdir(parents=True, exist_ok=True)
        smtp = None
        if smtp_port is not None:
            smtp = {"host": "127.0.0.1", "port": smtp_port, "sender": "eams@myaccess.example"}
        districts = [
            District(
                d,
                d.title() + " School District",
                (f"ENT-{d.upper()}-2026", LICENSES[d]),
                password_hash=password_hash,
                settings={"stale_after_hours": 0}
                | ({} if d == GUARDED else {"deactivation_guard": 1}),
                regular_orders=((regular_order(d), REGULAR_LICENSES),),
                schools=tuple((code, f"School {code}") for code in SCHOOLS),
            )
            for d in self.districts
        ]
        server = server_table(folder, host_keys=self.workdir / "host_keys")
        path = folder / "config.toml"
        path.write_text(config_toml(server, districts, smtp=smtp), encoding="utf-8")
        return path


# ---- looking in from outside ---------------------------------------------------------------


def query(db_file: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of `sql` on a fresh read connection ([] while the database does not exist)."""
    if not db_file.exists():
        return []
    with contextlib.closing(sqlite3.connect(db_file, timeout=30)) as db:
        return list(db.execute(sql, params).fetchall())


def eams_quiet(argv: list[str]) -> tuple[int, str]:
    """`eams ARGV` in this process (call it from a worker thread); (exit code, output)."""
    from server.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(argv)
    return code, out.getvalue()


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, poll: float = 0.02
) -> None:
    """Poll `predicate` until true; TimeoutError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(poll)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def digest(data: bytes | None) -> str | None:
    """A short fingerprint of a students.csv's bytes (None: no file)."""
    return None if data is None else hashlib.sha256(data).hexdigest()[:16]
