"""Crash campaign, CI version: `kill -9` a real `eams serve` three times, restart, check.

The campaign itself is `tests.crash.Campaign` (run `.venv/bin/python bench/crash.py
--cycles 20` for the long version; its docstring lists the kill points and checks).
Here: three districts, a fixed seed, one cycle for each of three kill points -
during an upload, during the result writing, with the emails queued while the
mail server is down - and at every restart a district uploading the moment the
port accepts. After each restart, once the server is idle: every acknowledged
upload has exactly one run (in order), no cut upload has one, nothing is
half-applied (a model database fed the same files in order agrees), the license
invariant holds, every result file exists, every email arrived exactly once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.crash import Campaign, print_summary

SEED = 20261128
POINTS = ["mid-upload", "result-writing", "email-queued"]


async def test_crash_campaign_three_kill_restart_cycles(
    tmp_path: Path, shared_host_keys: Path
) -> None:
    lines: list[str] = []
    campaign = Campaign(
        tmp_path / "campaign",
        cycles=len(POINTS),
        seed=SEED,
        districts=3,
        max_rows=20000,
        kill_points=POINTS,
        host_keys=shared_host_keys,
        eager=1.0,
        delete_results=0.5,
        out=lines.append,
    )
    summary = await asyncio.wait_for(campaign.run(), 300)
    print_summary(summary, lines.append)
    report = "\n".join(lines)
    print(report)  # shown by pytest -rA or on failure

    assert summary.failures == [], report
    assert [c.point for c in summary.cycles] == POINTS
    assert not any(c.at_kill.startswith("(fallback)") for c in summary.cycles), report
    assert summary.uploads["acked"] >= 6, report
    assert summary.uploads["cut"] >= 1, report  # the upload killed half-written
    assert summary.mails >= summary.uploads["acked"] // 2, report
