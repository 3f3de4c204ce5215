"""End to end: the real eAMS server in-process, real SFTP clients (SPEC §2, §3, §3.1, §7).

Every test starts its own `EamsServer` on 127.0.0.1 port 0 through the
`start_server` fixture (tests/conftest.py) and waits on conditions with
deadlines (`wait_for`), never sleeps to synchronise. Clients: asyncssh (high- and
low-level), OpenSSH `sftp`/`scp`/`ssh` (key auth), curl (password auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import server.ssh_listener
from processing.model import RunRecord
from processing.store import Store
from server import jail
from server.uploads import STAGING_PREFIX
from tests.conftest import (
    SFTP_PASSWORD,
    SHE,
    SPR,
    ServerHandle,
    assert_invariant,
    eams_json,
    put_bytes,
    refused,
    server_config,
    wait_for,
)
from tests.factories import numbered_roster
from tests.server.test_limits_transport import login

CLIENT_TIMEOUT = 30.0
needs_openssh = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("ssh", "sftp", "scp")), reason="OpenSSH not installed"
)
needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")


# ---- helpers ------------------------------------------------------------------------------


async def runs_of(handle: ServerHandle, district_id: str = SPR) -> list[RunRecord]:
    """The district's runs, oldest first."""
    runs = await handle.app.store.list_runs(district_id)
    return sorted(runs, key=lambda r: r.seq)


async def processed(handle: ServerHandle, count: int, district_id: str = SPR) -> list[RunRecord]:
    """Wait until the district has `count` finished runs (and nothing queued); return them."""

    async def finished() -> bool:
        runs = await runs_of(handle, district_id)
        return len(runs) == count and all(r.state not in ("queued", "approved") for r in runs)

    await wait_for(finished, message=f"{count} finished run(s) of {district_id}")
    await asyncio.wait_for(handle.app.queue.wait_idle(), 10)
    return await runs_of(handle, district_id)


def result_json(handle: ServerHandle, run: RunRecord, district_id: str = SPR) -> dict[str, Any]:
    path = handle.home(district_id) / "results" / f"{run.run_id}.result.json"
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return result


def visible_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def staging_files(handle: ServerHandle, district_id: str = SPR) -> list[Path]:
    home = handle.home(district_id)
    return [p for folder in (home, home / "check") for p in folder.glob(f"{STAGING_PREFIX}*")]


def outbox_count(handle: ServerHandle) -> int:
    with contextlib.closing(sqlite3.connect(handle.app.store.path)) as db:
        count: int = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    return count


