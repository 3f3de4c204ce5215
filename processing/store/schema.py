"""The database schema: ordered migrations, applied at open, recorded in `schema_version`.

A migration is never edited once released: a change is a new entry at the end.
"""

from __future__ import annotations

import aiosqlite

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE districts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        run_seq INTEGER NOT NULL DEFAULT 0,
        version INTEGER NOT NULL DEFAULT 0,
        last_upload_at TEXT,
        stale_alerted INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE schools (
        district_id TEXT NOT NULL REFERENCES districts(id),
        code TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (district_id, code)
    );
    CREATE TABLE orders (
        district_id TEXT NOT NULL REFERENCES districts(id),
        id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('enterprise', 'regular', 'past')),
        licenses INTEGER NOT NULL CHECK (licenses >= 0),
        used INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
        PRIMARY KEY (district_id, id)
    );
    CREATE TABLE students (
        district_id TEXT NOT NULL REFERENCES districts(id),
        student_id TEXT NOT NULL,
        school_code TEXT NOT NULL,
        first_name TEXT NOT NULL,
        last_name TEXT NOT NULL,
        grade TEXT NOT NULL,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL UNIQUE,
        class_name TEXT NOT NULL,
        active INTEGER NOT NULL,
        order_id TEXT NOT NULL,
        password_enc BLOB,
        password_mac BLOB,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (district_id, student_id),
        FOREIGN KEY (district_id, order_id) REFERENCES orders(district_id, id)
    );
    CREATE TABLE runs (
        district_id TEXT NOT NULL REFERENCES districts(id),
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL CHECK (state IN
            ('queued', 'approved', 'done', 'failed', 'held', 'discarded')),
        dry_run INTEGER NOT NULL,
        order_id TEXT,
        source TEXT NOT NULL,
        spool_path TEXT,
        received_at TEXT NOT NULL,
        finished_at TEXT,
        result_json TEXT,
        PRIMARY KEY (district_id, run_id)
    );
    CREATE INDEX runs_by_state ON runs (state, district_id, seq);
    CREATE TABLE run_errors (
        district_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        pos INTEGER NOT NULL,
        line INTEGER,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        run_values TEXT NOT NULL,
        PRIMARY KEY (district_id, run_id, pos),
        FOREIGN KEY (district_id, run_id) REFERENCES runs(district_id, run_id)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        district_id TEXT,
        run_id TEXT,
        kind TEXT NOT NULL,
        recipients TEXT NOT NULL,
        message BLOB NOT NULL,
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        sent_at TEXT,
        last_error TEXT
    );
    CREATE INDEX outbox_pending ON outbox (sent_at, next_attempt_at);
    """,
    # 2: outbox states (pending/sent/failed) and when a district was first configured
    """
    ALTER TABLE outbox ADD COLUMN state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sent', 'failed'));
    DROP INDEX outbox_pending;
    CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
    ALTER TABLE districts ADD COLUMN configured_at TEXT;
    """,
    # 3: students clustered by (district, student id): a district's rows are stored
    # together, so loading 500,000 of them is one sequential read
    """
    CREATE TABLE students_clustered (
        district_id TEXT NOT NULL REFERENCES districts(id),
        student_id TEXT NOT NULL,
        school_code TEXT NOT NULL,
        first_name TEXT NOT NULL,
        last_name TEXT NOT NULL,
        grade TEXT NOT NULL,
        username TEXT NOT NULL,
        username_key TEXT NOT NULL UNIQUE,
        class_name TEXT NOT NULL,
        active INTEGER NOT NULL,
        order_id TEXT NOT NULL,
        password_enc BLOB,
        password_mac BLOB,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (district_id, student_id),
        FOREIGN KEY (district_id, order_id) REFERENCES orders(district_id, id)
    ) WITHOUT ROWID;
    INSERT INTO students_clustered SELECT district_id, student_id, school_code, first_name,
        last_name, grade, username, username_key, class_name, active, order_id,
        password_enc, password_mac, updated_at FROM students;
    DROP TABLE students;
    ALTER TABLE students_clustered RENAME TO students;
    """,
    # 4: whether a finished run's result files were written (rewritten at start if not)
    """
    ALTER TABLE runs ADD COLUMN results_written INTEGER NOT NULL DEFAULT 1;
    """,
    # 5: the digest of the line that last restated each student (processing/digests.py)
    """
    ALTER TABLE students ADD COLUMN line_digest BLOB;
    """,
    # 6: full sync (SPEC §5.6): the students a run deactivated, or would have, for being
    # absent from the file, as they were stored (missing.csv, the web console, the API)
    """
    CREATE TABLE run_missing (
        district_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        pos INTEGER NOT NULL,
        student_id TEXT NOT NULL,
        school_code TEXT NOT NULL,
        first_name TEXT NOT NULL,
        last_name TEXT NOT NULL,
        grade TEXT NOT NULL,
        username TEXT NOT NULL,
        class_name TEXT NOT NULL,
        PRIMARY KEY (district_id, run_id, pos),
        FOREIGN KEY (district_id, run_id) REFERENCES runs(district_id, run_id)
    );
    """,
    # 7: the web console (SPEC §8): who decided a held run and when; the audit log;
    # runs by district in order (paginated pages); students found by a
    # case-insensitive prefix of their id, username or names, in a district or
    # across districts (processing/store/console.py): per district, so a district's
    # search reads its own students only, and on the column itself (NOCASE, not
    # lower(...)), so a prefix's students are read from the index alone (the unique
    # index on username_key does neither: SQLite reads the table for its district)
    """
    ALTER TABLE runs ADD COLUMN decided_by TEXT;
    ALTER TABLE runs ADD COLUMN decided_at TEXT;
    CREATE INDEX runs_by_seq ON runs (district_id, seq);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        who TEXT NOT NULL,
        action TEXT NOT NULL,
        district_id TEXT,
        detail TEXT NOT NULL,
        address TEXT NOT NULL
    );
    CREATE INDEX students_by_id ON students (district_id, student_id COLLATE NOCASE);
    CREATE INDEX students_by_username ON students (district_id, username_key);
    CREATE INDEX students_by_first ON students (district_id, first_name COLLATE NOCASE);
    CREATE INDEX students_by_last ON students (district_id, last_name COLLATE NOCASE);
    """,
    # 8: API tokens for operators' scripts (SPEC §9): only a hash of each is kept
    """
    CREATE TABLE api_tokens (
        name TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        last_used_at TEXT
    );
    """,
)


async def migrate(db: aiosqlite.Connection) -> None:
    """Apply the migrations the database has not seen, in one transaction."""
    await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    rows = list(await db.execute_fetchall("SELECT version FROM schema_version"))
    current = rows[0][0] if rows else 0
    if not rows:
        await db.execute("INSERT INTO schema_version VALUES (0)")
    for number, script in enumerate(MIGRATIONS, start=1):
        if number > current:
            for statement in statements(script):
                await db.execute(statement)
            await db.execute("UPDATE schema_version SET version = ?", (number,))


def statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]
