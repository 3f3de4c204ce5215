"""Where each kill lands: waiting for a cycle's kill point, `kill -9`, and what it left.

Kill points:
  mid-upload      a direct upload half written (the victim's client asks for it)
  mid-filepart    a WinSCP `.filepart` half written
  before-rename   `.filepart`/`.part` closed, not yet renamed
  after-ack       the instant the victim's CLOSE/RENAME returns
  processing      a big run, a random delay after its acknowledgement
  result-writing  the instant the victim's run is committed or its first result file is seen
  email-queued    mail server down: the run's email tried once and still pending
                  (the campaign then restarts, kills again with it pending, and
                  restarts with the mail server up)
  email-sending   the mail server holds the DATA: the server dies mid-send
  email-250       the instant the mail server answered 250 (sender.py's duplicate window)
  random          a uniform time into the workload
  startup         as random, then a second kill during the restart
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

from tests.crash.eams_process import EamsProcess
from tests.crash.ledger import Ledger, Upload, Victim
from tests.crash.mail_sink import MailSink
from tests.crash.world import World, query, until

KILL_POINTS = (
    "mid-upload",
    "mid-filepart",
    "before-rename",
    "after-ack",
    "processing",
    "result-writing",
    "email-queued",
    "email-sending",
    "email-250",
    "random",
    "startup",
)


class Killer:
    """Kills the server at a victim's kill point; counts what the kills left behind."""

    def __init__(
        self,
        world: World,
        server: EamsProcess,
        mail: MailSink,
        ledger: Ledger,
        timing: random.Random,
    ) -> None:
        self.world = world
        self.server = server
        self.mail = mail
        self.ledger = ledger
        self.timing = timing  # kill delays, apart from the plan's random stream
        self.landed: Counter[str] = Counter()  # "kills", and how many left each thing

    async def kill(self) -> str:
        """kill -9 the server (once); return what the database looked like at that moment."""
        if not self.server.killable:
            return ""
        moving = self.ledger.moving()
        await self.server.kill()
        # Messages the mail server accepted whose outbox row is still pending: the kill
        # fell between the SMTP 250 and the sender's commit; a resend will follow.
        pending = set(
            query(self.world.db, "SELECT district_id, run_id FROM outbox WHERE state = 'pending'")
        )
        self.ledger.window |= {key for key in self.mail.counts() if key in pending}
        return await asyncio.to_thread(self.snapshot, moving)

    def snapshot(self, moving: int) -> str:
        """One line: runs queued, result files missing, emails pending, uploads in flight."""
        db = self.world.db
        queued = query(db, "SELECT count(*) FROM runs WHERE state IN ('queued','approved')")
        finished = query(
            db, "SELECT district_id, run_id FROM runs WHERE state IN ('done','failed','held')"
        )
        missing = sum(
            not (self.world.home(d) / "results" / f"{r}.result.json").exists() for d, r in finished
        )
        pending = query(db, "SELECT count(*) FROM outbox WHERE state = 'pending'")
        q = queued[0][0] if queued else 0
        p = pending[0][0] if pending else 0
        self.landed["kills"] += 1
        for what, count in (
            ("runs queued", q),
            ("results missing", missing),
            ("emails pending", p),
            ("uploads in flight", moving),
        ):
            self.landed[what] += count > 0
        return f"queued={q} nores={missing} mail={p} xfer={moving}"

    async def at_kill_point(self, victim: Victim) -> str:
        """Wait for the kill point, kill; returns the snapshot at the kill."""
        point = victim.point
        loop = asyncio.get_running_loop()
        if point in ("email-sending", "email-250"):
            self.mail.arm("hold" if point == "email-sending" else "after-250", loop, victim.fired)
        if point in ("random", "startup"):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(victim.fired.wait(), self.timing.uniform(0.3, 3.0))
            return await self.kill()
        await victim.fired.wait()
        if point == "email-sending":
            dropped = self.mail.held_dropped
            snapshot = await self.kill()
            try:
                await until(lambda: self.mail.held_dropped > dropped, 6, "the held DATA")
            except TimeoutError:
                return snapshot + " | held DATA NOT dropped"
            return snapshot + " | held DATA dropped"
        if point == "processing":
            await asyncio.sleep(self.timing.uniform(0.0, 0.6))
        elif point in ("result-writing", "email-queued"):
            await self.wait_victim_run(self.ledger.find(victim.uid), point)
        return await self.kill()

    async def wait_victim_run(self, up: Upload, point: str) -> None:
        """Until the district's latest run reaches `point` (at most 20 s, then kill anyway)."""
        db = self.world.db
        rows = query(
            db,
            "SELECT run_id FROM runs WHERE district_id = ? ORDER BY seq DESC LIMIT 1",
            (up.district,),
        )
        if not rows:
            return
        run_id = rows[0][0]
        results = self.world.home(up.district) / "results"

        def reached() -> bool:
            state = query(
                db,
                "SELECT state FROM runs WHERE district_id = ? AND run_id = ?",
                (up.district, run_id),
            )
            finished = bool(state) and state[0][0] not in ("queued", "approved")
            if point == "result-writing":
                return finished or any(results.glob(f"{run_id}.*"))
            tried = query(
                db,
                "SELECT count(*) FROM outbox WHERE district_id = ? AND run_id = ? "
                "AND state = 'pending' AND attempts >= 1",
                (up.district, run_id),
            )
            return finished and bool(tried) and tried[0][0] > 0

        with contextlib.suppress(TimeoutError):
            await until(reached, 20, f"run {run_id} at {point}", poll=0.001)