async def run_tool(*argv: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), CLIENT_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def openssh_options(key: Path) -> list[str]:
    return [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-i",
        str(key),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def two_districts(start_server: Any) -> ServerHandle:
    handle: ServerHandle = await start_server(districts=(SPR, SHE))
    return handle


# ---- uploads that are processed -------------------------------------------------------------


async def test_asyncssh_password_upload_is_processed(spr: ServerHandle, tmp_path: Path) -> None:
    source = tmp_path / "students.csv"
    source.write_bytes(numbered_roster(3))
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await sftp.put(str(source), "students.csv")
        [run] = await processed(spr, 1)
        names = await sftp.listdir("results")
    assert run.state == "done"
    result = result_json(spr, run)
    assert (result["state"], result["added"], result["dry_run"]) == ("done", 3, False)
    assert {f"{run.run_id}.result.json", f"{run.run_id}.result.txt"} <= set(names)
    assert (spr.home() / "students.csv").read_bytes() == source.read_bytes()
    students = await asyncio.to_thread(
        eams_json, "students", "--district", SPR, config=spr.config_path
    )
    assert [s["student_id"] for s in students] == ["S00001", "S00002", "S00003"]
    assert {s["status"] for s in students} == {"active"}
    assert await spr.app.store.invariant_violations() == []
    assert not staging_files(spr)
    assert outbox_count(spr) == 1  # the success email (so the dry-run check below means it)


@needs_openssh
async def test_openssh_sftp_batch_with_key(
    spr: ServerHandle, tmp_path: Path, client_key: tuple[Path, str]
) -> None:
    (tmp_path / "students.csv").write_bytes(numbered_roster(2))
    batch = tmp_path / "batch"
    batch.write_text(
        f"put {tmp_path / 'students.csv'} students.csv\n"
        "chmod 644 students.csv\n"  # a SETSTAT, like WinSCP's
        "ls -l\n"
        "-put /etc/hostname notes.txt\n"  # refused; '-' lets the batch go on
        "ls results\n"
    )
    code, out, err = await run_tool(
        "sftp",
        *openssh_options(client_key[0]),
        "-P",
        str(spr.port),
        "-b",
        str(batch),
        f"{SPR}@127.0.0.1",
    )
    assert code == 0, err
    assert "students_template.csv" in out
    assert "Permission denied" in err  # OpenSSH shows its own text for the status code
    [run] = await processed(spr, 1)
    assert result_json(spr, run)["added"] == 2
    assert not (spr.home() / "notes.txt").exists()


@needs_openssh
async def test_openssh_scp_sftp_mode_exits_0_and_is_processed(
    spr: ServerHandle, tmp_path: Path, client_key: tuple[Path, str]
) -> None:
    source = tmp_path / "students.csv"
    source.write_bytes(numbered_roster(4))
    code, _, err = await run_tool(
        "scp",
        *openssh_options(client_key[0]),
        "-P",
        str(spr.port),
        str(source),
        f"{SPR}@127.0.0.1:students.csv",
    )
    assert code == 0, err
    [run] = await processed(spr, 1)
    assert result_json(spr, run)["added"] == 4
    # Legacy scp (`scp -O`) runs a remote command: refused, nothing changes.
    code, _, err = await run_tool(
        "scp",
        "-O",
        *openssh_options(client_key[0]),
        "-P",
        str(spr.port),
        str(source),
        f"{SPR}@127.0.0.1:students.csv",
    )
    assert code != 0
    assert len(await runs_of(spr)) == 1


@needs_curl
async def test_curl_sftp_upload_with_password(spr: ServerHandle, tmp_path: Path) -> None:
    source = tmp_path / "upload.csv"
    source.write_bytes(numbered_roster(5))
    code, _, err = await run_tool(
        "curl",
        "-s",
        "-S",
        "-k",
        "-u",
        f"{SPR}:{SFTP_PASSWORD}",
        "-T",
        str(source),
        f"sftp://127.0.0.1:{spr.port}/students.csv",
    )
    assert code == 0, err
    [run] = await processed(spr, 1)
    assert result_json(spr, run)["added"] == 5


async def test_two_uploads_back_to_back_run_in_order(spr: ServerHandle) -> None:
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", numbered_roster(3))
        await put_bytes(sftp, "students.csv", numbered_roster(3, first="Bea"))
    first, second = await processed(spr, 2)
    assert first.seq < second.seq and first.run_id < second.run_id
    assert result_json(spr, first)["added"] == 3
    # The second run saw the first one's students: updates, not additions.
    second_result = result_json(spr, second)
    assert (second_result["added"], second_result["updated"]) == (0, 3)
    students = await spr.app.store.list_students(SPR)
    assert {s["first_name"] for s in students} == {"Bea"}
    assert await spr.app.store.invariant_violations() == []


async def test_nightly_district_processes_every_upload_queued_before_its_time(
    start_server: Any,
) -> None:
    """Two uploads before `nightly@HH:MM`: both wait, then both run at HH:MM, in order
    (the second must not wait another day)."""
    real_now = datetime.now()
    slot = (real_now + timedelta(seconds=62)).replace(second=0, microsecond=0)
    handle: ServerHandle = await start_server(
        district_keys={SPR: {"schedule": f"nightly@{slot:%H:%M}"}}
    )
    # The queue's clock reads 1.5 s before the slot; uploads are received (real time) before it.
    offset = slot - timedelta(seconds=1.5) - datetime.now()
    handle.app.queue._local_now = lambda: datetime.now() + offset
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", numbered_roster(2))
        await put_bytes(sftp, "students.csv", numbered_roster(2, first="Bea"))
    assert [r.state for r in await runs_of(handle)] == ["queued", "queued"]
    first, second = await processed(handle, 2)
    assert (result_json(handle, first)["added"], result_json(handle, second)["updated"]) == (2, 2)


async def test_check_upload_is_a_dry_run(spr: ServerHandle) -> None:
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "check/students.csv", numbered_roster(3))
    [run] = await processed(spr, 1)
    result = result_json(spr, run)
    assert result["dry_run"] is True
    assert result["added"] == 3
    assert await spr.app.store.list_students(SPR) == []
    assert outbox_count(spr) == 0
    orders = {o["order"]: o for o in await spr.app.store.list_orders(SPR)}
    assert orders["ENT-SPR-2026"]["used"] == 0


