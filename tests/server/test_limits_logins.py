"""SPEC §3.2 at sign-in: one address or one district cannot take the server down.

Each test starts the real server on 127.0.0.1, port 0 (conftest `start_server`),
and drives it with real clients: asyncssh, OpenSSH `ssh`, and raw TCP sockets
that connect and say nothing. Linux routes all of 127.0.0.0/8 to the loopback,
so a client bound to 127.0.0.2 is "another address". Nothing waits by sleeping:
`wait_for` polls a condition until a deadline.

1. Bans are exact: parallel guesses get at most `login_attempts` scrypt checks.
2. A connection that ends unsigned after a rejected public key is one failure.
3. Silent connections beyond `max_unauthenticated(_per_address)` are closed at once.
4. At most `max_sessions_per_district` connections of one district.
5. Client-chosen names reach the log escaped.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from processing.config import Config, District
from server.accounts import Accounts
from server.logins import ADDRESS_BUSY, BANNED, DISTRICT_FULL, SERVER_BUSY, DistrictSSHServer
from tests.conftest import SFTP_PASSWORD, SHE, SPR, ServerHandle, add_toml_keys, wait_for

OTHER: dict[str, Any] = {
    "local_addr": ("127.0.0.2", 0)
}  # a district signing in from another address


class CountingAccounts(Accounts):
    """The real accounts, counting the wrong passwords they check (each one scrypt)."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.wrong_checked = 0
        self._lock = threading.Lock()  # checks run in worker threads

    def check_password(self, username: str, password: str) -> District | None:
        if password != SFTP_PASSWORD:
            with self._lock:
                self.wrong_checked += 1
        return super().check_password(username, password)


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("login failed")]


async def refused_login(handle: ServerHandle, *args: Any, **options: Any) -> str:
    """Connect and sign in, which must fail; return the reason the client got."""
    with pytest.raises(asyncssh.DisconnectError) as info:
        async with handle.connect(*args, **options):
            pass
    return str(info.value.reason)


async def openssh(handle: ServerHandle, home: Path, *options: str) -> tuple[int, str]:
    """`ssh -p PORT springfield@127.0.0.1 true` with no user config; (exit status, stderr)."""
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]
    argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    argv += ["-p", str(handle.port), *options, f"{SPR}@127.0.0.1", "true"]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(home), "LC_ALL": "C"},
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace")


def key_file(folder: Path, name: str) -> Path:
    """A new ed25519 private key file that no district knows."""
    path = folder / name
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path))
    os.chmod(path, 0o600)
    return path


# ---- 1. bans are exact --------------------------------------------------------------------------


