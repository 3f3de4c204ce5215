"""What a log line is about (district, run, client address), carried by context
variables so that every line written while handling it can say so.

The edge that knows (a run's worker task, an SFTP session) binds the fields;
the JSON log formatter (server/log_format.py) adds them to each line. Nothing
here formats or writes: it only holds the fields.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

DISTRICT: ContextVar[str | None] = ContextVar("eams_district", default=None)
RUN_ID: ContextVar[str | None] = ContextVar("eams_run_id", default=None)
REMOTE: ContextVar[str | None] = ContextVar("eams_remote", default=None)

FIELDS = {"district": DISTRICT, "run_id": RUN_ID, "remote": REMOTE}


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Bind these fields (district, run_id, remote) for the lines logged inside."""
    tokens = [(FIELDS[name], FIELDS[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def bind(**fields: str | None) -> None:
    """Bind fields for the rest of the current task (an SFTP session's task)."""
    for name, value in fields.items():
        FIELDS[name].set(value)


def current() -> dict[str, str]:
    """The fields bound now, for a log line."""
    return {name: value for name, var in FIELDS.items() if (value := var.get()) is not None}