# ---- WinSCP's two upload sequences, request by request ---------------------------------------


async def test_winscp_big_file_sequence_filepart_remove_rename_setstat(spr: ServerHandle) -> None:
    mtime = 1_700_000_000
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", numbered_roster(1))  # a previous upload to REMOVE
        await processed(spr, 1)
        handle = await sftp.open("students.csv.filepart", "wb")
        await handle.write(numbered_roster(200, first="Big"))
        await handle.close()
        assert len(await runs_of(spr)) == 1  # a .filepart close completes nothing
        if await sftp.exists("students.csv"):
            await sftp.remove("students.csv")
        await sftp.rename("students.csv.filepart", "students.csv")  # plain SSH_FXP_RENAME
        await sftp.setstat("students.csv", asyncssh.SFTPAttrs(atime=mtime, mtime=mtime))
        attrs = await sftp.stat("students.csv")
    assert attrs.mtime == mtime
    _, run = await processed(spr, 2)
    result = result_json(spr, run)
    assert (result["rows"], result["added"], result["unchanged"]) == (200, 99, 0)
    assert result["errors"] == 100  # 100 licenses: NO_LICENSE_AVAILABLE for the rest
    assert not (spr.home() / "students.csv.filepart").exists()


async def test_posix_rename_of_a_temp_upload_completes_it(spr: ServerHandle) -> None:
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "check/students.csv.part", numbered_roster(2))
        await sftp.posix_rename("check/students.csv.part", "check/students.csv")
    [run] = await processed(spr, 1)
    assert result_json(spr, run)["dry_run"] is True


async def test_writes_after_a_rename_cannot_change_the_acknowledged_upload(
    spr: ServerHandle,
) -> None:
    """A handle left open on a .filepart (a client that renames before CLOSE, or the
    dead session of an upload resumed elsewhere) must not write into the spooled file."""
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        stale = await sftp.open("students.csv.filepart", "wb")
        await stale.write(numbered_roster(1))
        resumed = await sftp.open("students.csv.filepart", "r+b")
        await resumed.write(numbered_roster(2), 0)
        await resumed.close()
        await sftp.rename("students.csv.filepart", "students.csv")
        message = await refused(stale.write(b"garbage", 0), asyncssh.SFTPFailure)
        assert "already renamed to students.csv" in message
        await refused(stale.truncate(0), asyncssh.SFTPFailure)
        await stale.close()
    [run] = await processed(spr, 1)
    assert result_json(spr, run)["added"] == 2
    assert (spr.home() / "students.csv").read_bytes() == numbered_roster(2)


async def test_winscp_small_file_sequence_setstat_pipelined_after_close(
    spr: ServerHandle,
) -> None:
    mtime = 1_600_000_000
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        handle = await sftp.open("students.csv", "wb")
        await handle.write(numbered_roster(2))
        # CLOSE and SETSTAT leave the client before the CLOSE is answered.
        close = asyncio.create_task(handle.close())
        setstat = asyncio.create_task(
            sftp.setstat("students.csv", asyncssh.SFTPAttrs(atime=mtime, mtime=mtime))
        )
        await asyncio.gather(close, setstat)
        assert (await sftp.stat("students.csv")).mtime == mtime
    [run] = await processed(spr, 1)
    assert result_json(spr, run)["added"] == 2


# ---- uploads that are not processed -------------------------------------------------------------


