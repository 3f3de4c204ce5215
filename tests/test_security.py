"""Security checks of eAMS, one story per test, meant to be read top to bottom.

Every test starts the real server in-process (tests/conftest.py `start_server`)
and attacks it with a real SSH client (asyncssh), the way a district's
credentials in the wrong hands would:

1. Paths: no request leaves the district's home folder, whatever the path
   (`..`, absolute, `//`, backslashes, NUL bytes, overlong) and whatever links
   exist on disk (SPEC §3, including the double-SYMLINK chroot escape).
2. Another district's files cannot be read, listed, written or renamed into.
3. SFTP only: exec, shell, PTY, scp, other subsystems, port forwarding (local,
   remote, direct-tcpip, Unix sockets), agent and X11 forwarding are refused.
4. Brute force: an address is banned after `login_attempts` failures, refused at
   connect while banned, and other addresses are unaffected; a login for an
   unknown user takes as long as a wrong password (no user enumeration).
5. No password anywhere: after a realistic day of uploads, neither the SFTP
   password nor any student password is in a log line, a result or error
   file, an email, `eams` output or (in plain text) the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import stat
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from processing.passwords import StudentPasswords
from server import jail
from tests import factories
from tests.conftest import (
    SFTP_PASSWORD,
    SHE,
    SPR,
    ServerHandle,
    assert_invariant,
    csv_text,
    eams,
    finished_runs,
    put_bytes,
    refused,
    wait_for,
)


def roster(*rows: list[str] | str) -> bytes:
    return factories.roster(rows)


@pytest.fixture
async def two_districts(start_server: Any) -> ServerHandle:
    handle: ServerHandle = await start_server(districts=(SPR, SHE))
    (handle.home(SHE) / "students.csv").write_bytes(b"shelbyville's roster")
    (handle.home(SHE) / "results" / "20260101-000000-1.result.json").write_text("{}")
    return handle


# ---- 1. no path leaves the home folder ---------------------------------------------------


async def test_dot_dot_and_absolute_paths_stay_inside_the_home(spr: ServerHandle) -> None:
    """`..` never climbs above the home folder (it is `/`, as in a chroot), and an
    absolute path names a file *inside* the home: `/etc/passwd` simply does not exist."""
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        home_listing = set(await sftp.listdir("/"))
        for path in ("..", "../..", "/..", "//", "/./../.", "check/../../.."):
            assert await sftp.realpath(path) == "/"
            assert set(await sftp.listdir(path)) == home_listing
        for path in (
            "../../etc/passwd",
            "../../../../../../../../etc/passwd",
            "/etc/passwd",
            "//etc/passwd",
            "//etc",
            "/../../etc/hostname",
            "check/../../../etc/shadow",
            str(Path("/etc/passwd").resolve()),
        ):
            await refused(sftp.open(path, "rb"), asyncssh.SFTPNoSuchFile)
            await refused(sftp.stat(path), asyncssh.SFTPNoSuchFile)
        assert await sftp.realpath("//etc") == "/etc"  # a name in the home, not the real one
        await refused(sftp.listdir("//etc"), asyncssh.SFTPNoSuchFile)
        # Writing there is refused by name before anything is created.
        for path in ("../../etc/passwd", "/etc/cron.d/x", "//tmp/students.csv"):
            await refused(put_bytes(sftp, path, b"owned"), asyncssh.SFTPPermissionDenied)
    assert sorted(p.name for p in spr.home().iterdir()) == [
        "check",
        "results",
        "students_template.csv",
    ]


async def test_backslashes_nul_bytes_and_overlong_paths_are_refused(spr: ServerHandle) -> None:
    """Names no real file may carry are refused with a message, and the session goes on."""
    cases = {
        "..\\..\\etc\\passwd": "file names may not contain backslashes: use / between folders",
        "check\\students.csv": "file names may not contain backslashes: use / between folders",
        "students.csv\x00.txt": "file names may not contain NUL characters",
        "\x00": "file names may not contain NUL characters",
        "../" * 2000 + "etc/passwd": "path is too long",
        "a/" * 3000: "path is too long",
        "x" * 1_000_000: "path is too long",
    }
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        for path, message in cases.items():
            assert await refused(sftp.open(path, "rb")) == message, path[:20]
            assert await refused(put_bytes(sftp, path, b"x")) == message, path[:20]
            assert await refused(sftp.stat(path)) == message, path[:20]
        # A name under the limit but too long for the file system: an error, not a crash.
        await refused(sftp.open("n" * 300, "rb"), asyncssh.SFTPFailure)
        # Not UTF-8: refused too (asyncssh passes bytes paths through as they are).
        assert await refused(sftp.stat(b"\xff\xfe")) == "file names must be UTF-8"
        assert "students_template.csv" in await sftp.listdir(".")  # still serving


async def test_the_double_symlink_escape_is_refused_and_would_not_work_anyway(
    spr: ServerHandle,
) -> None:
    """SPEC §3: with asyncssh's `chroot` alone, `mkdir a/b/c/d; symlink esc ->
    a/b/c/d/../../../..; rmdir a/b/c/d; symlink a/b/c/d -> ../../..` makes `esc` the
    real `/`. Every step is refused; and with the links planted on disk by hand (so
    that `esc` really is `/`), `esc/etc/hostname` is still refused."""
    home = spr.home()
    depth = len(home.resolve().parts)  # enough `..` to reach the real root from the home
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        assert await refused(sftp.mkdir("a/b/c/d")) == jail.NO_MKDIR
        assert await refused(sftp.symlink("a/b/c/d/../../../..", "esc")) == jail.NO_LINKS
        assert await refused(sftp.rmdir("a/b/c/d")) == jail.NO_RMDIR
        assert await refused(sftp.symlink("../../..", "a/b/c/d")) == jail.NO_LINKS
        await refused(sftp.open("esc/etc/hostname", "rb"), asyncssh.SFTPNoSuchFile)
        assert not (home / "a").exists() and not (home / "esc").exists()

        (home / "a" / "b" / "c").mkdir(parents=True)
        os.symlink("../../..", home / "a" / "b" / "c" / "d")
        os.symlink("a/b/c/d/" + "/".join([".."] * depth), home / "esc")
        assert os.path.realpath(home / "esc") == "/"  # the escape is real on disk
        for path in ("esc/etc/hostname", "esc/etc/passwd", "esc", "esc/tmp/../etc/hostname"):
            assert await refused(sftp.open(path, "rb")) == jail.OUTSIDE_HOME, path
            assert await refused(sftp.stat(path)) == jail.OUTSIDE_HOME, path
        assert await refused(sftp.listdir("esc")) == jail.OUTSIDE_HOME
        assert await refused(sftp.listdir("esc/etc")) == jail.OUTSIDE_HOME
        assert await refused(sftp.realpath("esc")) == jail.OUTSIDE_HOME
        assert await refused(put_bytes(sftp, "esc/tmp/students.csv", b"x")) == jail.OUTSIDE_HOME
        # `..` in a client path collapses as text, before any link is followed: it is
        # never the link's `..`. And `a/b/c/d` points at the home itself: harmless.
        assert await sftp.realpath("a/b/c/d/../../../../../..") == "/"
        assert "students_template.csv" in await sftp.listdir("a/b/c/d")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the homes that no district may see."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(b"top secret, 31 bytes long......")
    return folder


async def test_a_link_planted_on_disk_pointing_out_is_never_followed(
    spr: ServerHandle, outside: Path
) -> None:
    """An operator's mistake (or an old tool) leaves links in a home that point out:
    reads, writes, listings, deletes, attribute changes through them are all refused,
    and a listing shows the link itself, not what it points at."""
    home = spr.home()
    os.symlink(outside, home / "out")
    os.symlink(outside / "secret.txt", home / "secret.csv")
    os.symlink(outside / "nothing-yet.csv", home / "dangling.csv")
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        for path in ("out/secret.txt", "secret.csv", "out/../out/secret.txt"):
            assert await refused(sftp.open(path, "rb")) == jail.OUTSIDE_HOME
            assert await refused(sftp.stat(path)) == jail.OUTSIDE_HOME
            assert await refused(sftp.lstat(path)) == jail.OUTSIDE_HOME
            assert await refused(sftp.remove(path)) == jail.OUTSIDE_HOME
            assert await refused(sftp.chmod(path, 0o777)) == jail.OUTSIDE_HOME
        assert await refused(sftp.listdir("out")) == jail.OUTSIDE_HOME
        assert await refused(sftp.readlink("secret.csv"), asyncssh.SFTPNoSuchFile)
        for path in ("out/students.csv", "dangling.csv", "out/x.filepart"):
            assert await refused(put_bytes(sftp, path, b"x")) == jail.OUTSIDE_HOME
        listing = {entry.filename: entry.attrs for entry in await sftp.readdir(".")}
    assert listing["secret.csv"].permissions is not None
    assert stat.S_ISLNK(listing["secret.csv"].permissions)
    assert listing["secret.csv"].size != 31  # the link's own size, not the secret's
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").stat().st_mode & 0o777 != 0o777


async def test_no_link_of_any_kind_can_be_created(spr: ServerHandle, outside: Path) -> None:
    """SYMLINK and LINK (OpenSSH's hardlink@openssh.com) are refused for every target,
    inside or out, so a client can never build the escape in the first place."""
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", roster())
        for target in ("students.csv", str(outside / "secret.txt"), "/etc/passwd", "../x"):
            for name in ("link.csv", "students.csv.filepart", "check/students.csv"):
                assert await refused(sftp.symlink(target, name)) == jail.NO_LINKS
                assert await refused(sftp.link(target, name)) == jail.NO_LINKS
        assert "link.csv" not in await sftp.listdir(".")
    await finished_runs(spr, 1)
    assert not any(p.is_symlink() for p in spr.home().rglob("*"))
    assert (spr.home() / "students.csv").stat().st_nlink == 1  # once processed, no spool link


# ---- 2. another district's files ------------------------------------------------------------


async def test_another_districts_files_cannot_be_read_listed_written_or_renamed_into(
    two_districts: ServerHandle,
) -> None:
    """Springfield's login, trying every way into Shelbyville's folder: by `..`, by
    its real path on disk, and through a link an operator left pointing there."""
    handle = two_districts
    theirs = handle.home(SHE)
    os.symlink(f"../{SHE}", handle.home(SPR) / "neighbour")
    ways_in = (f"../{SHE}", f"/../{SHE}", str(theirs), "neighbour")
    async with handle.connect(SPR) as conn, conn.start_sftp_client() as sftp:
        for folder in ways_in:
            # read
            await refused(sftp.open(f"{folder}/students.csv", "rb"))
            await refused(sftp.open(f"{folder}/results/20260101-000000-1.result.json", "rb"))
            # list
            await refused(sftp.listdir(folder))
            await refused(sftp.listdir(f"{folder}/results"))
            # write, directly and into check/
            await refused(put_bytes(sftp, f"{folder}/students.csv", b"wiped"))
            await refused(put_bytes(sftp, f"{folder}/check/students.csv", b"wiped"))
            await refused(put_bytes(sftp, f"{folder}/students.csv.filepart", b"wiped"))
            # delete
            await refused(sftp.remove(f"{folder}/students.csv"))
            await refused(sftp.remove(f"{folder}/results/20260101-000000-1.result.json"))
        # rename into: a finished temporary upload of our own, renamed into their folder
        await put_bytes(sftp, "students.csv.filepart", b"School Code\r\nwiped\r\n")
        for folder in ways_in:
            await refused(sftp.rename("students.csv.filepart", f"{folder}/students.csv"))
            await refused(sftp.posix_rename("students.csv.filepart", f"{folder}/students.csv"))
        assert await refused(sftp.open("neighbour/students.csv", "rb")) == jail.OUTSIDE_HOME
    assert (theirs / "students.csv").read_bytes() == b"shelbyville's roster"
    assert (theirs / "results" / "20260101-000000-1.result.json").exists()
    assert sorted(p.name for p in theirs.iterdir()) == [
        "check",
        "results",
        "students.csv",
        "students_template.csv",
    ]
    assert list((theirs / "check").iterdir()) == []
    await asyncio.wait_for(handle.app.queue.wait_idle(), 10)
    assert await handle.app.store.list_runs(SHE) == []
    assert await handle.app.store.list_runs(SPR) == []
    # Shelbyville's own login still sees its own, untouched file.
    async with handle.connect(SHE) as conn, conn.start_sftp_client() as sftp:
        assert await (await sftp.open("students.csv", "rb")).read() == b"shelbyville's roster"


# ---- 3. SFTP only ----------------------------------------------------------------------------


async def test_exec_shell_pty_scp_and_other_subsystems_are_refused(spr: ServerHandle) -> None:
    """A district login runs no command of any kind on the server."""
    async with spr.connect() as conn:
        for command in ("id", "cat /etc/passwd", "scp -t students.csv", "sftp-server", None):
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.run(command, check=False)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="sftp", term_type="xterm")  # a PTY
        for subsystem in ("netconf", "shell", "scp"):
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.create_process(subsystem=subsystem)
        async with conn.start_sftp_client() as sftp:  # what it may do
            assert "results" in await sftp.listdir(".")


@contextlib.asynccontextmanager
async def sentinel_services(tmp_path: Path) -> Any:
    """A TCP and a Unix-socket service on this host that a forwarding request would
    reach; yields (tcp port, unix socket path, list of connections they received)."""
    reached: list[str] = []

    def serve(kind: str) -> Any:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            reached.append(kind)
            writer.close()

        return on_connect

    tcp = await asyncio.start_server(serve("tcp"), "127.0.0.1", 0)
    unix_path = str(tmp_path / "internal.sock")
    unix = await asyncio.start_unix_server(serve("unix"), unix_path)
    try:
        yield tcp.sockets[0].getsockname()[1], unix_path, reached
    finally:
        for server in (tcp, unix):
            server.close()
            await server.wait_closed()


async def test_port_forwarding_never_reaches_the_target(spr: ServerHandle, tmp_path: Path) -> None:
    """Local forwarding (direct-tcpip), remote forwarding (tcpip-forward) and their
    Unix-socket twins are refused: an internal service on the server is never reached."""
    async with sentinel_services(tmp_path) as (port, unix_path, reached), spr.connect() as conn:
        with pytest.raises(asyncssh.ChannelOpenError):  # direct-tcpip
            await conn.open_connection("127.0.0.1", port)
        with pytest.raises(asyncssh.ChannelOpenError):  # direct-streamlocal
            await conn.open_unix_connection(unix_path)
        # `ssh -L`: the local listener exists (client side), each connection is refused.
        listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.get_port())
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
            await writer.wait_closed()
        finally:
            listener.close()
            await listener.wait_closed()
        # `ssh -R`: the server opens no listener.
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", port)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_path(str(tmp_path / "remote.sock"), unix_path)
        async with conn.start_sftp_client() as sftp:  # the connection itself is fine
            await sftp.listdir(".")
        assert reached == []
    assert not (tmp_path / "remote.sock").exists()


async def test_agent_and_x11_forwarding_are_not_granted(spr: ServerHandle, tmp_path: Path) -> None:
    async with spr.connect(agent_forwarding=True, agent_path=str(tmp_path / "agent")) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(
                subsystem="sftp", x11_forwarding=True, x11_display="localhost:0"
            )
        async with conn.start_sftp_client() as sftp:
            await sftp.listdir(".")
            [session] = spr.app.sessions
            assert session.channel.get_agent_path() is None
            assert session.channel.get_x11_display() is None


# ---- 4. brute force ---------------------------------------------------------------------------


async def failed_login(handle: ServerHandle, username: str, password: str, **options: Any) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        async with handle.connect(username, password, **options):
            pass


async def test_an_address_is_banned_after_login_attempts_failures(
    start_server: Any, client_key: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Three failures (unknown users count too) and 127.0.0.1 is banned: even the right
    password, or the district's key, is refused at connect, before any authentication."""
    handle: ServerHandle = await start_server(server={"login_attempts": 3, "ban_minutes": 5})
    await failed_login(handle, "admin", "admin")
    await failed_login(handle, "root", "123456")
    assert not handle.app.bans.is_banned("127.0.0.1")
    with pytest.raises(asyncssh.DisconnectError):  # the third failure: cut off, banned
        async with handle.connect(SPR, "Springfield2026!"):
            pass
    assert handle.app.bans.is_banned("127.0.0.1")
    caplog.clear()
    right_password: dict[str, Any] = {}
    right_key: dict[str, Any] = {"password": None, "client_keys": [str(client_key[0])]}
    for options in (right_password, right_key):
        with pytest.raises((asyncssh.Error, OSError)):
            async with handle.connect(**options):
                pass
    assert "refused connection from banned address 127.0.0.1" in caplog.text
    assert "login: user" not in caplog.text


async def test_a_ban_does_not_lock_out_another_address(start_server: Any) -> None:
    """127.0.0.1 is banned; the district logging in from 127.0.0.2 is not, and its own
    failures are counted on their own."""
    handle: ServerHandle = await start_server(server={"login_attempts": 2, "ban_minutes": 5})
    await failed_login(handle, SPR, "guess-1")
    with pytest.raises(asyncssh.DisconnectError):
        async with handle.connect(SPR, "guess-2"):
            pass
    with pytest.raises((asyncssh.Error, OSError)):
        async with handle.connect():
            pass
    other: dict[str, Any] = {"local_addr": ("127.0.0.2", 0)}
    await failed_login(handle, SPR, "typo", **other)  # one failure: below the limit
    async with handle.connect(**other) as conn, conn.start_sftp_client() as sftp:
        assert conn.get_extra_info("sockname")[0] == "127.0.0.2"
        await put_bytes(sftp, "students.csv", roster())
    assert handle.app.bans.is_banned("127.0.0.1")
    assert not handle.app.bans.is_banned("127.0.0.2")
    [run] = await finished_runs(handle, 1)
    assert run.state == "done"


class Guesser(asyncssh.SSHClient):
    """A client that answers every password prompt with its next guess, but only once
    `gate` is open: a connection that is open, and waiting, when the ban comes."""

    def __init__(self, guesses: list[str], gate: asyncio.Event, tried: list[str]) -> None:
        self.guesses, self.gate, self.tried = guesses, gate, tried

    async def password_auth_requested(self) -> str | None:
        await self.gate.wait()
        if not self.guesses:
            return None
        self.tried.append(self.guesses.pop(0))
        return self.tried[-1]


async def test_a_connection_opened_before_the_ban_cannot_keep_guessing(
    start_server: Any,
) -> None:
    """asyncssh lets a client try any number of passwords on one connection. An attacker
    opens connections first and guesses afterwards: once the address is banned, each
    of them is cut off at its next attempt instead of guessing on until it is in."""
    handle: ServerHandle = await start_server(server={"login_attempts": 3, "ban_minutes": 5})
    gate, tried = asyncio.Event(), list[str]()
    guesses = [f"guess-{n}" for n in range(20)] + [SFTP_PASSWORD]

    async def slow_attacker() -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            "127.0.0.1",
            handle.port,
            username=SPR,
            password=None,
            client_factory=lambda: Guesser(guesses, gate, tried),
            preferred_auth="password",
            known_hosts=None,
            client_keys=None,
            agent_path=None,
        )

    waiting = asyncio.create_task(slow_attacker())
    await wait_for(lambda: len(handle.app.connections) == 1, message="the slow connection")
    await failed_login(handle, SPR, "guess-a")
    await failed_login(handle, SPR, "guess-b")
    with pytest.raises(asyncssh.DisconnectError):
        async with handle.connect(SPR, "guess-c"):
            pass
    assert handle.app.bans.is_banned("127.0.0.1")
    gate.set()
    with pytest.raises((asyncssh.Error, OSError)):
        conn = await asyncio.wait_for(waiting, 30)
        conn.close()  # (only reached if the attacker got in)
    assert len(tried) <= 1, f"{len(tried)} guesses after the ban"


async def test_unknown_user_and_wrong_password_take_the_same_time(
    start_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refusal for a user that does not exist costs one scrypt, like a wrong password
    for a real district: the time does not say which usernames exist."""
    handle: ServerHandle = await start_server(server={"login_attempts": 1000})

    async def attempt(username: str) -> float:
        started = time.perf_counter()
        await failed_login(handle, username, "not-the-password")
        return time.perf_counter() - started

    await attempt("nobody")  # warm-up: the first connection pays for imports and caches
    await attempt(SPR)
    unknown, wrong = [], []
    for _ in range(5):  # interleaved, so a slow moment of the machine hits both
        unknown.append(await attempt("no-such-district"))
        wrong.append(await attempt(SPR))
    ratio = statistics.median(unknown) / statistics.median(wrong)
    with capsys.disabled():
        print(
            f"\n[timing] unknown user median {statistics.median(unknown) * 1000:.1f} ms, "
            f"wrong password median {statistics.median(wrong) * 1000:.1f} ms, ratio {ratio:.2f}"
        )
    assert 0.33 < ratio < 3


# ---- 5. no password anywhere -------------------------------------------------------------------

WRONG_SFTP_PASSWORD = "Wr0ng-sftp-guess-4417"
STUDENT_PASSWORDS = {
    "ann": "Ann-secret-7781",
    "bo": "Bo-secret-7782",
    "cy": "Cy-secret-7783",
    "ann_new": "Ann-newpass-7784",
    "dee_bad_grade": "Dee-secret-7785",
    "eve_too_long": "Eve-secret-7786" + "x" * 60,
    "fay_extra_column": "Fay-secret-7788",
    "gus_duplicate_1": "Gus-secret-7789",
    "gus_duplicate_2": "Gus-secret-7790",
    "bo_exists": "Bo-newpass-7791",
    "cy_bad_status": "Cy-newpass-7792",
    "hal_formula": "=Hal-secret-7793",
    "ivy_open_quote": "Ivy-secret-7794",
    "jo_dry_run": "Jo-secret-7795",
    "kim_utf16": "Kim-secret-7796",
}
P = STUDENT_PASSWORDS


def student(
    sid: str, first: str, password: str, *, grade: str = "3", status: str = "A"
) -> list[str]:
    return factories.student(
        sid, status, first=first, grade=grade, username=f"{first.lower()}{sid}", password=password
    )


DAY_ONE = roster(
    student("S1", "Ann", P["ann"]),
    student("S2", "Bo", P["bo"]),
    student("S3", "Cy", P["cy"]),
)
DAY_TWO = roster(
    student("S1", "Ann", P["ann_new"]),  # a password change
    student("S4", "Dee", P["dee_bad_grade"], grade="13"),  # INVALID_GRADE
    student("S5", "Eve", P["eve_too_long"]),  # FIELD_TOO_LONG on the password itself
    f"0101,S6,Fay,Lee, Jr,3,fay6,{P['fay_extra_column']},Room 1,A",  # COLUMN_COUNT
    student("S7", "Gus", P["gus_duplicate_1"]),  # DUPLICATE_STUDENT_ID, twice
    student("S7", "Gus", P["gus_duplicate_2"]),
    student("S2", "Bo", P["bo_exists"], status="X"),  # STUDENT_EXISTS
    student("S3", "Cy", P["cy_bad_status"], status="Q"),  # INVALID_STATUS
    student("S8", "Hal", P["hal_formula"]),  # added; a formula-looking password
    f'0101,S9,"Ivy,Lee,3,ivy9,{P["ivy_open_quote"]},Room 1,A',  # an unterminated quote
)
DRY_RUN = roster(student("S10", "Jo", P["jo_dry_run"]))
UTF16 = csv_text([student("S11", "Kim", P["kim_utf16"])]).encode("utf-16")


@contextlib.contextmanager
def asyncssh_debug(level: int) -> Iterator[None]:
    """asyncssh's debug level 2: every message short of raw packet dumps (level 3 dumps
    packets in hex, which an operator would only switch on by hand to debug SSH)."""
    asyncssh.set_debug_level(level)
    try:
        yield
    finally:
        asyncssh.set_debug_level(1)


def files_under(*folders: Path) -> Iterator[Path]:
    for folder in folders:
        yield from (p for p in folder.rglob("*") if p.is_file())


async def test_no_password_anywhere_after_a_realistic_day(
    start_server: Any, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A failed SFTP login, uploads with student passwords (a clean file, a file with
    every kind of rejected row, a dry run, a UTF-16 file), emails written as .eml,
    `eams students/runs --json`; then every password is looked for everywhere."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="asyncssh")
    with asyncssh_debug(2):
        handle: ServerHandle = await start_server(licenses=10)
        await failed_login(handle, SPR, WRONG_SFTP_PASSWORD)
        async with handle.connect() as conn, conn.start_sftp_client() as sftp:
            await put_bytes(sftp, "students.csv", DAY_ONE)
            await finished_runs(handle, 1)
            await put_bytes(sftp, "students.csv", DAY_TWO)
            await finished_runs(handle, 2)
            await put_bytes(sftp, "check/students.csv", DRY_RUN)
            await put_bytes(sftp, "students.csv.filepart", UTF16)
            await sftp.rename("students.csv.filepart", "students.csv")
            runs = await finished_runs(handle, 4)
            downloaded = [
                await (await sftp.open(f"results/{name}", "rb")).read()
                for name in await sftp.listdir("results")
                if not name.startswith(".")
            ]

        async def emails_written() -> bool:
            return all(e["state"] == "sent" for e in await handle.app.store.outbox())

        await wait_for(emails_written, message="every email written to the outbox")
        cli = [
            await asyncio.to_thread(eams, *args, config=handle.config_path)
            for args in (
                ("students", "--district", SPR, "--json"),
                ("students", "--district", SPR),
                ("runs", "--json"),
                ("licenses", "--district", SPR, "--json"),
            )
        ]
        await handle.app.stop()  # the database is closed and checkpointed

    # The day went as a district would expect (so the search below means something).
    assert [r.state for r in runs] == ["done", "done", "done", "done"]
    two = runs[1].result
    assert two is not None and (two.added, two.updated, two.errors) == (1, 1, 8)
    assert [code for code, _, _ in cli] == [0, 0, 0, 0]
    data = tmp_path / "data"
    emails = sorted((data / "outbox").glob("*.eml"))
    assert len(emails) == 3  # the dry run sends none
    errors_files = sorted((handle.home() / "results").glob("*.errors.csv"))
    assert len(errors_files) == 1 and len(downloaded) == 4 * 2 + 1
    assert not list(files_under(data / "spool")), "spooled uploads are removed when done"

    # Student passwords are in the database, encrypted (recoverable only with the key).
    passwords = StudentPasswords.from_data_dir(data)
    with contextlib.closing(sqlite3.connect(data / "eams.sqlite3")) as db:
        stored = dict(
            db.execute(
                "SELECT student_id, password_enc FROM students WHERE district_id = ?", (SPR,)
            )
        )
    assert passwords.decrypt(stored["S1"]) == P["ann_new"]
    assert passwords.decrypt(stored["S8"]) == P["hal_formula"]

    # Now look for every password, everywhere.
    secrets = [SFTP_PASSWORD, WRONG_SFTP_PASSWORD, *STUDENT_PASSWORDS.values()]
    needles = {s: [s.encode("utf-8"), s.encode("utf-16-le")] for s in secrets}
    places: dict[str, bytes] = {}
    records = caplog.records
    assert any(r.name.startswith("asyncssh") for r in records)
    assert any(r.name.startswith("eams") for r in records)
    for index, record in enumerate(records):
        text = record.getMessage() + (record.exc_text or "") + repr(record.args)
        places[f"log record {index} ({record.name})"] = text.encode("utf-8")
    places["all log text"] = caplog.text.encode("utf-8")
    names = ("students --json", "students", "runs", "licenses")
    for (_, out, err), name in zip(cli, names, strict=True):
        places[f"eams {name} output"] = (out + err).encode("utf-8")
    for index, body in enumerate(downloaded):
        places[f"results file {index} downloaded over SFTP"] = body
    uploads = {handle.home() / "students.csv", handle.home() / "check" / "students.csv"}
    for path in files_under(tmp_path / "homes", data):
        if path not in uploads:  # the district's own last uploads are kept by design
            places[str(path.relative_to(tmp_path))] = path.read_bytes()
    assert any(p.startswith("data/eams.sqlite3") for p in places)
    assert any(p.endswith(".eml") for p in places) and any("errors.csv" in p for p in places)
    leaks = [
        f"{secret!r} in {place}"
        for place, content in places.items()
        for secret, encodings in needles.items()
        if any(needle in content for needle in encodings)
    ]
    assert leaks == []
    assert_invariant(handle.config_path)


async def test_a_headerless_semicolon_export_does_not_echo_a_password(
    spr: ServerHandle, tmp_path: Path
) -> None:
    """A European Excel saves with semicolons, and the SIS job forgot the header row:
    the file error must say so without quoting the student's password back."""
    password = "Al-secret-7797"
    upload = f"0101;S10;Al;Li;3;al10;{password};;A\r\n".encode()
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", upload)
    [run] = await finished_runs(spr, 1)
    assert run.state == "failed"

    async def emails_written() -> bool:
        return all(e["state"] == "sent" for e in await spr.app.store.outbox())

    await wait_for(emails_written, message="the failure email written")
    outputs = [*files_under(spr.home() / "results"), *files_under(tmp_path / "data" / "outbox")]
    assert outputs
    assert [p.name for p in outputs if password.encode() in p.read_bytes()] == []
