"""The districts' side of a cycle: which files they upload, how, and one SFTP session each.

One cycle's plan: every district uploads 1-3 files (normal, repeat of its last
file, bad header, dry run into check/, a purge for the guarded district), each
either directly (OPEN/WRITE/CLOSE), WinSCP-style (`.filepart`, CLOSE, REMOVE,
RENAME) or as `.part` + posix-rename. One more upload, the victim, carries the
cycle's kill point: its client asks for the kill at the right request
(`Victim.fired`), and `kill_points.Killer` does it.

All planning draws from the campaign's `rng` in a fixed order, so a seed gives
the same plan every time; think times and kill delays draw from `timing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import asyncssh

from tests.crash.eams_process import START_TIMEOUT, EamsProcess
from tests.crash.ledger import Ledger, Upload, Victim
from tests.crash.rosters import PRELOAD_ROWS, make_file, preload_file
from tests.crash.world import GUARDED, SFTP_PASSWORD, World

CHUNK = 32 * 1024
SFTP_TIMEOUT = 30.0


class Workload:
    """Plans each cycle's uploads and runs the districts' sessions against the server."""

    def __init__(
        self,
        world: World,
        server: EamsProcess,
        ledger: Ledger,
        *,
        rng: random.Random,
        timing: random.Random,
        max_rows: int,
    ) -> None:
        self.world = world
        self.server = server
        self.ledger = ledger
        self.rng = rng
        self.timing = timing
        self.max_rows = max_rows
        self.serial = 0  # numbers every upload, preloads included: uids stay stable per seed
        self.used_rows: dict[str, set[int]] = {d: {PRELOAD_ROWS} for d in world.districts}

    # ---- planning ------------------------------------------------------------------------

    def plan_cycle(self, cycle: int, point: str) -> tuple[dict[str, list[Upload]], Victim]:
        rng = self.rng
        plans = {
            d: [self.plan_upload(d, cycle) for _ in range(rng.randint(1, 3))]
            for d in self.world.districts
        }
        victim_district = rng.choice(self.world.districts)
        kind = {"processing": "big", "result-writing": "normal"}.get(point, "normal")
        special = self.plan_upload(victim_district, cycle, kind=kind)
        if point == "mid-upload":
            special.style = "direct"
        elif point == "mid-filepart":
            special.style = "winscp"
        elif point == "before-rename":
            special.style = rng.choice(("winscp", "posix"))
        plan = plans[victim_district]
        plan.insert(rng.randint(0, len(plan) - 1), special)
        return plans, Victim(point, special.uid)

    def plan_preload(self, district: str, seed: int) -> Upload:
        """The district's initial load, saved for the model (it counts in `serial` too)."""
        self.serial += 1
        data = preload_file(district, seed)
        up = Upload(f"{district}-preload", district, 0, data, PRELOAD_ROWS, style="preload")
        up.kind = "preload"
        self.save(up)
        return up

    def plan_upload(self, district: str, cycle: int, *, kind: str | None = None) -> Upload:
        rng = self.rng
        self.serial += 1
        uid = f"{district}-u{self.serial:03d}"
        previous = [u for u in self.ledger.uploads[district] if not u.dry_run and not u.bad_token]
        if kind is None:
            roll = rng.random()
            if roll < 0.12 and previous:
                kind = "repeat"
            elif roll < 0.17:
                kind = "bad-header"
            elif roll < 0.27:
                kind = "dry"
            elif roll < 0.32 and district == GUARDED:
                kind = "purge"
            else:
                kind = "normal"
        style = rng.choices(("direct", "winscp", "posix"), (0.5, 0.3, 0.2))[0]
        if kind == "repeat" and previous:
            src = previous[-1]
            upload = Upload(uid, district, cycle, src.data, src.rows, style=style, kind=kind)
            upload.file = src.file
            return upload
        if kind == "bad-header":
            data = make_file(district, 5, rng, bad_token=uid)
            return Upload(uid, district, cycle, data, 0, style=style, bad_token=uid, kind=kind)
        rows = self.pick_rows(district, big=kind == "big")
        data = make_file(district, rows, rng, purge=kind == "purge")
        upload = Upload(uid, district, cycle, data, rows, dry_run=kind == "dry", style=style)
        upload.kind = kind
        return upload

    def pick_rows(self, district: str, *, big: bool = False) -> int:
        """A row count not used before by the district: it tells its run apart."""
        rng, top = self.rng, self.max_rows
        roll = rng.random()
        if big:
            n = rng.randint(min(8000, top // 2), top)
        elif roll < 0.45:
            n = rng.randint(50, 400)
        elif roll < 0.8:
            n = rng.randint(400, min(4000, top))
        else:
            n = rng.randint(min(4000, top), top)
        used = self.used_rows[district]
        while n in used:
            n = n + 1 if n < top else rng.randint(50, top)
        used.add(n)
        return n

    def save(self, upload: Upload) -> None:
        """Keep a copy of the file for the model (dry runs and bad headers apply nothing)."""
        if upload.file is None and not upload.dry_run and not upload.bad_token:
            upload.file = self.world.saved_uploads / f"{upload.uid}.csv"
            upload.file.parent.mkdir(exist_ok=True)
            upload.file.write_bytes(upload.data)

    # ---- the clients ---------------------------------------------------------------------

    async def connect(self, district: str, timeout: float) -> asyncssh.SSHClientConnection:
        """Connect as soon as the port accepts (bounded retries)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await asyncssh.connect(
                    "127.0.0.1",
                    self.server.port,
                    username=district,
                    password=SFTP_PASSWORD,
                    known_hosts=None,
                    client_keys=None,
                    agent_path=None,
                    connect_timeout=10,
                    login_timeout=20,
                )
            except (OSError, asyncssh.Error):
                if self.server.killing or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def session(
        self, district: str, plan: list[Upload], victim: Victim | None, *, eager: bool = False
    ) -> None:
        """One district's SFTP session: its planned uploads in order, until the server dies."""
        conn: asyncssh.SSHClientConnection | None = None
        current: Upload | None = None
        try:
            conn = await self.connect(district, START_TIMEOUT if eager else 10)
            async with conn.start_sftp_client() as sftp:
                for up in plan:
                    if self.server.killed.is_set():
                        break
                    current = up
                    self.ledger.uploads[district].append(up)
                    await self.upload(sftp, up, victim)
                    current = None
                    await asyncio.sleep(self.timing.uniform(0, 0.25))
        except (OSError, asyncssh.Error, TimeoutError, EOFError) as exc:
            if not self.server.killing:  # the server is alive: this upload failed for real
                where = f" in {current.uid} ({current.style}, {current.state})" if current else ""
                self.ledger.client_errors.append(f"{district} client error{where}: {exc!r}")
        finally:
            if current is not None:
                self.ledger.settle(current)
            if conn is not None:
                conn.abort()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.wait_closed(), 5)

    async def upload(self, sftp: asyncssh.SFTPClient, up: Upload, victim: Victim | None) -> None:
        """One upload, its state kept current for the checks; raises when the server dies."""
        mine = victim if victim is not None and victim.uid == up.uid else None
        folder = "check/" if up.dry_run else ""
        target = f"{folder}students.csv"
        name = {"direct": target, "winscp": f"{target}.filepart", "posix": f"{target}.part"}[
            up.style
        ]
        pieces = [(o, up.data[o : o + CHUNK]) for o in range(0, len(up.data), CHUNK)]
        if len(pieces) == 1:
            half = len(up.data) // 2
            pieces = [(0, up.data[:half]), (half, up.data[half:])]
        self.save(up)
        up.state = "writing"
        handle = await asyncio.wait_for(sftp.open(name, "wb"), SFTP_TIMEOUT)
        for index, (offset, piece) in enumerate(pieces):
            midway = mine is not None and index == len(pieces) // 2
            if midway and mine and mine.point in ("mid-upload", "mid-filepart"):
                await self.fire(mine)
            await asyncio.wait_for(handle.write(piece, offset), SFTP_TIMEOUT)
        if up.style == "direct":
            up.state = "closing"
            await asyncio.wait_for(handle.close(), SFTP_TIMEOUT)
        else:
            await asyncio.wait_for(handle.close(), SFTP_TIMEOUT)  # completes nothing
            up.state = "written"
            if mine and mine.point == "before-rename":
                await self.fire(mine)
            if up.style == "winscp" and await sftp.exists(target):
                up.state = "removing"
                await asyncio.wait_for(sftp.remove(target), SFTP_TIMEOUT)
                self.ledger.expect(up, None, certain=True)
            up.state = "renaming"
            rename = sftp.rename if up.style == "winscp" else sftp.posix_rename
            await asyncio.wait_for(rename(name, target), SFTP_TIMEOUT)
        up.state = "acked"
        self.ledger.expect(up, up.data, certain=True)
        if mine:
            await self.after_ack(mine)

    async def fire(self, victim: Victim) -> None:
        """The victim asks for the kill now and waits until the server is dead."""
        victim.fired.set()
        await asyncio.wait_for(self.server.killed.wait(), SFTP_TIMEOUT)

    async def after_ack(self, victim: Victim) -> None:
        point = victim.point
        if point == "after-ack":
            await self.fire(victim)
        elif point in ("processing", "result-writing", "email-queued"):
            victim.fired.set()  # the Killer takes it from here (it knows the run)
