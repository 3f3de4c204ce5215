"""The checks after each restart, once the server is idle. Each returns its problems.

Each check is a function of what it needs - the world's folders and database,
the clients' `Ledger`, the mail server's counts - and returns a list of
problems, one line each naming the upload or run. `CheckState` is what the
checks carry from one cycle to the next: how far the upload/run matching and
the model got, so each cycle looks only at what is new.

- every acknowledged upload has exactly one run, in order, per district (matched
  by row count or the bad header's token); a cut upload has none; one in doubt
  at most one; no run comes from nowhere; no run is left queued;
- every finished run has result.json (agreeing with the database), result.txt,
  and errors.csv exactly when something was rejected;
- for every order, used == active students on it;
- every non-dry finished run queued exactly one email and the mail server got
  it exactly once (a duplicate in sender.py's window is marked KNOWN_WINDOW);
- each home's students.csv is the last acknowledged upload (or one in doubt);
- held runs keep their spool file; no ERROR line or traceback in the logs.
The model (tests/crash/model_check.py) checks that nothing is half-applied.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.crash.ledger import TERMINAL, Ledger, UploadKey, run_sig
from tests.crash.world import World, digest, query

KNOWN_WINDOW = " [killed between the SMTP 250 and the outbox commit: sender.py's documented window]"
RunRow = tuple[str, int, str, bool, dict[str, Any] | None]  # run_id, seq, state, dry, result


@dataclass
class CheckState:
    """How far the checks got: runs matched to uploads, runs fed to the model, problems
    already reported (each is reported once), emails counted, and notes."""

    districts: tuple[str, ...]
    matched: dict[str, tuple[int, int]] = field(default_factory=dict)  # (runs, uploads)
    modeled: dict[str, int] = field(default_factory=dict)  # runs applied to the model
    reported: set[str] = field(default_factory=set)
    mails_seen: int = 0
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for district in self.districts:
            self.matched.setdefault(district, (0, 0))
            self.modeled.setdefault(district, 0)

    def note(self, text: str) -> None:
        """Info that is not a check failure; the latest count per kind is kept."""
        kind = re.sub(r"\d+", "N", text)
        self.notes = [t for t in self.notes if re.sub(r"\d+", "N", t) != kind] + [text]


def runs_of(db: Path, district: str) -> list[RunRow]:
    rows = query(
        db,
        "SELECT run_id, seq, state, dry_run, result_json, spool_path FROM runs "
        "WHERE district_id = ? ORDER BY seq",
        (district,),
    )
    return [(r[0], r[1], r[2], bool(r[3]), json.loads(r[4]) if r[4] else None) for r in rows]


def check_runs(world: World, ledger: Ledger, state: CheckState) -> list[str]:
    """Acknowledged uploads <-> runs, per district, in order (incremental)."""
    problems = []
    for d in world.districts:
        runs = runs_of(world.db, d)
        ups = ledger.uploads[d]
        run_at, up_at = state.matched[d]
        while up_at < len(ups) and ups[up_at].state in TERMINAL:
            up = ups[up_at]
            up_at += 1
            if up.state == "cut":
                continue
            run = runs[run_at] if run_at < len(runs) else None
            if run is not None and run_sig(run[3], run[4]) == up.sig:
                up.run_id = run[0]
                run_at += 1
            elif up.state == "acked":
                problems.append(
                    f"{up.uid} ({up.style}, {up.sig[1]}) acknowledged but no run for it"
                    + (f" (next run {run[0]} is {run_sig(run[3], run[4])[1]})" if run else "")
                )
        for run in runs[run_at:]:
            sig = run_sig(run[3], run[4])
            cut = [u.uid for u in ups if u.state == "cut" and u.sig == sig]
            problems.append(
                f"{d} run {run[0]} ({sig[1]}, {run[2]}) matches no acknowledged upload"
                + (f": it is the cut upload {cut[-1]}" if cut else "")
            )
        state.matched[d] = (len(runs), up_at)
        for run in runs:
            if run[2] in ("queued", "approved"):
                problems.append(f"{d} run {run[0]} still {run[2]} when idle")
    return problems


def check_results(world: World, deleted_results: set[UploadKey]) -> list[str]:
    """Result files of every finished run (except those a district deleted on purpose)."""
    problems = []
    for d in world.districts:
        folder = world.home(d) / "results"
        for run_id, _seq, state, _dry, result in runs_of(world.db, d):
            if state not in ("done", "failed", "held") or (d, run_id) in deleted_results:
                continue
            path = folder / f"{run_id}.result.json"
            if not path.exists():
                problems.append(f"{d} run {run_id} ({state}): no result.json")
                continue
            on_disk = json.loads(path.read_text(encoding="utf-8"))
            if result is None or on_disk.get("state") != state or on_disk != result:
                problems.append(f"{d} run {run_id}: result.json differs from the database")
            if not (folder / f"{run_id}.result.txt").exists():
                problems.append(f"{d} run {run_id}: no result.txt")
            rejected = bool(result and (result["errors"] or result["file_error"]))
            if (folder / f"{run_id}.errors.csv").exists() != rejected:
                problems.append(
                    f"{d} run {run_id}: errors.csv {'missing' if rejected else 'unexpected'}"
                )
    return problems


def check_invariant(db: Path) -> list[str]:
    """SPEC §5: every order's `used` is the number of its active students."""
    rows = query(
        db,
        "SELECT o.district_id, o.id, o.used, (SELECT count(*) FROM students s "
        "WHERE s.district_id = o.district_id AND s.order_id = o.id AND s.active = 1) "
        "FROM orders o",
    )
    return [f"{d}/{o}: used {u} but {a} active students" for d, o, u, a in rows if u != a]