async def test_interrupted_upload_is_discarded_and_previous_file_kept(spr: ServerHandle) -> None:
    previous = numbered_roster(2)
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", previous)
    await processed(spr, 1)

    conn = await spr.connect()
    sftp = await conn.start_sftp_client()
    handle = await sftp.open("students.csv", "wb")
    await handle.write(numbered_roster(100, first="Half")[:2000])
    partial = await sftp.open("students.csv.filepart", "wb")
    await partial.write(b"School Code,Student ID")
    assert staging_files(spr)  # the direct upload is being staged, hidden
    assert not any(n.startswith(".eams-") for n in await sftp.listdir("."))
    conn.abort()
    await conn.wait_closed()

    await wait_for(lambda: not staging_files(spr), message="staging file removed")
    await wait_for(lambda: not spr.app.connections, message="connection gone")
    await asyncio.wait_for(spr.app.queue.wait_idle(), 10)
    assert len(await runs_of(spr)) == 1
    assert (spr.home() / "students.csv").read_bytes() == previous
    # WinSCP resumes a .filepart: a dropped connection leaves it in place.
    assert (spr.home() / "students.csv.filepart").read_bytes() == b"School Code,Student ID"


@needs_openssh
async def test_killed_openssh_client_mid_upload_is_not_processed(
    spr: ServerHandle, tmp_path: Path, client_key: tuple[Path, str]
) -> None:
    source = tmp_path / "students.csv"
    source.write_bytes(numbered_roster(40000))  # about 2 MB, sent at 64 kbit/s: minutes
    proc = await asyncio.create_subprocess_exec(
        "sftp",
        *openssh_options(client_key[0]),
        "-l",
        "64",
        "-P",
        str(spr.port),
        "-b",
        "-",
        f"{SPR}@127.0.0.1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(f"put {source} students.csv\n".encode())
        await proc.stdin.drain()
        await wait_for(
            lambda: any(p.stat().st_size > 0 for p in staging_files(spr)), message="bytes written"
        )
    finally:
        proc.kill()
        await proc.communicate()
    await wait_for(lambda: not staging_files(spr), message="staging file removed")
    await wait_for(lambda: not spr.app.connections, message="connection gone")
    assert await runs_of(spr) == []
    assert not (spr.home() / "students.csv").exists()


async def test_upload_over_max_upload_mb_is_refused_while_written(start_server: Any) -> None:
    handle: ServerHandle = await start_server(max_upload_mb=1)
    big = numbered_roster(1)[:-2] + b"x" * (1024 * 1024 + 10) + b"\r\n"
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        for name in ("students.csv", "students.csv.filepart"):
            message = await refused(put_bytes(sftp, name, big), asyncssh.SFTPFailure)
            assert "file too large: uploads are limited to 1 MB" in message
        message = await refused(sftp.rename("students.csv.filepart", "students.csv"))
        assert "no such file" in message.lower()
        assert set(await sftp.listdir(".")) == {
            ".",
            "..",
            "check",
            "results",
            "students_template.csv",
        }
    await asyncio.wait_for(handle.app.queue.wait_idle(), 10)
    assert await runs_of(handle) == []
    assert not staging_files(handle)


# ---- what SFTP refuses, with the message the district sees -----------------------------------


async def test_refusals_carry_a_clear_status_message(two_districts: ServerHandle) -> None:
    handle = two_districts
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        message = await refused(put_bytes(sftp, "Students.csv", b"x"))
        assert message == 'only students.csv can be uploaded here (not "Students.csv")'
        message = await refused(put_bytes(sftp, "check/roster.csv", b"x"))
        assert message.startswith("only students.csv can be uploaded here")
        for path in ("results/x.result.json", "results/new.txt"):
            assert await refused(put_bytes(sftp, path, b"x")) == jail.RESULTS_READ_ONLY
        assert await refused(put_bytes(sftp, "students_template.csv", b"x")) == (
            jail.TEMPLATE_READ_ONLY
        )
        assert await refused(sftp.remove("students_template.csv")) == jail.TEMPLATE_READ_ONLY
        assert await refused(sftp.mkdir("new")) == jail.NO_MKDIR
        assert await refused(sftp.mkdir("results/new")) == jail.RESULTS_READ_ONLY
        assert await refused(sftp.rmdir("results")) == jail.NO_RMDIR
        assert await refused(sftp.symlink("students.csv", "link")) == jail.NO_LINKS
        assert await refused(sftp.link("students_template.csv", "hard")) == jail.NO_LINKS
        assert await refused(sftp.rename("students_template.csv", "students.csv")) == (
            jail.TEMPLATE_READ_ONLY
        )
        # The template is readable, and a write did not change it.
        template = await (await sftp.open("students_template.csv", "rb")).read()
        assert template.startswith(b"School Code,Student ID")
    assert await runs_of(handle) == []


async def test_the_double_symlink_escape_is_refused_at_every_step(
    two_districts: ServerHandle,
) -> None:
    handle = two_districts
    home = handle.home()
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        assert await refused(sftp.mkdir("a/b/c/d")) == jail.NO_MKDIR
        assert await refused(sftp.symlink("a/b/c/d/../../../..", "esc")) == jail.NO_LINKS
        assert await refused(sftp.rmdir("a/b/c/d")) == jail.NO_RMDIR
        assert await refused(sftp.symlink("../../..", "a/b/c/d")) == jail.NO_LINKS
        assert not (home / "esc").exists() and not (home / "a").exists()

        # Whatever links exist on disk (an operator's mistake, an old tool), paths are
        # checked after resolving them: plant the links the escape would have made.
        (home / "a" / "b" / "c").mkdir(parents=True)
        os.symlink("../../..", home / "a" / "b" / "c" / "d")
        os.symlink("a/b/c/d/../../../..", home / "esc")
        os.symlink(f"../{SHE}", home / "neighbour")
        for path in ("esc/etc/passwd", "esc", "neighbour/students_template.csv"):
            assert await refused(sftp.open(path, "rb")) == jail.OUTSIDE_HOME
            assert await refused(sftp.stat(path)) == jail.OUTSIDE_HOME
        assert await refused(sftp.listdir("esc")) == jail.OUTSIDE_HOME
        assert await refused(put_bytes(sftp, "neighbour/students.csv", b"x")) == (jail.OUTSIDE_HOME)
    assert await runs_of(handle, SHE) == []


async def test_paths_never_leave_the_home_folder(two_districts: ServerHandle) -> None:
    handle = two_districts
    (handle.home(SHE) / "students.csv").write_bytes(b"shelbyville's roster")
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        assert await sftp.realpath("..") == "/"
        assert await sftp.realpath("../../..") == "/"
        assert await sftp.realpath("/etc") == "/etc"  # a name inside the home, not the real one
        for path in (
            "/etc/passwd",
            "../../../../../../etc/passwd",
            "check/../../etc/passwd",
            f"../{SHE}/students.csv",
            f"/../{SHE}/students.csv",
            str(handle.home(SHE) / "students.csv"),
        ):
            await refused(sftp.open(path, "rb"), asyncssh.SFTPNoSuchFile)
        root = set(await sftp.listdir("/../.."))
        assert root == {".", "..", "check", "results", "students_template.csv"}
        assert await refused(sftp.open("a\\b", "rb")) == (
            "file names may not contain backslashes: use / between folders"
        )
    # The other district's login sees its own folder and file.
    async with handle.connect(SHE) as conn, conn.start_sftp_client() as sftp:
        data = await (await sftp.open("students.csv", "rb")).read()
        assert data == b"shelbyville's roster"


async def test_only_sftp_no_exec_shell_forwarding_agent_or_x11(
    spr: ServerHandle, tmp_path: Path
) -> None:
    async with spr.connect(agent_forwarding=True, agent_path=str(tmp_path / "agent")) as conn:
        for command in ("true", None):
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.run(command, check=False)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", spr.port)
        listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", spr.port)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.get_port())
            assert await asyncio.wait_for(reader.read(), 10) == b""  # refused: closed at once
            writer.close()
            await writer.wait_closed()
        finally:
            listener.close()
            await listener.wait_closed()
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 1)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(
                subsystem="sftp", x11_forwarding=True, x11_display="localhost:0"
            )
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="sftp", term_type="xterm")
        async with conn.start_sftp_client() as sftp:
            assert sftp.version == 3  # v5/v6 open requests never reach the server
            [session] = spr.app.sessions
            assert session.channel.get_agent_path() is None  # agent forwarding not granted
            assert session.channel.get_x11_display() is None
            await sftp.listdir(".")


