"""`eams` in a pipe behaves like a Unix tool (issue 9): `eams runs | head -1` prints one
line and exits quietly, with no BrokenPipeError traceback, for every listing command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SPR, eams, student, write_csv

EAMS = [sys.executable, "-m", "server.cli"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def busy_config(config_path: Path, tmp_path: Path) -> Path:
    """A district with a few runs and students, so every listing has lines to print."""
    for n in range(3):
        upload = write_csv(tmp_path / f"s{n}.csv", [student(f"S{n}{i}") for i in range(5)])
        assert eams("process", "--district", SPR, str(upload), config=config_path)[0] == 0
    return config_path


LISTINGS = [
    ["runs"],
    ["runs", "--json"],
    ["students", "--district", SPR],
    ["students", "--district", SPR, "--json"],
    ["licenses", "--district", SPR],
    ["check-config"],
]


@pytest.mark.parametrize("command", LISTINGS, ids=" ".join)
def test_a_closed_pipe_ends_the_command_quietly(busy_config: Path, command: list[str]) -> None:
    """The reader is gone before the first line is written: the write fails (EPIPE)."""
    proc = subprocess.Popen(
        [*EAMS, *command, "--config", str(busy_config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    try:
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.stderr.close()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert err == b""


def test_runs_piped_to_head_prints_one_line(busy_config: Path) -> None:
    command = " ".join([*EAMS, "runs", "--config", str(busy_config)])
    done = subprocess.run(
        ["sh", "-c", f"{command} | head -1"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.stderr == b""
    assert len(done.stdout.decode().splitlines()) == 1