def check_emails(
    db: Path, received: Counter[UploadKey], window: set[UploadKey], *, drained: bool
) -> list[str]:
    """One email queued per finished non-dry run, received once (all sent when `drained`)."""
    problems = []
    outbox = query(
        db, "SELECT district_id, run_id, state, last_error FROM outbox WHERE run_id IS NOT NULL"
    )
    queued: Counter[UploadKey] = Counter()
    for d, r, state, error in outbox:
        queued[(d, r)] += 1
        if state == "failed" or (drained and state != "sent"):
            problems.append(f"email of {d} run {r} is {state} ({error})")
    runs = query(db, "SELECT district_id, run_id, state, dry_run FROM runs")
    finished = {(d, r): bool(dry) for d, r, s, dry in runs if s in ("done", "failed", "held")}
    for key, dry in finished.items():
        want = 0 if dry else 1
        if queued[key] != want:
            problems.append(f"{key[0]} run {key[1]}: {queued[key]} email(s) queued, not {want}")
    for key, count in received.items():
        if key not in queued:
            problems.append(f"mail server got {count} message(s) for unknown run {key}")
        elif count > queued[key]:
            problems.append(
                f"DUPLICATE: {key[0]} run {key[1]} received {count} times "
                f"(queued {queued[key]})" + (KNOWN_WINDOW if key in window else "")
            )
    if drained:
        for key, count in queued.items():
            if received[key] < count:
                problems.append(f"{key[0]} run {key[1]}: queued {count}, received {received[key]}")
    return problems


def check_homes(world: World, expected_csv: dict[tuple[str, str], set[str | None]]) -> list[str]:
    """Each home's students.csv (and check/students.csv) is one the ledger allows."""
    problems = []
    for (d, where), allowed in expected_csv.items():
        path = world.home(d) / ("check" if where == "check" else "") / "students.csv"
        actual = digest(path.read_bytes()) if path.exists() else None
        if actual not in allowed:
            problems.append(
                f"{d} {where}/students.csv is {actual}, expected one of {sorted(map(str, allowed))}"
            )
    return problems


def check_spool(world: World, note: Callable[[str], None]) -> list[str]:
    """Held runs keep their spool file; leftovers of kills are noted, not failed."""
    problems = []
    held = query(world.db, "SELECT district_id, run_id, spool_path FROM runs WHERE state = 'held'")
    keep = set()
    for d, r, spool in held:
        keep.add(spool)
        if not spool or not Path(spool).exists():
            problems.append(f"held run {d} {r} lost its spool file (cannot be approved)")
    finished = {r[0] for r in query(world.db, "SELECT spool_path FROM runs WHERE state != 'held'")}
    orphans = [p for p in world.spool.rglob("*.csv") if str(p) not in keep]
    of_runs = sum(str(p) in finished for p in orphans)
    if of_runs:
        note(f"spool: {of_runs} file(s) of finished runs left (kill after the commit)")
    if len(orphans) - of_runs:
        note(
            f"spool: {len(orphans) - of_runs} file(s) of no run left (kill between the "
            "spool copy and the queued-run insert)"
        )
    staging = [p for d in world.districts for p in world.home(d).rglob(".eams-staging-*")]
    if staging:
        note(f"homes: {len(staging)} staging file(s) left by killed uploads")
    return problems


def check_logs(logs: Path) -> list[str]:
    """ERROR lines and tracebacks in the server logs (each reported once by the caller)."""
    problems = []
    for log in sorted(logs.glob("serve-*.log")):
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        for number, line in enumerate(lines):
            if " ERROR " in line or " CRITICAL " in line:
                cause = next(
                    (
                        x
                        for x in lines[number + 1 : number + 60]
                        if re.match(r"^\w+(Error|Exception)", x)
                    ),
                    "",
                )
                problems.append(f"{log.name}: {line[24:]}{' -> ' + cause if cause else ''}")
    return problems