@needs_openssh
async def test_openssh_exec_and_shell_fail(spr: ServerHandle, client_key: tuple[Path, str]) -> None:
    options = [*openssh_options(client_key[0]), "-p", str(spr.port), f"{SPR}@127.0.0.1"]
    code, out, _ = await run_tool("ssh", *options, "true")
    assert code != 0 and out == ""
    code, out, _ = await run_tool("ssh", "-T", *options, stdin=b"echo hi\n")
    assert code != 0 and "hi" not in out


# ---- sessions, logins, config ------------------------------------------------------------------


class FreezableProxy:
    """A loopback TCP proxy whose traffic can be stopped dead (a half-open client)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.pumps: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def freeze(self) -> None:
        self.thawed.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers += [writer, up_writer]
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self.pumps.add(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            await self.thawed.wait()
            dst.write(data)
            await dst.drain()

    async def close(self) -> None:
        for task in self.pumps:
            task.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)
        for writer in self.writers:
            writer.transport.abort()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_half_open_client_is_dropped_by_keepalive(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server.ssh_listener, "KEEPALIVE_SECONDS", 0.2)
    window = server.ssh_listener.KEEPALIVE_SECONDS * server.ssh_listener.KEEPALIVE_COUNT
    handle: ServerHandle = await start_server()
    proxy = FreezableProxy(handle.port)
    proxy_port = await proxy.start()
    try:
        conn = await asyncssh.connect(
            "127.0.0.1",
            proxy_port,
            username=SPR,
            password=SFTP_PASSWORD,
            known_hosts=None,
            client_keys=None,
            agent_path=None,
        )
        try:
            sftp = await conn.start_sftp_client()
            upload = await sftp.open("students.csv", "wb")
            await upload.write(numbered_roster(5)[:100])
            assert len(handle.app.connections) == 1
            # A live client answers keepalives: idle for longer than the window, kept.
            await asyncio.sleep(window * 1.5)
            assert len(handle.app.connections) == 1
            await sftp.listdir(".")
            proxy.freeze()  # the client stops answering, its TCP connection stays open
            started = asyncio.get_running_loop().time()
            await wait_for(lambda: not handle.app.connections, timeout=window + 5)
            elapsed = asyncio.get_running_loop().time() - started
            assert elapsed < window + 3
            await wait_for(lambda: not staging_files(handle), message="staging removed")
        finally:
            conn.abort()
    finally:
        await proxy.close()
    assert await runs_of(handle) == []


async def test_ban_after_login_attempts_failures(start_server: Any) -> None:
    handle: ServerHandle = await start_server(server={"login_attempts": 3, "ban_minutes": 5})
    for _ in range(3):  # the third failure also closes the connection: the ban
        with pytest.raises(asyncssh.DisconnectError):
            async with handle.connect(password="wrong password"):
                pass
    # Banned: even the right password is refused at connect.
    with pytest.raises((asyncssh.Error, OSError)):
        async with handle.connect():
            pass
    assert handle.app.bans.is_banned("127.0.0.1")


async def test_reload_takes_a_new_district_and_refuses_a_broken_config(
    start_server: Any, tmp_path: Path, client_key: tuple[Path, str]
) -> None:
    handle: ServerHandle = await start_server()
    with pytest.raises(asyncssh.PermissionDenied):
        async with handle.connect(SHE):
            pass
    async with handle.connect() as kept:  # an open session survives the reload
        server_config(tmp_path, client_key[1], districts=(SPR, SHE), max_upload_mb=1)
        assert await handle.app.reload() is True
        async with kept.start_sftp_client() as sftp:
            assert "results" in await sftp.listdir(".")
    async with handle.connect(SHE) as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", numbered_roster(2))
        message = await refused(
            put_bytes(sftp, "check/students.csv", b"x" * (1024 * 1024 + 1)), asyncssh.SFTPFailure
        )
        assert "limited to 1 MB" in message  # the new max_upload_mb applies at once
    [run] = await processed(handle, 1, SHE)
    assert result_json(handle, run, SHE)["added"] == 2

    handle.config_path.write_text("[server]\nport = 'not a number'\n", encoding="utf-8")
    assert await handle.app.reload() is False
    async with handle.connect(SHE) as conn, conn.start_sftp_client() as sftp:
        assert "students.csv" in await sftp.listdir(".")  # the old config stays in force


async def test_ftp_refusal_over_a_socket_and_curl(start_server: Any) -> None:
    port = free_port()
    handle: ServerHandle = await start_server(server={"ftp_refusal_port": port})
    assert handle.app.ftp_port == port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        greeting = await asyncio.wait_for(reader.readline(), 10)
        assert greeting.startswith(b"220 ")
        writer.write(b"USER springfield\r\n")
        answer = await asyncio.wait_for(reader.readline(), 10)
        assert answer == b"530 plain FTP is not accepted: use SFTP on port 22\r\n"
    finally:
        writer.close()
        await writer.wait_closed()
    if shutil.which("curl"):
        code, _, err = await run_tool("curl", "-v", "-s", "-S", f"ftp://127.0.0.1:{port}/")
        assert code != 0
        assert "530 plain FTP is not accepted: use SFTP on port 22" in err


# ---- crash recovery ---------------------------------------------------------------------------


@pytest.fixture
async def serve_subprocess(tmp_path: Path) -> AsyncIterator[Any]:
    """Start `eams serve --config PATH` as a child process; yields (process, port)."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(config_path: Path) -> tuple[asyncio.subprocess.Process, int]:
        log_path = tmp_path / f"serve-{len(procs)}.log"
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--config",
                str(config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(Path(__file__).resolve().parents[2]),
            )
        procs.append(proc)
        found: list[int] = []

        def listening() -> bool:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            assert proc.returncode is None, text
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            if match:
                found.append(int(match.group(1)))
            return bool(match)

        await wait_for(listening, timeout=20, message="eams serve listening")
        return proc, found[0]

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()


