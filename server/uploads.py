"""Upload completion (SPEC §3.1): when a students.csv is really complete.

Two signals complete an upload:
- an explicit SSH_FXP_CLOSE of a handle opened for writing on `students.csv`
  (written to a hidden staging file, renamed over `students.csv` only then);
- a RENAME of a client's temporary upload (`students.csv.filepart`, `*.part`,
  `*.tmp`, ...) to `students.csv` (WinSCP's default for files over 100 KB).

A handle closed because the connection dropped is NOT a completion: its
staging file is discarded and the previous `students.csv` stays as it was.
Before either signal is answered, the file is in the spool and its run is
recorded as queued (`ProcessingQueue.submit`), so an acknowledged upload
survives a crash.

No asyncssh here: `server/sftp.py` maps this module's `UploadRefused` to SFTP
status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from functools import partial
from pathlib import Path
from typing import BinaryIO, cast

from attrs import define

from processing.jobs import UploadJob, fsync_dir, spool_copy
from processing.queue import ProcessingQueue
from processing.store import RunRecord, utc_now
from server.jail import is_temp_name

log = logging.getLogger("eams.uploads")

STAGING_PREFIX = ".eams-staging-"
TEMP_MAX_AGE = 24 * 3600
RESUME_REFUSED = "resume is not supported for students.csv: upload the whole file again"


class UploadRefused(Exception):
    """An upload the client must be told about (too large, disk full)."""


@define
class StagedUpload:
    """An open write handle on students.csv: the bytes go to `staging` until CLOSE."""

    district_id: str
    virtual: str  # "/students.csv" or "/check/students.csv"
    target: Path
    staging: Path
    file: BinaryIO
    refused: str | None = None


@define
class TempUpload:
    """An open write handle on a client's temporary upload name (kept on a drop)."""

    district_id: str
    path: Path
    file: BinaryIO
    refused: str | None = None


def too_large_message(limit: int) -> str:
    return f"file too large: uploads are limited to {limit // (1024 * 1024)} MB"


