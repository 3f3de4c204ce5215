"""The files behind an SFTP write handle: a staged students.csv or a client's temporary upload.

A direct upload of students.csv is written to a hidden staging file beside it
(`.eams-staging-*`), moved into place only by an explicit CLOSE (SPEC §3.1);
a temporary upload (`students.csv.filepart`, `*.part` ...) is the client's own
file, kept when its connection drops so WinSCP can resume it. This module
creates and opens them; `server/uploads.py` decides what happens to them.
Handles are unbuffered: every SFTP WRITE is one pwrite, so nothing is left in a
buffer to be flushed into a file after it was spooled.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, cast

from attrs import define

from server.quotas import STAGING_PREFIX

COPY_CHUNK = 1024 * 1024


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


def already_exists(name: str) -> str:
    return f"{name} already exists (the client asked to create it only if it is new)"


def create_staging(target: Path) -> tuple[Path, BinaryIO]:
    """A new, empty staging file beside `target` and an unbuffered handle on it."""
    staging = target.with_name(f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)
    return staging, cast(BinaryIO, os.fdopen(fd, "r+b", buffering=0))


async def fill_staging(target: Path, staging: Path) -> None:
    """Start the staging file as a copy of the current `target` (a write without TRUNC).

    Up to max_upload_mb, so it runs in a worker thread: another district's
    requests are never held up by it. The thread opens the staging file by name
    without creating it, with its own descriptors: if the open is abandoned
    meanwhile (the staging file removed), it fails or writes into an unlinked
    file, never into a descriptor that was closed and reused.
    """
    await asyncio.to_thread(_copy_into, target, staging)


def open_temp_file(
    path: Path, *, exists: bool, truncate: bool, append: bool, exclusive: bool
) -> BinaryIO:
    """An unbuffered read/write handle on a temporary upload.

    APPEND (a resumed `.part`) writes at the end whatever offset the client
    sends (O_APPEND: pwrite appends on Linux); EXCL creates the file or fails
    with FileExistsError, as on a real file system.
    """
    if exclusive:
        mode = "x+b"
    elif append:
        mode = "a+b"
    elif truncate or not exists:
        mode = "w+b"
    else:
        mode = "r+b"
    return cast(BinaryIO, open(path, mode, buffering=0))  # closed by Uploads.close_temp


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """pwrite until every byte is written (a raw write may be short)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _copy_into(source: Path, staging: Path) -> None:
    try:
        with open(source, "rb") as src, open(staging, "r+b") as dst:
            shutil.copyfileobj(src, dst, COPY_CHUNK)
    except FileNotFoundError:
        if staging.exists():  # students.csv went meanwhile: start from nothing
            os.truncate(staging, 0)
