"""Two sessions of one district uploading at once: each upload is processed as sent.

bench/load.py found a run that processed the other session's file: the spool
copy was taken from students.csv after the rename, when the other session's
rename could already have replaced it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from tests.conftest import SPR, ServerHandle, csv_text, student


def roster(rows: int) -> bytes:
    return csv_text([student(f"S{n}", "X") for n in range(rows)]).encode()


async def test_each_upload_is_processed_with_its_own_bytes(spr: ServerHandle) -> None:
    sizes: dict[str, list[int]] = {"direct": [], "filepart": []}

    async def session(kind: str, counts: list[int]) -> None:
        async with spr.connect() as conn, conn.start_sftp_client() as sftp:
            for rows in counts:
                name = "/students.csv" if kind == "direct" else "/students.csv.filepart"
                async with sftp.open(name, "wb") as handle:
                    await handle.write(roster(rows))
                if kind == "filepart":
                    await sftp.rename(name, "/students.csv")
                sizes[kind].append(rows)

    await asyncio.gather(
        session("direct", [2 * n + 1 for n in range(15)]),  # odd row counts
        session("filepart", [2 * n + 2 for n in range(15)]),  # even row counts
    )
    app: Any = spr.app
    await app.queue.wait_idle()
    processed = Counter(
        r.result.rows for r in await app.store.list_runs(SPR) if r.result is not None
    )
    assert processed == Counter(sizes["direct"] + sizes["filepart"])
