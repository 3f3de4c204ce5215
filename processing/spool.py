"""The spool: where an accepted upload is kept durably until its run is done.

`accept` is the one way in from every edge (SFTP, `eams process`): a durable
copy of the completed file in the spool (`spool_copy`) and the UploadJob that
stands for it, to be recorded as a queued run. The spool file is the durable
record of an acknowledged upload (SPEC §3.1): its name carries what the run
needs (when it was received, whether it came to check/), so a file whose run
record did not get written before a crash is adopted as a queued run at the
next start.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from processing.model import FileFacts, UploadJob, utc_now

CLI_SOURCE = "eams process "  # + the file's own name


def uploaded_name(source: str) -> str:
    """The name a district (or operator) gave the file: `students.csv` for an upload,
    to `/` or to `check/`; the file's own name for `eams process FILE`."""
    return source.removeprefix(CLI_SOURCE).rsplit("/", 1)[-1]


def file_facts(path: Path, source: str) -> FileFacts:
    """result.json's `file` (SPEC §6.2): the name, size and SHA-256 of the spooled
    bytes the run processed, so a district's script can compare them with what it
    sent. Read from the spool copy, never from students.csv again (which a newer
    upload may have replaced meanwhile)."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256")
        size = handle.tell()
    return FileFacts(uploaded_name(source), size, digest.hexdigest())


def spool_dir(data: Path, district_id: str) -> Path:
    return data / "spool" / district_id


SPOOL_TAGS = {"upload": "students.csv", "check": "check/students.csv"}  # adoptable kinds


SPOOL_LINK_MODE = 0o640
"""The widest mode a file may have to be spooled by a hard link (it keeps that mode)."""


def spool_copy(
    source: Path,
    data: Path,
    district_id: str,
    *,
    tag: str = "cli",
    received_at: datetime | None = None,
) -> tuple[Path, int]:
    """Put a durable copy of `source` into the spool; return (path, size).

    A copy or a hard link, never a move, so the district's `students.csv`
    stays where it is: WinSCP sets its time right after the upload and must
    find it. A hard link is safe because the server never writes into an
    existing `students.csv` in place (new uploads are staged and renamed over
    it), and it turns a 200 MB copy into a metadata operation; across file
    systems it falls back to a copy.

    Spool files are 0600/0640 whatever the umask (SPEC §3.2). A link shares
    its source's mode, so only a source that is already at most 0640 (the
    server stages uploads so) is linked; any other (an operator's 0644 file
    for `eams process`) is copied into a 0600 file, never chmod'ed.
    """
    folder = spool_dir(data, district_id)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = (received_at or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    # time_ns orders files of the same second; the tag says how to adopt the file.
    final = folder / f"{stamp}-{time.time_ns()}-{tag}-{uuid.uuid4().hex[:12]}.csv"
    with open(source, "rb") as src:
        os.fsync(src.fileno())
        try:
            if os.fstat(src.fileno()).st_mode & ~SPOOL_LINK_MODE & 0o777:
                raise PermissionError("not private enough to be linked")
            os.link(source, final)
            size = os.fstat(src.fileno()).st_size
        except OSError:
            temp = final.with_suffix(".partial")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(fd, "wb") as dst:
                os.fchmod(fd, 0o600)
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
                size = dst.tell()
            os.replace(temp, final)
    fsync_dir(folder)
    return final, size


def adoptable_job(path: Path, district_id: str) -> UploadJob | None:
    """The UploadJob a spool file stands for, if it came from an SFTP upload."""
    parts = path.stem.split("-")
    if path.suffix != ".csv" or len(parts) != 4 or parts[2] not in SPOOL_TAGS:
        return None  # an `eams process` file (the operator saw it fail) or a stray file
    try:
        received = datetime.strptime(parts[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        size = path.stat().st_size
    except (ValueError, OSError):
        return None
    return UploadJob(
        district_id=district_id,
        spool_path=path,
        size=size,
        received_at=received,
        source=SPOOL_TAGS[parts[2]],
        dry_run=parts[2] == "check",
    )


def spool_files(data: Path) -> list[tuple[str, Path]]:
    """Every (district id, spool file), oldest first within a district."""
    root = data / "spool"
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir(), key=lambda p: p.name):
            found.append((folder.name, path))
    return found


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def accept(
    path: Path,
    data: Path,
    district_id: str,
    *,
    source: str,
    dry_run: bool = False,
    order_id: str | None = None,
    received_at: datetime | None = None,
) -> UploadJob:
    """The one way in: a completed upload becomes a durable spool file and the UploadJob
    that stands for it (every edge, `eams process`, the tests and the benches use this).

    `source` is "students.csv" or "check/students.csv" for an SFTP upload (such a
    spool file is adopted as a run after a crash) and `CLI_SOURCE + name` for
    `eams process`. Blocking (fsync): call it from a worker thread.
    """
    received = received_at or utc_now()
    tag = next((t for t, name in SPOOL_TAGS.items() if name == source), "cli")
    spooled, size = spool_copy(path, data, district_id, tag=tag, received_at=received)
    return UploadJob(district_id, spooled, size, received, source, dry_run, order_id)
