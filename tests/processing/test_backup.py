"""`eams backup PATH`: an online copy that restores into a fresh data folder."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from tests.conftest import assert_invariant, eams, eams_json, make_config, student, write_csv


def rows(n: int, status: str = "A") -> list[list[str]]:
    return [
        student(
            f"S{i}",
            status,
            last=f"Lee{i}",
            grade="3",
            username=f"user{i}",
            password=f"pw-{i}-secret",
        )
        for i in range(n)
    ]


def test_backup_restores_students_licenses_and_passwords(tmp_path: Path) -> None:
    (tmp_path / "live").mkdir()
    (tmp_path / "restored").mkdir()
    config = make_config(tmp_path / "live")
    upload = write_csv(
        tmp_path / "students.csv",
        [*rows(30), ["0102", "X1", "Bo", "Kim", "4", "bkim", "pw-x1-secret", "", "X"]],
    )
    assert eams("process", "--district", "springfield", str(upload), config=config)[0] == 0

    target = tmp_path / "backup"
    code, out, err = eams("backup", str(target), config=config)
    assert code == 0, err
    assert (target / "eams.sqlite3").exists() and (target / "secret.key").exists()
    assert stat.S_IMODE((target / "secret.key").stat().st_mode) == 0o600

    # Restore into a fresh data folder of a second installation with the same config.
    restored = make_config(tmp_path / "restored")
    data = tmp_path / "restored" / "data"
    data.mkdir()
    shutil.copy(target / "eams.sqlite3", data / "eams.sqlite3")
    shutil.copy(target / "secret.key", data / "secret.key")

    for listing in ("students", "licenses"):
        live = eams_json(listing, "--district", "springfield", config=config)
        again = eams_json(listing, "--district", "springfield", config=restored)
        assert again == live
    assert len(eams_json("students", "--district", "springfield", config=restored)) == 31
    assert_invariant(restored)

    # The key came along: the same file again is all unchanged (passwords compare equal).
    # (the X row is STUDENT_EXISTS now; the other 30 are unchanged)
    code, out, _ = eams("process", "--district", "springfield", str(upload), config=restored)
    assert code == 0
    assert "Unchanged:    30" in out and "Errors:       1" in out


def test_backup_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    target = tmp_path / "full"
    target.mkdir()
    (target / "something").write_text("x")
    code, _, err = eams("backup", str(target), config=config)
    assert code == 2 and "not empty" in err