class Uploads:
    def __init__(self, queue: ProcessingQueue, data: Path, max_bytes: int) -> None:
        self.queue = queue
        self.data = data
        self.max_bytes = max_bytes
        # Write handles open on temporary uploads, by real path (all sessions).
        self._open_temps: dict[Path, list[TempUpload]] = {}
        # Temporary uploads whose RENAME to students.csv is being completed.
        self._completing: set[Path] = set()
        # Direct uploads open, by target: SETSTAT of students.csv with a size applies to them.
        self._open_direct: dict[Path, list[StagedUpload]] = {}

    # ---- opening ---------------------------------------------------------------

    def open_direct(
        self, district_id: str, virtual: str, target: Path, *, truncate: bool, append: bool
    ) -> StagedUpload:
        """Open a hidden staging file beside `target`; `students.csv` is untouched.

        Without TRUNC the staging file starts as a copy of the current file, as a
        real file would (OpenSSH `scp` 9 opens WRITE|CREAT, writes, then sets the
        size with FSETSTAT). APPEND is a resume (`reput`): refused, because a cut
        upload never replaced the old file and appending to it would mix two
        extracts (SPEC §3.1).
        """
        if append:
            raise UploadRefused(RESUME_REFUSED)
        staging = target.with_name(f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        # Unbuffered: every SFTP WRITE is one pwrite, so nothing is left in a buffer
        # to be flushed into the file later (after it was spooled).
        handle = cast(BinaryIO, os.fdopen(fd, "r+b", buffering=0))
        if not truncate and target.exists():  # a patched write: start from the old bytes
            with open(target, "rb") as current:
                while chunk := current.read(1024 * 1024):
                    handle.write(chunk)
        upload = StagedUpload(district_id, virtual, target, staging, handle)
        self._open_direct.setdefault(target, []).append(upload)
        return upload

    def open_temp(self, district_id: str, path: Path, mode: str) -> TempUpload:
        """A write handle on a client's temporary upload name.

        Refused while a RENAME of that file to students.csv is being completed:
        a handle opened then would reach the inode that becomes students.csv.
        """
        if path in self._completing:
            raise UploadRefused(f"{path.name} is being renamed to students.csv: upload it again")
        file = cast(BinaryIO, open(path, mode, buffering=0))  # noqa: SIM115 (close_temp)
        upload = TempUpload(district_id, path, file)
        self._open_temps.setdefault(path, []).append(upload)
        return upload

    def close_temp(self, upload: TempUpload) -> None:
        """CLOSE or a dropped connection: the file stays either way (WinSCP resumes it),
        unless its last bytes could not be stored (a full disk): then it is removed and
        UploadRefused is raised, so that a RENAME cannot complete a cut-off file."""
        handles = self._open_temps.get(upload.path, [])
        handles[:] = [h for h in handles if h is not upload]
        if not handles:
            self._open_temps.pop(upload.path, None)
        try:
            upload.file.close()  # flushes what was buffered
        except OSError as exc:
            if not upload.refused:
                self._refuse(upload, f"the server could not store the upload: {exc.strerror}")
                log.error(
                    "upload by %s failed: %s (partial file removed)",
                    upload.district_id,
                    exc.strerror,
                )
                raise UploadRefused(upload.refused) from exc

    # ---- writing ------------------------------------------------------------------

    def write(self, upload: StagedUpload | TempUpload, offset: int, data: bytes) -> int:
        """Write at `offset`, refusing (and discarding the upload) past `max_upload_mb`."""
        if upload.refused:
            raise UploadRefused(upload.refused)
        if offset + len(data) > self.max_bytes:
            self._refuse(upload, too_large_message(self.max_bytes))
            log.warning("upload by %s refused: over %d bytes", upload.district_id, self.max_bytes)
            raise UploadRefused(upload.refused)
        try:
            _pwrite_all(upload.file.fileno(), data, offset)
            return len(data)
        except OSError as exc:
            # A full disk (or a quota): the partial file is useless, and left in place it
            # would keep the disk full for every district and could still be completed by
            # a client that renames it anyway, so it goes now, like an oversized upload.
            self._refuse(upload, f"the server could not store the upload: {exc.strerror}")
            log.error(
                "upload by %s failed: %s (partial file removed)", upload.district_id, exc.strerror
            )
            raise UploadRefused(upload.refused) from exc

    def _refuse(self, upload: StagedUpload | TempUpload, message: str) -> None:
        """Refuse every further request on this upload and unlink its file now, so that
        neither a CLOSE nor a RENAME can complete it."""
        upload.refused = message
        path = upload.staging if isinstance(upload, StagedUpload) else upload.path
        path.unlink(missing_ok=True)

    def truncate(self, upload: StagedUpload | TempUpload, size: int) -> None:
        """FSETSTAT (or SETSTAT) with a size: cut or extend the upload, as a real file.

        Within the same limit as writes; on a staged students.csv too, since
        `scp` sets the size of the file it wrote that way."""
        if upload.refused:
            raise UploadRefused(upload.refused)
        if size > self.max_bytes:
            raise UploadRefused(too_large_message(self.max_bytes))
        upload.file.truncate(size)

    def truncate_path(self, district_id: str, target: Path, size: int) -> None:
        """SETSTAT with a size on students.csv: applies to the district's uploads of it
        in progress. With none open, the file is the acknowledged last upload (and
        its bytes may be a run waiting in the spool): only its current size is
        accepted, so a client that restates the size it just wrote still succeeds."""
        staged = [u for u in self._open_direct.get(target, []) if u.district_id == district_id]
        if not staged:
            if target.exists() and target.stat().st_size == size:
                return
            raise UploadRefused(
                "students.csv can only be changed by uploading it: its size cannot be set"
            )
        for upload in staged:
            self.truncate(upload, size)

    def truncate_temp_path(self, path: Path, size: int) -> None:
        """SETSTAT with a size on a temporary upload's name."""
        if path in self._completing:
            raise UploadRefused(f"{path.name} is being renamed to students.csv")
        if size > self.max_bytes:
            raise UploadRefused(too_large_message(self.max_bytes))
        os.truncate(path, size)

    # ---- completing ---------------------------------------------------------------

    async def close_direct(self, upload: StagedUpload, *, explicit: bool) -> RunRecord | None:
        """CLOSE of a staged students.csv: complete it, or discard it after a drop.

        The CLOSE of a refused upload (too large, disk full) is answered with the
        refusal too: for a direct upload the CLOSE status is what says "stored", and a
        client that pipelines its writes may only look at that one.
        """
        handles = self._open_direct.get(upload.target, [])
        handles[:] = [h for h in handles if h is not upload]
        if not handles:
            self._open_direct.pop(upload.target, None)
        if not explicit or upload.refused:
            with contextlib.suppress(OSError):
                upload.file.close()
            upload.staging.unlink(missing_ok=True)
            if not explicit:
                log.warning(
                    "upload of %s by %s cut off (connection lost before CLOSE): discarded, "
                    "previous students.csv kept",
                    upload.virtual,
                    upload.district_id,
                )
            elif upload.refused:
                raise UploadRefused(f"{upload.refused}; nothing was stored")
            return None
        try:
            upload.file.close()  # unbuffered: nothing to flush (spool_copy fsyncs)
            return await self.complete(
                upload.district_id, upload.virtual, upload.staging, upload.target
            )
        except (OSError, UploadRefused) as exc:
            upload.staging.unlink(missing_ok=True)
            if isinstance(exc, UploadRefused):
                raise
            log.error("upload by %s failed: %s", upload.district_id, exc.strerror)
            raise UploadRefused(f"the server could not store the upload: {exc.strerror}") from exc

    async def complete_rename(
        self, district_id: str, temp: Path, virtual: str, target: Path
    ) -> RunRecord | None:
        """RENAME of a temporary upload to students.csv: move it into place, complete it.

        Write handles still open on the temporary file (a client that renames
        before CLOSE, a dead session of an upload WinSCP resumed elsewhere, or
        an attacker's second session) are refused from now on, and no new one
        can be opened while the rename completes: the file's inode becomes the
        spooled, acknowledged upload. Handles are unbuffered, so a refused one
        has nothing left to flush into it either. An OSError (no such file)
        goes to the client as is.
        """
        if temp in self._completing:
            raise UploadRefused(f"{temp.name} is already being renamed to students.csv")
        if os.stat(temp).st_size > self.max_bytes:
            temp.unlink(missing_ok=True)
            raise UploadRefused(too_large_message(self.max_bytes))
        self._completing.add(temp)
        try:
            for handle in self._open_temps.pop(temp, []):
                handle.refused = (
                    f"{temp.name} was already renamed to {target.name}: upload it again"
                )
            return await self.complete(district_id, virtual, temp, target)
        finally:
            self._completing.discard(temp)

    async def complete(
        self, district_id: str, virtual: str, finished: Path, target: Path
    ) -> RunRecord | None:
        """Spool the finished file durably, move it over students.csv, queue its run.

        The spool copy is taken from `finished` itself (the staging or
        temporary file), before it becomes students.csv: two sessions of one
        district uploading at once each spool their own bytes, whichever
        rename lands last (bench/load.py caught a run that processed the other
        session's file when the copy was taken from students.csv afterwards).
        The durable spool file is what makes the upload safe to acknowledge;
        the run record normally follows within milliseconds, and while another
        district's big run holds the database it follows in the background
        (None is returned then). See ProcessingQueue.submit.
        """
        received = utc_now()
        dry_run = virtual.startswith("/check/")
        try:
            spooled, size = await asyncio.to_thread(
                partial(
                    spool_copy,
                    finished,
                    self.data,
                    district_id,
                    tag="check" if dry_run else "upload",
                    received_at=received,
                )
            )
            await asyncio.to_thread(_replace, finished, target)
        except OSError as exc:
            raise UploadRefused(f"the server could not store the upload: {exc.strerror}") from exc
        job = UploadJob(
            district_id=district_id,
            spool_path=spooled,
            size=size,
            received_at=received,
            source=virtual.lstrip("/"),
            dry_run=dry_run,
        )
        record = await self.queue.submit(job)
        log.info(
            "upload complete: district %s, %s, %d bytes, run %s%s",
            district_id,
            virtual,
            size,
            record.run_id if record else "(recorded as soon as the database is free)",
            " (dry run)" if dry_run else "",
        )
        return record


def sweep(home: Path, *, results_days: float, now: float | None = None) -> list[Path]:
    """Remove leftover temp/staging files older than a day and results past retention."""
    now = time.time() if now is None else now
    removed = []
    for folder in (home, home / "check"):
        for entry in _entries(folder):
            stale = now - entry.stat().st_mtime > TEMP_MAX_AGE
            if stale and (entry.name.startswith(STAGING_PREFIX) or is_temp_name(entry.name)):
                entry.unlink(missing_ok=True)
                removed.append(entry)
    if results_days > 0:
        for entry in _entries(home / "results"):
            if now - entry.stat().st_mtime > results_days * 86400:
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    except FileNotFoundError:
        return []


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until every byte is written (a raw write may be short)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _replace(finished: Path, target: Path) -> None:
    """Atomically make `finished` the district's students.csv, durably."""
    os.replace(finished, target)
    fsync_dir(target.parent)
