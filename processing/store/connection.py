"""One SQLite connection and its one door for writes: `transaction()`.

SQLite through aiosqlite, WAL mode, foreign keys on, synchronous=FULL (a run
acknowledged to a district must survive a crash). SQLite's dialect lives in
this package only; another engine would plug in behind these classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import aiosqlite

from processing.store.schema import migrate

DB_FILE = "eams.sqlite3"


def database_path(data: Path) -> Path:
    """The database inside the `[server] data` folder."""
    return data / DB_FILE


def private_database(path: Path) -> None:
    """The database file 0600 whatever the umask (SPEC §3.2): it holds every student.

    Created here (empty, which SQLite takes as a new database) rather than by
    SQLite, which would follow the umask (0644 under 022); SQLite creates the
    -wal and -shm files with the database file's mode. A file an older
    version left readable by others is narrowed too.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for existing in (path, *(path.with_name(path.name + end) for end in ("-wal", "-shm"))):
            with contextlib.suppress(FileNotFoundError, PermissionError):  # not the owner's
                if existing.stat().st_mode & 0o177:
                    os.chmod(existing, 0o600)
    else:
        os.fchmod(fd, 0o600)
        os.close(fd)


class Conflict(Exception):
    """The district changed between load and write; the run must be decided again."""


P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C", bound="Connection")


def serialized(
    method: Callable[Concatenate[C, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[C, P], Coroutine[Any, Any, T]]:
    """Run a store method alone on its connection.

    Several runs (districts) share one connection; without this, one run's
    statements would land inside another run's open transaction.
    """

    @functools.wraps(method)
    async def wrapper(self: C, /, *args: P.args, **kwargs: P.kwargs) -> T:
        async with self._lock:
            return await method(self, *args, **kwargs)

    return wrapper


class Connection:
    """One aiosqlite connection to the database at `path`.

    Built unconnected (`Store(path)`), so a server can build its parts up front
    and connect them when it starts; `await store.connect()` opens it.
    `await Store.open(path)` does both.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Self:
        store = cls(path)
        await store.connect()
        return store

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"the store for {self.path} is not connected yet")
        return self._db

    @property
    def connected(self) -> bool:
        return self._db is not None

    async def connect(self) -> None:
        """Open the connection and bring the schema up to date (once)."""
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_database(self.path)
        db = await aiosqlite.connect(self.path, isolation_level=None)
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("PRAGMA busy_timeout = 30000")
        # 64 MiB page cache: a 500,000-student upsert overflows the 2 MiB default
        # and runs twice as slow (bench/throughput.py).
        await db.execute("PRAGMA cache_size = -65536")
        self._db = db
        async with self.transaction():
            await migrate(db)

    async def close(self) -> None:
        """Close the connection if it was opened (a server that failed to start)."""
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """The one door for writes: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error.

        Callers hold the connection's lock (`serialized`). A constraint that
        fails inside is re-raised as `Conflict` by the callers that expect one.
        """
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise


def chunks(keys: Iterable[str], size: int = 900) -> Iterator[list[str]]:
    """Keys in lists of at most `size`: SQLite allows 999 bound parameters per statement."""
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
