"""The campaign's lifecycle: set up, then per cycle upload -> kill -> restart -> check.

`Campaign` wires the parts together and owns the order of a cycle; the parts do
the work: `Workload` (the districts' uploads), `Killer` (the kill point and
`kill -9`), `EamsProcess` (the server), `MailSink` (the mail server), the
`checks` and `model_check` functions over the `Ledger` the clients keep.

Two random streams make a run reproducible where it can be: `rng` (seeded)
decides the plan - kill points, files, upload styles, eager uploads, deleted
results - and `timing` (seed + 1) the think times and kill delays, which shift
with the machine's speed anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.crash import checks
from tests.crash.eams_process import EamsProcess
from tests.crash.kill_points import KILL_POINTS, Killer
from tests.crash.ledger import Ledger
from tests.crash.mail_sink import MailSink
from tests.crash.model_check import check_model
from tests.crash.report import TABLE_HEADER, CycleRecord, Summary
from tests.crash.workload import Workload
from tests.crash.world import (
    DISTRICT_IDS,
    SFTP_PASSWORD,
    World,
    eams_quiet,
    free_port,
    query,
    regular_order,
)


class Campaign:
    """A crash campaign in `workdir`: `summary = await Campaign(...).run()`."""

    def __init__(
        self,
        workdir: Path,
        *,
        cycles: int,
        seed: int,
        districts: int = 4,
        max_rows: int = 20000,
        kill_points: list[str] | None = None,
        host_keys: Path | None = None,
        password_hash: str | None = None,
        eager: float = 0.6,
        delete_results: float = 0.4,
        out: Callable[[str], None] = print,
    ) -> None:
        if not 1 <= districts <= len(DISTRICT_IDS):
            raise ValueError(f"districts: 1..{len(DISTRICT_IDS)}")
        self.world = World(workdir, DISTRICT_IDS[:districts])
        self.rng = random.Random(seed)
        self.seed = seed
        if kill_points is None:
            kill_points = []
            while len(kill_points) < cycles:
                batch = list(KILL_POINTS)
                self.rng.shuffle(batch)
                kill_points += batch
        self.points = kill_points[:cycles]
        self.out = out
        self.eager = eager  # chance of an upload the moment the restarted server's port accepts
        self.delete_results = delete_results  # chance that districts delete their results first
        self.host_keys_source = host_keys
        self.password_hash = password_hash
        self.timing = random.Random(seed + 1)  # kill delays and think times, apart from the plan
        self.server = EamsProcess(self.world, free_port())
        self.mail = MailSink(free_port())
        self.ledger = Ledger(self.world.districts)
        self.state = checks.CheckState(self.world.districts)
        self.workload = Workload(
            self.world,
            self.server,
            self.ledger,
            rng=self.rng,
            timing=self.timing,
            max_rows=max(max_rows, 100),
        )
        self.killer = Killer(self.world, self.server, self.mail, self.ledger, self.timing)

    @property
    def districts(self) -> tuple[str, ...]:
        return self.world.districts

    @property
    def max_rows(self) -> int:
        return self.workload.max_rows

    # ---- the whole campaign ------------------------------------------------------------

    async def run(self) -> Summary:
        started = time.monotonic()
        self.world.workdir.mkdir(parents=True, exist_ok=True)
        records: list[CycleRecord] = []
        try:
            await self.prepare()
            self.mail.start()
            await self.server.start()
            await self.server.wait_listening()
            self.out(
                f"crash campaign: {len(self.points)} cycles, seed {self.seed}, districts "
                f"{', '.join(self.districts)}, up to {self.max_rows} rows, in "
                f"{self.world.workdir}"
            )
            self.out(TABLE_HEADER)
            for cycle, point in enumerate(self.points, start=1):
                record = await self.cycle(cycle, point)
                records.append(record)
                self.out(record.row())
                for failure in record.failures:
                    self.out(f"       FAIL {failure}")
                for known in record.known:
                    self.out(f"       known {known}")
            status = await self.server.stop()
            if status != 0 or "stopped" not in self.server.log_text():
                records[-1].failures.append(f"SIGTERM: exit status {status}, not a clean stop")
        finally:
            await self.server.reap()
            self.mail.stop()
        states: Counter[str] = Counter(
            r[0]
            for r in query(
                self.world.db,
                "SELECT CASE WHEN dry_run THEN 'dry ' || state ELSE state END FROM runs",
            )
        )
        return Summary(
            records,
            self.ledger.upload_states(),
            states,
            self.mail.total,
            self.state.notes,
            time.monotonic() - started,
            self.world.workdir,
            self.killer.landed,
        )

    async def prepare(self) -> None:
        """Configs of server and model; an initial load of each district onto its regular
        order (server only: the model gets it as the first run it is fed)."""
        if self.password_hash is None:
            from server.accounts import hash_password

            self.password_hash = await asyncio.to_thread(hash_password, SFTP_PASSWORD)
        if self.host_keys_source is not None:
            shutil.copytree(self.host_keys_source, self.world.workdir / "host_keys")
        world = self.world
        password_hash = self.password_hash
        world.write_config(
            world.workdir / "server", password_hash=password_hash, smtp_port=self.mail.port
        )
        world.write_config(world.workdir / "model", password_hash=password_hash, smtp_port=None)
        for d in self.districts:
            up = self.workload.plan_preload(d, self.seed)
            assert up.file is not None
            argv = ["process", "--district", d, "--order", regular_order(d)]
            code, output = await asyncio.to_thread(
                eams_quiet, [*argv, "--config", str(world.config), str(up.file)]
            )
            if code not in (0, 1):
                raise RuntimeError(f"initial load of {d} failed ({code}): {output}")
            up.state = "acked"
            self.ledger.uploads[d].append(up)

    # ---- one cycle -----------------------------------------------------------------------

    async def cycle(self, cycle: int, point: str) -> CycleRecord:
        record = CycleRecord(cycle, point)
        t0 = time.monotonic()
        await self.upload_and_kill(record)
        await self.recover(record)
        await self.check(record)
        record.seconds = time.monotonic() - t0
        return record

    async def upload_and_kill(self, record: CycleRecord) -> None:
        """The districts' sessions in parallel while the Killer waits for the kill point."""
        plans, victim = self.workload.plan_cycle(record.cycle, record.point)
        self.mail.disarm()
        if record.point == "email-queued" or (
            record.point not in ("email-sending", "email-250") and self.rng.random() < 0.25
        ):
            self.mail.stop()
        sessions = [
            asyncio.create_task(self.workload.session(d, p, victim)) for d, p in plans.items()
        ]
        controller = asyncio.create_task(self.killer.at_kill_point(victim))
        done = asyncio.gather(*sessions)
        either: set[asyncio.Future[Any]] = {controller, done}
        await asyncio.wait(either, timeout=90, return_when=asyncio.FIRST_COMPLETED)
        if not controller.done():
            # The uploads are over; the kill point may still come (a run being processed,
            # an email on its way). Wait for it within a bound, else kill anyway.
            await asyncio.wait({controller}, timeout=30)
        if controller.done():
            record.at_kill = controller.result()
        else:
            controller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await controller
            record.at_kill = "(fallback) " + await self.killer.kill()
        self.mail.disarm()
        await asyncio.wait_for(done, 60)

    async def recover(self, record: CycleRecord) -> None:
        """Restart (maybe killing again), with an eager upload in some cycles; wait idle."""
        rng, server = self.rng, self.server
        if record.point == "email-queued":
            # Restart with the mail server still down: the email must stay queued.
            await server.start()
            await server.wait_listening()
            await server.wait_idle(self.ledger.deleted_results, drain=False)
            pending = query(self.world.db, "SELECT count(*) FROM outbox WHERE state = 'pending'")
            record.at_kill += f" | 2nd kill: mail={pending[0][0] if pending else 0}"
            if not pending or pending[0][0] == 0:
                record.failures.append("email-queued: no email left pending, mail server down")
            await self.killer.kill()
        self.mail.start()
        if record.point == "startup":
            await server.start()
            await asyncio.sleep(self.timing.uniform(0.05, 1.5))
            record.at_kill += " | restart killed: " + (await self.killer.kill())
        if rng.random() < self.delete_results:
            self.delete_result_files()
            record.at_kill += " | results deleted"
        queued = [
            r[0]
            for r in query(
                self.world.db, "SELECT DISTINCT district_id FROM runs WHERE state = 'queued'"
            )
        ]
        await server.start()
        eager: asyncio.Task[None] | None = None
        if rng.random() < self.eager:
            # An upload the moment the port accepts, by a district with runs left queued.
            district = rng.choice(sorted(queued) or self.districts)
            up = self.workload.plan_upload(district, record.cycle, kind="normal")
            eager = asyncio.create_task(self.workload.session(district, [up], None, eager=True))
            record.at_kill += f" | eager {district}"
        try:
            await server.wait_listening()
            if eager is not None:
                await asyncio.wait_for(eager, 60)
            await server.wait_idle(self.ledger.deleted_results, drain=True)
        except (TimeoutError, RuntimeError) as exc:
            record.failures.append(str(exc).splitlines()[0])

    def delete_result_files(self) -> None:
        """District scripts delete result files once fetched (SPEC §3: read and delete);
        those stay deleted. Only runs whose files were never written (the crash came
        between commit and write) get them at the restart."""
        for d in self.districts:
            for path in (self.world.home(d) / "results").glob("*"):
                self.ledger.deleted_results.add((d, path.name.split(".", 1)[0]))
                path.unlink()

    async def check(self, record: CycleRecord, *, drained: bool = True) -> None:
        """Every check of tests/crash/checks.py and the model; new problems go to `record`."""
        world, ledger, state = self.world, self.ledger, self.state
        runs_before = sum(state.matched[d][0] for d in self.districts)
        problems = checks.check_runs(world, ledger, state)
        record.runs = sum(state.matched[d][0] for d in self.districts) - runs_before
        problems += checks.check_results(world, ledger.deleted_results)
        problems += checks.check_invariant(world.db)
        problems += checks.check_emails(
            world.db, self.mail.counts(), ledger.window, drained=drained
        )
        problems += checks.check_homes(world, ledger.expected_csv)
        problems += checks.check_spool(world, state.note)
        problems += await check_model(world, ledger, state)
        problems += ledger.client_errors
        ledger.client_errors = []
        problems += checks.check_logs(world.logs)
        record.mails = self.mail.total - state.mails_seen
        state.mails_seen = self.mail.total
        for problem in problems:
            if problem not in state.reported:
                state.reported.add(problem)
                is_known = checks.KNOWN_WINDOW in problem
                (record.known if is_known else record.failures).append(problem)
        cycle_ups = [u for u in ledger.all_uploads() if u.cycle == record.cycle]
        record.acked = sum(u.state == "acked" for u in cycle_ups)
        record.cut = sum(u.state == "cut" for u in cycle_ups)
        doubts = [u for u in cycle_ups if u.state == "doubt"]
        record.doubt = "/".join("run" if u.run_id else "none" for u in doubts) if doubts else "-"
