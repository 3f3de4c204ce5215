"""A started eAMS server with its web console, and a signed-in browser-like HTTP client.

Used by the web console's test modules: the real `EamsServer` on 127.0.0.1 with
the SFTP port and the web port both 0, a real SQLite file, aiohttp's client
with a cookie jar (what a browser keeps), and forms posted with their CSRF
token as a browser would.
"""

from __future__ import annotations

import functools
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from processing.config import Config
from server.accounts import hash_password
from server.app import EamsServer
from tests.conftest import SHE, SPR, ServerHandle, csv_text, server_config, student

OPERATOR, OPERATOR_PASSWORD = "opsadmin", "ops-console-2026"


@functools.cache
def operator_hash() -> str:
    return hash_password(OPERATOR_PASSWORD)


def web_config(tmp_path: Path, client_key: str, **overrides: Any) -> Path:
    """Springfield and Shelbyville, [web] on port 0, one operator account."""
    path = server_config(tmp_path, client_key, districts=(SPR, SHE), **overrides)
    text = path.read_text(encoding="utf-8")
    text += (
        '\n[web]\nlisten = "127.0.0.1"\nport = 0\n'
        f'\n[operators.accounts.{OPERATOR}]\nname = "Ops Admin"\n'
        f'password_hash = "{operator_hash()}"\n'
    )
    path.write_text(text, encoding="utf-8")
    return path


class WebHandle(ServerHandle):
    @property
    def base(self) -> str:
        assert self.app.web is not None
        return f"http://127.0.0.1:{self.app.web.bound_port}"

    def client(self) -> aiohttp.ClientSession:
        """A browser: cookies kept (for 127.0.0.1 too), redirects not followed."""
        return aiohttp.ClientSession(
            self.base,
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=30),
        )


async def started(tmp_path: Path, shared_host_keys: Path, client_key: str) -> WebHandle:
    host_keys = tmp_path / "host_keys"
    if not host_keys.exists():
        shutil.copytree(shared_host_keys, host_keys)
    path = web_config(tmp_path, client_key)
    app = EamsServer(Config.from_toml(path), port=0, web_port=0)
    await app.start()
    return WebHandle(app, path)


async def web_server(
    tmp_path: Path, shared_host_keys: Path, client_key: tuple[Path, str]
) -> AsyncIterator[WebHandle]:
    handle = await started(tmp_path, shared_host_keys, client_key[1])
    try:
        yield handle
    finally:
        if not handle.app.stopped.is_set():
            await handle.app.stop()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


async def sign_in(
    client: aiohttp.ClientSession, username: str, password: str
) -> aiohttp.ClientResponse:
    """GET /login, then POST it with its CSRF token, as a browser would."""
    async with client.get("/login") as page:
        token = csrf_of(await page.text())
    response = await client.post(
        "/login",
        data={"username": username, "password": password, "csrf": token},
        allow_redirects=False,
    )
    await response.read()
    return response


async def page_csrf(client: aiohttp.ClientSession, path: str = "/") -> str:
    async with client.get(path) as page:
        return csrf_of(await page.text())


async def upload(
    handle: ServerHandle, rows: list[list[str]] | bytes, *, district: str = SPR
) -> None:
    """An SFTP upload of students.csv by `district` (rows, or the file's raw bytes)."""
    data = rows if isinstance(rows, bytes) else csv_text(rows).encode()
    async with (
        handle.connect(username=district) as conn,
        conn.start_sftp_client() as sftp,
        sftp.open("students.csv", "wb") as out,
    ):
        await out.write(data)


ROSTER = [student(f"S{n}") for n in range(1, 6)]
