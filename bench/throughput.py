"""Throughput and memory benchmark of `eams process` (SPEC §4-§6). It prints figures.

    .venv/bin/python bench/throughput.py --rows 100000
    .venv/bin/python bench/throughput.py --rows 500000
    .venv/bin/python bench/throughput.py --rows 100000 --profile c

In a temporary folder it generates one district's students.csv (about 40
schools with leading-zero codes, accented and varied names, grades K-12,
unique usernames) and a config.toml, then drives the real Runner path that
`eams process` uses (spool_copy, Runner.submit, Runner.run) through three
phases against one SQLite database:

  (a) first load: every row is a new student with status A
  (b) the same file again: every row unchanged
  (c) a nightly delta: 2% of the students changed (names, grades, schools),
      0.5% deactivated (D), 0.5% new (A)

Baseline, in the same run: `csv.reader` over the same file plus one
`executemany` INSERT of its rows into a fresh SQLite file (stdlib sqlite3,
default pragmas, a text primary key, committed).

Every phase, the baseline and the file generation run in a fresh process
(multiprocessing "spawn"), so each peak RSS belongs to one phase; the largest
is the benchmark's peak. `--in-process` runs the three phases in this process
instead, as a long-lived server would. After each phase the counts are checked
against what the file must produce, and `Store.invariant_violations()` must be
empty (every order's `used` equals its active students).

`--profile a|b|c` also runs that phase under cProfile (both the runner's worker
code and aiosqlite's connection thread) and prints the top entries by tottime.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import csv
import dataclasses
import functools
import io
import multiprocessing
import os
import platform
import pstats
import random
import resource
import shutil
import sqlite3
import sys
import tempfile
import time
import unicodedata
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiosqlite

import processing.deciding as deciding_module
import processing.runner as runner_module
import processing.store.runs as store_runs_module
import processing.store.students as store_module
from processing.config import Config
from processing.model import utc_now
from processing.passwords import StudentPasswords
from processing.runner import Runner
from processing.spool import accept
from processing.store import Store
from tests.factories import District, config_toml, password_hash, student, write_csv

P = ParamSpec("P")
T = TypeVar("T")

DISTRICT = "bench"
ORDER = "ENT-BENCH-2026"
CHANGED_SHARE = 0.02
DEACTIVATED_SHARE = 0.005
NEW_SHARE = 0.005
TARGET_FIRST_LOAD = 0.5  # (a) rows/s >= 0.5 x baseline
TARGET_UNCHANGED = 1.0  # (b) rows/s >= 1.0 x baseline
TARGET_RSS_MIB = 1024  # 500,000 rows < 1 GiB peak RSS
PROFILE_TOP = 25
# A thread waiting for the other one (event loop for SQLite, SQLite thread for work).
IDLE_WAITS = (
    "<method 'get' of '_queue.SimpleQueue' objects>",
    "<method 'poll' of 'select.epoll' objects>",
)
PHASE_TITLES = {
    "a": "(a) first load, all new A",
    "b": "(b) same file, unchanged",
    "c": "(c) nightly delta",
}

# ---- realistic data ------------------------------------------------------------

FIRST_NAMES = (
    "Sofía", "José", "Zoë", "Chloé", "Renée", "Björn", "Siobhán", "Aaliyah", "Muhammad",
    "Liam", "Olivia", "Mateo", "Camila", "Noah", "Emma", "Ximena", "Santiago", "Isabella",
    "Ethan", "Ava", "Jae-won", "Min-jun", "Wei", "Mei", "Aarav", "Priya", "Oluwaseun",
    "Chidi", "Fatima", "Yusuf", "Anaïs", "François", "Joaquín", "Dmitri", "Anastasiia",
    "Łukasz", "Zofia", "Søren", "Ingrid", "Mary Kate", "Jean-Luc", "D'Andre", "Ma'Kayla",
    "Théo", "Inés", "Mía", "Raúl", "Ángel", "Tomás", "Kai", "Leilani", "Nikolai", "Şeyma",
    "Gökhan", "Thảo", "Kwame", "Amara", "Elif", "Jackson", "Harper", "Eli", "Nora",
)  # fmt: skip
LAST_NAMES = (
    "García", "Martínez", "Nguyễn", "O'Brien", "Smith", "Johnson", "Williams", "Brown",
    "Jones", "Müller", "Schröder", "López-Hernández", "De La Cruz", "van der Berg",
    "MacDonald", "Kowalski", "Wiśniewski", "Øvergaard", "Ibáñez", "Núñez", "Peña",
    "Castañeda", "Cohen", "Kim", "Park", "Lee", "Chen", "Wang", "Zhang", "Patel", "Shah",
    "Okafor", "Adeyemi", "Mensah", "Haddad", "Al-Sayed", "Yılmaz", "Öztürk", "Dubois",
    "Lefèvre", "Rossi", "Bianchi", "Ivanov", "Petrova", "Novák", "Dvořák", "Sørensen",
    "Johansson", "Ó Súilleabháin", "Washington", "Jackson", "Thompson", "White", "Harris",
    "Smith, Jr.", "Brown III", "Robinson", "St. Pierre", "Fitzgerald", "Tran", "Pham",
)  # fmt: skip
PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!#$%&*?@"
# (first code, count, grades): 20 elementary, 10 middle, 10 high schools.
SCHOOL_LEVELS = (
    (101, 20, ("K", "1", "2", "3", "4", "5")),
    (201, 10, ("6", "7", "8")),
    (301, 10, ("9", "10", "11", "12")),
)
SCHOOL_KINDS = ("Elementary", "Middle School", "High School")


@dataclass(frozen=True)
class School:
    code: str  # "0101": leading zeros matter
    name: str
    level: int
    grades: tuple[str, ...]


def make_schools(rng: random.Random) -> list[School]:
    schools = []
    for level, (first, count, grades) in enumerate(SCHOOL_LEVELS):
        for number in range(first, first + count):
            namesake = rng.choice(LAST_NAMES).replace(", Jr.", "")
            schools.append(
                School(f"{number:04d}", f"{namesake} {SCHOOL_KINDS[level]}", level, grades)
            )
    return schools


def slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in ascii_text.lower() if c.isalnum())[:28] or "student"


def grade_text(rng: random.Random, grade: str) -> str:
    """As SIS extracts write grades: mostly "K"/"3", sometimes "KG"/"03"."""
    if rng.random() >= 0.1:
        return grade
    return "KG" if grade == "K" else grade.zfill(2)


def class_name(rng: random.Random, school: School, grade: str) -> str:
    if school.level == 0:
        return f"Grade {grade} - Room {rng.randint(100, 130)}"
    if school.level == 1:
        return f"Homeroom {grade}{rng.choice('ABCDEF')}"
    if rng.random() < 0.3:  # a comma: the field is quoted in the CSV
        return f"{rng.choice(LAST_NAMES)}, {rng.choice('ABCDEFGHJKLMNPRSTW')}. - Advisory"
    return f"Advisory {grade}-{rng.randint(1, 12)}"


class Roster:
    """Generates students; usernames stay unique as "maria.garcia", "maria.garcia2"."""

    def __init__(self, rng: random.Random, schools: list[School]) -> None:
        self.rng = rng
        self.schools = schools
        self.username_counts: dict[str, int] = {}

    def username(self, first: str, last: str) -> str:
        base = f"{slug(first)}.{slug(last)}"
        count = self.username_counts.get(base, 0) + 1
        self.username_counts[base] = count
        return base if count == 1 else f"{base}{count}"

    def last_name(self) -> str:
        rng = self.rng
        if rng.random() < 0.05:  # double-barrelled
            return f"{rng.choice(LAST_NAMES)}-{rng.choice(LAST_NAMES)}".replace(", Jr.", "")
        return rng.choice(LAST_NAMES)

    def student(self, student_id: str) -> list[str]:
        rng = self.rng
        school = rng.choice(self.schools)
        grade = rng.choice(school.grades)
        first, last = rng.choice(FIRST_NAMES), self.last_name()
        password = "".join(rng.choices(PASSWORD_ALPHABET, k=rng.randint(8, 12)))
        return student(
            student_id,
            "A",
            school=school.code,
            first=first,
            last=last,
            grade=grade_text(rng, grade),
            username=self.username(first, last),
            password=password,
            class_name=class_name(rng, school, grade),
        )

    def change(self, row: list[str], kind: int) -> list[str]:
        """A copy of `row` with a real change: first name, last name, grade or school."""
        rng = self.rng
        new = list(row)
        if kind == 0:
            new[2] = rng.choice([n for n in FIRST_NAMES if n != row[2]])
        elif kind == 1:
            while new[3] == row[3]:
                new[3] = self.last_name()
        elif kind == 2:
            grades = ("K", *(str(g) for g in range(1, 13)))
            index = grades.index("K" if row[4] in ("K", "KG") else str(int(row[4])))
            new[4] = grades[index + 1] if index < 12 else "11"
        else:
            level = next(s.level for s in self.schools if s.code == row[0])
            others = [s for s in self.schools if s.level == level and s.code != row[0]]
            new[0] = rng.choice(others).code
        return new


@dataclass(frozen=True)
class Workload:
    base_csv: Path
    delta_csv: Path
    config: Path
    rows: int
    changed: int
    deactivated: int
    new: int
    size_bytes: int


def write_config(folder: Path, schools: list[School], licenses: int) -> Path:
    server = {
        "listen": "127.0.0.1",
        "port": 2222,
        "host_keys": "host_keys",
        "homes": "homes",
        "data": "data",
        "ftp_refusal_port": 0,
        "max_upload_mb": 1024,
    }
    district = District(
        DISTRICT,
        "Benchmark Unified School District",
        (ORDER, licenses),
        password_hash=password_hash("bench-sftp-password"),
        settings={"schedule": "on-upload", "stale_after_hours": 0},
        schools=tuple((school.code, school.name) for school in schools),
    )
    path = folder / "config.toml"
    path.write_text(config_toml(server, [district]), encoding="utf-8")
    return path


def generate(folder: Path, rows: int, seed: int) -> Workload:
    """Write students.csv, the nightly delta and config.toml into `folder`."""
    rng = random.Random(seed)
    schools = make_schools(rng)
    roster = Roster(rng, schools)
    changed = round(rows * CHANGED_SHARE)
    deactivated = round(rows * DEACTIVATED_SHARE)
    new = round(rows * NEW_SHARE)
    ids = [str(n) for n in rng.sample(range(100_000_000, 999_999_999), rows + new)]
    base = [roster.student(student_id) for student_id in ids[:rows]]
    base.sort(key=lambda r: (r[0], r[3], r[2]))  # extracts come sorted by school and name
    picked = rng.sample(range(rows), changed + deactivated)
    delta = [list(row) for row in base]
    for kind, index in enumerate(picked[:changed]):
        delta[index] = roster.change(base[index], kind % 4)
    for index in picked[changed:]:
        delta[index][8] = "D"
    delta += [roster.student(student_id) for student_id in ids[rows:]]
    delta.sort(key=lambda r: (r[0], r[3], r[2]))
    base_csv, delta_csv = folder / "students.csv", folder / "students-delta.csv"
    write_csv(base_csv, base)
    write_csv(delta_csv, delta)
    return Workload(
        base_csv=base_csv,
        delta_csv=delta_csv,
        config=write_config(folder, schools, licenses=rows * 2),
        rows=rows,
        changed=changed,
        deactivated=deactivated,
        new=new,
        size_bytes=base_csv.stat().st_size,
    )


# ---- measuring -------------------------------------------------------------------


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux


@dataclass(frozen=True)
class PhaseSpec:
    key: str  # "a", "b" or "c"
    config: Path
    csv: Path
    profile: bool = False


@dataclass(frozen=True)
class PhaseResult:
    key: str
    seconds: float
    steps: dict[str, float]
    result: dict[str, Any]  # result.json
    active: int
    used: int
    violations: list[str]
    rss_start_mib: float
    rss_peak_mib: float
    profile: str = ""


@dataclass(frozen=True)
class BaselineResult:
    rows: int
    parse_seconds: float
    insert_seconds: float
    rss_start_mib: float
    rss_peak_mib: float

    @property
    def seconds(self) -> float:
        return self.parse_seconds + self.insert_seconds


_STEPS: dict[str, float] = {}
_instrumented = False


def _timed(name: str, func: Callable[P, T]) -> Callable[P, T]:
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            _STEPS[name] = _STEPS.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def _timed_async(name: str, func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        start = time.perf_counter()
        try:
            return await func(*args, **kwargs)
        finally:
            _STEPS[name] = _STEPS.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def instrument() -> None:
    """Time the runner's steps by wrapping them in this process (no file is changed)."""
    global _instrumented
    if _instrumented:
        return
    _instrumented = True
    for module, name, label in (
        (deciding_module, "_scan_paused", "scan_pass"),
        (deciding_module, "_decide_pass", "decide_pass"),
        (store_runs_module, "student_rows", "student_rows"),
        (runner_module, "write_results", "write_results"),
    ):
        setattr(module, name, _timed(label, getattr(module, name)))
    for name in (
        "enqueue_run",
        "load_digests",
        "load_district",
        "load_students",
        "usernames_elsewhere",
        "finish_run",
    ):
        setattr(Store, name, _timed_async(name, getattr(Store, name)))


