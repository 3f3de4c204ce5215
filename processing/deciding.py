"""Deciding one run: read the file, load the state it needs, walk the rows through the
rules. Nothing is written here; the runner records what this decides.

The CPU work (decoding, parsing, the rules over 500,000 rows) runs in a worker
thread (the server sends big files to a worker process as a whole,
processing/run_executor.py). The database is read in bulk only: one load
before the walk.

Three ways through a file, cheapest first:
1. a nightly-sized file whose every line restates its student (the digest
   scan proves it, processing/digests.py): nothing is parsed or loaded;
2. a scan whose misses can be decided alone (a nightly delta): only the
   students those rows name are loaded and only those rows decided;
3. the full path: the whole district loaded, every row decided in one
   streaming pass; decided again, exactly, when the pass finds a Student ID on
   two rows or a username another district holds (rare).
If the district changed between the scan and the load (another run of the
same district by `eams process`), the scan's findings no longer hold and the
full path is taken instead: an explicit fallback, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from attrs import frozen

from processing.config import District
from processing.decode import open_text
from processing.digests import LineDigest, RowsToDecide, Scan, ScanResult, scan_pass
from processing.model import DistrictState, OrderTally, RawRow, Student
from processing.passwords import StudentPasswords
from processing.plan import FileFindings, FindingsRecorder, Plan, build_plan
from processing.rules import missing_students, present_id
from processing.store import Store
from processing.template import read_rows


@frozen
class RunContext:
    """What every step of deciding one run needs, fixed for the run."""

    path: Path  # the spooled upload
    max_bytes: int
    district: District
    target: str  # the order new and moved students go to (E, or `eams process --order`)
    passwords: StudentPasswords
    digest: LineDigest
    full_sync: bool = False  # the file is the whole roster: absent students go (SPEC §5.6)


@frozen
class Decided:
    """A file decided against the district's state: what the run would do."""

    encoding: str
    plan: Plan
    orders: dict[str, OrderTally]  # after the plan's license moves
    version: int  # the district version it was decided on


async def decide_file(store: Store, ctx: RunContext, *, scan_min_bytes: int) -> Decided:
    """Decide the file the cheapest way that is exact (see the module docstring).

    Raises FileRejected when the file as a whole is at fault.
    """
    scanned = await _scan(store, ctx) if _size(ctx.path) >= scan_min_bytes else None
    present: frozenset[str] | None = None  # full sync: every Student ID on a row
    absent: frozenset[str] = frozenset()  # full sync, after a scan: active and not present
    if ctx.full_sync:
        if scanned is not None and scanned.scan.complete:
            present = scanned.scan.present_ids()
        else:
            present = await asyncio.to_thread(_present_ids, ctx)
        if scanned is not None:
            absent = frozenset(await store.active_student_ids(ctx.district.id) - present)
    if scanned is not None and scanned.scan.all_unchanged and not absent:
        active = sum(tally.used for tally in scanned.orders.values())
        plan = Plan.unchanged(ctx.target, active, scanned.scan.rows)
        return Decided(scanned.encoding, plan, scanned.orders, scanned.version)
    if scanned is not None:
        decided = await _decide_rows(store, ctx, scanned, present, absent)
        if decided is not None:
            return decided
    decided = await _decide_rows(store, ctx, None, present, frozenset())  # never None
    assert decided is not None
    return decided


def _present_ids(ctx: RunContext) -> frozenset[str]:
    """Full sync without a complete scan: one parse of the file for its Student IDs."""
    text, _ = open_text(ctx.path, ctx.max_bytes)
    with text:
        return frozenset(filter(None, (present_id(raw.fields) for raw in read_rows(text))))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # open_text reports it


async def _scan(store: Store, ctx: RunContext) -> ScanResult | None:
    """Hash a nightly-sized file's lines against the stored digests.

    None for a district with no digest stored yet (a first load).
    """
    known = await store.load_digests(ctx.district.id)
    if ctx.target not in known.orders:
        raise LookupError(f"district {ctx.district.id} has no order {ctx.target!r}")
    if not known.digests:
        return None
    encoding, scan = await asyncio.to_thread(_scan_paused, ctx, known.digests)
    return ScanResult(encoding, scan, known.orders, known.version)


