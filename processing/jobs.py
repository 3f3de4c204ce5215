"""UploadJob: the one type that crosses from the SFTP edge into processing.

The edge (or `eams process`) first makes a durable copy of the completed file
in the spool (`spool_copy`), then hands over an UploadJob; the runner records
it as a `queued` run before the client's close/rename is answered, so an
acknowledged upload survives a crash (SPEC §3.1).
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime
from pathlib import Path

from attrs import frozen


@frozen
class UploadJob:
    district_id: str
    spool_path: Path
    size: int
    received_at: datetime  # UTC, when the upload completed
    source: str  # "students.csv", "check/students.csv" or "eams process"
    dry_run: bool = False
    order_id: str | None = None  # eams process --order (SPEC §5.5)


def spool_dir(data: Path, district_id: str) -> Path:
    return data / "spool" / district_id


def spool_copy(source: Path, data: Path, district_id: str) -> tuple[Path, int]:
    """Put a durable copy of `source` into the spool; return (path, size).

    A copy or a hard link, never a move, so the district's `students.csv`
    stays where it is: WinSCP sets its time right after the upload and must
    find it. A hard link is safe because the server never writes into an
    existing `students.csv` in place (new uploads are staged and renamed over
    it), and it turns a 200 MB copy into a metadata operation; across file
    systems it falls back to a copy.
    """
    folder = spool_dir(data, district_id)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{uuid.uuid4().hex}.csv"
    with open(source, "rb") as src:
        os.fsync(src.fileno())
        try:
            os.link(source, final)
            size = os.fstat(src.fileno()).st_size
        except OSError:
            temp = final.with_suffix(".partial")
            with open(temp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
                size = dst.tell()
            os.replace(temp, final)
    fsync_dir(folder)
    return final, size


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_spool_files_except(data: Path, keep: set[str]) -> int:
    """Delete spool files whose path is not in `keep`; return how many."""
    removed = 0
    root = data / "spool"
    if not root.is_dir():
        return 0
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if str(path) not in keep:
                path.unlink(missing_ok=True)
                removed += 1
    return removed
