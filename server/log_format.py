"""Log lines for people (text, the default) or for log shippers (JSON, SPEC §9).

`log_format = "json"` writes one object a line on stderr: `ts`, `level`,
`logger`, `message`, and `district`, `run_id`, `remote` where the code knows
them (processing/log_context.py, or a record's own attributes). Messages are
the same in both formats; no line carries a password or a student's data
(tests/test_logs.py uploads distinctive rows and searches the whole log).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from processing.log_context import FIELDS, current

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(current())
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Route every logger to stderr in the chosen format (replacing earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
