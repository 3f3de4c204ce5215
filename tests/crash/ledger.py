"""What the districts' clients did, as the checks need it: the ledger.

The server's database says what it ran; only the clients know what they sent
and how far each request got when the server died. Every `Upload` keeps its
state as it moves (planned -> writing/closing/written/removing/renaming ->
acked | doubt | cut), so after a kill the checks can tell an acknowledged
upload (must have exactly one run) from a cut one (none) and one whose
CLOSE/RENAME was in flight (at most one).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.crash.world import digest

TERMINAL = ("acked", "doubt", "cut")
UploadKey = tuple[str, str]  # (district, run id)


@dataclass
class Upload:
    """One file a district sends (or sent), and how far it got."""

    uid: str
    district: str
    cycle: int
    data: bytes
    rows: int
    dry_run: bool = False
    style: str = "direct"  # direct | winscp | posix | preload
    bad_token: str | None = None
    kind: str = "normal"  # normal | repeat | bad-header | purge | dry | big | preload
    state: str = "planned"  # planned -> writing/closing/written/removing/renaming -> TERMINAL
    run_id: str | None = None
    file: Path | None = None  # a copy for the model

    @property
    def sig(self) -> tuple[bool, str]:
        """What its run must look like: (dry run, row count or the bad header's token)."""
        return (self.dry_run, f"bad:{self.bad_token}" if self.bad_token else f"rows:{self.rows}")


def run_sig(dry_run: bool, result: dict[str, Any] | None) -> tuple[bool, str]:
    """The `Upload.sig` a run's result.json matches."""
    if result is None:
        return (dry_run, "?")
    problem = result.get("file_error")
    if problem:
        token = re.search(r"Nom ([\w-]+)", problem.get("message", ""))
        return (dry_run, f"bad:{token.group(1)}" if token else f"file-error:{problem}")
    return (dry_run, f"rows:{result['rows']}")


@dataclass
class Victim:
    """The upload at which a cycle's kill is triggered, and how."""

    point: str
    uid: str
    fired: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Ledger:
    """Every upload per district in the order sent, and what the homes may hold.

    `expected_csv[(district, "top" | "check")]` is the set of students.csv
    fingerprints the home may show: one after an acknowledged upload, more while
    an upload is in doubt (None: no file). `window` holds the emails the mail
    server accepted whose outbox row was still pending at a kill: sender.py's
    documented duplicate window.
    """

    districts: tuple[str, ...]
    uploads: dict[str, list[Upload]] = field(default_factory=dict)
    expected_csv: dict[tuple[str, str], set[str | None]] = field(default_factory=dict)
    deleted_results: set[UploadKey] = field(default_factory=set)  # deleted on purpose
    window: set[UploadKey] = field(default_factory=set)
    client_errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for district in self.districts:
            self.uploads.setdefault(district, [])

    def all_uploads(self) -> list[Upload]:
        return [u for ups in self.uploads.values() for u in ups]

    def find(self, uid: str) -> Upload:
        return next(u for u in self.all_uploads() if u.uid == uid)

    def moving(self) -> int:
        """Uploads between their first request and a terminal state."""
        return sum(u.state not in (*TERMINAL, "planned") for u in self.all_uploads())

    def expect(self, upload: Upload, content: bytes | None, *, certain: bool) -> None:
        """The home's students.csv is `content` now (certain) or may be (in doubt)."""
        key = (upload.district, "check" if upload.dry_run else "top")
        if certain:
            self.expected_csv[key] = {digest(content)}
        else:
            self.expected_csv.setdefault(key, {None}).add(digest(content))

    def settle(self, up: Upload) -> None:
        """The server died during `up`: was its CLOSE/RENAME sent (in doubt) or not (cut)?"""
        if up.state in ("closing", "renaming"):
            up.state = "doubt"
            self.expect(up, up.data, certain=False)
        elif up.state == "removing":
            up.state = "cut"
            self.expect(up, None, certain=False)
        elif up.state in ("writing", "written"):
            up.state = "cut"

    def upload_states(self) -> Counter[str]:
        """How the uploads ended (preloads left out); a doubt says whether it got a run."""
        return Counter(
            u.state if u.state != "doubt" else f"doubt->{'run' if u.run_id else 'none'}"
            for u in self.all_uploads()
            if u.style != "preload"
        )
