"""Full-roster sync (SPEC §5.6): the file is the whole roster, so an active student on
no row of it is deactivated and gives its license back, before the rows apply.

Driven through `eams process` (the path an upload takes) and through the Runner
with the digest scan forced, against a real SQLite file in a temp folder.
"""

from __future__ import annotations

import asyncio
import csv
import email
import email.policy
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from processing.config import Config, ConfigError
from processing.passwords import StudentPasswords
from processing.runner import Runner
from processing.store import Store, database_path
from tests.conftest import (
    SPR,
    add_toml_keys,
    assert_invariant,
    csv_text,
    eams,
    eams_json,
    finished_runs,
    make_config,
    put_bytes,
    run_bytes,
    student,
    write_csv,
)

ENT, REG = "ENT-SPR-2026", "REG-SPR-1001"


def full_config(tmp_path: Path, **overrides: Any) -> Path:
    path = make_config(tmp_path, **overrides)
    return add_toml_keys(path, f"districts.{SPR}", sync="full")


def process(cfg: Path, rows: list[list[str]], *extra: str, name: str = "s.csv") -> dict[str, Any]:
    """`eams process` a file of these rows; the run's result.json."""
    upload = write_csv(cfg.parent / name, rows)
    code, _, err = eams("process", "--district", SPR, *extra, str(upload), config=cfg)
    assert code in (0, 1), err
    runs = eams_json("runs", "--district", SPR, config=cfg)
    result: dict[str, Any] = runs[0]
    return result


def missing_csv(cfg: Path, run_id: str) -> list[dict[str, str]]:
    path = cfg.parent / "homes" / SPR / "results" / f"{run_id}.missing.csv"
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def statuses(cfg: Path) -> dict[str, tuple[str, str]]:
    return {
        s["student_id"]: (s["status"], s["order"])
        for s in eams_json("students", "--district", SPR, config=cfg)
    }


def licenses(cfg: Path) -> dict[str, int]:
    return {o["order"]: o["used"] for o in eams_json("licenses", "--district", SPR, config=cfg)}


ROSTER = [student(f"S{n}") for n in range(1, 6)]


def test_sync_is_delta_by_default_and_checked_with_its_key_path(tmp_path: Path) -> None:
    assert Config.from_toml(make_config(tmp_path)).district(SPR).sync == "delta"
    cfg = add_toml_keys(make_config(tmp_path), f"districts.{SPR}", sync="mirror")
    with pytest.raises(ConfigError) as caught:
        Config.from_toml(cfg)
    assert caught.value.problems[0].startswith(f'districts.{SPR}.sync: must be "delta"')


def test_a_student_absent_from_the_file_is_deactivated_and_gives_the_license_back(
    tmp_path: Path,
) -> None:
    cfg = full_config(tmp_path)
    process(cfg, ROSTER)
    result = process(cfg, [r for r in ROSTER if r[1] != "S3"], name="t.csv")
    assert (result["sync"], result["missing"], result["deactivated"]) == ("full", 1, 1)
    assert result["rows"] == 4 == result["unchanged"]  # missing students are not rows
    assert result["licenses"]["used"] == 4
    assert statuses(cfg)["S3"] == ("deactivated", ENT)
    (row,) = missing_csv(cfg, result["run_id"])
    assert row == {
        "School Code": "0101",
        "Student ID": "S3",
        "First Name": "Ana",
        "Last Name": "Lee",
        "Grade": "5",
        "Username": "us3",
        "Class Name": "Room 1",
    }
    text = (cfg.parent / "homes" / SPR / "results" / f"{result['run_id']}.result.txt").read_text()
    assert "Missing:      1 (full sync" in text and f"{result['run_id']}.missing.csv" in text
    assert_invariant(cfg)


def test_the_licenses_freed_go_to_new_students_of_the_same_file(tmp_path: Path) -> None:
    cfg = full_config(tmp_path, licenses=5)
    process(cfg, ROSTER)
    # S5 left and S6 arrived: with every license in use, S6 takes S5's.
    result = process(cfg, [*ROSTER[:4], student("S6")], name="t.csv")
    assert (result["added"], result["missing"], result["errors"]) == (1, 1, 0)
    assert statuses(cfg)["S6"] == ("active", ENT) and statuses(cfg)["S5"][0] == "deactivated"
    assert_invariant(cfg)


def test_a_rejected_row_still_counts_as_present(tmp_path: Path) -> None:
    """A typo in a row must not deactivate its student."""
    cfg = full_config(tmp_path)
    process(cfg, ROSTER)
    typo = [*ROSTER[:2], student("S3", grade="55"), *ROSTER[3:]]
    result = process(cfg, typo, name="t.csv")
    assert (result["errors"], result["missing"]) == (1, 0)
    assert statuses(cfg)["S3"][0] == "active"


