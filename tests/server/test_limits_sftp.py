"""One district cannot take the server down over SFTP (SPEC §3.2, issue 10).

Each test replays what was observed against the real server on 127.0.0.1 with
real clients (asyncssh, OpenSSH, and `sftp_wire`, a bare client that pipelines
requests and may never read the answers):

1. READs are capped at 256 KiB and run off the event loop (15 pipelined
   READ(len=2^32-1) took the server from 95 MB to 2.5 GB; another district's
   `ls` timed out); the staging copy of a WRITE without TRUNC runs off it too.
2. At most `max_handles_per_session` open files and folders (one held 5,000).
3. At most `temp_files_per_district` uploads in progress (150 temp files of
   2 MB and 5,000 empty ones were accepted).
4. Names (tests/server/test_limits_sftp_names.py).
5. Staging files of a killed server are removed at the next start.

Memory is the test process's own (the server runs in it): the peak is reset
through /proc/self/clear_refs and read back as VmHWM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from server import jail
from server.backpressure import REPLY_BACKLOG
from server.quotas import READ_MAX
from server.sftp import DistrictSFTPServer
from server.uploads import STAGING_PREFIX
from tests.conftest import (
    SHE,
    SPR,
    ServerHandle,
    add_toml_keys,
    csv_text,
    finished_runs,
    put_bytes,
    refused,
    student,
    wait_for,
)
from tests.server.sftp_wire import StatusError, WireSFTP

MiB = 1024 * 1024
HANDLES_MESSAGE = "too many open files in this session (limit 32): close some first"
TEMPS_MESSAGE = "too many temporary uploads: at most 10 at once; rename or delete one first"


# ---- helpers ------------------------------------------------------------------------------


def memory(field: str) -> int:
    """VmRSS or VmHWM of this process (server and clients), in bytes."""
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert match, field
    return int(match.group(1)) * 1024


def reset_peak_memory() -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def write_big(path: Path, size: int) -> None:
    """A real (not sparse) file of `size` bytes, written in 1 MiB chunks."""
    chunk = b"0101,S1,Ann,Lee,5,ann.lee,pw,Room 1,A\r\n" * (MiB // 40)
    chunk = chunk.ljust(MiB, b"#")
    with path.open("wb") as out:
        for _ in range(size // MiB):
            out.write(chunk)


def roster(*ids: str) -> bytes:
    return csv_text([student(i) for i in ids]).encode()


def session_of(handle: ServerHandle, district_id: str = SPR) -> DistrictSFTPServer:
    sessions = [s for s in handle.app.sessions if s.district_id == district_id]
    assert len(sessions) == 1, sessions
    session: DistrictSFTPServer = sessions[0]
    return session


class Lister:
    """Another district listing its home again and again; keeps the slowest answer."""

    def __init__(self, sftp: asyncssh.SFTPClient) -> None:
        self.sftp = sftp
        self.count = 0
        self.worst = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lister:
        self._task = asyncio.create_task(self._run())
        await wait_for(lambda: self.count >= 1, message="a first listing")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def one_more(self) -> None:
        """Wait for a listing that started after this call (it overlapped what came before)."""
        done = self.count
        await wait_for(lambda: self.count >= done + 2, timeout=30, message="two more listings")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(100_000):
            if self._stop.is_set():
                return
            started = loop.time()
            try:
                names = await asyncio.wait_for(self.sftp.listdir("/"), 20)
            except TimeoutError:
                names = []
            self.worst = max(self.worst, loop.time() - started)
            assert "students_template.csv" in names
            self.count += 1


# ---- 1. reads are capped and off the loop; so is the staging copy ---------------------------


async def test_huge_pipelined_reads_get_256_kib_each_and_another_district_lists_meanwhile(
    start_server: Any,
) -> None:
    """The report: 15 pipelined READ(len=2^32-1) of a big file."""
    handle: ServerHandle = await start_server(districts=(SPR, SHE))
    big = handle.home() / "results" / "R-2026-big.errors.csv"
    await asyncio.to_thread(write_big, big, 64 * MiB)
    async with (
        handle.connect() as attacker,
        handle.connect(username=SHE) as other,
        other.start_sftp_client() as sftp,
        Lister(sftp) as lister,
    ):
        wire = await WireSFTP.start(attacker)
        file = await wire.open("/results/R-2026-big.errors.csv")
        reset_peak_memory()
        before = memory("VmRSS")
        for _ in range(15):
            wire.send_read(file, 0, 2**32 - 1)
        lengths = []
        for _ in range(15):
            kind, _, body = await asyncio.wait_for(wire.reply(), 60)
            lengths.append(wire.data_length(kind, body))
        await lister.one_more()
        grown = memory("VmHWM") - before
        wire.close()
    print(f"[limits] 15 huge READs: +{grown / MiB:.1f} MiB, listing at most {lister.worst:.3f} s")
    assert lengths == [READ_MAX] * 15  # a shorter read, as OpenSSH's sftp-server gives
    assert grown < 64 * MiB, f"the server grew by {grown // MiB} MiB"
    assert lister.worst < 0.5, f"another district's listing took {lister.worst:.2f} s"


async def test_a_client_that_never_reads_its_replies_makes_the_server_hold_little(
    start_server: Any,
) -> None:
    """400 pipelined READs of 256 KiB and no reading: the session stops taking requests
    once about REPLY_BACKLOG is unsent, instead of holding 100 MB of replies."""
    handle: ServerHandle = await start_server(districts=(SPR, SHE))
    big = handle.home() / "results" / "R-2026-big.errors.csv"
    await asyncio.to_thread(write_big, big, 16 * MiB)
    async with (
        handle.connect() as attacker,
        handle.connect(username=SHE) as other,
        other.start_sftp_client() as sftp,
    ):
        wire = await WireSFTP.start(attacker)
        file = await wire.open("/results/R-2026-big.errors.csv")
        session = session_of(handle)
        reset_peak_memory()
        before = memory("VmRSS")
        for n in range(400):
            wire.send_read(file, (n % 64) * READ_MAX, READ_MAX)
        await wait_for(lambda: session.backlog.waiting, message="the session waits for its client")
        assert session.channel.get_write_buffer_size() <= REPLY_BACKLOG + 2 * READ_MAX
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert "students_template.csv" in await sftp.listdir("/")
        assert loop.time() - started < 0.5
        grown = memory("VmHWM") - before
        attacker.abort()
        # The requests already received are answered at once, not read for a dead client.
        await wait_for(lambda: session.handles.open == 0, message="the session ended")
    print(f"[limits] 400 unread READs: +{grown / MiB:.1f} MiB")
    assert grown < 32 * MiB, f"the server grew by {grown // MiB} MiB"


async def test_short_reads_still_download_whole_files_with_asyncssh_and_openssh(
    spr: ServerHandle, tmp_path: Path, client_key: tuple[Path, str]
) -> None:
    """Clients ask again for the rest of a short read: big downloads arrive whole."""
    big = spr.home() / "results" / "R-2026-big.result.txt"
    data = os.urandom(3 * MiB + 12345)
    big.write_bytes(data)
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        async with sftp.open("results/R-2026-big.result.txt", "rb") as handle:
            assert await handle.read() == data  # 4 MiB blocks asked, 256 KiB answered
        await sftp.get("results/R-2026-big.result.txt", str(tmp_path / "asyncssh.txt"))
    assert (tmp_path / "asyncssh.txt").read_bytes() == data
    if shutil.which("sftp") is None:
        return
    target = tmp_path / "openssh.txt"
    proc = await asyncio.create_subprocess_exec(
        "sftp",
        *("-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=yes"),
        *("-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"),
        *("-i", str(client_key[0]), "-P", str(spr.port)),
        f"{SPR}@127.0.0.1:results/R-2026-big.result.txt",
        str(target),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert target.read_bytes() == data


async def test_the_staging_copy_of_a_big_students_csv_runs_off_the_loop(
    start_server: Any,
) -> None:
    """OPEN(WRITE|CREAT) without TRUNC copies the current students.csv (up to 200 MB)
    into the staging file; three at once held every other district for seconds."""
    handle: ServerHandle = await start_server(districts=(SPR, SHE))
    await asyncio.to_thread(write_big, handle.home() / "students.csv", 200 * MiB)
    uploaders = [await handle.connect() for _ in range(3)]
    try:
        clients = [await conn.start_sftp_client() for conn in uploaders]
        async with (
            handle.connect(username=SHE) as other,
            other.start_sftp_client() as sftp,
            Lister(sftp) as lister,
        ):
            opened = await asyncio.gather(
                *(c.open("students.csv", asyncssh.FXF_WRITE | asyncssh.FXF_CREAT) for c in clients)
            )
            await lister.one_more()
            for file in opened:
                assert (await file.stat()).size == 200 * MiB  # the old bytes, as a real file
    finally:
        for conn in uploaders:  # dropped, never closed: nothing is processed
            conn.abort()
    print(f"[limits] 3 staging copies of 200 MB: listing at most {lister.worst:.3f} s")
    assert lister.worst < 0.5, f"another district's listing took {lister.worst:.2f} s"
    await wait_for(lambda: not list(handle.home().glob(f"{STAGING_PREFIX}*")), timeout=30)
    assert len(await handle.app.store.list_runs(SPR)) == 0


# ---- 2. open handles per session ----------------------------------------------------------


async def test_a_session_holds_at_most_32_files_and_folders_and_a_close_frees_a_place(
    spr: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="eams.sftp")
    async with spr.connect() as conn, spr.connect() as second:
        wire = await WireSFTP.start(conn)
        files = [await wire.open("/students_template.csv") for _ in range(30)]
        folders = [await wire.opendir("/"), await wire.opendir("/results")]
        await wire.readdir_all(folders[0])  # read to the end: still an open handle
        for attempt in (wire.open("/students_template.csv"), wire.opendir("/check")):
            with pytest.raises(StatusError) as refusal:
                await attempt
            assert refusal.value.message == HANDLES_MESSAGE
        await wire.close_handle(files.pop())
        files.append(await wire.open("/students_template.csv"))
        with pytest.raises(StatusError):
            await wire.opendir("/")
        await wire.close_handle(folders.pop())
        folders.append(await wire.opendir("/check"))
        # Per session: another session of the same district has its own 32.
        other = await WireSFTP.start(second)
        for _ in range(32):
            await other.open("/students_template.csv")
    lines = [r.getMessage() for r in caplog.records if HANDLES_MESSAGE in r.getMessage()]
    assert lines, "each refusal is logged"
    assert all("127.0.0.1" in line and SPR in line for line in lines)


async def test_a_dropped_connection_releases_every_handle(spr: ServerHandle) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    conn = await spr.connect()
    wire = await WireSFTP.start(conn)
    for _ in range(31):
        await wire.open("/students_template.csv")
    await wire.opendir("/results")
    assert open_fds() >= before + 31
    conn.abort()
    await conn.wait_closed()
    await wait_for(lambda: open_fds() <= before, message="every file closed")


async def test_a_reload_lowers_the_handle_limit_for_new_opens(spr: ServerHandle) -> None:
    async with spr.connect() as conn:
        wire = await WireSFTP.start(conn)
        await wire.open("/students_template.csv")
        add_toml_keys(spr.config_path, "server", max_handles_per_session=3)
        assert await spr.app.reload()
        await wire.open("/students_template.csv")
        await wire.opendir("/")
        with pytest.raises(StatusError) as refusal:
            await wire.open("/students_template.csv")
    assert "(limit 3)" in refusal.value.message


# ---- 3. uploads in progress per district ------------------------------------------------------


async def test_at_most_10_temporary_uploads_at_once_per_district(spr: ServerHandle) -> None:
    names = [f"students.csv.{n}.part" for n in range(5)] + [f"check/s{n}.tmp" for n in range(5)]
    async with (
        spr.connect() as conn,
        conn.start_sftp_client() as sftp,
        spr.connect() as second,
        second.start_sftp_client() as other,
    ):
        for name in names:
            await put_bytes(sftp, name, b"x" * 1000)
        assert await refused(put_bytes(sftp, "students.csv.filepart", b"x")) == TEMPS_MESSAGE
        assert await refused(put_bytes(other, "check/one-more.partial", b"")) == TEMPS_MESSAGE
        await put_bytes(other, names[0], b"resumed")  # an existing one may be written again
        async with sftp.open(names[1], "ab") as resumed:
            await resumed.write(b"more")
        await sftp.remove(names[2])
        await put_bytes(other, "students.csv.filepart", roster("S1"))
        assert await refused(put_bytes(sftp, "x.part", b"")) == TEMPS_MESSAGE
        await sftp.rename("students.csv.filepart", "students.csv")  # completes: frees a place
        await put_bytes(sftp, "x.part", b"")
    await finished_runs(spr, 1)
    temps = [p.name for f in (spr.home(), spr.home() / "check") for p in f.iterdir()]
    assert len([n for n in temps if jail.is_temp_name(n)]) == 10


async def test_direct_uploads_in_progress_count_against_the_same_bound(
    start_server: Any,
) -> None:
    """Each open students.csv write handle has a staging file of up to 200 MB."""
    handle: ServerHandle = await start_server(server={"temp_files_per_district": 2})
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        first = await sftp.open("students.csv", "wb")
        second = await sftp.open("check/students.csv", "wb")
        message = await refused(sftp.open("students.csv", "wb"))
        assert message.startswith("too many uploads in progress: at most 2 at once")
        message = await refused(put_bytes(sftp, "students.csv.part", b""))
        assert message.startswith("too many temporary uploads: at most 2 at once")
        await first.write(roster("S1"))
        await first.close()  # completed: its staging file is students.csv now
        await second.close()
        await put_bytes(sftp, "students.csv.part", roster("S1", "S2"))
    await finished_runs(handle, 2)


async def test_a_reload_applies_the_temporary_upload_bound(spr: ServerHandle) -> None:
    add_toml_keys(spr.config_path, "server", temp_files_per_district=1)
    assert await spr.app.reload()
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "a.part", b"")
        message = await refused(put_bytes(sftp, "b.part", b""))
    assert message == "too many temporary uploads: at most 1 at once; rename or delete one first"


# ---- 5. a crash leaves nothing behind ---------------------------------------------------------


async def test_staging_files_of_a_killed_server_are_removed_at_the_next_start(
    start_server: Any, tmp_path: Path
) -> None:
    home = tmp_path / "homes" / SPR
    (home / "check").mkdir(parents=True)
    leftovers = [home / f"{STAGING_PREFIX}0123abcd", home / "check" / f"{STAGING_PREFIX}feed"]
    for path in leftovers:
        path.write_bytes(b"\0" * MiB)
    (home / "students.csv.filepart").write_bytes(b"WinSCP resumes this")
    handle: ServerHandle = await start_server()
    assert not [p for p in leftovers if p.exists()]
    assert (handle.home() / "students.csv.filepart").read_bytes() == b"WinSCP resumes this"
