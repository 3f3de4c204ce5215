"""Shared test helpers: a config.toml writer, an in-process `eams`, CSV writing, the invariant.

Kept small and generic: import the helpers with `from tests.conftest import ...`,
or use the `config_path` fixture for the default one-district config. Rows, files,
config text and the password hash come from tests/factories.py (the benches use it
too) and are re-exported here under the names the test modules import.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from tests.factories import PASSWORD_MARK as PASSWORD_MARK
from tests.factories import SCHOOLS as SCHOOLS
from tests.factories import SFTP_PASSWORD as SFTP_PASSWORD
from tests.factories import District, config_toml, server_table
from tests.factories import csv_text as csv_text
from tests.factories import password_hash as password_hash
from tests.factories import pw as pw
from tests.factories import student as student
from tests.factories import write_csv as write_csv

if TYPE_CHECKING:
    import asyncssh

# CI explores the same examples every run (a red CI must mean a change broke
# something); a developer's run explores new ones. HYPOTHESIS_PROFILE=dev to compare.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

SPR, SHE = "springfield", "shelbyville"
ORDERS = {
    SPR: ("ENT-SPR-2026", "REG-SPR-1001"),
    SHE: ("ENT-SHE-2026", "REG-SHE-1001"),
}
NAMES = {SPR: "Springfield Public Schools", SHE: "Shelbyville Unified"}


def _per_district(value: Any, district_id: str) -> Any:
    return value.get(district_id) if isinstance(value, dict) else value


def make_config(tmp_path: Path, **overrides: Any) -> Path:
    """Write `<tmp_path>/config.toml` (overwriting it) and return its path.

    Overrides (a dict keyed by district id sets one value per district):
      districts=("springfield",) or ("springfield", "shelbyville")
      licenses=100, regular_licenses=40, order_id="ENT-SPR-2026",
      grades=None (default K-12), deactivation_guard=None (default 0.25),
      max_upload_mb=200, extra_toml="" (appended verbatim).
    """
    districts = overrides.pop("districts", (SPR,))
    licenses = overrides.pop("licenses", 100)
    regular_licenses = overrides.pop("regular_licenses", 40)
    order_id = overrides.pop("order_id", None)
    grades = overrides.pop("grades", None)
    guard = overrides.pop("deactivation_guard", None)
    max_upload_mb = overrides.pop("max_upload_mb", 200)
    extra = overrides.pop("extra_toml", "")
    if overrides:
        raise TypeError(f"unknown make_config overrides: {sorted(overrides)}")
    tables = []
    for district_id in districts:
        enterprise, regular = ORDERS[district_id]
        keys: dict[str, Any] = {}
        district_grades = _per_district(grades, district_id)
        if district_grades is not None:
            keys["grades"] = list(district_grades)
        district_guard = _per_district(guard, district_id)
        if district_guard is not None:
            keys["deactivation_guard"] = district_guard
        tables.append(
            District(
                district_id,
                NAMES[district_id],
                (
                    _per_district(order_id, district_id) or enterprise,
                    _per_district(licenses, district_id),
                ),
                password_hash=password_hash(),
                settings=keys,
                regular_orders=((regular, _per_district(regular_licenses, district_id)),),
            )
        )
    server = server_table(tmp_path, max_upload_mb=max_upload_mb)
    path = tmp_path / "config.toml"
    path.write_text(config_toml(server, tables) + extra, encoding="utf-8")
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    """The default config: springfield only, 100 enterprise and 40 regular licenses."""
    return make_config(tmp_path)


def eams(*args: str, config: Path | str) -> tuple[int, str, str]:
    """Run `eams ARGS --config CONFIG` in-process; return (exit code, stdout, stderr)."""
    from server.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--config", str(config)])
    return code, out.getvalue(), err.getvalue()


def eams_json(*args: str, config: Path | str) -> Any:
    """Run an `eams ... --json` listing that must succeed; return the parsed JSON."""
    code, out, err = eams(*args, "--json", config=config)
    assert code == 0, err
    return json.loads(out)


async def run_bytes(
    runner: Any, data: bytes, *, order_id: str | None = None, dry_run: bool = False
) -> Any:
    """Process `data` as an upload of students.csv to springfield through `runner`.

    Accepted and queued as the server does (`accept`, `Store.enqueue_run`), then
    run; returns the RunOutcome.
    """
    from processing.spool import accept

    data_dir = runner.config.server.data
    source = data_dir.parent / "upload.csv"
    source.write_bytes(data)
    name = "check/students.csv" if dry_run else "students.csv"
    job = accept(source, data_dir, SPR, source=name, dry_run=dry_run, order_id=order_id)
    return await runner.run(await runner.store.enqueue_run(job))


def db_path(config_path: Path | str) -> Path:
    from processing.config import Config

    return Config.from_toml(config_path).server.data / "eams.sqlite3"


def assert_invariant(config_path: Path | str) -> None:
    """SPEC §5: for every order, `used` == its active students, and `used` >= 0."""
    path = db_path(config_path)
    if not path.exists():
        return
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT o.district_id, o.id, o.used, "
            "(SELECT count(*) FROM students s WHERE s.district_id = o.district_id "
            " AND s.order_id = o.id AND s.active = 1) FROM orders o"
        ).fetchall()
    for district_id, order_id, used, active in rows:
        assert used >= 0, f"{district_id}/{order_id}: used {used} < 0"
        assert used == active, f"{district_id}/{order_id}: used {used} but {active} active"


# ---- a real eAMS server in-process (tests/server/test_sftp_e2e.py and friends) -------------
#
# `start_server` starts `EamsServer(config, port=0)` on 127.0.0.1 from a make_config file
# and stops it when the test ends. Host keys are generated once per session and copied
# (RSA-3072 generation would otherwise cost every test a few hundred milliseconds).


def add_toml_keys(config_path: Path, table: str, **values: Any) -> Path:
    """Add `key = value` lines (values JSON-encoded) to `[table]` of a make_config file.

    For keys make_config has no override for: `add_toml_keys(p, "server",
    login_attempts=3)`, `add_toml_keys(p, "districts.springfield", schedule="nightly@02:00")`.
    A key already in the table is replaced.
    """
    lines = config_path.read_text(encoding="utf-8").split("\n")
    header = lines.index(f"[{table}]")
    end = header + 1
    while end < len(lines) and not lines[end].startswith("["):
        end += 1
    body = [ln for ln in lines[header + 1 : end] if ln.split(" = ")[0] not in values]
    added = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    lines[header + 1 : end] = added + body
    config_path.write_text("\n".join(lines), encoding="utf-8")
    return config_path


async def wait_for(predicate: Any, timeout: float = 10.0, message: str = "") -> None:
    """Poll `predicate()` (sync or async) until it is true; fail at the deadline."""
    import asyncio
    import inspect

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message or predicate}")
        await asyncio.sleep(0.01)


async def put_bytes(sftp: asyncssh.SFTPClient, path: str, data: bytes) -> None:
    """OPEN (write, create, truncate), WRITE, CLOSE: a plain upload."""
    async with sftp.open(path, "wb") as handle:
        await handle.write(data)


async def refused(call: Any, exc_type: type[Exception] | None = None) -> str:
    """Await `call`, which must fail with an SFTP status (or `exc_type`); return its message."""
    import asyncssh

    with pytest.raises(exc_type or asyncssh.SFTPError) as info:
        await call
    return str(info.value.reason)  # type: ignore[attr-defined]


async def finished_runs(handle: ServerHandle, count: int, district_id: str = SPR) -> list[Any]:
    """Wait until the district has `count` finished runs; return them, oldest first."""
    import asyncio

    async def done() -> bool:
        runs = await handle.app.store.list_runs(district_id)
        return len(runs) == count and all(r.state not in ("queued", "approved") for r in runs)

    await wait_for(done, message=f"{count} finished run(s) of {district_id}")
    await asyncio.wait_for(handle.app.queue.wait_idle(), 10)
    return sorted(await handle.app.store.list_runs(district_id), key=lambda r: r.seq)


@pytest.fixture(scope="session")
def shared_host_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One set of server host keys for the whole session (copied into each test's config)."""
    from server.hostkeys import ensure_host_keys

    folder = tmp_path_factory.mktemp("host_keys")
    ensure_host_keys(folder)
    return folder


