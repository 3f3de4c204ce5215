"""What a district sees of its folder: names and attributes, with no user lookups.

asyncssh's `SFTPAttrs.from_local` looks up the owner and group of every file
(`getpwuid`, `getgrgid`: on a machine without a name cache each reads
/etc/passwd or /etc/group), on the event loop. Polling scripts list
`results/` every few seconds, and at 02:00 two thousand of them do
(bench/capacity.py); every file in a district's folder belongs to the
district anyway, so it is shown as the district's, which also keeps the
server's own account names out of listings.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator

from asyncssh import (
    FILEXFER_TYPE_DIRECTORY,
    FILEXFER_TYPE_REGULAR,
    FILEXFER_TYPE_SYMLINK,
    FILEXFER_TYPE_UNKNOWN,
    SFTPAttrs,
    SFTPName,
)

HIDDEN_PREFIX = b".eams-"  # staging files of uploads in progress: never listed


def local_attrs(result: os.stat_result, owner: str) -> SFTPAttrs:
    """`SFTPAttrs.from_local(result)` with `owner` as owner and group, looked up nowhere."""
    mode = result.st_mode
    if stat.S_ISREG(mode):
        kind = FILEXFER_TYPE_REGULAR
    elif stat.S_ISDIR(mode):
        kind = FILEXFER_TYPE_DIRECTORY
    elif stat.S_ISLNK(mode):
        kind = FILEXFER_TYPE_SYMLINK
    else:
        kind = FILEXFER_TYPE_UNKNOWN
    atime, atime_ns = divmod(result.st_atime_ns, 1_000_000_000)
    mtime, mtime_ns = divmod(result.st_mtime_ns, 1_000_000_000)
    ctime, ctime_ns = divmod(result.st_ctime_ns, 1_000_000_000)
    return SFTPAttrs(
        type=kind,
        size=result.st_size,
        uid=result.st_uid,
        gid=result.st_gid,
        owner=owner,
        group=owner,
        permissions=mode,
        atime=atime,
        atime_ns=atime_ns,
        crtime=mtime,
        crtime_ns=mtime_ns,
        mtime=mtime,
        mtime_ns=mtime_ns,
        ctime=ctime,
        ctime_ns=ctime_ns,
        nlink=result.st_nlink,
    )


async def folder_names(real: bytes, owner: str) -> AsyncIterator[SFTPName]:
    """A folder's listing: staging names skipped before they are stat'ed, and a file
    that vanishes between listing and stat (a result file being written) left out
    instead of failing the whole listing (bench/load.py saw that as a "No such
    file" for a district polling results/)."""
    here = local_attrs(os.stat(real), owner)
    for name in (b".", b".."):  # ".." of a folder shown as itself: never outside
        yield SFTPName(name, attrs=here)
    with os.scandir(real) as entries:
        for entry in entries:
            name = os.fsencode(entry.name)
            if name.startswith(HIDDEN_PREFIX):
                continue
            try:
                result = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield SFTPName(name, attrs=local_attrs(result, owner))
