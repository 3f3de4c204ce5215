"""The district's SFTP view: one thin hook per SFTP request (asyncssh's SFTPServer).

Each hook maps the path through `jail` (confinement after resolving links,
SPEC §3), asks `jail` whether the operation is allowed, and hands uploads to
`uploads`. asyncssh's own `chroot` is not used: it can be escaped with two
SYMLINK requests, and every path here is checked after resolving links.

Telling an explicit CLOSE from a dropped connection: asyncssh 2.24 calls
`SFTPServer.close()` both from `SFTPServerHandler._process_close` (the client
sent SSH_FXP_CLOSE) and from `SFTPServerHandler._cleanup` (the connection
ended with handles still open). Channel state cannot tell them apart
reliably: a client may pipeline CLOSE and EOF, so the channel can already be
at EOF while the CLOSE is processed. The caller can: `close()` is a plain
method (it returns a coroutine for asyncssh to await), so the frame that
called it is the handler method itself. `tests/server/test_asyncssh_contract.py`
fails if asyncssh renames or restructures those two methods.

What one session may make the server hold is bounded (SPEC §3.2, see
`server/quotas.py`): handles per session, uploads in progress per district,
256 KiB per READ. File work that can take long (reads, the staging copy,
fsync) runs in worker threads, so one client's large requests never hold up
another district's listing. Writes stay on the loop: each is one pwrite of at
most one SFTP packet (asyncssh caps it at 4 MiB), and keeping them there is what
lets a RENAME of a temporary upload refuse every other handle on it at once
(`Uploads.complete_rename`) with no write still in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh import SFTPAttrs, SFTPName

from processing.log_context import bind
from server import jail
from server.backpressure import ReplyBacklog
from server.jail import JailError, PathKind
from server.listing import folder_names, local_attrs
from server.quotas import READ_MAX, LimitReached, RefusalLog, SessionHandles
from server.staging import already_exists
from server.uploads import (
    StagedUpload,
    TempUpload,
    UploadRefused,
    Uploads,
)

log = logging.getLogger("eams.sftp")

EXPLICIT_CLOSE_CALLER = "_process_close"
READ_ONLY = "this file was opened for reading: open it for writing to change it"


def _denied(message: str) -> asyncssh.SFTPPermissionDenied:
    return asyncssh.SFTPPermissionDenied(message)


class DistrictSFTPServer(asyncssh.SFTPServer):
    def __init__(
        self,
        chan: asyncssh.SSHServerChannel[bytes],
        *,
        district_id: str,
        home: Path,
        uploads: Uploads,
    ) -> None:
        super().__init__(chan)
        peer = chan.get_extra_info("peername")
        # The session's task logs for this district and address from here on.
        bind(district=district_id, remote=str(peer[0]) if peer else None)
        self.district_id = district_id
        self.home = Path(os.path.realpath(home))
        self.uploads = uploads
        self.last_activity = time.monotonic()  # for the server's idle timeout
        peer = chan.get_extra_info("peername")
        self.address = str(peer[0]) if peer else "?"
        self.refusals = RefusalLog(self.address, district_id)
        self.handles = SessionHandles(lambda: uploads.limits().max_handles_per_session)
        self.backlog = ReplyBacklog(chan)

    # ---- listings: no user database lookups ---------------------------------------------

    def format_user(self, uid: int | None) -> str:
        """Every file in a district's folder is the district's: no passwd lookup per entry
        (asyncssh's default costs a getpwuid per listed file, 8% of a loaded server)."""
        return self.district_id

    def format_group(self, gid: int | None) -> str:
        return self.district_id

    # ---- paths ----------------------------------------------------------------------

    def map_path(self, path: bytes) -> bytes:
        self.last_activity = time.monotonic()
        try:
            return os.fsencode(jail.resolve(self.home, path))
        except JailError as exc:
            raise self._refused("path", path, _denied(str(exc))) from None

    def reverse_map_path(self, path: bytes) -> bytes:
        try:
            return jail.to_virtual(self.home, Path(os.fsdecode(path))).encode()
        except JailError as exc:
            raise asyncssh.SFTPNoSuchFile(str(exc)) from None

    def virtual(self, path: bytes) -> str:
        """The client's path as the home-relative path it really names (links resolved)."""
        return jail.to_virtual(self.home, Path(os.fsdecode(self.map_path(path))))

    def file_virtual(self, path: bytes, request: str) -> str:
        """`virtual()` for a path that must name a file (OPEN, SETSTAT, REMOVE, RENAME):
        `students.csv/` or `students.csv.` is refused, not taken as students.csv."""
        try:
            refusal = jail.file_name_refusal(path)
        except JailError as exc:
            raise self._refused(request, path, _denied(str(exc))) from None
        if refusal:
            raise self._refused(request, path, _denied(refusal))
        return self.virtual(path)

    def _refused(self, request: str, name: object, exc: asyncssh.SFTPError) -> asyncssh.SFTPError:
        """Log the refusal (address, district, the name escaped) and return `exc` to raise."""
        self.refusals.refused(request, name, str(exc.reason))
        return exc

    # ---- files ---------------------------------------------------------------------------

    async def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        """Only an open with WRITE gets a write handle; any other is read-only, whatever
        else it asks for (CREAT, TRUNC or APPEND alone must not create, cut or write).
        EXCL is honoured. Each handle counts against `max_handles_per_session`."""
        virtual = self.file_virtual(path, "open")
        try:
            self.handles.check()
            real = Path(os.fsdecode(self.map_path(path)))
            exclusive = bool(pflags & asyncssh.FXF_EXCL)
            if not pflags & asyncssh.FXF_WRITE:
                if exclusive and real.exists():
                    raise UploadRefused(already_exists(real.name))
                file_obj: object = open(real, "rb", buffering=0)  # noqa: SIM115 (close())
            else:
                file_obj = await self._open_for_writing(virtual, real, pflags, exclusive)
        except (LimitReached, UploadRefused) as exc:
            raise self._refused("open", path, asyncssh.SFTPFailure(str(exc))) from None
        self.handles.file_opened()
        return file_obj

    async def _open_for_writing(
        self, virtual: str, real: Path, pflags: int, exclusive: bool
    ) -> StagedUpload | TempUpload:
        refusal = jail.write_refusal(virtual)
        if refusal:
            raise _denied(refusal)
        truncate = bool(pflags & asyncssh.FXF_TRUNC)
        append = bool(pflags & asyncssh.FXF_APPEND)
        if jail.classify(virtual) is PathKind.UPLOAD:
            return await self.uploads.open_direct(
                self.district_id,
                virtual,
                real,
                home=self.home,
                truncate=truncate,
                append=append,
                exclusive=exclusive,
            )
        return self.uploads.open_temp(
            self.district_id,
            real,
            home=self.home,
            truncate=truncate,
            append=append,
            exclusive=exclusive,
        )

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        self.last_activity = time.monotonic()
        if not isinstance(file_obj, StagedUpload | TempUpload):
            raise self._refused("write", _name(file_obj), _denied(READ_ONLY))
        try:
            return self.uploads.write(file_obj, offset, data)
        except UploadRefused as exc:
            raise asyncssh.SFTPFailure(str(exc)) from None

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:
        """At most READ_MAX bytes (a shorter read, as OpenSSH's sftp-server gives; clients
        ask again for the rest), read in a worker thread (pread: no shared file offset),
        and only once the replies already read are on their way (server/backpressure.py)."""
        self.last_activity = time.monotonic()
        if not await self.backlog.wait():
            raise asyncssh.SFTPConnectionLost("the connection is gone")
        return await asyncio.to_thread(os.pread, _fileno(file_obj), min(size, READ_MAX), offset)

    def close(self, file_obj: object) -> Awaitable[None] | None:
        """See the module docstring: who called us tells CLOSE from a dropped connection."""
        explicit = sys._getframe(1).f_code.co_name == EXPLICIT_CLOSE_CALLER
        self.handles.file_closed()
        if isinstance(file_obj, StagedUpload):
            return self._close_direct(file_obj, explicit)
        if isinstance(file_obj, TempUpload):
            try:
                self.uploads.close_temp(file_obj)  # kept either way: WinSCP resumes a .filepart
            except UploadRefused as exc:
                # Told to a client that sent CLOSE; never raised into asyncssh's cleanup of
                # a dropped connection, which would skip the handles after this one.
                if explicit:
                    raise asyncssh.SFTPFailure(str(exc)) from None
            return None
        return super().close(file_obj)

    async def _close_direct(self, upload: StagedUpload, explicit: bool) -> None:
        try:
            await self.uploads.close_direct(upload, explicit=explicit)
        except UploadRefused as exc:
            raise asyncssh.SFTPFailure(str(exc)) from None

    def fstat(self, file_obj: object) -> Any:
        if isinstance(file_obj, StagedUpload | TempUpload):
            file_obj.file.flush()
            return local_attrs(os.fstat(file_obj.file.fileno()), self.district_id)
        return local_attrs(os.fstat(_fileno(file_obj)), self.district_id)

    def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        if isinstance(file_obj, StagedUpload | TempUpload):
            if attrs.size is not None:
                try:
                    self.uploads.truncate(file_obj, attrs.size)
                except UploadRefused as exc:
                    raise asyncssh.SFTPFailure(str(exc)) from None
            _apply_times(file_obj.file.fileno(), attrs)
            return
        raise _denied("this file is read-only")

    async def fsync(self, file_obj: object) -> None:
        """In a worker thread: flushing a 200 MB upload to disk can take seconds."""
        if isinstance(file_obj, StagedUpload | TempUpload):
            await asyncio.to_thread(os.fsync, file_obj.file.fileno())

    # ---- attributes --------------------------------------------------------------------

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Times on students.csv and temp uploads apply; permissions and owners are
        accepted and ignored (WinSCP shows an error dialog if this fails). A size
        applies to the upload in progress, as FSETSTAT's does."""
        virtual = self.file_virtual(path, "setstat")
        kind = jail.classify(virtual)
        if kind not in (PathKind.UPLOAD, PathKind.TEMP_UPLOAD):
            raise _denied(jail.write_refusal(virtual) or "this file is read-only")
        real = self.map_path(path)
        if attrs.size is not None:
            target = Path(os.fsdecode(real))
            try:
                if kind is PathKind.UPLOAD:
                    self.uploads.truncate_path(self.district_id, target, attrs.size)
                else:
                    self.uploads.truncate_temp_path(target, attrs.size)
            except UploadRefused as exc:
                raise asyncssh.SFTPFailure(str(exc)) from None
        _apply_times(real, attrs)

    def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        self.setstat(path, attrs)

    # ---- names ---------------------------------------------------------------------------

    def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        """OPENDIR: a folder handle, counted against `max_handles_per_session` for as
        long as asyncssh holds it (see server/quotas.py)."""
        try:
            self.handles.check()
        except LimitReached as exc:
            raise self._refused("opendir", path, asyncssh.SFTPFailure(str(exc))) from None
        return self.handles.folder(folder_names(self.map_path(path), self.district_id))

    def stat(self, path: bytes) -> SFTPAttrs:
        return local_attrs(os.stat(self.map_path(path)), self.district_id)

    def lstat(self, path: bytes) -> SFTPAttrs:
        return local_attrs(os.lstat(self.map_path(path)), self.district_id)

    def remove(self, path: bytes) -> None:
        """Removes the entry named, never what a link there points at: the rules are
        decided on the link's own place and the link itself is unlinked."""
        self.file_virtual(path, "remove")  # the name rules, and no path out of the home
        try:
            entry, virtual = jail.resolve_entry(self.home, path)
        except JailError as exc:
            raise _denied(str(exc)) from None
        refusal = jail.remove_refusal(virtual)
        if refusal:
            raise _denied(refusal)
        os.unlink(entry)

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath)

    async def _rename(self, oldpath: bytes, newpath: bytes) -> None:
        """The one rename allowed completes a safe upload: temp name -> students.csv."""
        old, new = self.file_virtual(oldpath, "rename"), self.file_virtual(newpath, "rename")
        refusal = jail.rename_refusal(old, new)
        if refusal:
            raise _denied(refusal)
        real_old, real_new = self.map_path(oldpath), self.map_path(newpath)
        try:
            await self.uploads.complete_rename(
                self.district_id, Path(os.fsdecode(real_old)), new, Path(os.fsdecode(real_new))
            )
        except UploadRefused as exc:
            raise asyncssh.SFTPFailure(str(exc)) from None

    def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        raise _denied(jail.mkdir_refusal(self.virtual(path)))

    def rmdir(self, path: bytes) -> None:
        raise _denied(jail.rmdir_refusal(self.virtual(path)))

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise _denied(jail.link_refusal())

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise _denied(jail.link_refusal())

    def readlink(self, path: bytes) -> bytes:
        raise asyncssh.SFTPNoSuchFile("there are no links here")

    def exit(self) -> None:
        """End of the SFTP session: send exit status 0 (OpenSSH scp 9+ needs it)."""
        self.refusals.session_ended()
        with contextlib.suppress(OSError, asyncssh.Error, AttributeError):
            self.channel.exit(0)  # fails only when the connection is already gone


def _fileno(file_obj: object) -> int:
    if isinstance(file_obj, StagedUpload | TempUpload):
        return file_obj.file.fileno()
    return int(file_obj.fileno())  # type: ignore[attr-defined]


def _name(file_obj: object) -> str:
    return str(getattr(file_obj, "name", "?"))


def _apply_times(target: bytes | int, attrs: SFTPAttrs) -> None:
    if attrs.atime is not None or attrs.mtime is not None:
        st = os.stat(target)
        atime = attrs.atime if attrs.atime is not None else st.st_atime
        mtime = attrs.mtime if attrs.mtime is not None else st.st_mtime
        os.utime(target, (atime, mtime))
