"""Crash campaign: `kill -9` a real `eams serve` at chosen points, restart it, check.

    .venv/bin/python bench/crash.py --cycles 20            # the long version (a table per cycle)
    .venv/bin/python bench/crash.py --cycles 5 --seed 7 --keep

Only the command line: the campaign is tests/crash (its docstring lists the kill
points and the checks), a correctness harness that tests/test_crash_campaign.py
runs in CI in a short version. The exit status is 1 when any check failed (the
work folder is then kept).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.crash import KILL_POINTS, Campaign, print_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--districts", type=int, default=4, help="3-5")
    parser.add_argument("--max-rows", type=int, default=20000)
    parser.add_argument("--points", help="comma-separated kill points (default: all, shuffled)")
    parser.add_argument("--eager", type=float, default=0.6, help="chance of an eager upload")
    parser.add_argument(
        "--delete-results", type=float, default=0.4, help="chance results are deleted first"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    points = args.points.split(",") if args.points else None
    if points and set(points) - set(KILL_POINTS):
        parser.error(f"unknown kill points; known: {', '.join(KILL_POINTS)}")
    workdir = Path(tempfile.mkdtemp(prefix="eams-crash-"))
    campaign = Campaign(
        workdir,
        cycles=args.cycles,
        seed=args.seed,
        districts=args.districts,
        max_rows=args.max_rows,
        kill_points=points,
        eager=args.eager,
        delete_results=args.delete_results,
        out=lambda line: print(line, flush=True),
    )
    summary = asyncio.run(campaign.run())
    print_summary(summary)
    if args.keep or summary.failures:
        print(f"work folder kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not summary.failures else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
