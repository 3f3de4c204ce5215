"""A database made by an older eAMS is upgraded in place by Store.open, keeping its data."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from processing.config import Config
from processing.store import MIGRATIONS, Store, database_path
from processing.store.schema import statements
from tests.conftest import ORDERS, SPR, eams, eams_json, make_config, write_csv


def make_version_4_database(path: Path) -> None:
    """The schema as eAMS left it before line digests, with one student in it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (4)")
        for script in MIGRATIONS[:4]:
            for statement in statements(script):
                db.execute(statement)
        db.execute("INSERT INTO districts (id, name) VALUES (?, 'Springfield')", (SPR,))
        db.execute(
            "INSERT INTO orders (district_id, id, kind, licenses, used) "
            "VALUES (?, ?, 'enterprise', 100, 1)",
            (SPR, ORDERS[SPR][0]),
        )
        db.execute(
            "INSERT INTO students (district_id, student_id, school_code, first_name, last_name, "
            "grade, username, username_key, class_name, active, order_id, updated_at) "
            "VALUES (?, 'S1', '0101', 'Ana', 'Lee', '5', 'ana', 'ana', 'Room 1', 1, ?, "
            "'2026-01-01T00:00:00Z')",
            (SPR, ORDERS[SPR][0]),
        )


async def opened(path: Path) -> tuple[list[tuple[int]], list[tuple[str, bytes | None]]]:
    store = await Store.open(path)
    try:
        version = await store.db.execute_fetchall("SELECT version FROM schema_version")
        rows = await store.db.execute_fetchall("SELECT student_id, line_digest FROM students")
        return [tuple(r) for r in version], [tuple(r) for r in rows]
    finally:
        await store.close()


def test_a_version_4_database_gains_line_digests_and_keeps_its_students(tmp_path: Path) -> None:
    config_path = make_config(tmp_path)
    path = database_path(Config.from_toml(config_path).server.data)
    make_version_4_database(path)

    assert asyncio.run(opened(path)) == ([(len(MIGRATIONS),)], [("S1", None)])

    # The old student restated (blank password keeps the stored one): unchanged, and
    # the line's digest is recorded for the next run.
    upload = write_csv(
        tmp_path / "students.csv", [["0101", "S1", "Ana", "Lee", "5", "ana", "", "Room 1", "A"]]
    )
    code, _, err = eams("process", "--district", SPR, str(upload), config=config_path)
    assert code == 0, err
    runs = eams_json("runs", "--district", SPR, "--json", config=config_path)
    assert (runs[0]["unchanged"], runs[0]["state"]) == (1, "done"), runs
    with sqlite3.connect(path) as db:
        (digest,) = db.execute("SELECT line_digest FROM students").fetchone()
    assert isinstance(digest, bytes) and len(digest) == 16
