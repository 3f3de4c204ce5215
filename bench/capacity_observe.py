"""The server under test in the capacity benchmark, and what is observed of it. `Server` runs
`eams serve` in its own process (through `SHIM`, which names each thread in /proc);
`Sampler` reads /proc every 0.5 s for its RSS (with worker processes), its CPU and run-queue
wait by thread kind (`KINDS`) and its established TCP connections; `scrypt_cpu` measures one
password check. Kept apart from the clients so that what the benchmark measures on the
server side is in one place, independent of how the load is generated.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path

from capacity_population import PASSWORD, Dist
from sftp_servers import ROOT, VENV_BIN, free_port, stop_process, wait_for_port

from tests.factories import password_hash

SHIM = """
import ctypes, sys, threading
_libc = ctypes.CDLL(None)
_start = threading.Thread._bootstrap_inner
def _named(self):
    try:
        _libc.prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME: /proc/.../comm
    except Exception:
        pass
    _start(self)
threading.Thread._bootstrap_inner = _named
if __name__ == "__main__":  # not again in a worker process (spawn imports this file)
    from server.cli import main
    sys.exit(main(sys.argv[1:]))
"""


class Server:
    def __init__(self, folder: Path, config: Path) -> None:
        self.folder, self.config = folder, config
        self.port = free_port()
        self.log = folder / "eams.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        shim = self.folder / "eams_serve.py"
        shim.write_text(SHIM)
        argv = [str(VENV_BIN / "python"), str(shim), "serve", "--config", str(self.config)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*argv, "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.folder,
                env=dict(os.environ, PYTHONPATH=str(ROOT)),
            )
        wait_for_port(self.port, self.proc, 300, self.log)

    def stop(self) -> int | None:
        return stop_process(self.proc, 300)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def results(self, d: Dist) -> Path:
        return self.folder / "homes" / d.id / "results"

    @property
    def database(self) -> Path:
        return self.folder / "data" / "eams.sqlite3"


KINDS = ("event loop", "default pool", "login pool", "sqlite", "other threads", "workers")


class Sampler:
    """The server's RSS (with its worker processes) and CPU by thread kind, every 0.5 s."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid, self.port = pid, port
        self._tick = os.sysconf("SC_CLK_TCK")
        self._threads: dict[int, tuple[str, float, float]] = {}  # tid -> (kind, cpu, wait)
        self._children: dict[int, tuple[float, float]] = {}  # pid -> (cpu, wait)
        self._lock = threading.Lock()
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, rss MB, sessions)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.5)

    def _cpu(self, folder: str) -> tuple[float, float]:
        """(CPU seconds, seconds spent runnable but waiting for a CPU) of a task."""
        fields = Path(f"{folder}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / self._tick
        try:
            wait = int(Path(f"{folder}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            wait = 0.0
        return cpu, wait

    def _kind(self, tid: int) -> str:
        if tid == self.pid:
            return "event loop"
        try:
            name = Path(f"/proc/{self.pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            return "other threads"
        if name.startswith("asyncio_"):
            return "default pool"
        if name.startswith("eams-login"):
            return "login pool"
        if "(_co" in name:
            return "sqlite"  # aiosqlite's one thread per connection
        return "other threads"

    def sample(self) -> None:
        rss = 0.0
        with contextlib.suppress(OSError):
            for tid_s in os.listdir(f"/proc/{self.pid}/task"):
                tid = int(tid_s)
                with contextlib.suppress(OSError, IndexError):
                    cpu, wait = self._cpu(f"/proc/{self.pid}/task/{tid}")
                    with self._lock:
                        known = self._threads.get(tid, ("other threads",))[0]
                        # Read again until named: a thread is seen before it names itself.
                        kind = self._kind(tid) if known == "other threads" else known
                        self._threads[tid] = (kind, cpu, wait)
            rss += _rss_mb(self.pid)
        for pid in _children(self.pid):
            with contextlib.suppress(OSError, IndexError):
                cpu, wait = self._cpu(f"/proc/{pid}")
                with self._lock:
                    self._children[pid] = (cpu, wait)
                rss += _rss_mb(pid)
        self.samples.append((time.monotonic(), rss, _established(self.port)))

    def cpu(self) -> dict[str, float]:
        """Cumulative CPU seconds by kind (threads and children that ended keep their last)."""
        self.sample()
        return self._by_kind(waited=False)

    def waited(self) -> dict[str, float]:
        """Cumulative seconds runnable but not running (another process had the CPU), by kind."""
        return self._by_kind(waited=True)

    def _by_kind(self, *, waited: bool) -> dict[str, float]:
        out = dict.fromkeys(KINDS, 0.0)
        with self._lock:
            for kind, cpu, wait in self._threads.values():
                out[kind] += wait if waited else cpu
            out["workers"] = sum(w if waited else c for c, w in self._children.values())
        return out

    def window(self, start: float, end: float) -> tuple[float, int]:
        inside = [s for s in self.samples if start <= s[0] <= end]
        return max((s[1] for s in inside), default=0.0), max((s[2] for s in inside), default=0)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


def _established(port: int) -> int:
    """TCP connections to the server's port (ESTABLISHED), from /proc/net/tcp."""
    suffix = f":{port:04X}"
    count = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            parts = line.split(None, 4)
            if parts[1].endswith(suffix) and parts[3] == "01":
                count += 1
    return count


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in KINDS}


def scrypt_cpu() -> float:
    """CPU seconds of one scrypt check with the hash's parameters (median of 3, here)."""
    parts = password_hash(PASSWORD).split("$")
    n, r, p = (int(x) for x in parts[1:4])
    times = []
    for _ in range(3):
        start = time.thread_time()
        hashlib.scrypt(b"x", salt=b"s" * 16, n=n, r=r, p=p, dklen=32, maxmem=256 * 2**20)
        times.append(time.thread_time() - start)
    return statistics.median(times)
