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

    # ---- opening ---------------------------------------------------------------

    def open_direct(
        self, district_id: str, virtual: str, target: Path, *, truncate: bool
    ) -> StagedUpload:
        """Open a hidden staging file beside `target`; `students.csv` is untouched."""
        staging = target.with_name(f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
        handle = os.fdopen(fd, "r+b")
        if not truncate and target.exists():  # a resumed or patched write: start from it
            with open(target, "rb") as current:
                while chunk := current.read(1024 * 1024):
                    handle.write(chunk)
        return StagedUpload(district_id, virtual, target, staging, handle)

    def open_temp(self, district_id: str, path: Path, mode: str) -> TempUpload:
        file = cast(BinaryIO, open(path, mode))  # noqa: SIM115 (closed by close_temp)
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
            upload.file.seek(offset)
            return upload.file.write(data)
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

    def truncate(self, upload: TempUpload, size: int) -> None:
        """FSETSTAT with a size on a temporary upload (within the same limits as writes)."""
        if upload.refused:
            raise UploadRefused(upload.refused)
        if size > self.max_bytes:
            raise UploadRefused(too_large_message(self.max_bytes))
        upload.file.truncate(size)

    # ---- completing ---------------------------------------------------------------

    async def close_direct(self, upload: StagedUpload, *, explicit: bool) -> RunRecord | None:
        """CLOSE of a staged students.csv: complete it, or discard it after a drop.

        The CLOSE of a refused upload (too large, disk full) is answered with the
        refusal too: for a direct upload the CLOSE status is what says "stored", and a
        client that pipelines its writes may only look at that one.
        """
        if not explicit or upload.refused:
            with contextlib.suppress(OSError):  # buffered bytes of a discarded upload
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
            await asyncio.to_thread(upload.file.close)  # flush (spool_copy fsyncs)
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
        before CLOSE, or a dead session of an upload WinSCP resumed elsewhere)
        are refused from now on: their writes would land in the file that was
        just spooled and acknowledged. An OSError (no such file) goes to the
        client as is.
        """
        if os.stat(temp).st_size > self.max_bytes:
            temp.unlink(missing_ok=True)
            raise UploadRefused(too_large_message(self.max_bytes))
        for handle in self._open_temps.pop(temp, []):
            handle.refused = f"{temp.name} was already renamed to {target.name}: upload it again"
        return await self.complete(district_id, virtual, temp, target)

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


def _replace(finished: Path, target: Path) -> None:
    """Atomically make `finished` the district's students.csv, durably."""
    os.replace(finished, target)
    fsync_dir(target.parent)
