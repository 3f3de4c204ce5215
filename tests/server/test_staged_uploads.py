"""A staged upload behaves like a real file, and nothing changes it once acknowledged
(SPEC §3.1, issue 9).

The processed file must be exactly the bytes the client's handle left: OpenSSH
`scp` 9 opens students.csv with WRITE|CREAT and no TRUNC, writes, and then sets
the size with FSETSTAT, so a shorter file sent over a longer one must not keep
the old tail. After a CLOSE or RENAME is answered, no handle of any session can
change the bytes that run. `result.json`'s `file` names what was processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any

import asyncssh
import pytest

from server.uploads import RESUME_REFUSED
from tests.conftest import (
    SPR,
    ServerHandle,
    csv_text,
    finished_runs,
    put_bytes,
    refused,
    student,
)

WRITE_CREATE = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT  # what scp 9 sends: no TRUNC


def roster(*ids: str) -> bytes:
    return csv_text([student(i) for i in ids]).encode("utf-8")


def result_of(handle: ServerHandle, run: Any) -> dict[str, Any]:
    path = handle.home() / "results" / f"{run.run_id}.result.json"
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def facts(data: bytes) -> dict[str, Any]:
    return {"name": "students.csv", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


async def test_write_create_without_trunc_then_fsetstat_size_processes_only_the_new_bytes(
    spr: ServerHandle,
) -> None:
    """The scp 9 sequence: the old file's tail must not be processed or kept."""
    longer = roster("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8")
    shorter = roster("S1")
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", longer)
        await finished_runs(spr, 1)
        async with sftp.open("students.csv", WRITE_CREATE, encoding=None) as handle:
            await handle.write(shorter)
            await handle.truncate(len(shorter))  # FSETSTAT size=...
    first, second = await finished_runs(spr, 2)
    result = result_of(spr, second)
    assert (result["rows"], result["unchanged"], result["errors"]) == (1, 1, 0)
    assert result["file"] == facts(shorter)
    assert result_of(spr, first)["file"] == facts(longer)
    assert (spr.home() / "students.csv").read_bytes() == shorter
    text = (spr.home() / "results" / f"{second.run_id}.result.txt").read_text()
    assert f"students.csv, {len(shorter)} bytes, SHA-256 {facts(shorter)['sha256']}" in text


async def test_setstat_size_by_path_applies_to_the_upload_in_progress(spr: ServerHandle) -> None:
    longer = roster("S1", "S2", "S3")
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", longer)
        await finished_runs(spr, 1)
        shorter = roster("S1")
        async with sftp.open("students.csv", WRITE_CREATE, encoding=None) as handle:
            await handle.write(shorter)
            await sftp.truncate("students.csv", len(shorter))  # SETSTAT by path
    _, second = await finished_runs(spr, 2)
    assert result_of(spr, second)["file"] == facts(shorter)
    assert (spr.home() / "students.csv").read_bytes() == shorter


async def test_fsetstat_extends_and_writes_land_at_any_offset_and_read_back(
    spr: ServerHandle,
) -> None:
    data = roster("S1", "S2")
    head, tail = data[:50], data[50:]
    async with (
        spr.connect() as conn,
        conn.start_sftp_client() as sftp,
        sftp.open("students.csv", "w+b") as handle,
    ):
        await handle.write(tail, 50)  # the end first, as a parallel client may
        await handle.truncate(len(data) + 10)  # extended: zeros after the data
        assert (await handle.stat()).size == len(data) + 10
        await handle.truncate(len(data))
        await handle.write(head, 0)
        assert await handle.read(len(data), 0) == data
    (run,) = await finished_runs(spr, 1)
    result = result_of(spr, run)
    assert (result["state"], result["added"]) == ("done", 2)
    assert result["file"] == facts(data)


async def test_size_over_the_limit_is_refused(start_server: Any) -> None:
    handle_ = await start_server(server={"max_upload_mb": 1})
    async with (
        handle_.connect() as conn,
        conn.start_sftp_client() as sftp,
        sftp.open("students.csv", "wb") as handle,
    ):
        message = await refused(handle.truncate(2 * 1024 * 1024))
    assert "file too large" in message


async def test_setstat_size_of_the_acknowledged_students_csv_is_refused(
    spr: ServerHandle,
) -> None:
    """With no upload open, students.csv is the last upload (its bytes may still be a
    queued run's spool file): only its own size is accepted."""
    data = roster("S1", "S2")
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", data)
        await finished_runs(spr, 1)
        await sftp.truncate("students.csv", len(data))  # restating the size is fine
        message = await refused(sftp.truncate("students.csv", 10))
    assert "only be changed by uploading it" in message
    assert (spr.home() / "students.csv").read_bytes() == data


@pytest.mark.parametrize("path", ["students.csv", "check/students.csv"])
async def test_append_to_students_csv_is_refused_as_a_resume(spr: ServerHandle, path: str) -> None:
    """OpenSSH `reput`: appending to the old file would mix two extracts."""
    data = roster("S1", "S2")
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", data)
        await finished_runs(spr, 1)
        message = await refused(sftp.open(path, "ab"))
    assert message == RESUME_REFUSED
    assert (spr.home() / "students.csv").read_bytes() == data
    await asyncio.wait_for(spr.app.queue.wait_idle(), 10)
    assert len(await spr.app.store.list_runs(SPR)) == 1


async def test_resuming_a_part_file_with_append_still_works(spr: ServerHandle) -> None:
    data = roster("S1", "S2", "S3")
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv.part", data[:40])
        async with sftp.open("students.csv.part", "ab") as handle:
            await handle.write(data[40:])
        await sftp.rename("students.csv.part", "students.csv")
    (run,) = await finished_runs(spr, 1)
    assert result_of(spr, run)["file"] == facts(data)


async def test_handles_of_another_session_cannot_change_a_renamed_upload(
    spr: ServerHandle,
) -> None:
    """Issue 9's attack: write handles opened on students.csv.part before and while its
    RENAME completes must not reach the acknowledged bytes (the spool entry shares
    the inode with students.csv)."""
    data = roster("S1", "S2", "S3")
    async with (
        spr.connect() as first,
        first.start_sftp_client() as uploader,
        spr.connect() as second,
        second.start_sftp_client() as attacker,
    ):
        await put_bytes(uploader, "students.csv.part", data)
        before = [await attacker.open("students.csv.part", "r+b") for _ in range(4)]

        async def open_during() -> list[Any]:
            opened = []
            for _ in range(4):
                # Refused while renaming, or gone after it: both are fine.
                with contextlib.suppress(asyncssh.SFTPError):
                    opened.append(await attacker.open("students.csv.part", "r+b"))
            return opened

        during, _ = await asyncio.gather(
            open_during(), uploader.rename("students.csv.part", "students.csv")
        )
        for handle in [*before, *during]:
            await refused(handle.write(b"EVIL", 0))
            await refused(handle.truncate(1))
            await handle.close()
    (run,) = await finished_runs(spr, 1)
    result = result_of(spr, run)
    assert (result["state"], result["added"]) == ("done", 3)
    assert result["file"] == facts(data)
    assert (spr.home() / "students.csv").read_bytes() == data
