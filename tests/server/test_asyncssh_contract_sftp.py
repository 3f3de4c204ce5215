"""The asyncssh behaviour the SFTP limits rely on (SPEC §3.2, server/quotas.py,
server/backpressure.py, server/sftp.py).

- `open`, `read` and `fsync` may return awaitables: the staging copy, reads
  and fsync run in worker threads.
- OPENDIR calls `scandir()` synchronously and holds what it returns until
  CLOSE or the end of the session drops it, with no server hook: folder
  handles are counted by a weak reference to that object.
- One request at a time per session: per-session counts need no lock, and a
  session that waits for its client stops taking requests.
- The SFTP channel's session has `drain()`, what asyncssh's own writer calls.
- copy-data reads in blocks no larger than a READ reply (it stops at a short read).
- The server speaks SFTP v3 unless told otherwise, so `open56` (v5+), which
  DistrictSFTPServer does not override, is never called.

If an asyncssh upgrade changes one of these, a test here fails before a limit
silently stops holding.
"""

from __future__ import annotations

import inspect

import asyncssh
import asyncssh.sftp
import asyncssh.stream
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHServerConnectionOptions
from asyncssh.sftp import SFTPServerHandler

from server.quotas import READ_MAX
from tests.conftest import ServerHandle
from tests.server.sftp_wire import WireSFTP


def _source(function: object) -> str:
    return inspect.getsource(function)  # type: ignore[arg-type]


def test_asyncssh_is_the_version_this_was_verified_against() -> None:
    assert asyncssh.__version__.startswith("2.24."), asyncssh.__version__


def test_open_read_and_fsync_results_may_be_awaitables() -> None:
    for handler, call in (
        (SFTPServerHandler._process_open, "self._server.open(path, pflags, attrs)"),
        (SFTPServerHandler._process_read, "self._server.read(file_obj, offset, length)"),
    ):
        source = _source(handler)
        assert call in source
        assert source.index("inspect.isawaitable(result)") > source.index(call)
    fsync = _source(SFTPServerHandler._process_fsync)
    assert "self._server.fsync(file_obj)" in fsync
    assert "inspect.isawaitable(result)" in fsync


def test_opendir_holds_what_scandir_returns_and_close_only_drops_it() -> None:
    opendir = _source(SFTPServerHandler._process_opendir)
    assert "self._dir_handles[handle] = self._server.scandir(path)" in opendir
    close = _source(SFTPServerHandler._process_close)
    assert "self._dir_handles.pop(handle, None)" in close
    cleanup = _source(SFTPServerHandler._cleanup)
    assert "self._dir_handles = {}" in cleanup
    readdir = _source(SFTPServerHandler._process_readdir)
    assert "names = self._dir_handles.get(handle)" in readdir


async def test_a_closed_folder_handle_stops_counting_at_once(spr: ServerHandle) -> None:
    """CPython frees the dropped iterator at once (no cycle holds it): the count falls."""
    async with spr.connect() as conn:
        wire = await WireSFTP.start(conn)
        [session] = list(spr.app.sessions)
        folder = await wire.opendir("/")
        await wire.readdir_all(folder)
        assert session.handles.open == 1
        await wire.close_handle(folder)
        assert session.handles.open == 0


def test_requests_of_one_session_are_handled_one_at_a_time() -> None:
    source = _source(asyncssh.sftp.SFTPHandler.recv_packets)
    assert "await self._process_packet(pkttype, pktid, packet)" in source


def test_the_channel_session_can_be_drained() -> None:
    assert "self._session: Optional[SSHSession[AnyStr]] = None" in _source(SSHChannel.__init__)
    assert inspect.iscoroutinefunction(asyncssh.stream.SSHStreamSession.drain)
    assert "await self._session.drain(self._datatype)" in _source(asyncssh.SSHWriter.drain)
    for name in ("get_write_buffer_size", "set_write_buffer_limits", "is_closing"):
        assert callable(getattr(SSHChannel, name))


def test_copy_data_reads_blocks_no_larger_than_a_read_reply() -> None:
    assert asyncssh.sftp._COPY_DATA_BLOCK_SIZE <= READ_MAX
    assert "if len(data) < size:" in _source(SFTPServerHandler._process_copy_data)


def test_the_server_speaks_sftp_v3_unless_told_otherwise() -> None:
    default = inspect.signature(SSHServerConnectionOptions.prepare).parameters["sftp_version"]
    assert default.default == asyncssh.sftp.MIN_SFTP_VERSION == 3


async def test_a_client_asking_for_v6_gets_v3(spr: ServerHandle) -> None:
    async with spr.connect() as conn, conn.start_sftp_client(sftp_version=6) as sftp:
        assert sftp.version == 3
