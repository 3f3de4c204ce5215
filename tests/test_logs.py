"""Logs (SPEC §9): JSON lines with district, run_id and remote where the code knows them;
no password, no student data, in either format."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.log_format import TEXT_FORMAT, JsonFormatter
from tests.conftest import SPR, finished_runs, student

NAMES = [("Zephyrine", "Quillfeather"), ("Bartholomew", "Xylocarp"), ("Ondine", "Vexworth")]
PASSWORDS = ["Secr3t-Umbrella-77", "Tr0ub4dor&3-Horse", "Lantern!Moss-9981"]


@pytest.fixture
def captured() -> Iterator[dict[str, io.StringIO]]:
    """Every log line of the test in both formats."""
    streams = {"json": io.StringIO(), "text": io.StringIO()}
    handlers = []
    for kind, stream in streams.items():
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter() if kind == "json" else logging.Formatter(TEXT_FORMAT))
        handlers.append(handler)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    for handler in handlers:
        root.addHandler(handler)
    try:
        yield streams
    finally:
        for handler in handlers:
            root.removeHandler(handler)
        root.setLevel(level)


async def test_json_lines_carry_context_and_no_student_data(
    start_server: Any, captured: dict[str, io.StringIO]
) -> None:
    handle = await start_server()
    rows = [
        student(f"S{n}", first=first, last=last, password=password)
        for n, ((first, last), password) in enumerate(zip(NAMES, PASSWORDS, strict=True))
    ]
    rows.append(student("S9", grade="99", first="Thaddeus", last="Oakenshield"))  # rejected
    from tests.conftest import csv_text, put_bytes

    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        await put_bytes(sftp, "students.csv", csv_text(rows).encode())
        (run,) = await finished_runs(handle, 1)
    import asyncssh

    with pytest.raises(asyncssh.PermissionDenied):
        async with handle.connect(password="wrong"):
            pass
    await handle.app.stop()
    lines = captured["json"].getvalue().splitlines()
    objects = [json.loads(line) for line in lines]
    assert objects and all({"ts", "level", "logger", "message"} <= set(o) for o in objects)
    run_lines = [o for o in objects if o.get("run_id") == run.run_id]
    assert run_lines and all(o["district"] == SPR for o in run_lines)
    assert any(o.get("remote") == "127.0.0.1" and o.get("district") == SPR for o in objects)
    everything = captured["json"].getvalue() + captured["text"].getvalue()
    for secret in [*PASSWORDS, *(n for pair in NAMES for n in pair), "Thaddeus", "Oakenshield"]:
        assert secret not in everything, secret


def test_eams_serve_writes_json_lines_when_asked(tmp_path: Path) -> None:
    """The real command with log_format = "json": every stderr line is one JSON object."""
    from tests.conftest import add_toml_keys, make_config

    config = add_toml_keys(make_config(tmp_path), "server", log_format="json", port=0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # the listening line comes within seconds; communicate() below is bounded
    assert proc.stderr is not None
    try:
        first = proc.stderr.readline()
        while first and "listening" not in first:
            json.loads(first)
            first = proc.stderr.readline()
        line = json.loads(first)
        assert line["level"] == "INFO" and "listening" in line["message"]
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=30)
    for later in rest.splitlines():
        json.loads(later)
