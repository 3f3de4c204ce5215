"""Big runs in a worker process: same results, same database, same order as in-process."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from processing.config import Config
from processing.model import UploadJob, utc_now
from processing.passwords import StudentPasswords
from processing.run_executor import RunExecutor
from processing.run_queue import ProcessingQueue
from processing.runner import Runner, RunOutcome
from processing.spool import spool_copy
from processing.store import Store, database_path
from tests.conftest import assert_invariant, make_config, student, wait_for, write_csv


def rows(status: str, n: int = 40) -> list[list[str]]:
    return [
        student(
            f"S{i}",
            status,
            last=f"Lee{i}",
            grade="3",
            username=f"user{i}",
            password=f"pw-{i}-secret",
            class_name="",
        )
        for i in range(n)
    ]


@contextlib.asynccontextmanager
async def environment(
    tmp_path: Path, **config_overrides: Any
) -> AsyncIterator[tuple[Path, Config, Store, Runner]]:
    """A config, its store (synced) and a runner; the store closed at the end."""
    config_path = make_config(tmp_path, **config_overrides)
    config = Config.from_toml(config_path)
    store = await Store.open(database_path(config.server.data))
    try:
        await store.sync_config(config)
        yield (
            config_path,
            config,
            store,
            Runner(config, store, StudentPasswords.from_data_dir(config.server.data)),
        )
    finally:
        await store.close()


async def test_runs_over_the_threshold_run_in_a_worker_process_in_order(tmp_path: Path) -> None:
    config_path = make_config(tmp_path, licenses=100, deactivation_guard=1)
    config = Config.from_toml(config_path)
    data = config.server.data
    store = await Store.open(database_path(data))
    await store.sync_config(config)
    runner = Runner(config, store, StudentPasswords.from_data_dir(data))
    finished: list[RunOutcome] = []
    executor = RunExecutor(runner, big_run_bytes=0)  # every run goes to a worker
    queue = ProcessingQueue(runner, store, execute=executor, on_finished=finished.append)
    try:
        records = []
        for n, status in enumerate(("A", "D")):  # the second must see the first's students
            upload = write_csv(tmp_path / f"upload{n}.csv", rows(status))
            spooled, size = spool_copy(upload, data, "springfield")
            job = UploadJob("springfield", spooled, size, utc_now(), "students.csv")
            record = await queue.submit(job)
            assert record is not None
            records.append(record)
        await queue.wait_idle()
    finally:
        await queue.stop()
        executor.close()
        await store.close()

    assert executor._pool is None  # closed
    assert [o.record.run_id for o in finished] == [r.run_id for r in records]
    first, second = (o.result.to_json() for o in finished)
    assert (first["added"], first["errors"]) == (40, 0)
    assert second["state"] == "done"
    assert (second["updated"], second["deactivated"], second["errors"]) == (40, 40, 0)
    results = tmp_path / "homes" / "springfield" / "results"
    on_disk = json.loads((results / f"{records[1].run_id}.result.json").read_text("utf-8"))
    assert on_disk == second
    assert list((data / "spool" / "springfield").iterdir()) == []  # cleaned by the worker
    assert_invariant(config_path)


async def test_small_runs_go_to_an_idle_worker_while_this_process_is_busy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At 02:00 this process always has a run in progress; the next small runs then go
    to idle worker processes (each its own GIL), and commit exactly as in-process."""
    async with environment(tmp_path, districts=("springfield", "shelbyville")) as env:
        config_path, config, store, runner = env
        await busy_workers_test(tmp_path, config, store, runner, caplog)
    assert_invariant(config_path)


async def busy_workers_test(
    tmp_path: Path,
    config: Config,
    store: Store,
    runner: Runner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = config.server.data
    finished: list[RunOutcome] = []
    executor = RunExecutor(runner, workers=1)  # default threshold: every file here is small
    queue = ProcessingQueue(
        runner, store, parallel=1, execute=executor, on_finished=finished.append
    )
    # A long run is in progress in this process (its slot taken, counted as running here).
    await queue._slots.acquire(0)
    queue._placed(False, +1)
    caplog.set_level(logging.INFO, "eams.workers")
    try:
        for district_id in ("springfield", "shelbyville"):
            upload = write_csv(tmp_path / f"{district_id}.csv", rows("A", 5))
            spooled, size = spool_copy(upload, data, district_id)
            await queue.submit(UploadJob(district_id, spooled, size, utc_now(), "students.csv"))
        # One worker: springfield's run there, then shelbyville's, while the long run
        # here still holds its slot.
        await wait_for(lambda: len(finished) == 2, message="both runs, in the worker")
    finally:
        queue._placed(False, -1)
        queue._slots.release()
        await queue.stop()
        executor.close()
    assert [o.record.district_id for o in finished] == ["springfield", "shelbyville"]
    assert [(o.result.state, o.result.rows) for o in finished] == [("done", 5)] * 2
    sent = [r.getMessage() for r in caplog.records if "goes to a worker" in r.getMessage()]
    assert [m.split()[1] for m in sent] == ["springfield", "shelbyville"]


async def test_a_small_run_alone_stays_in_this_process(tmp_path: Path) -> None:
    async with environment(tmp_path) as (_, config, store, runner):
        finished: list[RunOutcome] = []
        executor = RunExecutor(runner)  # default threshold: 4 MiB
        queue = ProcessingQueue(runner, store, execute=executor, on_finished=finished.append)
        try:
            upload = write_csv(tmp_path / "small.csv", rows("A", 5))
            spooled, size = spool_copy(upload, config.server.data, "springfield")
            await queue.submit(UploadJob("springfield", spooled, size, utc_now(), "students.csv"))
            await queue.wait_idle()
            assert executor._pool is None  # no worker process was started
        finally:
            await queue.stop()
            executor.close()
    assert [o.result.added for o in finished] == [5]
