"""A big file's run has a lane of its own: small districts' runs go on beside it
(processing/run_queue.py, measured in bench/capacity.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from processing.config import Config
from processing.model import RunRecord, UploadJob, utc_now
from processing.passwords import StudentPasswords
from processing.run_queue import ProcessingQueue
from processing.runner import Runner, RunOutcome
from processing.spool import spool_copy
from processing.store import Store, database_path
from tests.conftest import SHE, SPR, assert_invariant, make_config, student, wait_for, write_csv


class GatedExecutor:
    """The executor's seam: files of `big_run_bytes` or more wait for `gate` before
    their (real) run, as a long worker-process run would hold its slot."""

    workers = 1

    def __init__(self, runner: Runner, big_run_bytes: int) -> None:
        self.runner = runner
        self.big_run_bytes = big_run_bytes
        self.gate = asyncio.Event()
        self.started: list[str] = []
        self.finished: list[str] = []

    async def __call__(self, record: RunRecord, *, in_worker: bool | None = None) -> RunOutcome:
        self.started.append(record.district_id)
        if record.spool_path and Path(record.spool_path).stat().st_size >= self.big_run_bytes:
            await self.gate.wait()
        outcome = await self.runner.run(record)
        self.finished.append(record.district_id)
        return outcome


def upload(config: Config, tmp_path: Path, district_id: str, rows: int) -> UploadJob:
    received = utc_now()
    source = write_csv(
        tmp_path / f"{district_id}-{rows}.csv", [student(f"S{n}") for n in range(1, rows + 1)]
    )
    path, size = spool_copy(
        source, config.server.data, district_id, tag="upload", received_at=received
    )
    return UploadJob(district_id, path, size, received, "students.csv")


async def test_a_small_run_finishes_while_a_big_one_holds_its_lane(tmp_path: Path) -> None:
    config_path = make_config(tmp_path, districts=(SPR, SHE), licenses=1000)
    config = Config.from_toml(config_path)
    store = await Store.open(database_path(config.server.data))
    await store.sync_config(config)
    runner = Runner(config, store, StudentPasswords.from_data_dir(config.server.data))
    executor = GatedExecutor(runner, big_run_bytes=4000)
    # One in-process slot: without the big lane, SHE's run would wait for SPR's.
    queue = ProcessingQueue(runner, store, parallel=1, execute=executor)
    try:
        big = upload(config, tmp_path, SPR, 200)  # about 10 KB
        small = upload(config, tmp_path, SHE, 3)
        assert big.size >= executor.big_run_bytes > small.size
        await queue.submit(big)
        await wait_for(lambda: executor.started == [SPR], message="the big run started")
        await queue.submit(small)
        await wait_for(lambda: executor.finished == [SHE], message="the small run finished")
        assert not executor.gate.is_set()  # ... while the big one still held its lane
        executor.gate.set()
        await queue.wait_idle()
        assert executor.finished == [SHE, SPR]
        rows = {r.district_id: r.result.rows if r.result else None for r in await store.list_runs()}
        assert rows == {SPR: 200, SHE: 3}
    finally:
        executor.gate.set()
        await queue.stop()
        await store.close()
    assert_invariant(config_path)
