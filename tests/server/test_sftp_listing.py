"""Listing results/ while result files come and go never fails (bench/load.py found it did)."""

from __future__ import annotations

import threading
from typing import Any

from tests.conftest import ServerHandle


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