@pytest.mark.parametrize("schedule", ["nightly", "on-upload"])
async def test_kill_9_after_the_upload_is_acknowledged_loses_nothing(
    schedule: str,
    tmp_path: Path,
    client_key: tuple[Path, str],
    shared_host_keys: Path,
    serve_subprocess: Any,
    start_server: Any,
) -> None:
    """SPEC §3.1: once CLOSE is answered, a crash loses nothing and processes it once.

    `nightly`: the run is queued, not started, when the server dies. `on-upload`:
    a big file, so the run is most likely in progress when the server dies.
    """
    count = 20 if schedule == "nightly" else 20000
    keys: dict[str, dict[str, Any]] = {}
    if schedule == "nightly":
        at = datetime.now() + timedelta(hours=12)
        keys = {SPR: {"schedule": f"nightly@{at:%H:%M}"}}
    config_path = server_config(tmp_path, client_key[1], licenses=count + 10, district_keys=keys)
    proc, port = await serve_subprocess(config_path)
    async with (
        login(port) as conn,
        conn.start_sftp_client() as sftp,
    ):
        await put_bytes(sftp, "students.csv", numbered_roster(count))
        proc.send_signal(signal.SIGKILL)  # the moment CLOSE is acknowledged
        await proc.wait()

    store = await Store.open(tmp_path / "data" / "eams.sqlite3")
    try:
        [pending] = await store.pending_runs()  # acknowledged, recorded, not applied
        assert pending.spool_path is not None and Path(pending.spool_path).exists()
        assert await store.list_students(SPR) == []
    finally:
        await store.close()

    # The restarted server (on-upload now, so the queued run is processed at once).
    handle: ServerHandle = await start_server(licenses=count + 10)
    [run] = await processed(handle, 1)
    assert run.state == "done"
    assert run.result is not None and run.result.added == count
    students = await handle.app.store.list_students(SPR)
    assert len(students) == count
    assert await handle.app.store.invariant_violations() == []
    orders = {o["order"]: o for o in await handle.app.store.list_orders(SPR)}
    assert orders["ENT-SPR-2026"]["used"] == count
    assert list((tmp_path / "data" / "spool" / SPR).iterdir()) == []
    assert await handle.app.store.pending_runs() == []
    await handle.app.stop()
    assert_invariant(handle.config_path)
