"""`eams serve` start-up edges, `eams fingerprints`, and the housekeeping sweep."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from server.uploads import STAGING_PREFIX, sweep
from tests.conftest import eams, make_config

DAY = 86400


def test_a_port_in_use_is_a_clear_one_line_failure(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "another program is listening there" in done.stderr


def test_fingerprints_generate_keys_once_with_private_modes(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    code, first, err = eams("fingerprints", config=config)
    assert code == 0, err
    lines = first.splitlines()
    assert [line.split()[0] for line in lines] == ["ssh-ed25519", "ssh-rsa"]
    assert all(line.split()[1].startswith("SHA256:") for line in lines)
    for name in ("ssh_host_ed25519_key", "ssh_host_rsa_key"):
        mode = stat.S_IMODE((tmp_path / "host_keys" / name).stat().st_mode)
        assert mode == 0o600
    assert eams("fingerprints", config=config)[1] == first  # reused, not regenerated


def test_sweep_removes_old_temp_files_and_expired_results_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "check").mkdir(parents=True)
    (home / "results").mkdir()
    now = time.time()

    def file(path: Path, age_days: float) -> Path:
        path.write_text("x")
        os.utime(path, (now - age_days * DAY, now - age_days * DAY))
        return path

    old_part = file(home / "students.csv.filepart", 2)
    old_tmp = file(home / "check" / "upload.tmp", 1.5)
    old_staging = file(home / f"{STAGING_PREFIX}abc", 3)
    fresh_part = file(home / "students.csv.filepart.fresh.part", 0.5)
    upload = file(home / "students.csv", 400)  # the last upload stays, however old
    old_result = file(home / "results" / "20260101-000000-1.result.json", 91)
    recent_result = file(home / "results" / "20261101-000000-2.result.json", 30)

    removed = set(sweep(home, results_days=90, now=now))
    assert removed == {old_part, old_tmp, old_staging, old_result}
    assert fresh_part.exists() and upload.exists() and recent_result.exists()
    ancient = file(home / "results" / "20250101-000000-3.result.json", 400)
    assert sweep(home, results_days=0, now=now) == []  # 0 keeps results forever
    assert ancient.exists()
