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
"""

from __future__ import annotations

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

from server import jail
from server.jail import JailError, PathKind
from server.uploads import (
    StagedUpload,
    TempUpload,
    UploadRefused,
    Uploads,
)

log = logging.getLogger("eams.sftp")

EXPLICIT_CLOSE_CALLER = "_process_close"
HIDDEN_PREFIX = b".eams-"
_WRITE_FLAGS = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC | asyncssh.FXF_APPEND


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
        self.district_id = district_id
        self.home = Path(os.path.realpath(home))
        self.uploads = uploads
        self.last_activity = time.monotonic()  # for the server's idle timeout

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
            raise _denied(str(exc)) from None

    def reverse_map_path(self, path: bytes) -> bytes:
        try:
            return jail.to_virtual(self.home, Path(os.fsdecode(path))).encode()
        except JailError as exc:
            raise asyncssh.SFTPNoSuchFile(str(exc)) from None

    def virtual(self, path: bytes) -> str:
        """The client's path as the home-relative path it really names (links resolved)."""
        return jail.to_virtual(self.home, Path(os.fsdecode(self.map_path(path))))

    # ---- files ---------------------------------------------------------------------------

    def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        if not pflags & _WRITE_FLAGS:
            return super().open(path, pflags, attrs)
        virtual = self.virtual(path)
        refusal = jail.write_refusal(virtual)
        if refusal:
            raise _denied(refusal)
        real = Path(os.fsdecode(self.map_path(path)))
        try:
            if jail.classify(virtual) is PathKind.UPLOAD:
                return self.uploads.open_direct(
                    self.district_id,
                    virtual,
                    real,
                    truncate=bool(pflags & asyncssh.FXF_TRUNC),
                    append=bool(pflags & asyncssh.FXF_APPEND),
                )
            return self.uploads.open_temp(self.district_id, real, _mode(pflags, real))
        except UploadRefused as exc:
            raise asyncssh.SFTPFailure(str(exc)) from None

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        self.last_activity = time.monotonic()
        if isinstance(file_obj, StagedUpload | TempUpload):
            try:
                return self.uploads.write(file_obj, offset, data)
            except UploadRefused as exc:
                raise asyncssh.SFTPFailure(str(exc)) from None
        return int(super().write(file_obj, offset, data))  # type: ignore[arg-type]

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        self.last_activity = time.monotonic()
        if isinstance(file_obj, StagedUpload | TempUpload):
            return os.pread(file_obj.file.fileno(), size, offset)
        return super().read(file_obj, offset, size)  # type: ignore[return-value]

    def close(self, file_obj: object) -> Awaitable[None] | None:
        """See the module docstring: who called us tells CLOSE from a dropped connection."""
        explicit = sys._getframe(1).f_code.co_name == EXPLICIT_CLOSE_CALLER
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
            return asyncssh.SFTPAttrs.from_local(os.fstat(file_obj.file.fileno()))
        return super().fstat(file_obj)

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

    def fsync(self, file_obj: object) -> None:
        if isinstance(file_obj, StagedUpload | TempUpload):
            file_obj.file.flush()
            os.fsync(file_obj.file.fileno())

    # ---- attributes --------------------------------------------------------------------

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        """Times on students.csv and temp uploads apply; permissions and owners are
        accepted and ignored (WinSCP shows an error dialog if this fails). A size
        applies to the upload in progress, as FSETSTAT's does."""
        virtual = self.virtual(path)
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

    async def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        """asyncssh's listing, but hidden staging/temp names are skipped before they
        are stat'ed, and a file that vanishes between listing and stat (a result
        file being written) is left out instead of failing the whole listing
        (bench/load.py saw that as a "No such file" for a district polling results/)."""
        real = self.map_path(path)
        here = SFTPAttrs.from_local(os.stat(real))
        for name in (b".", b".."):  # ".." of a folder shown as itself: never outside
            yield SFTPName(name, attrs=here)
        with os.scandir(real) as entries:
            for entry in entries:
                name = os.fsencode(entry.name)
                if name.startswith(HIDDEN_PREFIX):
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield SFTPName(name, attrs=SFTPAttrs.from_local(stat))

    def remove(self, path: bytes) -> None:
        refusal = jail.remove_refusal(self.virtual(path))
        if refusal:
            raise _denied(refusal)
        os.remove(self.map_path(path))

    async def rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath)

    async def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        await self._rename(oldpath, newpath)

    async def _rename(self, oldpath: bytes, newpath: bytes) -> None:
        """The one rename allowed completes a safe upload: temp name -> students.csv."""
        old, new = self.virtual(oldpath), self.virtual(newpath)
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
        with contextlib.suppress(OSError, asyncssh.Error, AttributeError):
            self.channel.exit(0)  # fails only when the connection is already gone


def _mode(pflags: int, real: Path) -> str:
    """The open mode for a temporary upload. APPEND (a resumed `.part`) writes at the
    end whatever offset the client sends (O_APPEND: pwrite appends on Linux)."""
    if pflags & asyncssh.FXF_APPEND:
        return "a+b"
    if pflags & asyncssh.FXF_TRUNC or not real.exists():
        return "w+b"
    return "r+b"


def _apply_times(target: bytes | int, attrs: SFTPAttrs) -> None:
    if attrs.atime is not None or attrs.mtime is not None:
        st = os.stat(target)
        atime = attrs.atime if attrs.atime is not None else st.st_atime
        mtime = attrs.mtime if attrs.mtime is not None else st.st_mtime
        os.utime(target, (atime, mtime))