def _scan_paused(ctx: RunContext, known: dict[bytes, str]) -> tuple[str, Scan]:
    with gc_paused():
        return scan_pass(ctx.path, ctx.max_bytes, known, ctx.digest)


async def _decide_rows(
    store: Store,
    ctx: RunContext,
    scanned: ScanResult | None,
    present: frozenset[str] | None,
    absent: frozenset[str],
) -> Decided | None:
    """Load the state and decide the rows; None if the district changed since the scan.

    In full sync, `present` are the file's Student IDs; after a scan, `absent`
    are the active students not among them, loaded with the rows' students."""
    rows = scanned.scan.rows_to_decide() if scanned is not None else None
    hits = scanned.scan.hits if scanned is not None and rows is None else None

    async def load() -> DistrictState | None:
        with gc_paused():
            state = await (
                store.load_district(ctx.district.id)
                if rows is None
                else store.load_students(ctx.district.id, rows.student_ids | absent, rows.usernames)
            )
        if ctx.target not in state.orders:
            raise LookupError(f"district {ctx.district.id} has no order {ctx.target!r}")
        if scanned is not None and state.version != scanned.version:
            return None  # the scan's findings hold for the state it was taken on only
        return state

    state = await load()
    if state is None:
        return None
    encoding, plan, findings = await asyncio.to_thread(
        _decide_pass, ctx, rows, state, {}, frozenset(), hits, present
    )
    taken = await store.usernames_elsewhere(ctx.district.id, findings.usernames)
    if findings.duplicates or taken:
        # The one-pass plan assumed neither (true of almost every file):
        # decide again from the stored state, knowing both.
        state = await load()
        if state is None:
            return None
        _, plan, _ = await asyncio.to_thread(
            _decide_pass, ctx, rows, state, findings.duplicates, taken, hits, present
        )
    if scanned is not None and rows is not None:
        plan.add_unchanged(len(scanned.scan.hits))
        encoding = scanned.encoding
    assert encoding is not None
    return Decided(encoding, plan, state.orders, state.version)


def _decide_pass(
    ctx: RunContext,
    rows: RowsToDecide | None,
    state: DistrictState,
    duplicates: dict[str, list[int]],
    taken: frozenset[str],
    hits: dict[int, str] | None,
    present: frozenset[str] | None,
) -> tuple[str | None, Plan, FileFindings]:
    """Decide the scan's rows to decide, or decode and decide the whole file, in one
    streaming pass (a worker thread). The encoding is None for rows the scan read.
    With `present` (full sync), the state's active students not in it go first."""
    missing = missing_students(state.students.values(), present) if present is not None else []
    if rows is not None:
        with gc_paused():
            return None, *_plan(rows.rows, ctx, state, duplicates, taken, hits, missing)
    text, encoding = open_text(ctx.path, ctx.max_bytes)
    with text, gc_paused():
        return encoding, *_plan(read_rows(text), ctx, state, duplicates, taken, hits, missing)


def _plan(
    raw_rows: Iterable[RawRow],
    ctx: RunContext,
    state: DistrictState,
    duplicates: dict[str, list[int]],
    taken: frozenset[str],
    hits: dict[int, str] | None,
    missing: list[Student],
) -> tuple[Plan, FileFindings]:
    recorder = FindingsRecorder(state.owners)
    plan = build_plan(
        recorder(raw_rows),
        state,
        target=ctx.target,
        school_codes=ctx.district.school_codes,
        grades=ctx.district.grades,
        duplicates=duplicates,
        taken_elsewhere=taken,
        mac=ctx.passwords.mac,
        digest=ctx.digest,
        hits=hits,
        missing=missing,
    )
    return plan, recorder.findings()


_gc_pauses = 0
_gc_lock = threading.Lock()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a run builds 500,000 row objects.

    None of them form cycles, yet each allocation burst triggers full
    collections that walk every live object (a quarter of a 500k-row run,
    bench/throughput.py). Counted, since runs of two districts overlap.
    """
    global _gc_pauses
    with _gc_lock:
        _gc_pauses += 1
        gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                gc.enable()
