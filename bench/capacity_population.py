"""The population of the capacity benchmark: the districts and their files. Who takes part in
the 02:00 night and what each uploads: district sizes drawn from a log-normal like US K-12,
the CSV extracts (a first load, then nightly ones with about 1% changed, 0.2% leaving, 0.2%
new) with the result each one must produce (`Expected`), the size histogram, and the
server's config.toml for them. Kept apart so that the server side, the clients and the
report all build on one model of the districts, with no knowledge of how the night is run.
"""

from __future__ import annotations

import hashlib
import math
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from processing.model import TEMPLATE_COLUMNS
from tests.factories import District, config_toml, password_hash, server_table

PASSWORD = "capacity-bench-pw-2026"
WRONG_PASSWORD = "guess-123456"
SCHOOLS = (("0101", "Lincoln Elementary"), ("0102", "Roosevelt Middle"), ("0201", "Jefferson High"))
GRADES = ("K", *(str(g) for g in range(1, 13)))
CHANGED, LEAVING, NEW = 0.01, 0.002, 0.002
MEDIAN_SIZE, SIGMA, MIN_SIZE, MAX_SIZE = 1100, 1.35, 30, 200_000
HEADER = ",".join(TEMPLATE_COLUMNS)


@dataclass
class Expected:
    rows: int
    added: int
    updated: int
    unchanged: int
    deactivated: int
    missing: int
    used: int
    sha256: str = ""
    size: int = 0


@dataclass
class Dist:
    index: int
    size: int
    password: bool
    full: bool
    next_id: int = 1  # students 1..next_id-1 exist
    inactive: set[int] = field(default_factory=set)
    versions: dict[int, int] = field(default_factory=dict)  # class-name version when changed
    seen: set[str] = field(default_factory=set)  # result.json names already known

    @property
    def id(self) -> str:
        return f"d{self.index:05d}"

    @property
    def address(self) -> str:
        return f"127.{1 + self.index // 62500}.{self.index // 250 % 250 + 1}.{self.index % 250 + 1}"

    @property
    def active(self) -> int:
        return self.next_id - 1 - len(self.inactive)

    def row(self, n: int, status: str = "A") -> str:
        code = SCHOOLS[n % 3][0]
        room = (n + self.versions.get(n, 0)) % 40
        return (
            f"{code},S{n:07d},First{n},Last{n},{GRADES[n % 13]},{self.id}.{n},"
            f"Pw-{n}-{self.index},Room {room},{status}"
        )

    def first_load(self, path: Path) -> Expected:
        lines = [self.row(n) for n in range(1, self.size + 1)]
        self.next_id = self.size + 1
        n = self.size
        return write_file(path, lines, Expected(n, n, 0, 0, 0, 0, n))

    def nightly(self, path: Path, rng: random.Random) -> Expected:
        """The next extract: ~1% changed, 0.2% leaving, 0.2% new; the model follows it."""
        active = [n for n in range(1, self.next_id) if n not in self.inactive]
        leave = round(len(active) * LEAVING)
        change = max(1, round(len(active) * CHANGED))
        new = round(len(active) * NEW)
        picks = rng.sample(active, leave + change)
        leaving, changed = set(picks[:leave]), set(picks[leave:])
        for n in changed:
            self.versions[n] = self.versions.get(n, 0) + 1
        lines = []
        for n in active:
            if n in leaving:
                if not self.full:
                    lines.append(self.row(n, "D"))
            else:
                lines.append(self.row(n))
        lines += [self.row(n) for n in range(self.next_id, self.next_id + new)]
        self.next_id += new
        self.inactive |= leaving
        expected = Expected(
            rows=len(lines),
            added=new,
            updated=change + (0 if self.full else leave),
            unchanged=len(active) - change - leave,
            deactivated=leave,
            missing=leave if self.full else 0,
            used=len(active) - leave + new,
        )
        return write_file(path, lines, expected)


def write_file(path: Path, lines: list[str], expected: Expected) -> Expected:
    data = ("\r\n".join([HEADER, *lines]) + "\r\n").encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    expected.sha256 = hashlib.sha256(data).hexdigest()
    expected.size = len(data)
    return expected


def population(count: int, seed: int) -> list[Dist]:
    rng = random.Random(seed)
    sizes = [
        min(MAX_SIZE, max(MIN_SIZE, round(rng.lognormvariate(math.log(MEDIAN_SIZE), SIGMA))))
        for _ in range(count)
    ]
    return [
        Dist(index=i + 1, size=size, password=(i % 2 == 0), full=(i % 4 == 1))
        for i, size in enumerate(sizes)
    ]


SIZE_CLASSES = (
    ("files under 1 MiB", 0, 2**20),
    ("files of 1-4 MiB", 2**20, 4 * 2**20),
    ("files of 4 MiB+ (workers)", 4 * 2**20, 2**40),
)
BUCKETS = (300, 1000, 2000, 5000, 10_000, 25_000, 100_000)


def histogram(dists: list[Dist]) -> list[str]:
    total = sum(d.size for d in dists)
    lines = [f"{len(dists):,} districts, {total:,} students (first load)"]
    low = 0
    for high in (*BUCKETS, MAX_SIZE + 1):
        inside = [d.size for d in dists if low <= d.size < high]
        label = f"{low:>7,}-{high - 1:<7,}"
        bar = "#" * max(1 if inside else 0, round(60 * len(inside) / len(dists)))
        lines.append(
            f"  {label} {len(inside):>5} ({100 * len(inside) / len(dists):4.1f}%)"
            f" {sum(inside):>10,} students  {bar}"
        )
        low = high
    sizes = sorted(d.size for d in dists)
    lines.append(
        f"  median {statistics.median(sizes):,.0f}, mean {total / len(dists):,.0f},"
        f" largest {sizes[-1]:,}; password {sum(d.password for d in dists)},"
        f" key {sum(not d.password for d in dists)}, full sync {sum(d.full for d in dists)}"
    )
    return lines


def write_config(folder: Path, dists: list[Dist], public_key: str) -> Path:
    digest = password_hash(PASSWORD)
    server = server_table(
        folder,
        max_unauthenticated=len(dists) + 200,
        results_retention_days=0,
        max_upload_mb=200,
    )
    districts = [
        District(
            d.id,
            f"Capacity District {d.index}",
            (f"ENT-{d.id.upper()}", d.size * 2 + 100),
            password_hash=digest if d.password else None,
            authorized_keys=() if d.password else (public_key,),
            notify=(f"sis@{d.id}.bench.example",),
            settings={"sync": "full"} if d.full else {},
            schools=SCHOOLS,
        )
        for d in dists
    ]
    path = folder / "config.toml"
    path.write_text(config_toml(server, districts, operators=["support@bench.example"]))
    return path