@pytest.fixture(scope="session")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An ed25519 client key: (private key file for `ssh -i`, public line for authorized_keys)."""
    import os

    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519", comment="dba@sis")
    path = tmp_path_factory.mktemp("client_key") / "id_ed25519"
    key.write_private_key(str(path))
    os.chmod(path, 0o600)
    return path, key.export_public_key().decode("ascii").strip()


class ServerHandle:
    """A started in-process EamsServer and the paths a test needs."""

    def __init__(self, app: Any, config_path: Path) -> None:
        self.app = app
        self.config_path = config_path

    @property
    def port(self) -> int:
        port: int = self.app.port
        return port

    def home(self, district_id: str = SPR) -> Path:
        home: Path = self.app.config.server.homes / district_id
        return home

    def results(self, district_id: str = SPR, suffix: str = ".result.json") -> list[Path]:
        return sorted((self.home(district_id) / "results").glob(f"*{suffix}"))

    def connect(
        self, username: str = SPR, password: str | None = SFTP_PASSWORD, **options: Any
    ) -> Any:
        """`asyncssh.connect` to this server (use `async with`)."""
        import asyncssh

        settings: dict[str, Any] = {"known_hosts": None, "client_keys": None, "agent_path": None}
        settings.update(options)
        return asyncssh.connect(
            "127.0.0.1", self.port, username=username, password=password, **settings
        )


def server_config(
    tmp_path: Path,
    client_public_key: str,
    *,
    server: dict[str, Any] | None = None,
    district_keys: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> Path:
    """make_config, plus `[server]` keys and per-district keys; every district also gets
    `client_public_key` in its authorized_keys (password logins work as well)."""
    path = make_config(tmp_path, **overrides)
    if server:
        add_toml_keys(path, "server", **server)
    for district_id in overrides.get("districts", (SPR,)):
        keys: dict[str, Any] = {"authorized_keys": [client_public_key]}
        keys.update((district_keys or {}).get(district_id, {}))
        add_toml_keys(path, f"districts.{district_id}", **keys)
    return path


@pytest.fixture
async def start_server(tmp_path: Path, shared_host_keys: Path, client_key: tuple[Path, str]) -> Any:
    """A factory: `handle = await start_server(**server_config arguments)`. Each server
    listens on 127.0.0.1, port 0, and is stopped at the end of the test."""
    import shutil

    from processing.config import Config
    from server.app import EamsServer

    started: list[Any] = []
    host_keys = tmp_path / "host_keys"
    if not host_keys.exists():
        shutil.copytree(shared_host_keys, host_keys)

    async def start(**arguments: Any) -> ServerHandle:
        path = server_config(tmp_path, client_key[1], **arguments)
        app = EamsServer(Config.from_toml(path), port=0)
        await app.start()
        started.append(app)
        return ServerHandle(app, path)

    yield start
    for app in reversed(started):
        if not app.stopped.is_set():
            await app.stop()


@pytest.fixture
async def spr(start_server: Any) -> ServerHandle:
    """The default server: springfield only, password and key logins."""
    handle: ServerHandle = await start_server()
    return handle
