"""The districts' homes: made ready at start and on reload (`prepare_home`), and what
uploads leave behind in them, and when it goes (SPEC §3, §3.2).

- Every hour (`sweep`): client temporary uploads and staging files older than a
  day, result files past `results_retention_days`.
- At start, before the port opens (`remove_staging`): every staging file. None
  can belong to a live upload then, so they are what a killed server left (a
  28 MB one survived two restarts when only the day-old sweep removed them).
  Client temporary files stay: WinSCP resumes them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from processing.model import TEMPLATE_HEADER
from server.jail import is_temp_name
from server.quotas import STAGING_PREFIX

TEMP_MAX_AGE = 24 * 3600


def prepare_home(home: Path) -> None:
    """Create a district's folder (SPEC §3): template, check/, results/."""
    for folder in (home, home / "check", home / "results"):
        folder.mkdir(parents=True, exist_ok=True)
    template = home / "students_template.csv"
    if not template.exists() or template.read_text(encoding="utf-8").strip() != TEMPLATE_HEADER:
        template.unlink(missing_ok=True)
        template.write_text(TEMPLATE_HEADER + "\r\n", encoding="utf-8")
    os.chmod(template, 0o444)


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
