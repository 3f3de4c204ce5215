"""A crash between a run's commit and its result files: the files are written at start."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from processing.config import Config
from processing.passwords import StudentPasswords
from processing.runner import Runner
from processing.store import Store
from tests.conftest import db_path, eams, eams_json, make_config, write_csv


async def rewrite(config: Config) -> tuple[int, int]:
    store = await Store.open(config.server.data / "eams.sqlite3")
    try:
        runner = Runner(config, store, StudentPasswords.from_data_dir(config.server.data))
        return await runner.rewrite_missing_results(), await runner.rewrite_missing_results()
    finally:
        await store.close()


def test_missing_result_files_are_rewritten_from_the_database(tmp_path: Path) -> None:
    config_path = make_config(tmp_path)
    upload = write_csv(
        tmp_path / "students.csv",
        [
            ["0101", "S1", "Ana", "Lee", "3", "alee", "pw-ana-1", "", "A"],
            ["0101", "S2", "Bo", "Kim", "3", "bkim", "pw-bo-22", "", "D"],  # not found
        ],
    )
    assert eams("process", "--district", "springfield", str(upload), config=config_path)[0] == 0
    results = tmp_path / "homes" / "springfield" / "results"
    before = {p.name: p.read_text(encoding="utf-8") for p in results.iterdir()}
    assert len(before) == 3  # result.json, result.txt, errors.csv
    # A district deleting its result files is its own business: they stay deleted.
    for path in results.iterdir():
        path.unlink()
    assert asyncio.run(rewrite(Config.from_toml(config_path))) == (0, 0)
    assert list(results.iterdir()) == []

    # A crash right after the commit: the run is recorded, its files never written.
    with sqlite3.connect(db_path(config_path)) as db:
        db.execute("UPDATE runs SET results_written = 0")

    # once, and nothing the second time
    assert asyncio.run(rewrite(Config.from_toml(config_path))) == (1, 0)

    after = {p.name: p.read_text(encoding="utf-8") for p in results.iterdir()}
    assert after == before
    run = json.loads(next(v for k, v in after.items() if k.endswith(".json")))
    assert run["added"] == 1 and run["errors"] == 1
    assert "pw-ana-1" not in "".join(after.values())


def test_runs_are_listed_newest_first_even_past_nine(tmp_path: Path) -> None:
    config_path = make_config(tmp_path)
    upload = write_csv(tmp_path / "students.csv", [])
    for _ in range(11):
        assert eams("process", "--district", "springfield", str(upload), config=config_path)[0] == 0
    seqs = [int(r["run_id"].rsplit("-", 1)[1]) for r in eams_json("runs", config=config_path)]
    assert seqs == sorted(seqs, reverse=True) and seqs[0] == 11
