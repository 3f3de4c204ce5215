"""The server under test: `python -m server.cli serve` as a child process, killed with -9.

A real process, not an in-process `EamsServer`: only `kill -9` of a process shows
what survives a crash (no `finally`, no atexit, no flush). Each start logs into
its own `logs/serve-NN.log`, which the log check reads afterwards.

`killed` is set once the process is dead, `killing` the moment the kill is
decided: a client error after that is the kill, not a server fault.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.crash.world import World, query, until

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
IDLE_TIMEOUT = 90.0


class EamsProcess:
    """One campaign's `eams serve`, started again after every kill on the same port."""

    def __init__(self, world: World, port: int) -> None:
        self.world = world
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None
        self.log: Path | None = None
        self.starts = 0
        self.killed = asyncio.Event()
        self.killing = False

    async def start(self) -> None:
        """Spawn `eams serve`; returns at once (use `wait_listening` or connect-retry)."""
        self.starts += 1
        self.log = self.world.logs / f"serve-{self.starts:02d}.log"
        self.log.parent.mkdir(exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--config",
                str(self.world.config),
                "--port",
                str(self.port),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=str(ROOT),
            )
        self.killed = asyncio.Event()
        self.killing = False

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log else ""

    def check_alive(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            raise RuntimeError(f"eams serve exited; log:\n{self.log_text()[-3000:]}")

    async def wait_listening(self) -> None:
        def listening() -> bool:
            self.check_alive()
            return f"listening on 127.0.0.1:{self.port}" in self.log_text()

        await until(listening, START_TIMEOUT, "eams serve listening")

    @property
    def killable(self) -> bool:
        """Started and not killed since."""
        return self.proc is not None and not self.killed.is_set()

    async def kill(self) -> None:
        """kill -9 (once per start) and wait until the process is gone."""
        if self.proc is None or self.killed.is_set():
            return
        self.killing = True
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.killed.set()

    async def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL after a bound); the exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.send_signal(signal.SIGKILL)
                await self.proc.wait()
        return self.proc.returncode

    async def reap(self) -> None:
        """At the end, whatever happened: no child process is left behind."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def wait_idle(self, deleted_results: set[tuple[str, str]], *, drain: bool) -> None:
        """Until no run is queued, every result file is written (except those a district
        deleted) and, with `drain`, no email is pending."""
        world = self.world

        def idle() -> bool:
            self.check_alive()
            if query(world.db, "SELECT 1 FROM runs WHERE state IN ('queued','approved') LIMIT 1"):
                return False
            for d, r in query(
                world.db,
                "SELECT district_id, run_id FROM runs WHERE state IN ('done','failed','held')",
            ):
                if (d, r) in deleted_results:
                    continue
                if not (world.home(d) / "results" / f"{r}.result.json").exists():
                    return False
            return not (
                drain and query(world.db, "SELECT 1 FROM outbox WHERE state = 'pending' LIMIT 1")
            )

        await until(idle, IDLE_TIMEOUT, "the restarted server to be idle", poll=0.05)
