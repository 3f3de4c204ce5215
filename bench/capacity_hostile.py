"""The hostile clients of the capacity benchmark, in a process of their own. `hostile_main`
runs 50 attackers guessing passwords (one connection per guess, each from its own address)
and 20 signed-in sessions listing results/ in a tight loop, until SIGTERM; `start_hostile`
writes its spec and starts it as `bench/capacity.py --hostile-spec FILE` at nice 10, so that
its CPU shows apart from the honest clients' and the server's. Kept apart because it is a
separate program in all but file name.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncssh
from capacity_observe import Server
from capacity_population import WRONG_PASSWORD, Dist
from capacity_report import pct
from sftp_servers import LOOPBACK

ATTACKERS, LISTERS = 50, 20
# The entry point that runs hostile_main for a --hostile-spec file (this module has none).
CAPACITY = Path(__file__).with_name("capacity.py")


async def hostile_main(spec: dict[str, Any]) -> dict[str, Any]:
    """50 attackers guessing passwords (one connection per guess, each from its own
    address) and 20 signed-in sessions listing results/ in a tight loop, until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.call_later(spec["max_seconds"], stop.set)
    port, key = spec["port"], asyncssh.read_private_key(spec["key"])
    counts: Counter[str] = Counter()
    lister_lat: list[float] = []

    async def attacker(address: str, usernames: list[str]) -> None:
        rng = random.Random(address)
        while not stop.is_set():
            try:
                conn = await asyncio.wait_for(
                    asyncssh.connect(
                        LOOPBACK,
                        port,
                        local_addr=(address, 0),
                        username=rng.choice(usernames),
                        password=WRONG_PASSWORD,
                        client_keys=None,
                        preferred_auth="password",
                        known_hosts=None,
                        agent_path=None,
                    ),
                    60,
                )
                conn.close()
                counts["attacker signed in (must not happen)"] += 1
            except asyncssh.PermissionDenied:
                counts["wrong password refused"] += 1
            except asyncssh.DisconnectError as exc:
                counts["refused: " + exc.reason[:40]] += 1
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                counts[f"attacker other: {type(exc).__name__}"] += 1

    async def lister(address: str, username: str) -> None:
        try:
            conn = await asyncssh.connect(
                LOOPBACK,
                port,
                local_addr=(address, 0),
                username=username,
                client_keys=[key],
                known_hosts=None,
                agent_path=None,
            )
        except (OSError, asyncssh.Error) as exc:
            counts[f"lister connect failed: {type(exc).__name__}: {exc}"] += 1
            return
        async with conn:
            sftp = await conn.start_sftp_client()
            while not stop.is_set():
                start = time.monotonic()
                try:
                    await asyncio.wait_for(sftp.listdir("/results"), 60)
                except (OSError, asyncssh.Error, TimeoutError) as exc:
                    counts[f"lister listdir failed: {type(exc).__name__}"] += 1
                    return
                lister_lat.append(time.monotonic() - start)
                counts["lister listdir"] += 1

    tasks = [attacker(a, spec["usernames"]) for a in spec["attackers"]]
    tasks += [lister(a, u) for a, u in spec["listers"]]
    cpu0 = time.process_time()
    await asyncio.gather(*tasks)
    return {
        "counts": dict(counts),
        "lister_p99": pct(lister_lat, 99),
        "lister_max": max(lister_lat, default=float("nan")),
        "cpu": time.process_time() - cpu0,
    }


def start_hostile(
    folder: Path, server: Server, dists: list[Dist], key_path: Path, seconds: float
) -> tuple[subprocess.Popen[bytes], Path]:
    out = folder / "hostile.json"
    spec = {
        "port": server.port,
        "key": str(key_path),
        "max_seconds": seconds,
        "out": str(out),
        "attackers": [f"127.250.0.{i + 1}" for i in range(ATTACKERS)],
        "usernames": [d.id for d in dists[:200]],
        "listers": [
            (f"127.251.0.{i + 1}", d.id)
            for i, d in enumerate([d for d in dists if not d.password][:LISTERS])
        ],
    }
    spec_path = folder / "hostile-spec.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, str(CAPACITY), "--hostile-spec", str(spec_path)],
        stdin=subprocess.DEVNULL,
        preexec_fn=lambda: os.nice(10),
    )
    return proc, out
