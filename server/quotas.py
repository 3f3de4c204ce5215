"""What one SFTP session or one district may hold at once (SPEC §3.2).

The server serves hundreds of districts from one process, so everything a
signed-in client can make it hold is bounded, and the bound answers with a
clear refusal instead of a stall for everybody else:

- `READ_MAX`: a READ returns at most 256 KiB, a shorter read as OpenSSH's
  sftp-server gives (clients ask again for the rest). Without it a
  READ(len=2^32-1) made the server read a whole 200 MB file into memory for
  one reply, and 15 pipelined ones took it from 95 MB to 2.5 GB.
- `SessionHandles`: at most `max_handles_per_session` files and folders open
  in one SFTP session (one district held 5,000).
- `uploads_in_progress`: at most `temp_files_per_district` uploads in
  progress per district (150 temporary files of 2 MB and 5,000 empty ones
  were accepted in 29 s, each kept a day and each allowed 200 MB).
- `RefusalLog`: every refusal is logged with the address and the district,
  but a client hammering a limit cannot flood the log either.

No asyncssh here: `server/sftp.py` turns `LimitReached` into an SFTP status.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from server.jail import is_temp_name

log = logging.getLogger("eams.sftp")

READ_MAX = 256 * 1024
STAGING_PREFIX = ".eams-staging-"  # a direct upload's bytes until its CLOSE (server/uploads.py)
REFUSALS_LOGGED_PER_SESSION = 20


class LimitReached(Exception):
    """A bound of SPEC §3.2; the message is shown to the client as it is."""


def too_many_handles(limit: int) -> str:
    return f"too many open files in this session (limit {limit}): close some first"


def too_many_temps(limit: int) -> str:
    return f"too many temporary uploads: at most {limit} at once; rename or delete one first"


def too_many_uploads(limit: int) -> str:
    return (
        f"too many uploads in progress: at most {limit} at once, temporary uploads included;"
        " finish or delete one first"
    )


def uploads_in_progress(home: Path) -> int:
    """The district's uploads in progress: what `temp_files_per_district` bounds.

    Counted on disk, in the two folders where uploads may be written (/ and
    check/): client temporary names (`.filepart`, `.part`, `.partial`, `.tmp`;
    they outlive the session, WinSCP resumes them) and the hidden staging files
    of direct students.csv uploads whose handle is open (up to 200 MB each too,
    and a district may hold 8 sessions of 32 handles). The disk is the truth
    across sessions and restarts; the callers check and create in one step on
    the event loop, so two sessions cannot both take the last place.
    """
    count = 0
    for folder in (home, home / "check"):
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if _counts(entry):
                        count += 1
        except FileNotFoundError:
            continue
    return count


def _counts(entry: os.DirEntry[str]) -> bool:
    if not (entry.name.startswith(STAGING_PREFIX) or is_temp_name(entry.name)):
        return False
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


class _Folder:
    """An open folder handle (OPENDIR): counted for as long as asyncssh holds it.

    asyncssh has no server hook for closing a folder handle: its CLOSE (and the
    end of a session) drops the iterator that `scandir()` returned. This
    wrapper is kept in a weak set, so it stops counting the moment it is
    dropped (tests/server/test_asyncssh_contract_sftp.py pins that asyncssh
    keeps no other reference).
    """

    __slots__ = ("__weakref__", "_names")

    def __init__(self, names: AsyncIterator[Any]) -> None:
        self._names = names

    def __aiter__(self) -> _Folder:
        return self

    async def __anext__(self) -> Any:
        return await self._names.__anext__()


class SessionHandles:
    """The files and folders one SFTP session has open, against `max_handles_per_session`.

    Per session, as SPEC §3.2 says: a dropped connection releases everything
    with the session object (asyncssh closes its files, drops its folders).
    The limit is read at each open, so a SIGHUP reload applies to new opens.
    """

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.files = 0
        self._folders: weakref.WeakSet[_Folder] = weakref.WeakSet()

    @property
    def open(self) -> int:
        return self.files + len(self._folders)

    def check(self) -> None:
        """Raise LimitReached if one more handle would pass the limit."""
        limit = self._limit()
        if self.open >= limit:
            raise LimitReached(too_many_handles(limit))

    def file_opened(self) -> None:
        self.files += 1

    def file_closed(self) -> None:
        self.files = max(0, self.files - 1)

    def folder(self, names: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """Count a folder handle (after `check()`); returns what asyncssh should hold."""
        folder = _Folder(names)
        self._folders.add(folder)
        return folder


def shown(name: object, limit: int = 120) -> str:
    """A client-supplied name for a log line: repr() (so a newline or an escape is
    printed as `\\n`, `\\x1b`, never acted on) and cut to `limit` characters."""
    if isinstance(name, bytes | str) and len(name) > limit:
        return f"{name[:limit]!r}... ({len(name)} long)"
    return repr(name)


class RefusalLog:
    """Log lines for one session's refusals: address, district, what was refused.

    Client-supplied names go through `shown()`, so a name cannot forge a log line
    or carry a terminal escape. At most REFUSALS_LOGGED_PER_SESSION lines per
    session, then one line saying the rest are counted only, and the count at
    the end of the session: one client cannot fill the disk with log lines.
    """

    def __init__(self, address: str, district_id: str) -> None:
        self.address = address
        self.district_id = district_id
        self.count = 0

    def refused(self, request: str, name: object, reason: str) -> None:
        self.count += 1
        if self.count <= REFUSALS_LOGGED_PER_SESSION:
            log.warning(
                "refused %s %s from %s (district %s): %s",
                request,
                shown(name),
                self.address,
                self.district_id,
                reason,
            )
        if self.count == REFUSALS_LOGGED_PER_SESSION:
            log.warning(
                "further refusals in this session of %s from %s are counted, not logged",
                self.district_id,
                self.address,
            )

    def session_ended(self) -> None:
        if self.count > REFUSALS_LOGGED_PER_SESSION:
            log.warning(
                "session of %s from %s ended after %d refused requests",
                self.district_id,
                self.address,
                self.count,
            )
