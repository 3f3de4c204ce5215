"""Names, EXCL, read-only opens and links over SFTP (SPEC §3.2 "names", issue 10).

Observed: `students.csv/` was accepted as `students.csv`; a name carrying a
newline and a terminal escape (`students.csv.part\\n... WARNING eams.server:
banned 10.6.6.6\\x1b[2J`) was accepted and later logged raw; EXCL on an
existing temporary upload was ignored; APPEND-only and CREAT-only opens got
write handles; removing a result that an operator left as a link to
../students.csv deleted students.csv. Real server on 127.0.0.1, asyncssh client.
"""

from __future__ import annotations

import logging
import os

import asyncssh
import pytest

from server import jail
from server.quotas import REFUSALS_LOGGED_PER_SESSION
from server.sftp import READ_ONLY
from tests.conftest import (
    ServerHandle,
    csv_text,
    finished_runs,
    put_bytes,
    refused,
    student,
    wait_for,
)


def roster(*ids: str) -> bytes:
    return csv_text([student(i) for i in ids]).encode()


# ---- 4. names, EXCL, read-only opens, links --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("students.csv/", jail.TRAILING_SLASH),
        ("check/students.csv/", jail.TRAILING_SLASH),
        ("students.csv/.", jail.TRAILING_DOT_OR_SPACE),
        ("students.csv.", jail.TRAILING_DOT_OR_SPACE),
        ("students.csv ", jail.TRAILING_DOT_OR_SPACE),
        ("students.csv.part ", jail.TRAILING_DOT_OR_SPACE),
        ("students.csv.part\r", jail.CONTROL_CHARACTERS),
        ("students\u0085.csv.part", jail.CONTROL_CHARACTERS),
    ],
)
async def test_names_that_would_be_taken_as_another_name_are_refused(
    spr: ServerHandle, name: str, message: str
) -> None:
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", roster("S1"))
        assert await refused(put_bytes(sftp, name, roster("S1", "S2"))) == message
        assert await refused(sftp.remove(name)) == message
        assert await refused(sftp.rename("students.csv", name)) == message
        assert await refused(sftp.truncate(name, 0)) == message
    await finished_runs(spr, 1)
    assert (spr.home() / "students.csv").read_bytes() == roster("S1")
    assert sorted(p.name for p in spr.home().iterdir()) == [
        "check",
        "results",
        "students.csv",
        "students_template.csv",
    ]


async def test_a_forged_log_line_in_a_name_is_refused_and_logged_escaped(
    spr: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    name = "students.csv.part\n2026-03-01 WARNING eams.server: banned 10.6.6.6\x1b[2J"
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        assert await refused(put_bytes(sftp, name, b"x")) == jail.CONTROL_CHARACTERS
        assert await refused(sftp.stat(name)) == jail.CONTROL_CHARACTERS
    assert not [p for p in spr.home().iterdir() if p.name.startswith("students.csv.part")]
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("eams")]
    assert any("banned 10.6.6.6" in line and "\\x1b" in line for line in ours)
    assert not [line for line in ours if "\n" in line or "\x1b" in line]


async def test_excl_on_an_existing_file_is_refused(spr: ServerHandle) -> None:
    exclusive = asyncssh.FXF_WRITE | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv.part", b"first")
        message = await refused(sftp.open("students.csv.part", exclusive))
        assert "students.csv.part already exists" in message
        async with sftp.open("new.part", exclusive, encoding=None) as created:  # new: created
            await created.write(b"new")
        await put_bytes(sftp, "students.csv", roster("S1"))
        await finished_runs(spr, 1)
        assert "already exists" in await refused(sftp.open("students.csv", exclusive))
        read_exclusive = asyncssh.FXF_READ | asyncssh.FXF_CREAT | asyncssh.FXF_EXCL
        assert "already exists" in await refused(sftp.open("students.csv", read_exclusive))
    assert (spr.home() / "students.csv.part").read_bytes() == b"first"
    assert (spr.home() / "new.part").read_bytes() == b"new"


@pytest.mark.parametrize(
    "pflags",
    [asyncssh.FXF_APPEND, asyncssh.FXF_CREAT, asyncssh.FXF_TRUNC, asyncssh.FXF_READ],
    ids=["append", "creat", "trunc", "read"],
)
async def test_an_open_without_write_gets_no_write_handle(spr: ServerHandle, pflags: int) -> None:
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv.part", b"kept as it was")
        async with sftp.open("students.csv.part", pflags, encoding=None) as handle:
            assert await refused(handle.write(b"EVIL", 0)) == READ_ONLY
            assert await refused(handle.truncate(0)) == "this file is read-only"
        await refused(sftp.open("created.part", pflags), asyncssh.SFTPNoSuchFile)
    assert (spr.home() / "students.csv.part").read_bytes() == b"kept as it was"
    assert not (spr.home() / "created.part").exists()


async def test_removing_a_link_removes_the_link_never_its_target(spr: ServerHandle) -> None:
    """An operator left results/old.result.txt -> ../students.csv; the district deletes
    its old results: students.csv must survive."""
    home = spr.home()
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", roster("S1"))
        await finished_runs(spr, 1)
        os.symlink("../students.csv", home / "results" / "old.result.txt")
        os.symlink("students_template.csv", home / "template.part")
        await sftp.remove("results/old.result.txt")
        await sftp.remove("template.part")
    assert not (home / "results" / "old.result.txt").is_symlink()
    assert not (home / "template.part").is_symlink()
    assert (home / "students.csv").read_bytes() == roster("S1")
    assert (home / "students_template.csv").exists()


async def test_refusals_are_logged_at_most_so_often_per_session(
    spr: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="eams.sftp")
    async with spr.connect() as conn, conn.start_sftp_client() as sftp:
        for n in range(3 * REFUSALS_LOGGED_PER_SESSION):
            await refused(sftp.stat(f"x\x07{n}"))
    await wait_for(lambda: any("ended after" in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if r.name == "eams.sftp"]
    assert len(lines) == REFUSALS_LOGGED_PER_SESSION + 2
    assert f"ended after {3 * REFUSALS_LOGGED_PER_SESSION} refused requests" in lines[-1]