async def test_parallel_guesses_get_at_most_login_attempts_checks(
    start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """30 wrong passwords and the right one, all at once from 127.0.0.1: 5 guesses are
    checked, the rest wait and see the ban, and after it even the right password is
    refused (today all 30 were checked and the right one signed in)."""
    handle: ServerHandle = await start_server(
        server={"login_attempts": 5, "ban_minutes": 5, "max_unauthenticated_per_address": 64}
    )
    accounts = CountingAccounts(handle.app.config)
    handle.app.accounts = accounts

    async def attempt(password: str) -> None:
        async with handle.connect(SPR, password):
            pass

    passwords = [f"guess-{n}" for n in range(30)] + [SFTP_PASSWORD]
    outcomes = await asyncio.gather(*(attempt(p) for p in passwords), return_exceptions=True)
    assert all(isinstance(o, asyncssh.PermissionDenied) for o in outcomes[:30]), outcomes
    assert accounts.wrong_checked == 5
    assert len(failures(caplog)) == 5
    assert all("from 127.0.0.1 (wrong password" in line for line in failures(caplog))
    assert handle.app.bans.is_banned("127.0.0.1")
    assert BANNED in await refused_login(handle)
    assert accounts.wrong_checked == 5
    async with handle.connect(**OTHER):  # another address is not affected
        pass


# ---- 2. rejected public keys --------------------------------------------------------------------


async def test_a_connection_ending_after_rejected_keys_is_one_logged_failure(
    start_server: Any,
    tmp_path: Path,
    client_key: tuple[Path, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Keys the district does not have: a connection offering three of them is one
    failure, logged with the address; the third such connection bans the address,
    and then even the district's own key is refused."""
    handle: ServerHandle = await start_server(server={"login_attempts": 3, "ban_minutes": 5})
    strangers = [key_file(tmp_path, f"stranger{n}") for n in range(3)]
    keys_only: dict[str, Any] = {"password": None, "preferred_auth": "publickey"}
    await refused_login(handle, client_keys=[str(k) for k in strangers], **keys_only)
    await wait_for(lambda: len(failures(caplog)) == 1, message="one failure logged")
    assert failures(caplog) == [
        f"login failed: user '{SPR}' from 127.0.0.1 (public key not accepted)"
    ]
    assert not handle.app.bans.is_banned("127.0.0.1")
    # OpenSSH offers both keys on one connection: one more failure, not two.
    status, err = await openssh(handle, tmp_path, "-i", str(strangers[0]), "-i", str(strangers[1]))
    assert status == 255 and "Permission denied" in err, err
    await wait_for(lambda: len(failures(caplog)) == 2, message="OpenSSH's failure logged")
    await refused_login(handle, client_keys=[str(strangers[2])], **keys_only)
    await wait_for(lambda: handle.app.bans.is_banned("127.0.0.1"), message="the ban")
    assert len(failures(caplog)) == 3
    assert BANNED in await refused_login(handle, client_keys=[str(client_key[0])], **keys_only)


async def test_a_rejected_key_then_the_right_password_is_no_failure(
    spr: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = key_file(tmp_path, "stranger")
    async with spr.connect(client_keys=[str(stranger)]) as conn, conn.start_sftp_client() as sftp:
        await sftp.listdir(".")
    await wait_for(lambda: not spr.app.connections, message="the connection gone")
    assert failures(caplog) == []
    assert len(spr.app.bans) == 0


# ---- 3. before sign-in --------------------------------------------------------------------------


async def silent(port: int, count: int, address: str) -> list[Any]:
    """`count` TCP connections from `address` that never say a word; each paired with a
    task reading until the server closes it."""
    opened = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0)) for _ in range(count))
    )
    return [(writer, asyncio.create_task(reader.read())) for reader, writer in opened]


async def close_all(sockets: list[Any]) -> None:
    for writer, reading in sockets:
        writer.close()
        reading.cancel()
    await asyncio.gather(*(reading for _, reading in sockets), return_exceptions=True)


def closed(sockets: list[Any]) -> list[bytes]:
    return [reading.result() for _, reading in sockets if reading.done()]


