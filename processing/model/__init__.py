"""Every value type of the processing pipeline, in one place (the package's public face).

- `rows`: the template, error codes, and a file's rows as read and as validated;
- `students`: a stored student, an order's license tally, a district's state;
- `runs`: the clock, an accepted upload (`UploadJob`), a run's record, counts,
  errors and its result (SPEC §6.2);
- `outbox`: queued and pending emails, a district's upload status.

Pure values: nothing here does I/O or imports another processing module.
"""

from processing.model.outbox import OutboxItem, QueuedEmail, UploadStatus
from processing.model.rows import (
    PASSWORD_COLUMN,
    TEMPLATE_COLUMNS,
    TEMPLATE_HEADER,
    ErrorCode,
    FileCode,
    FileProblem,
    FileRejected,
    RawRow,
    Row,
    RowCode,
    RowError,
    error_code,
)
from processing.model.runs import (
    Counts,
    FileError,
    FileFacts,
    Licenses,
    PlannedError,
    RunRecord,
    RunResult,
    UploadJob,
    format_run_id,
    iso,
    parse_iso,
    utc_now,
)
from processing.model.students import DistrictState, DistrictWrite, OrderTally, Student

__all__ = [
    "PASSWORD_COLUMN",
    "TEMPLATE_COLUMNS",
    "TEMPLATE_HEADER",
    "Counts",
    "DistrictState",
    "DistrictWrite",
    "ErrorCode",
    "FileCode",
    "FileError",
    "FileFacts",
    "FileProblem",
    "FileRejected",
    "Licenses",
    "OrderTally",
    "OutboxItem",
    "PlannedError",
    "QueuedEmail",
    "RawRow",
    "Row",
    "RowCode",
    "RowError",
    "RunRecord",
    "RunResult",
    "Student",
    "UploadJob",
    "UploadStatus",
    "error_code",
    "format_run_id",
    "iso",
    "parse_iso",
    "utc_now",
]
