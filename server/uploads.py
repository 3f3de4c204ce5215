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

No asyncssh here: `server/sftp.py` maps this module's `UploadRefused` (and
`server.quotas.LimitReached`) to SFTP status codes. The files behind the
handles are made in `server/staging.py`, the bounds are in `server/quotas.py`,
what is left behind goes in `server/housekeeping.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from processing.config import ServerSettings
from processing.model import RunRecord
from processing.run_queue import ProcessingQueue
from processing.spool import accept, fsync_dir
from server.housekeeping import remove_staging, sweep
from server.quotas import (
    STAGING_PREFIX,
    LimitReached,
    too_many_temps,
    too_many_uploads,
    uploads_in_progress,
)
from server.staging import (
    StagedUpload,
    TempUpload,
    UploadRefused,
    already_exists,
    create_staging,
    fill_staging,
    open_temp_file,
    pwrite_all,
    too_large_message,
)

log = logging.getLogger("eams.uploads")

# Imported from here by server/sftp.py, server/app.py and tests.
__all__ = [
    "RESUME_REFUSED",
    "STAGING_PREFIX",
    "StagedUpload",
    "TempUpload",
    "UploadRefused",
    "Uploads",
    "sweep",
    "too_large_message",
]

RESUME_REFUSED = "resume is not supported for students.csv: upload the whole file again"


class Uploads:
    def __init__(
        self,
        queue: ProcessingQueue,
        data: Path,
        max_bytes: int,
        *,
        limits: Callable[[], ServerSettings] = ServerSettings,
    ) -> None:
        self.queue = queue
        self.data = data
        self.max_bytes = max_bytes
        # The server's current [server] settings (after a SIGHUP reload too): the
        # bounds of SPEC 3.2 are read from it when they are checked.
        self.limits = limits
        # Write handles open on temporary uploads, by real path (all sessions).
        self._open_temps: dict[Path, list[TempUpload]] = {}
        # Temporary uploads whose RENAME to students.csv is being completed.
        self._completing: set[Path] = set()
        # Direct uploads open, by target: SETSTAT of students.csv with a size applies to them.
        self._open_direct: dict[Path, list[StagedUpload]] = {}

    # ---- opening ---------------------------------------------------------------

    async def open_direct(
        self,
        district_id: str,
        virtual: str,
        target: Path,
        *,
        home: Path,
        truncate: bool,
        append: bool,
        exclusive: bool = False,
    ) -> StagedUpload:
        """Open a hidden staging file beside `target`; `students.csv` is untouched.

        Without TRUNC the staging file starts as a copy of the current file, as a
        real file would (OpenSSH `scp` 9 opens WRITE|CREAT, writes, then sets the
        size with FSETSTAT). That copy (up to max_upload_mb) runs in a thread, so
        it never stalls other districts' requests, and each staging file counts
        against `temp_files_per_district` (see `server.quotas.uploads_in_progress`).
        APPEND is a resume (`reput`): refused, because a cut upload never replaced
        the old file and appending to it would mix two extracts (SPEC §3.1). EXCL
        is honoured against the students.csv there now.
        """
        if append:
            raise UploadRefused(RESUME_REFUSED)
        if exclusive and target.exists():
            raise UploadRefused(already_exists(target.name))
        self._check_quota(home, too_many_uploads)
        # Checked and created in one step on the event loop: no other open in between.
        staging, handle = create_staging(target)
        try:
            if not truncate and target.exists():  # a patched write: start from the old bytes
                await fill_staging(target, staging)
        except BaseException as exc:
            handle.close()
            staging.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise UploadRefused(
                    f"the server could not store the upload: {exc.strerror}"
                ) from exc
            raise
        upload = StagedUpload(district_id, virtual, target, staging, handle)
        self._open_direct.setdefault(target, []).append(upload)
        return upload

    def open_temp(
        self,
        district_id: str,
        path: Path,
        *,
        home: Path,
        truncate: bool,
        append: bool,
        exclusive: bool = False,
    ) -> TempUpload:
        """A write handle on a client's temporary upload name.

        Refused while a RENAME of that file to students.csv is being completed:
        a handle opened then would reach the inode that becomes students.csv.
        A new file must fit in `temp_files_per_district`; reopening one (a
        resume) always may. EXCL is honoured, as a real file system would.
        """
        if path in self._completing:
            raise UploadRefused(f"{path.name} is being renamed to students.csv: upload it again")
        exists = path.exists()
        if exclusive and exists:
            raise UploadRefused(already_exists(path.name))
        if not exists:
            self._check_quota(home, too_many_temps)
        try:
            file = open_temp_file(
                path, exists=exists, truncate=truncate, append=append, exclusive=exclusive
            )
        except FileExistsError:
            raise UploadRefused(already_exists(path.name)) from None
        upload = TempUpload(district_id, path, file)
        self._open_temps.setdefault(path, []).append(upload)
        return upload

    def _check_quota(self, home: Path, message: Callable[[int], str]) -> None:
        limit = self.limits().temp_files_per_district
        if uploads_in_progress(home) >= limit:
            raise LimitReached(message(limit))

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
            pwrite_all(upload.file.fileno(), data, offset)
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
        dry_run = virtual.startswith("/check/")
        try:
            job = await asyncio.to_thread(
                partial(
                    accept,
                    finished,
                    self.data,
                    district_id,
                    source=virtual.lstrip("/"),
                    dry_run=dry_run,
                )
            )
            await asyncio.to_thread(_replace, finished, target)
        except OSError as exc:
            raise UploadRefused(f"the server could not store the upload: {exc.strerror}") from exc
        size = job.size
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

    async def remove_staging_leftovers(self, homes: Iterable[Path]) -> int:
        """At start, before the port opens: remove every staging file in the homes
        (what a killed server left; see server/housekeeping.py)."""
        removed = await asyncio.to_thread(lambda: [p for h in homes for p in remove_staging(h)])
        for path in removed:
            log.info("removed a staging file left by the last run: %s", path)
        return len(removed)


def _replace(finished: Path, target: Path) -> None:
    """Atomically make `finished` the district's students.csv, durably."""
    os.replace(finished, target)
    fsync_dir(target.parent)