async def test_silent_connections_beyond_the_per_address_cap_are_closed_at_once(
    spr: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """200 silent connections from one address (today: all held for the 60 s login
    grace): 10 are held, 190 closed at once with a reason, in a few log lines; a
    district signing in from another address meanwhile is served."""
    sockets = await silent(spr.port, 200, "127.0.0.1")
    try:
        await wait_for(lambda: len(closed(sockets)) == 190, 30, "190 closed at once")
        assert all(ADDRESS_BUSY.encode() in data for data in closed(sockets))
        assert spr.app.logins.waiting_from("127.0.0.1") == 10
        async with spr.connect(**OTHER) as conn, conn.start_sftp_client() as sftp:
            assert "students_template.csv" in await sftp.listdir(".")
        assert len(closed(sockets)) == 190  # the 10 are still held
    finally:
        await close_all(sockets)
    refusals = [r for r in caplog.records if "refused connection from 127.0.0.1" in r.message]
    assert 1 <= len(refusals) <= 3, [r.message for r in refusals]  # one per 10 s
    await wait_for(lambda: spr.app.logins.unauthenticated == 0, message="all released")


async def test_silent_connections_beyond_the_total_cap_are_closed_until_some_go(
    start_server: Any,
) -> None:
    handle: ServerHandle = await start_server(
        server={"max_unauthenticated": 8, "max_unauthenticated_per_address": 4}
    )
    first = await silent(handle.port, 4, "127.0.0.3")
    second = await silent(handle.port, 4, "127.0.0.4")
    third = await silent(handle.port, 4, "127.0.0.5")
    try:
        await wait_for(lambda: len(closed(third)) == 4, message="the third address closed")
        assert all(SERVER_BUSY.encode() in data for data in closed(third))
        assert closed(first) == closed(second) == []
        assert SERVER_BUSY in await refused_login(handle, **OTHER)
        await close_all(first)
        await wait_for(lambda: handle.app.logins.unauthenticated == 4, message="4 released")
        async with handle.connect(**OTHER):
            pass
    finally:
        await close_all(first + second + third)


# ---- 4. per district ----------------------------------------------------------------------------


async def test_a_district_gets_at_most_max_sessions_per_district(
    start_server: Any,
    tmp_path: Path,
    client_key: tuple[Path, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two sessions held: a third login of springfield (password, key or OpenSSH) is
    refused with a message the client shows, and logged; shelbyville is unaffected;
    nothing counts as a failed login; a SIGHUP reload raises the bound at once."""
    handle: ServerHandle = await start_server(
        districts=(SPR, SHE), server={"max_sessions_per_district": 2}
    )
    by_key: dict[str, Any] = {"password": None, "client_keys": [str(client_key[0])]}
    async with handle.connect() as first, handle.connect(**by_key):
        assert DISTRICT_FULL in await refused_login(handle)
        assert DISTRICT_FULL in await refused_login(handle, **by_key)
        status, err = await openssh(handle, tmp_path, "-i", str(client_key[0]))
        assert status == 255 and f"{DISTRICT_FULL}" in err, err
        async with handle.connect(SHE) as other, other.start_sftp_client() as sftp:
            await sftp.listdir(".")
        async with first.start_sftp_client() as sftp:  # the held sessions still work
            await sftp.listdir(".")
        assert handle.app.logins.sessions(SPR) == 2
        add_toml_keys(handle.config_path, "server", max_sessions_per_district=3)
        assert await handle.app.reload()
        async with handle.connect():
            assert handle.app.logins.sessions(SPR) == 3
    refusals = [r.message for r in caplog.records if "login refused: district" in r.message]
    assert refusals and f"district {SPR} already has 2 sessions" in refusals[0]
    assert "from 127.0.0.1" in refusals[0]
    assert failures(caplog) == [] and len(handle.app.bans) == 0
    await wait_for(lambda: handle.app.logins.sessions(SPR) == 0, message="sessions released")


# ---- 5. log lines -------------------------------------------------------------------------------


async def test_client_chosen_names_are_logged_escaped(
    spr: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """A user name is the client's text: a newline or an escape sequence in it must not
    forge a log line or clear the operator's terminal, and a long one is cut."""
    hook = DistrictSSHServer(spr.app)
    hook.address = "127.0.0.9"
    for username in ("evil\nlogin: user demo from 10.0.0.1", "\x1b[2Jwiped", "x" * 1000):
        assert await hook.validate_password(username, "wrong") is False
    for record in caplog.records:
        assert not any(ch in record.getMessage() for ch in "\n\r\x1b"), record.getMessage()
    lines = failures(caplog)
    assert lines[0].startswith("login failed: user 'evil\\nlogin: user demo from 10.0.0.1'")
    assert lines[1].startswith("login failed: user '\\x1b[2Jwiped' from 127.0.0.9")
    assert len(lines[2]) < 200
    # Over SSH too (asyncssh itself refuses names with control characters, SASLprep).
    assert await refused_login(spr, "x" * 300, "wrong")
    assert len(failures(caplog)[-1]) < 200
