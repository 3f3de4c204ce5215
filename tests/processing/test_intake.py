"""Acknowledging an upload never waits on the database; the spool file is the durable record."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from attrs import frozen

from processing.config import Config
from processing.model import RunRecord, UploadJob, utc_now
from processing.passwords import StudentPasswords
from processing.run_queue import ProcessingQueue
from processing.runner import Runner
from processing.spool import spool_copy, spool_files
from processing.store import Store, database_path
from tests.conftest import SPR, assert_invariant, eams, make_config, student, write_csv


@frozen
class Env:
    config_path: Path
    config: Config
    store: Store
    runner: Runner
    queue: ProcessingQueue


@contextlib.asynccontextmanager
async def environment(tmp_path: Path) -> AsyncIterator[Env]:
    config_path = make_config(tmp_path)
    config = Config.from_toml(config_path)
    store = await Store.open(database_path(config.server.data))
    await store.sync_config(config)
    runner = Runner(config, store, StudentPasswords.from_data_dir(config.server.data))
    queue = ProcessingQueue(runner, store)
    try:
        yield Env(config_path, config, store, runner, queue)
    finally:
        await queue.stop()
        await store.close()


def spooled_upload(env: Env, tmp_path: Path, name: str, *rows: list[str]) -> UploadJob:
    received = utc_now()
    source = write_csv(tmp_path / name, list(rows))
    path, size = spool_copy(source, env.config.server.data, SPR, tag="upload", received_at=received)
    return UploadJob(SPR, path, size, received, "students.csv")


def runs(env: Env) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(database_path(env.config.server.data))) as db:
        return db.execute("SELECT run_id, state FROM runs ORDER BY seq").fetchall()


async def test_a_close_is_answered_while_another_run_holds_the_database(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        first = spooled_upload(env, tmp_path, "a.csv", student("S1"))
        second = spooled_upload(env, tmp_path, "b.csv", student("S1", "D"))
        # Another writer (a big district's commit) holds SQLite's write lock.
        blocker = sqlite3.connect(database_path(env.config.server.data), timeout=30)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            assert await env.queue.submit(first, wait=0.2) is None
            assert await env.queue.submit(second, wait=0.2) is None
            assert time.monotonic() - started < 2  # answered, not stuck behind the lock
        finally:
            blocker.rollback()
            blocker.close()
        await env.queue.wait_idle()
        recorded = runs(env)
        assert [state for _, state in recorded] == ["done", "done"]
        # In arrival order: the second (D) found the student the first created.
        results = [r.result for r in await env.store.list_runs() if r.result is not None]
        by_seq = sorted(results, key=lambda r: r.run_id.rsplit("-", 1)[1])
        assert (by_seq[0].added, by_seq[1].deactivated) == (1, 1)
    assert_invariant(env.config_path)


async def test_an_upload_spooled_just_before_a_crash_is_adopted_once(tmp_path: Path) -> None:
    async with environment(tmp_path) as env:
        # Spooled (and acknowledged) but the crash came before its run record.
        job = spooled_upload(env, tmp_path, "a.csv", student("S1"), student("S2"))
        # Leftovers that must not become runs:
        data = env.config.server.data
        cli = write_csv(tmp_path / "cli.csv", [student("S9")])
        spool_copy(cli, data, SPR)  # an `eams process` that died
        partial = job.spool_path.with_suffix(".partial")  # a copy cut off mid-way
        partial.write_bytes(b"School Code,Stu")

        assert await env.runner.settle_spool() == (1, 2)
        assert await env.runner.settle_spool() == (0, 0)  # nothing twice
        assert [p for _, p in spool_files(data)] == [job.spool_path]
        assert await env.queue.resume() == 1
        await env.queue.wait_idle()
        (record,) = await env.store.list_runs()
        assert record.state == "done" and record.result is not None
        assert record.result.added == 2
        assert record.received_at == job.received_at
        assert spool_files(data) == []  # processed: its spool copy is gone
    assert_invariant(env.config_path)


def test_eams_process_files_are_not_adopted(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    upload = write_csv(tmp_path / "s.csv", [student("S1")])
    assert eams("process", "--district", SPR, "--dry-run", str(upload), config=config)[0] == 0
    assert spool_files(Config.from_toml(config).server.data) == []


@pytest.mark.parametrize("tag", ["upload", "check"])
async def test_adopted_check_uploads_stay_dry_runs(tmp_path: Path, tag: str) -> None:
    async with environment(tmp_path) as env:
        source = write_csv(tmp_path / "c.csv", [student("S1")])
        spool_copy(source, env.config.server.data, SPR, tag=tag, received_at=utc_now())
        assert (await env.runner.settle_spool())[0] == 1
        await env.queue.resume()
        await env.queue.wait_idle()
        (record,) = await env.store.list_runs()
        assert record.dry_run is (tag == "check")
        assert record.source == ("check/students.csv" if tag == "check" else "students.csv")
        assert record.result is not None
        assert record.result.added == 1 and record.result.dry_run is (tag == "check")


class FlakyStore(Store):
    """Fails its first `failures` run records as a full disk or a broken database does."""

    failures = 0

    async def enqueue_run(self, job: UploadJob) -> RunRecord:
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return await super().enqueue_run(job)


async def test_a_record_that_fails_is_acknowledged_once_and_recorded_once(tmp_path: Path) -> None:
    """Issue 9: the error used to reach the client's CLOSE although the file was spooled,
    so the client's retry made two runs, and the failed record waited for a restart."""
    async with environment(tmp_path) as env:
        flaky = await FlakyStore.open(database_path(env.config.server.data))
        assert isinstance(flaky, FlakyStore)
        flaky.failures = 2
        queue = ProcessingQueue(env.runner, flaky)
        try:
            job = spooled_upload(env, tmp_path, "a.csv", student("S1"), student("S2"))
            assert await queue.submit(job) is None  # answered, without an error
            await asyncio.wait_for(queue.wait_idle(), 20)
        finally:
            await queue.stop()
            await flaky.close()
        assert flaky.failures == 0
        (record,) = await env.store.list_runs()
        assert record.state == "done" and record.result is not None
        assert record.result.added == 2
    assert_invariant(env.config_path)