def test_a_student_on_a_regular_order_stays_on_it(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    process(cfg, [student("R1"), student("R2")], "--order", REG)
    process(cfg, ROSTER, name="t.csv")  # R1 and R2 are not in the district's roster any more
    assert statuses(cfg)["R1"] == ("deactivated", REG)
    assert licenses(cfg) == {ENT: 5, REG: 0}
    assert_invariant(cfg)


def test_an_order_load_never_deactivates_missing_students(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    process(cfg, ROSTER)
    result = process(cfg, [student("R1")], "--order", REG, name="t.csv")
    assert (result["sync"], result["missing"], result["deactivated"]) == ("delta", 0, 0)
    assert all(state == "active" for state, _ in statuses(cfg).values())


def test_delta_districts_keep_absent_students(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    process(cfg, ROSTER)
    result = process(cfg, ROSTER[:1], name="t.csv")
    assert (result["sync"], result["missing"], result["deactivated"]) == ("delta", 0, 0)


def test_a_cut_short_extract_is_held_with_who_would_go(tmp_path: Path) -> None:
    cfg = full_config(tmp_path, licenses=200)
    roster = [student(f"S{n:03d}") for n in range(100)]
    process(cfg, roster)
    held = process(cfg, roster[:40], name="t.csv")  # 60 of 100 would go: over 25%
    assert (held["state"], held["missing"], held["deactivated"]) == ("held", 60, 60)
    assert "deactivate 60 of the district's 100 active students" in held["held_reason"]
    assert len(missing_csv(cfg, held["run_id"])) == 60
    assert licenses(cfg)[ENT] == 100  # nothing applied
    # Approved later, the run is decided again against the state at approval time.
    process(cfg, [*roster, student("S100")], name="u.csv")  # a full roster arrives meanwhile
    code, _, err = eams("approve", held["run_id"], config=cfg)
    assert code == 0, err
    approved = eams_json("runs", "--district", SPR, config=cfg)
    done = next(r for r in approved if r["run_id"] == held["run_id"])
    assert (done["state"], done["missing"]) == ("done", 61)  # S100 is absent too now
    assert licenses(cfg)[ENT] == 40
    assert_invariant(cfg)


def test_a_file_without_rows_is_always_held_in_full_sync(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    process(cfg, ROSTER[:2])  # a district of two: far under the guard's 25 students
    held = process(cfg, [], name="t.csv")
    assert (held["state"], held["rows"], held["missing"]) == ("held", 0, 2)
    assert "no student rows" in held["held_reason"]
    assert statuses(cfg)["S1"][0] == "active"


async def test_a_check_dry_run_reports_missing_and_changes_nothing(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    await asyncio.to_thread(process, cfg, ROSTER)  # the CLI runs its own event loop
    runner, store = await _runner(cfg)
    try:
        outcome = await run_bytes(runner, csv_text(ROSTER[:4]).encode(), dry_run=True)
    finally:
        await store.close()
    assert (outcome.result.dry_run, outcome.result.missing) == (True, 1)
    assert [s.student_id for s in outcome.missing] == ["S5"]
    assert len(missing_csv(cfg, outcome.result.run_id)) == 1
    assert (await asyncio.to_thread(statuses, cfg))["S5"][0] == "active"


async def test_the_digest_scan_path_finds_the_absent_students_too(tmp_path: Path) -> None:
    """A nightly-sized file is scanned by line digests: every line restating its student
    must not hide the students who are on no line at all."""
    cfg = full_config(tmp_path)
    roster = [student(f"S{n:03d}") for n in range(60)]
    for rows, expected_missing in ((roster, 0), (roster[:55], 5), (roster[:55], 0)):
        runner, store = await _runner(cfg)
        runner.scan_min_bytes = 0  # every file takes the scan
        try:
            outcome = await run_bytes(runner, csv_text(rows).encode())
        finally:
            await store.close()
        assert outcome.result.state == "done"
        assert outcome.result.missing == expected_missing
    final = await asyncio.to_thread(statuses, cfg)
    assert sum(1 for state, _ in final.values() if state == "active") == 55
    assert_invariant(cfg)


def test_the_email_counts_the_missing_students(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    process(cfg, ROSTER)
    process(cfg, ROSTER[:4], name="t.csv")
    *_, last = _queued_bodies(cfg)
    assert "missing (not in the file, deactivated): 1" in last


async def _runner(cfg: Path) -> tuple[Runner, Store]:
    config = Config.from_toml(cfg)
    store = await Store.open(database_path(config.server.data))
    await store.sync_config(config)
    return Runner(config, store, StudentPasswords.from_data_dir(config.server.data)), store


def _queued_bodies(cfg: Path) -> list[str]:
    """The text of every queued email, oldest first."""
    with sqlite3.connect(database_path(Config.from_toml(cfg).server.data)) as db:
        rows = db.execute("SELECT message FROM outbox ORDER BY id").fetchall()
    bodies = []
    for (raw,) in rows:
        message = email.message_from_bytes(bytes(raw), policy=email.policy.default)
        part = message.get_body(("plain",))
        assert part is not None
        bodies.append(part.get_content())
    return bodies


def test_json_runs_carry_sync_and_missing(tmp_path: Path) -> None:
    cfg = full_config(tmp_path)
    process(cfg, ROSTER)
    (run,) = eams_json("runs", "--district", SPR, config=cfg)
    assert json.dumps(run)  # plain JSON
    assert (run["sync"], run["missing"]) == ("full", 0)


async def test_a_reload_switches_sync_for_the_next_run(start_server: Any) -> None:
    """SIGHUP (EamsServer.reload) turns a delta district into a full-sync one."""
    handle = await start_server()
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", csv_text(ROSTER).encode())
        await finished_runs(handle, 1)
        add_toml_keys(handle.config_path, f"districts.{SPR}", sync="full")
        assert await handle.app.reload()
        await put_bytes(sftp, "students.csv", csv_text(ROSTER[:4]).encode())
        _, second = await finished_runs(handle, 2)
    assert second.result is not None
    assert (second.result.sync, second.result.missing) == ("full", 1)


def test_a_success_email_links_to_the_run_when_public_url_is_set(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    cfg.write_text(
        cfg.read_text(encoding="utf-8")
        + '\n[web]\nport = 0\npublic_url = "https://eams.example"\n',
        encoding="utf-8",
    )
    result = process(cfg, ROSTER)
    (body,) = _queued_bodies(cfg)
    assert f"https://eams.example/districts/{SPR}/runs/{result['run_id']}" in body
