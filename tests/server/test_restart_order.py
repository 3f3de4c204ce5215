"""After a crash, what was acknowledged before it runs before anything uploaded after.

bench/crash.py found that the server used to open its port before it had
queued the runs left from before the crash: an upload in that gap overtook
them (a D file applied before the A file that created the students).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processing.config import Config
from processing.model import UploadJob, utc_now
from processing.spool import spool_copy
from processing.store import Store, database_path
from tests.conftest import SPR, ServerHandle, csv_text, server_config, student, write_csv


async def seed_left_over_work(config: Config, tmp_path: Path) -> None:
    """A queued run record, and a spooled upload whose record the crash prevented."""
    data = config.server.data
    store = await Store.open(database_path(data))
    try:
        await store.sync_config(config)
        queued = write_csv(tmp_path / "queued.csv", [student("S4")])
        path, size = spool_copy(queued, data, SPR, tag="upload", received_at=utc_now())
        await store.enqueue_run(UploadJob(SPR, path, size, utc_now(), "students.csv"))
        orphan = write_csv(tmp_path / "orphan.csv", [student(f"S{n}") for n in (1, 2, 3)])
        spool_copy(orphan, data, SPR, tag="upload", received_at=utc_now())
    finally:
        await store.close()


async def test_an_upload_right_after_a_restart_waits_for_the_older_runs(
    tmp_path: Path, start_server: Any, client_key: tuple[Path, str]
) -> None:
    await seed_left_over_work(Config.from_toml(server_config(tmp_path, client_key[1])), tmp_path)
    server: ServerHandle = await start_server()
    # The first thing after the port opens: every student of both older files, as D.
    deactivate = csv_text([student(f"S{n}", "D") for n in (1, 2, 3, 4)]).encode()
    async with (
        server.connect() as conn,
        conn.start_sftp_client() as sftp,
        sftp.open("/students.csv", "wb") as handle,
    ):
        await handle.write(deactivate)
    await server.app.queue.wait_idle()

    store: Store = server.app.store
    results = sorted(
        (r.result for r in await store.list_runs(SPR) if r.result),
        key=lambda r: int(r.run_id.rsplit("-", 1)[1]),
    )
    assert [(r.added, r.deactivated, r.errors) for r in results] == [
        (1, 0, 0),  # the queued run (S4)
        (3, 0, 0),  # the adopted spool file (S1-S3)
        (0, 4, 0),  # the new upload found all four
    ]
    assert await store.invariant_violations() == []