async def _inline(func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """asyncio.to_thread stand-in when profiling: cProfile only sees its own thread."""
    return func(*args, **kwargs)


def _visible_execute(execute: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """aiosqlite runs `partial(conn.executemany, ...)` from C, which cProfile cannot see;
    calling it from a Python frame makes the SQLite call show up under its own name."""

    async def wrapper(
        self: aiosqlite.Connection, fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        def call() -> Any:
            return fn(*args, **kwargs)

        return await execute(self, call)

    return wrapper


async def in_connection_thread(store: Store, func: Callable[[], None]) -> None:
    """Run `func` in aiosqlite's connection thread (to switch a profiler on or off there)."""
    await store.db._execute(func)  # type: ignore[no-untyped-call]


async def run_phase_async(spec: PhaseSpec) -> PhaseResult:
    config = Config.from_toml(spec.config)
    data = config.server.data
    store = await Store.open(data / "eams.sqlite3")
    profilers: list[cProfile.Profile] = []
    try:
        await store.sync_config(config)
        runner = Runner(config, store, StudentPasswords.from_data_dir(data))
        if spec.profile:
            profilers = [cProfile.Profile(), cProfile.Profile()]
            await in_connection_thread(store, profilers[1].enable)
            profilers[0].enable()
        _STEPS.clear()
        start = time.perf_counter()
        job = await asyncio.to_thread(
            functools.partial(accept, spec.csv, data, DISTRICT, source=f"bench {spec.csv.name}")
        )
        _STEPS["spool_copy"] = time.perf_counter() - start
        record = await runner.store.enqueue_run(job)
        outcome = await runner.run(record)
        seconds = time.perf_counter() - start
        if profilers:
            profilers[0].disable()
            await in_connection_thread(store, profilers[1].disable)
        steps = dict(_STEPS)
        violations = await store.invariant_violations()
        orders = await store.list_orders(DISTRICT)
        rows = await store.db.execute_fetchall(
            "SELECT count(*) FROM students WHERE district_id = ? AND active = 1", (DISTRICT,)
        )
        active = next(iter(rows))[0]
    finally:
        await store.close()
    return PhaseResult(
        key=spec.key,
        seconds=seconds,
        steps=steps,
        result=outcome.result.to_json(),
        active=active,
        used=sum(o["used"] for o in orders),
        violations=violations,
        rss_start_mib=0.0,
        rss_peak_mib=0.0,
        profile=format_profile(profilers) if profilers else "",
    )


def format_profile(profilers: list[cProfile.Profile]) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profilers[0], stream=out)
    for other in profilers[1:]:
        stats.add(other)
    for key in [k for k in stats.stats if k[2] in IDLE_WAITS]:  # type: ignore[attr-defined]
        stats.total_tt -= stats.stats.pop(key)[2]  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("tottime").print_stats(PROFILE_TOP)
    return out.getvalue()


def run_phase(spec: PhaseSpec) -> PhaseResult:
    """One phase through the real Runner path; returns timings, counts and RSS."""
    rss_start = peak_rss_mib()
    instrument()
    to_thread, execute = asyncio.to_thread, aiosqlite.Connection._execute
    if spec.profile:
        asyncio.to_thread = _inline
        aiosqlite.Connection._execute = _visible_execute(execute)  # type: ignore[method-assign,assignment]
    try:
        measured = asyncio.run(run_phase_async(spec))
    finally:
        asyncio.to_thread = to_thread
        aiosqlite.Connection._execute = execute  # type: ignore[method-assign]
    return dataclasses.replace(measured, rss_start_mib=rss_start, rss_peak_mib=peak_rss_mib())


def run_baseline(csv_path: Path, db_path: Path) -> BaselineResult:
    """csv.reader over the file, then one executemany INSERT into a fresh SQLite file."""
    rss_start = peak_rss_mib()
    start = time.perf_counter()
    with csv_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        rows = list(reader)
    parsed = time.perf_counter()
    connection = sqlite3.connect(db_path)
    try:
        connection.execute(
            "CREATE TABLE students (school_code TEXT NOT NULL, student_id TEXT PRIMARY KEY, "
            "first_name TEXT NOT NULL, last_name TEXT NOT NULL, grade TEXT NOT NULL, "
            "username TEXT NOT NULL, password TEXT, class_name TEXT NOT NULL, "
            "status TEXT NOT NULL)"
        )
        with connection:
            connection.executemany("INSERT INTO students VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    finally:
        connection.close()
    inserted = time.perf_counter()
    return BaselineResult(
        rows=len(rows),
        parse_seconds=parsed - start,
        insert_seconds=inserted - parsed,
        rss_start_mib=rss_start,
        rss_peak_mib=peak_rss_mib(),
    )


def run_insert_floor(config_path: Path, csv_path: Path, folder: Path) -> float:
    """Seconds for the store's own INSERT of the file's rows as new students, and nothing else.

    The same statement and table as Store.finish_run (the real schema, made by
    Store.open), in one transaction, on a fresh database; the row tuples are
    built beforehand with random bytes for the encrypted password, MAC and
    line digest. No parsing, validation, rules or encryption is timed: this is
    the floor phase (a) cannot go under.
    """
    config = Config.from_toml(config_path)
    with csv_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        now = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
        rows = sorted(
            (
                DISTRICT,
                r[1],
                r[0],
                r[2],
                r[3],
                r[4],
                r[5],
                r[5].lower(),
                r[7],
                1,
                ORDER,
                os.urandom(12 + 16 + len(r[6])),
                os.urandom(16),
                now,
                os.urandom(16),
            )
            for r in reader
        )

    async def insert() -> float:
        store = await Store.open(folder / "floor" / "eams.sqlite3")
        try:
            await store.sync_config(config)
            start = time.perf_counter()
            await store.db.execute("BEGIN IMMEDIATE")
            await store.db.executemany(store_module._INSERT_STUDENT, rows)
            await store.db.execute("COMMIT")
            return time.perf_counter() - start
        finally:
            await store.close()

    return asyncio.run(insert())


def in_fresh_process(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(func, *args, **kwargs).result()


# ---- checking and printing ---------------------------------------------------------


@dataclass
class Checks:
    lines: list[str] = field(default_factory=list)
    failed: int = 0

    def expect(self, key: str, what: str, actual: object, expected: object) -> None:
        ok = actual == expected
        self.failed += not ok
        shown = f"{actual}" if ok else f"{actual}, expected {expected}"
        self.lines.append(f"  {key}: {what:<34} {shown:<22} {'OK' if ok else 'FAIL'}")


def expected_counts(key: str, work: Workload) -> dict[str, int]:
    n = work.rows
    if key == "a":
        return {"rows": n, "added": n, "updated": 0, "unchanged": 0, "errors": 0}
    if key == "b":
        return {"rows": n, "added": 0, "updated": 0, "unchanged": n, "errors": 0}
    return {
        "rows": n + work.new,
        "added": work.new,
        "updated": work.changed + work.deactivated,
        "unchanged": n - work.changed - work.deactivated,
        "activated": 0,
        "deactivated": work.deactivated,
        "transferred": 0,
        "errors": 0,
    }


def expected_active(key: str, work: Workload) -> int:
    return work.rows - work.deactivated + work.new if key == "c" else work.rows


def check_phase(checks: Checks, phase: PhaseResult, work: Workload) -> None:
    key = phase.key
    checks.expect(key, "state", phase.result["state"], "done")
    for name, value in expected_counts(key, work).items():
        checks.expect(key, name, phase.result[name], value)
    checks.expect(key, "active students", phase.active, expected_active(key, work))
    checks.expect(key, "sum of orders' used", phase.used, phase.active)
    checks.expect(key, "Store.invariant_violations()", phase.violations, [])


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("inf")


def print_report(
    work: Workload,
    baseline: BaselineResult,
    phases: list[PhaseResult],
    *,
    floor_seconds: float,
    gen_seconds: float,
    in_process: bool,
) -> int:
    base_rate = rate(baseline.rows, baseline.seconds)
    print(
        f"eAMS processing benchmark: {work.rows:,} rows ({work.size_bytes / 2**20:.1f} MiB), "
        f"delta {work.changed:,} changed / {work.deactivated:,} D / {work.new:,} new"
    )
    print(
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs; files generated in {gen_seconds:.1f} s; "
        f"phases {'in this process' if in_process else 'each in a fresh spawned process'}"
    )
    print()
    head = f"{'':<28}{'rows':>9}{'seconds':>9}{'rows/s':>10}{'x base':>8}  {'target':<14}"
    print(head + f"{'peak RSS MiB':>13}{'(at start)':>11}")
    print(
        f"{'baseline csv+executemany':<28}{baseline.rows:>9,}{baseline.seconds:>9.2f}"
        f"{base_rate:>10,.0f}{1.0:>8.2f}  {'':<14}"
        f"{baseline.rss_peak_mib:>13.0f}{baseline.rss_start_mib:>11.0f}"
    )
    targets = {"a": TARGET_FIRST_LOAD, "b": TARGET_UNCHANGED}
    for phase in phases:
        rows = phase.result["rows"]
        phase_rate = rate(rows, phase.seconds)
        ratio = phase_rate / base_rate
        goal = targets.get(phase.key)
        target = f">= {goal:.1f}x {'ok' if ratio >= goal else 'MISSED'}" if goal else ""
        start = "" if in_process else f"{phase.rss_start_mib:>11.0f}"
        print(
            f"{PHASE_TITLES[phase.key]:<28}{rows:>9,}{phase.seconds:>9.2f}{phase_rate:>10,.0f}"
            f"{ratio:>8.2f}  {target:<14}{phase.rss_peak_mib:>13.0f}{start}"
        )
    print(
        f"  baseline split: csv parse {baseline.parse_seconds:.2f} s, "
        f"executemany+commit {baseline.insert_seconds:.2f} s"
    )
    budget = baseline.seconds / TARGET_FIRST_LOAD
    print(
        f"  insert floor: the store's INSERT of these rows alone (no parsing, checks or "
        f"encryption) takes {floor_seconds:.2f} s = {floor_seconds / baseline.seconds:.2f}x "
        f"the baseline's whole time; (a) at {TARGET_FIRST_LOAD}x must finish in {budget:.2f} s, "
        f"leaving {budget - floor_seconds:.2f} s for everything else"
    )
    peak = max([p.rss_peak_mib for p in phases] + [baseline.rss_peak_mib])
    peak = max(peak, peak_rss_mib(), peak_rss_mib(resource.RUSAGE_CHILDREN))
    verdict = "ok" if peak < TARGET_RSS_MIB else "MISSED"
    applies = "" if work.rows >= 500_000 else " (the target is for 500,000 rows)"
    print(
        f"  peak RSS of the whole benchmark (largest process): {peak:.0f} MiB; "
        f"target < {TARGET_RSS_MIB} MiB: {verdict}{applies}"
    )
    print()
    print("Where each phase's time went (seconds; the runner's steps, timed by wrapping them):")
    for phase in phases:
        other = phase.seconds - sum(phase.steps.values())
        parts = [f"{name} {value:.2f}" for name, value in phase.steps.items()]
        print(f"  {phase.key}: " + ", ".join([*parts, f"other {other:.2f}"]))
    print()
    checks = Checks()
    for phase in phases:
        check_phase(checks, phase, work)
    print(f"Correctness: {'all OK' if not checks.failed else f'{checks.failed} FAILED'}")
    print("\n".join(checks.lines))
    return 1 if checks.failed else 0


def print_profile(phase: PhaseResult) -> None:
    rows = phase.result["rows"]
    print()
    print(
        f"cProfile of {PHASE_TITLES[phase.key]}, re-run on a copy of the database: "
        f"{phase.seconds:.2f} s under the profiler ({rate(rows, phase.seconds):,.0f} rows/s)."
    )
    print(
        "The runner's worker-thread code ran inline so cProfile sees it; aiosqlite's "
        "connection thread is profiled too; both threads' idle waits are left out."
    )
    print(phase.profile.rstrip())


def snapshot(config: Path) -> Path:
    """A copy of the run folder's config and database, to re-run one phase under cProfile."""
    target = config.parent / "profile"
    target.mkdir()
    if (config.parent / "data").exists():  # phase (a) starts from no database at all
        shutil.copytree(config.parent / "data", target / "data")
    shutil.copy(config, target / "config.toml")
    return target / "config.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=100_000, help="students in the file")
    parser.add_argument("--seed", type=int, default=2026, help="random seed of the generator")
    parser.add_argument(
        "--in-process", action="store_true", help="run the phases in this process, not spawned"
    )
    parser.add_argument(
        "--profile", choices=sorted(PHASE_TITLES), help="also cProfile this phase (slower)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.rows < 1000:
        parser.error("--rows must be at least 1000 (the delta needs 0.5% of them)")

    folder = Path(tempfile.mkdtemp(prefix="eams-bench-"))
    try:
        start = time.perf_counter()
        work = in_fresh_process(generate, folder, args.rows, args.seed)
        gen_seconds = time.perf_counter() - start
        baseline = in_fresh_process(run_baseline, work.base_csv, folder / "baseline.sqlite3")
        floor = in_fresh_process(run_insert_floor, work.config, work.base_csv, folder)
        phases = []
        profiled: PhaseSpec | None = None
        for key, source in (("a", work.base_csv), ("b", work.base_csv), ("c", work.delta_csv)):
            if args.profile == key:  # profile later, on a copy of the database as it is now
                profiled = PhaseSpec(key, snapshot(work.config), source, profile=True)
            spec = PhaseSpec(key, work.config, source)
            if args.in_process:
                phases.append(run_phase(spec))
            else:
                phases.append(in_fresh_process(run_phase, spec))
        status = print_report(
            work,
            baseline,
            phases,
            floor_seconds=floor,
            gen_seconds=gen_seconds,
            in_process=args.in_process,
        )
        if profiled is not None:
            print_profile(in_fresh_process(run_phase, profiled))
        return status
    finally:
        if args.keep:
            print(f"\nfiles kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
