"""Listing results/ while result files come and go never fails (bench/load.py found it did)."""

from __future__ import annotations

import threading
from typing import Any

from tests.conftest import SPR, ServerHandle


async def test_listing_survives_files_vanishing_mid_listing(start_server: Any) -> None:
    server: ServerHandle = await start_server()
    results = server.home() / "results"
    for n in range(50):  # a folder of fetched results, as districts keep them
        (results / f"20260101-000000-{n}.result.json").write_text("{}")
    (results / ".eams-tmp-x.result.json.1").write_text("{}")  # a result being written
    stop = threading.Event()

    def churn() -> None:  # result files appearing and disappearing, as runs finish
        n = 0
        while not stop.is_set():
            path = results / f"20260102-000000-{n % 20}.result.txt"
            path.write_text("x")
            path.unlink()
            n += 1

    writer = threading.Thread(target=churn)
    writer.start()
    try:
        async with server.connect() as conn, conn.start_sftp_client() as sftp:
            for _ in range(300):
                names = await sftp.listdir("/results")
                assert ".eams-tmp-x.result.json.1" not in names  # hidden, never listed
                assert len([n for n in names if n.startswith("20260101")]) == 50
    finally:
        stop.set()
        writer.join()


async def test_every_file_is_shown_as_the_districts_and_no_server_account_shows(
    start_server: Any,
) -> None:
    """Listings and stats name the district as owner and group (no passwd lookups on the
    event loop, and the server's own account names stay private)."""
    server: ServerHandle = await start_server()
    (server.home() / "results" / "r.result.txt").write_text("done\n")
    district = SPR
    async with server.connect() as conn, conn.start_sftp_client() as sftp:
        entries = {e.filename: e for e in await sftp.readdir("/results")}
        longname = str(entries["r.result.txt"].longname)
        assert f" {district} {district} " in longname, longname
        assert longname.startswith("-") and " 5 " in longname  # a file of 5 bytes
        assert entries["."].longname.startswith("d")
        for attrs in (await sftp.stat("/results/r.result.txt"), await sftp.lstat("/results")):
            assert attrs.permissions is not None and attrs.size is not None
        async with sftp.open("/results/r.result.txt") as handle:
            assert (await handle.stat()).size == 5
    listed = longname + "".join(str(e.longname) for e in entries.values())
    assert "root" not in listed
