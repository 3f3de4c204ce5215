"""Every real client districts script with uploads `students.csv` byte for byte (SPEC §3.1, §6.2).

A matrix of (client, direction). Each cell starts the real server (`spr`), uploads a
file with the client, waits for its run, uploads a second file over it with the same
client, waits again, and checks after each upload: the run's counts, that result.json's
`file` names exactly the bytes sent (`file.sha256` equals the local file's sha256), and
that `students.csv` in the district's home equals the local file byte for byte.

Why both directions: each client opens, writes, truncates and sets attributes in its
own way. A longer file over a shorter one catches a client whose writes the server
places wrongly; a shorter over a longer one catches an open without TRUNC whose old
tail survives (OpenSSH `scp` 9 opens WRITE|CREAT and sets the size with FSETSTAT).

Clients: OpenSSH `sftp` and `scp`, PuTTY `psftp` and `pscp` (Debian putty-tools; what
Windows districts run), `curl -T sftp://`, `lftp`, paramiko (many SIS scripts), the
asyncssh client, and WinSCP's two upload sequences replayed request by request (as in
test_sftp_e2e.py). A missing binary FAILS its cells, it is not skipped: CI installs
them all (.ci/run), so a skip there would hide a client nobody tests any more.

Every client authenticates with the `client_key` ed25519 key (PuTTY's converted to
.ppk) except the WinSCP replays (password, as WinSCP districts mostly log in), and
every client checks the server's host key against the server's own key files, so
nothing is accepted blindly. Processes are waited for with a deadline; runs are
awaited with conditions (`finished_runs`), never sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from processing.model import RunRecord
from tests.conftest import SPR, ServerHandle, csv_text, finished_runs, student

CLIENT_TIMEOUT = 30.0
LONG_ROWS = 8


def roster(count: int) -> bytes:
    """`count` valid rows; the shorter file is the longer one's first row, unchanged."""
    rows = [student(f"S{n:05d}", first=f"Ann{n}") for n in range(1, count + 1)]
    return csv_text(rows).encode("utf-8")


@dataclass
class Cell:
    """What a client needs to upload to the cell's server."""

    handle: ServerHandle
    key: Path  # ed25519 private key, OpenSSH format
    known_hosts: Path  # the server's host keys, pinned for [127.0.0.1]:port
    work: Path  # the cell's own folder: HOME for PuTTY and lftp, upload files

    @property
    def port(self) -> int:
        return self.handle.port


def require(binary: str, package: str) -> str:
    """The binary's path; a missing one fails (not skips) the cell."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed (Debian package {package}); .ci/run installs it")
    return path


async def run_client(cell: Cell, *argv: str) -> str:
    """Run a client to completion (killed at CLIENT_TIMEOUT); fail on a non-zero exit."""
    env = {**os.environ, "HOME": str(cell.work), "LC_ALL": "C"}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{argv[0]} did not finish within {CLIENT_TIMEOUT} s")
    text = (out + err).decode(errors="replace")
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{text}"
    return text


def host_key_files(handle: ServerHandle) -> list[Path]:
    folder: Path = handle.app.config.server.host_keys
    return sorted(folder.glob("ssh_host_*_key"))


def write_known_hosts(handle: ServerHandle, path: Path) -> Path:
    """An OpenSSH known_hosts file with the server's host keys for [127.0.0.1]:port."""
    lines = []
    for key in host_key_files(handle):
        algorithm, blob = key.with_suffix(".pub").read_text(encoding="ascii").split()[:2]
        lines.append(f"[127.0.0.1]:{handle.port} {algorithm} {blob}")
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def openssh_options(cell: Cell) -> list[str]:
    """No user config, no agent, the test key only, the server's host key pinned."""
    return [
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={cell.known_hosts}",
        "-o",
        "LogLevel=ERROR",
        "-i",
        str(cell.key),
    ]


# ---- the clients: each uploads `local` as students.csv ----------------------------------


async def openssh_sftp(cell: Cell, local: Path) -> None:
    require("sftp", "openssh-client")
    batch = cell.work / "sftp.batch"
    batch.write_text(f'put "{local}" students.csv\n')
    await run_client(
        cell,
        "sftp",
        *openssh_options(cell),
        "-P",
        str(cell.port),
        "-b",
        str(batch),
        "-q",
        f"{SPR}@127.0.0.1",
    )


async def openssh_scp(cell: Cell, local: Path) -> None:
    """scp 9+ speaks SFTP by default (the legacy protocol is refused by the server)."""
    require("scp", "openssh-client")
    await run_client(
        cell,
        "scp",
        *openssh_options(cell),
        "-P",
        str(cell.port),
        "-q",
        str(local),
        f"{SPR}@127.0.0.1:students.csv",
    )


