"""The asyncssh behaviour server/sftp.py relies on to tell CLOSE from a dropped connection.

asyncssh 2.24 calls `SFTPServer.close(file_obj)` from `SFTPServerHandler._process_close`
(the client sent SSH_FXP_CLOSE) and from `SFTPServerHandler._cleanup` (the
connection ended with handles open). `DistrictSFTPServer.close` looks at the
name of its caller's frame (`EXPLICIT_CLOSE_CALLER`) to know which one it is.
If an asyncssh upgrade renames, restructures or adds a caller, these tests fail
before a dropped upload can be processed as complete (SPEC §3.1).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import textwrap
from typing import Any

import asyncssh
import asyncssh.constants
import asyncssh.sftp
from asyncssh.sftp import SFTPServerHandler

from server.sftp import EXPLICIT_CLOSE_CALLER, DistrictSFTPServer
from tests.conftest import ServerHandle, csv_text, wait_for

ROSTER = csv_text([["0101", "S1", "Ann", "Lee", "3", "ann.lee", "pw-1234", "", "A"]]).encode()


def _calls_server_close(function: Any) -> bool:
    """True if `function`'s own body calls `self._server.close(...)` directly."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return any(
        isinstance(node, ast.Call) and ast.unparse(node.func) == "self._server.close"
        for node in ast.walk(tree)
    )


def test_asyncssh_is_the_version_this_was_verified_against() -> None:
    assert asyncssh.__version__.startswith("2.24."), asyncssh.__version__


def test_process_close_calls_server_close_and_is_the_close_handler() -> None:
    assert "self._server.close(" in inspect.getsource(SFTPServerHandler._process_close)
    assert _calls_server_close(SFTPServerHandler._process_close)
    assert SFTPServerHandler._process_close.__name__ == EXPLICIT_CLOSE_CALLER
    handlers = SFTPServerHandler._packet_handlers
    assert handlers[asyncssh.constants.FXP_CLOSE] is SFTPServerHandler._process_close


def test_cleanup_calls_server_close_for_handles_left_open() -> None:
    source = inspect.getsource(SFTPServerHandler._cleanup)
    assert "self._server.close(" in source
    assert "self._file_handles" in source
    assert SFTPServerHandler._cleanup.__name__ != EXPLICIT_CLOSE_CALLER


def test_no_other_caller_of_server_close() -> None:
    """Every function in asyncssh.sftp that calls `self._server.close(`: a new one
    would be treated as a drop (safe), but it must be looked at."""
    tree = ast.parse(inspect.getsource(asyncssh.sftp))
    callers = set()
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                isinstance(node, ast.Call) and ast.unparse(node.func) == "self._server.close"
                for node in ast.walk(fn)
            ):
                callers.add(f"{cls.name}.{fn.name}")
    # SFTPServerFile.close serves asyncssh's scp server, which eams does not enable.
    assert callers == {
        "SFTPServerHandler._process_close",
        "SFTPServerHandler._cleanup",
        "SFTPServerFile.close",
    }


def test_district_close_is_a_plain_method() -> None:
    """A plain method runs in the caller's call, so frame 1 is the asyncssh handler."""
    assert not inspect.iscoroutinefunction(DistrictSFTPServer.close)
    assert "sys._getframe(1).f_code.co_name == EXPLICIT_CLOSE_CALLER" in inspect.getsource(
        DistrictSFTPServer.close
    )


async def _finished_runs(handle: ServerHandle) -> int:
    await asyncio.wait_for(handle.app.queue.wait_idle(), 10)
    return len(await handle.app.store.list_runs("springfield"))


async def test_live_explicit_close_is_processed_and_a_dropped_one_is_not(
    start_server: Any,
) -> None:
    handle: ServerHandle = await start_server()
    target = handle.home() / "students.csv"
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        upload = await sftp.open("students.csv", "wb")
        await upload.write(ROSTER)
        await upload.close()
    assert await _finished_runs(handle) == 1
    assert target.read_bytes() == ROSTER

    conn = await handle.connect()
    sftp = await conn.start_sftp_client()
    upload = await sftp.open("students.csv", "wb")
    await upload.write(b"School Code,Student ID,First Name")
    conn.abort()  # no CLOSE: asyncssh's _cleanup closes the handle
    await conn.wait_closed()
    await wait_for(lambda: not handle.app.connections, message="connection gone")
    await wait_for(lambda: not list(handle.home().glob(".eams-*")), message="staging removed")
    assert await _finished_runs(handle) == 1
    assert target.read_bytes() == ROSTER


async def test_live_close_pipelined_with_channel_close_is_processed(start_server: Any) -> None:
    """CLOSE followed at once by the end of the session: the CLOSE was sent, it counts."""
    handle: ServerHandle = await start_server()
    conn = await handle.connect()
    try:
        sftp = await conn.start_sftp_client()
        upload = await sftp.open("students.csv", "wb")
        await upload.write(ROSTER)
        closing = asyncio.create_task(upload.close())
        await asyncio.sleep(0)  # let the task send its CLOSE request
        sftp.exit()
        await asyncio.gather(closing, return_exceptions=True)
        await wait_for(lambda: handle.app.queue.finished, message="a finished run")
    finally:
        conn.close()
        await conn.wait_closed()
    assert await _finished_runs(handle) == 1
    assert (handle.home() / "students.csv").read_bytes() == ROSTER
