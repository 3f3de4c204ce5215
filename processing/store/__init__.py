"""The database: the only package that speaks SQL (SQLite through aiosqlite).

`Store` is one connection with one door for writes (`transaction()`), made
of a table class per concept:
- `runs`: runs recorded at intake and finished in ONE transaction with
  everything they change (SPEC §5.3);
- `students`: a district's students and orders, loaded and written in bulk;
- `outbox`: queued emails and upload times (SPEC §6.4);
- `districts`: the config mirror, backups, the license invariant;
- `console`: what the web console and the API read, and the audit log;
- `schema`: ordered migrations.
The server opens several Stores on the same file: one for runs (long bulk
transactions), one for recording accepted uploads, one for the sender.
"""

from processing.store.connection import DB_FILE, Conflict, database_path
from processing.store.console import (
    ApiToken,
    AuditEntry,
    ConsoleTable,
    DistrictSummary,
    MetricFacts,
    OperationsTable,
)
from processing.store.districts import DistrictsTable
from processing.store.outbox import OutboxTable
from processing.store.runs import AlreadyFinished, RunNotFound, RunsTable
from processing.store.schema import MIGRATIONS
from processing.store.students import KnownLines, StudentsTable


class Store(RunsTable, StudentsTable, OutboxTable, DistrictsTable, ConsoleTable, OperationsTable):
    """One connection to the database: `Store(path)` then `await store.connect()`, or
    `await Store.open(path)`."""


__all__ = [
    "DB_FILE",
    "MIGRATIONS",
    "AlreadyFinished",
    "ApiToken",
    "AuditEntry",
    "Conflict",
    "DistrictSummary",
    "KnownLines",
    "MetricFacts",
    "RunNotFound",
    "Store",
    "database_path",
]
