"""What uploads leave behind in the homes, and when it goes (SPEC §3, §3.2).

- Every hour (`sweep`): client temporary uploads and staging files older than a
  day, result files past `results_retention_days`.
- At start, before the port opens (`remove_staging`): every staging file. None
  can belong to a live upload then, so they are what a killed server left (a
  28 MB one survived two restarts when only the day-old sweep removed them).
  Client temporary files stay: WinSCP resumes them.
"""

from __future__ import annotations

import time
from pathlib import Path

from server.jail import is_temp_name
from server.quotas import STAGING_PREFIX

TEMP_MAX_AGE = 24 * 3600


def sweep(home: Path, *, results_days: float, now: float | None = None) -> list[Path]:
    """Remove leftover temp/staging files older than a day and results past retention."""
    now = time.time() if now is None else now
    removed = []
    for folder in (home, home / "check"):
        for entry in _entries(folder):
            stale = now - entry.stat().st_mtime > TEMP_MAX_AGE
            if stale and (entry.name.startswith(STAGING_PREFIX) or is_temp_name(entry.name)):
                entry.unlink(missing_ok=True)
                removed.append(entry)
    if results_days > 0:
        for entry in _entries(home / "results"):
            if now - entry.stat().st_mtime > results_days * 86400:
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def remove_staging(home: Path) -> list[Path]:
    """Remove every staging file in a home and its check/ folder (at start only)."""
    removed = []
    for folder in (home, home / "check"):
        for entry in _entries(folder):
            if entry.name.startswith(STAGING_PREFIX):
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    except FileNotFoundError:
        return []
