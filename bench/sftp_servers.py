"""Helpers of bench/sftp.py: the two servers under test and the OpenSSH `sftp` client.

- `ReferenceSshd`: Debian's OpenSSH sshd (installed with apt-get if missing) on a
  loopback port, with its own config, host key and authorized_keys in a temp dir,
  serving only `internal-sftp`.
- `EamsProcess`: `.venv/bin/eams serve --config <temp>/config.toml --port P`.
- `SftpClient`: runs `sftp -b batchfile` with the same options against either.

Every process started here is stopped with SIGTERM (then SIGKILL after a bound)
by `stop()`; callers use try/finally.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.factories import District, config_toml

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
SSHD = Path("/usr/sbin/sshd")
LOOPBACK = "127.0.0.1"
KEX = "curve25519-sha256"
SCHOOLS = ("0101", "0102")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    """Until `port` accepts a TCP connection (bounded); fail if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log:\n{tail(log)}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not accepting after {timeout:.0f} s; log:\n{tail(log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def ensure_sshd() -> str:
    """Install openssh-server with apt-get if /usr/sbin/sshd is missing; say what happened."""
    if SSHD.exists():
        return f"{SSHD} present"
    command = "apt-get update -qq && apt-get install -y -qq openssh-server"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(
        ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0 or not SSHD.exists():
        raise RuntimeError(f"`{command}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    # The package's postinst may start a system sshd on port 22; it is not ours to stop,
    # and it does not get in the way (the reference sshd below uses its own port).
    return f"installed openssh-server: `{command}` -> {SSHD}"


def generate_key(path: Path, comment: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
    )
    return path.with_suffix(".pub").read_text().strip()


class ReferenceSshd:
    """OpenSSH sshd serving internal-sftp on a loopback port (run as the current user)."""

    def __init__(self, folder: Path, public_key: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.log = folder / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.upload_dir = folder / "upload"
        folder.mkdir(parents=True, exist_ok=True)
        self.upload_dir.mkdir(exist_ok=True)
        host_key = folder / "ssh_host_ed25519_key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
            check=True,
            timeout=30,
        )
        (folder / "authorized_keys").write_text(public_key + "\n")
        self.config = folder / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {LOOPBACK}",
                    f"HostKey {host_key}",
                    f"PidFile {folder / 'sshd.pid'}",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                    "StrictModes no",
                    "Subsystem sftp internal-sftp",
                    "ForceCommand internal-sftp",
                    f"KexAlgorithms {KEX}",
                    "",
                ]
            )
        )

    def start(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for_port(self.port, self.proc, 30, self.log)

    def stop(self) -> int | None:
        return stop_process(self.proc, 30)


class EamsProcess:
    """`eams serve` with a generated config of `districts` districts sharing one key
    (the districts in `passwords` log in with that password hash instead)."""

    def __init__(
        self,
        folder: Path,
        public_key: str,
        districts: int,
        command: Path | None = None,
        *,
        passwords: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.command = command or VENV_BIN / "eams"
        self.port = free_port()
        self.log = folder / "eams.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.district_ids = [f"d{i:03d}" for i in range(1, districts + 1)]
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "config.toml"
        self.config.write_text(render_config(self.district_ids, public_key, passwords or {}))

    def home(self, district_id: str) -> Path:
        return self.folder / "homes" / district_id

    def results(self, district_id: str) -> Path:
        return self.home(district_id) / "results"

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.command),
                    "serve",
                    "--config",
                    str(self.config),
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
            )
        wait_for_port(self.port, self.proc, 60, self.log)

    def stop(self) -> int | None:
        # Runs in progress finish before `eams serve` exits (a 500k-row run can take a while).
        return stop_process(self.proc, 180)


def render_config(district_ids: list[str], public_key: str, passwords: Mapping[str, str]) -> str:
    """config.toml: districts d001.. with schools 0101/0102 and 5000 Enterprise licenses."""
    server = {
        "listen": LOOPBACK,
        "port": 2222,
        "host_keys": "host_keys",
        "homes": "homes",
        "data": "data",
        "ftp_refusal_port": 0,
        "max_upload_mb": 200,
        "login_attempts": 5,
        "ban_minutes": 15,
        "results_retention_days": 90,
        # Every bench client connects from 127.0.0.1: the per-address caps of SPEC 3.2
        # (meant for one attacker's address) are raised so that 100 districts' clients fit.
        "max_unauthenticated": 512,
        "max_unauthenticated_per_address": 512,
        "max_sessions_per_district": 64,
    }
    districts = [
        District(
            district_id,
            f"Bench District {district_id}",
            (f"ENT-{district_id.upper()}", 5000),
            password_hash=passwords.get(district_id),
            authorized_keys=() if district_id in passwords else (public_key,),
            notify=(f"sis@{district_id}.bench.example",),
            settings={"schedule": "on-upload"},
            schools=tuple((code, f"School {code}") for code in SCHOOLS),
        )
        for district_id in district_ids
    ]
    return config_toml(server, districts, operators=["support@bench.example"])


@dataclass
class SftpRun:
    seconds: float
    returncode: int
    stderr: str


class SftpClient:
    """OpenSSH `sftp` in batch mode with one key and the same options for both servers."""

    def __init__(self, key: Path, folder: Path) -> None:
        self.key = key
        self.folder = folder / "batches"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sftp = shutil.which("sftp") or "/usr/bin/sftp"
        self._batches = 0

    def batch(self, commands: list[str]) -> Path:
        self._batches += 1
        path = self.folder / f"batch-{self._batches}.txt"
        path.write_text("".join(c + "\n" for c in commands))
        return path

    def argv(self, user: str, port: int, batch: Path, *, verbose: bool = False) -> list[str]:
        return [
            self.sftp,
            "-o",
            f"KexAlgorithms={KEX}",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=DEBUG1" if verbose else "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=20",
            "-i",
            str(self.key),
            "-P",
            str(port),
            "-b",
            str(batch),
            f"{user}@{LOOPBACK}",
        ]

    def start(self, user: str, port: int, batch: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv(user, port, batch),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def run(self, user: str, port: int, batch: Path, timeout: float = 300) -> SftpRun:
        start = time.perf_counter()
        done = subprocess.run(
            self.argv(user, port, batch),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        seconds = time.perf_counter() - start
        return SftpRun(seconds, done.returncode, done.stderr.decode(errors="replace").strip())

    def output(self, user: str, port: int, batch: Path, timeout: float = 300) -> SftpRun:
        """Like `run`, but `stderr` holds what the batch printed on stdout (its `!date`s)."""
        start = time.perf_counter()
        done = subprocess.run(
            self.argv(user, port, batch),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        seconds = time.perf_counter() - start
        text = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            text += done.stderr.decode(errors="replace")
        return SftpRun(seconds, done.returncode, text)

    def negotiated(self, user: str, port: int, batch: Path) -> str:
        """The cipher/MAC the client picked (from `-v`), to tell like from like."""
        done = subprocess.run(
            self.argv(user, port, batch, verbose=True),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for line in done.stderr.splitlines():
            if "kex: client->server cipher:" in line:
                return line.split("cipher:", 1)[1].strip()
        return "?"