async def putty_options(cell: Cell) -> list[str]:
    """PuTTY wants .ppk keys: convert the test key with puttygen; pin the host keys by
    their SHA256 fingerprints, as the operator sends them (`eams fingerprints`)."""
    require("puttygen", "putty-tools")
    ppk = cell.work / "id_ed25519.ppk"
    if not ppk.exists():
        await run_client(cell, "puttygen", str(cell.key), "-O", "private", "-o", str(ppk))
    options = ["-batch", "-noagent", "-P", str(cell.port), "-i", str(ppk)]
    for path in host_key_files(cell.handle):
        options += ["-hostkey", asyncssh.read_private_key(path).get_fingerprint("sha256")]
    return options


async def putty_psftp(cell: Cell, local: Path) -> None:
    require("psftp", "putty-tools")
    batch = cell.work / "psftp.batch"
    batch.write_text(f'put "{local}" students.csv\n')
    options = await putty_options(cell)
    await run_client(cell, "psftp", *options, "-b", str(batch), f"{SPR}@127.0.0.1")


async def putty_pscp(cell: Cell, local: Path) -> None:
    """pscp with no -sftp/-scp: its default (SFTP, falling back to SCP) as districts run it."""
    require("pscp", "putty-tools")
    options = await putty_options(cell)
    await run_client(cell, "pscp", *options, "-q", str(local), f"{SPR}@127.0.0.1:students.csv")


async def curl_sftp(cell: Cell, local: Path) -> None:
    """libssh2 picks ssh-ed25519 over ssh-rsa: pin that key's SHA256."""
    require("curl", "curl")
    [ed25519] = [p for p in host_key_files(cell.handle) if "ed25519" in p.name]
    fingerprint = asyncssh.read_private_key(ed25519).get_fingerprint("sha256")
    await run_client(
        cell,
        "curl",
        "-s",
        "-S",
        "--max-time",
        str(int(CLIENT_TIMEOUT)),
        "-u",
        f"{SPR}:",
        "--key",
        str(cell.key),
        "--hostpubsha256",
        fingerprint.removeprefix("SHA256:"),
        "-T",
        str(local),
        f"sftp://127.0.0.1:{cell.port}/students.csv",
    )


async def lftp_put(cell: Cell, local: Path) -> None:
    """lftp's SFTP runs over `ssh` (sftp:connect-program): the OpenSSH options apply."""
    require("lftp", "lftp")
    connect = shlex.join(["ssh", "-a", "-x", *openssh_options(cell)])
    script = "; ".join(
        [
            "set cmd:fail-exit yes",
            "set net:max-retries 1",
            "set net:timeout 10",
            "set sftp:auto-confirm no",  # the pinned known_hosts decides, nothing else
            f"set sftp:connect-program {shlex.quote(connect)}",
            f"open -u {SPR}, -p {cell.port} sftp://127.0.0.1",
            f"put {shlex.quote(str(local))} -o students.csv",
        ]
    )
    await run_client(cell, "lftp", "--norc", "-c", script)


