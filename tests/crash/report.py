"""What a campaign prints: a table row per cycle as it ends, and the summary at the end.

`CycleRecord` is one cycle's row (what the kill left, uploads acknowledged/cut/in
doubt, runs, emails, failures); `Summary` is what `Campaign.run` returns, so a
caller (bench/crash.py, tests/test_crash_campaign.py) decides what a failure means.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TABLE_HEADER = (
    "cyc  kill point     at the kill (runs queued, results missing, mails pending, "
    "uploads moving)  ack cut doubt     runs mail  secs  checks"
)


@dataclass
class CycleRecord:
    cycle: int
    point: str
    at_kill: str = ""
    acked: int = 0
    cut: int = 0
    doubt: str = ""
    runs: int = 0
    mails: int = 0
    failures: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)  # duplicates in the sender's documented window
    seconds: float = 0.0

    def row(self) -> str:
        """The cycle's line of the table under TABLE_HEADER."""
        verdict = f"FAIL ({len(self.failures)})" if self.failures else "OK"
        if self.known:
            verdict += f" +{len(self.known)} dup (known window)"
        return (
            f"{self.cycle:>3}  {self.point:<14} {self.at_kill:<58} {self.acked:>3} "
            f"{self.cut:>3} {self.doubt:<9} {self.runs:>4} {self.mails:>4} "
            f"{self.seconds:>5.1f}  {verdict}"
        )


@dataclass
class Summary:
    cycles: list[CycleRecord]
    uploads: Counter[str]
    runs: Counter[str]
    mails: int
    info: list[str]
    seconds: float
    workdir: Path
    landed: Counter[str] = field(default_factory=Counter)

    @property
    def failures(self) -> list[str]:
        return [f"cycle {c.cycle} ({c.point}): {f}" for c in self.cycles for f in c.failures]

    @property
    def known(self) -> list[str]:
        return [f"cycle {c.cycle} ({c.point}): {f}" for c in self.cycles for f in c.known]


def print_summary(summary: Summary, out: Callable[[str], None] = print) -> None:
    cycles = summary.cycles
    ok = sum(not c.failures for c in cycles)
    out("")
    out(f"summary: {ok}/{len(cycles)} cycles OK in {summary.seconds:.0f} s")
    out(f"  kill points: {dict(Counter(c.point for c in cycles))}")
    out(f"  uploads: {dict(summary.uploads)}")
    out(f"  runs: {dict(summary.runs)}")
    out(f"  emails received: {summary.mails}")
    kills = summary.landed.pop("kills", 0)
    out(f"  {kills} kills; how many left: {dict(summary.landed)}")
    for line in summary.info:
        out(f"  note: {line}")
    known = summary.known
    out(f"  duplicate emails in the sender's documented 250->commit window: {len(known)}")
    for line in known:
        out(f"    {line}")
    failures = summary.failures
    out(f"  failures: {len(failures)}")
    for failure in failures:
        out(f"    {failure}")