async def paramiko_put(cell: Cell, local: Path) -> None:
    """SSHClient.open_sftp().put(), the way SIS scripts use paramiko (blocking: a thread)."""
    import paramiko

    def upload() -> None:
        client = paramiko.SSHClient()
        client.load_host_keys(str(cell.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                "127.0.0.1",
                port=cell.port,
                username=SPR,
                key_filename=str(cell.key),
                look_for_keys=False,
                allow_agent=False,
                timeout=CLIENT_TIMEOUT,
                banner_timeout=CLIENT_TIMEOUT,
                auth_timeout=CLIENT_TIMEOUT,
            )
            with client.open_sftp() as sftp:
                sftp.get_channel().settimeout(CLIENT_TIMEOUT)
                sftp.put(str(local), "students.csv")
        finally:
            client.close()

    await asyncio.wait_for(asyncio.to_thread(upload), CLIENT_TIMEOUT + 5)


async def asyncssh_put(cell: Cell, local: Path) -> None:
    async with (
        cell.handle.connect(
            password=None, client_keys=[str(cell.key)], known_hosts=str(cell.known_hosts)
        ) as conn,
        conn.start_sftp_client() as sftp,
    ):
        await sftp.put(str(local), "students.csv")


async def winscp_small_file(cell: Cell, local: Path) -> None:
    """WinSCP under 100 KB: OPEN students.csv (TRUNC), WRITE, then CLOSE and a SETSTAT of
    the time sent together, before the CLOSE is answered."""
    mtime = 1_600_000_000
    async with (
        cell.handle.connect(known_hosts=str(cell.known_hosts)) as conn,
        conn.start_sftp_client() as sftp,
    ):
        handle = await sftp.open("students.csv", "wb")
        await handle.write(local.read_bytes())
        await asyncio.gather(
            handle.close(),
            sftp.setstat("students.csv", asyncssh.SFTPAttrs(atime=mtime, mtime=mtime)),
        )


async def winscp_filepart(cell: Cell, local: Path) -> None:
    """WinSCP's safe upload (its default over 100 KB, and a common setting for all):
    write students.csv.filepart, CLOSE, REMOVE the old students.csv, RENAME, SETSTAT."""
    mtime = 1_700_000_000
    async with (
        cell.handle.connect(known_hosts=str(cell.known_hosts)) as conn,
        conn.start_sftp_client() as sftp,
    ):
        handle = await sftp.open("students.csv.filepart", "wb")
        await handle.write(local.read_bytes())
        await handle.close()
        if await sftp.exists("students.csv"):
            await sftp.remove("students.csv")
        await sftp.rename("students.csv.filepart", "students.csv")
        await sftp.setstat("students.csv", asyncssh.SFTPAttrs(atime=mtime, mtime=mtime))


Upload = Callable[[Cell, Path], Awaitable[None]]
CLIENTS: dict[str, Upload] = {
    "sftp": openssh_sftp,
    "scp": openssh_scp,
    "psftp": putty_psftp,
    "pscp": putty_pscp,
    "curl": curl_sftp,
    "lftp": lftp_put,
    "paramiko": paramiko_put,
    "asyncssh": asyncssh_put,
    "winscp_small": winscp_small_file,
    "winscp_filepart": winscp_filepart,
}

# direction -> the two files' row counts and the second run's expected counts
DIRECTIONS: dict[str, tuple[int, int, dict[str, int]]] = {
    "longer_then_shorter": (
        LONG_ROWS,
        1,
        {"rows": 1, "added": 0, "updated": 0, "unchanged": 1, "errors": 0},
    ),
    "shorter_then_longer": (
        1,
        LONG_ROWS,
        {"rows": LONG_ROWS, "added": LONG_ROWS - 1, "updated": 0, "unchanged": 1, "errors": 0},
    ),
}


def check_upload(
    handle: ServerHandle, run: RunRecord, data: bytes, expected: dict[str, Any]
) -> list[str]:
    """What differs from the contract after one upload: counts, result.json `file`, disk."""
    problems = []
    path = handle.home() / "results" / f"{run.run_id}.result.json"
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    counts = {name: result.get(name) for name in expected}
    if counts != expected:
        problems.append(f"run {run.run_id}: counts {counts}, expected {expected}")
    file_field = {"name": "students.csv", "bytes": len(data), "sha256": sha256(data)}
    if result.get("file") != file_field:
        problems.append(f"run {run.run_id}: file {result.get('file')!r}, expected {file_field}")
    on_disk = (handle.home() / "students.csv").read_bytes()
    if on_disk != data:
        problems.append(
            f"after run {run.run_id}: students.csv on disk is {len(on_disk)} bytes "
            f"(sha256 {sha256(on_disk)[:12]}), sent {len(data)} (sha256 {sha256(data)[:12]})"
        )
    return problems


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(("client", "direction"), [(c, d) for c in CLIENTS for d in DIRECTIONS])
async def test_client_uploads_byte_for_byte(
    client: str, direction: str, spr: ServerHandle, tmp_path: Path, client_key: tuple[Path, str]
) -> None:
    first_rows, second_rows, second_counts = DIRECTIONS[direction]
    work = tmp_path / "client"
    work.mkdir()
    cell = Cell(spr, client_key[0], write_known_hosts(spr, work / "known_hosts"), work)
    upload = CLIENTS[client]
    first_counts = {
        "rows": first_rows,
        "added": first_rows,
        "updated": 0,
        "unchanged": 0,
        "errors": 0,
    }
    problems: list[str] = []
    for number, (rows, counts) in enumerate(
        [(first_rows, first_counts), (second_rows, second_counts)], start=1
    ):
        data = roster(rows)
        local = work / f"upload-{number}.csv"  # not students.csv: the remote name is explicit
        local.write_bytes(data)
        await upload(cell, local)
        run = (await finished_runs(spr, number))[-1]
        found = check_upload(spr, run, data, {"state": "done", **counts})
        problems += [f"upload {number} ({rows} rows): {problem}" for problem in found]
    if problems:
        pytest.fail(f"{client} {direction}:\n" + "\n".join(problems), pytrace=False)
