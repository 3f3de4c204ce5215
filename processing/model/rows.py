"""A file's rows: the template, the error codes, rows as read and as validated.

decode/template produce `RawRow`s (or raise `FileRejected`), validate turns a
`RawRow` into a `Row` or `RowError`s, rules turn (`Student`, `Row`) into a
`Decision`. Everything here is immutable; codes are the SPEC §5.1/§5.2 names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from attrs import frozen

TEMPLATE_COLUMNS: tuple[str, ...] = (
    "School Code",
    "Student ID",
    "First Name",
    "Last Name",
    "Grade",
    "Username",
    "Password",
    "Class Name",
    "Status",
)
TEMPLATE_HEADER = ",".join(TEMPLATE_COLUMNS)
PASSWORD_COLUMN = TEMPLATE_COLUMNS.index("Password")


class RowCode(StrEnum):
    """Row errors (SPEC §5.1): the row is skipped, the rest of the file goes on."""

    STUDENT_EXISTS = "STUDENT_EXISTS"
    STUDENT_NOT_FOUND = "STUDENT_NOT_FOUND"
    NO_LICENSE_AVAILABLE = "NO_LICENSE_AVAILABLE"
    INVALID_STATUS = "INVALID_STATUS"
    MISSING_FIELD = "MISSING_FIELD"
    INVALID_FIELD = "INVALID_FIELD"
    FIELD_TOO_LONG = "FIELD_TOO_LONG"
    UNKNOWN_SCHOOL = "UNKNOWN_SCHOOL"
    INVALID_GRADE = "INVALID_GRADE"
    GRADE_NOT_IN_PROGRAM = "GRADE_NOT_IN_PROGRAM"
    USERNAME_TAKEN = "USERNAME_TAKEN"
    PASSWORD_REQUIRED = "PASSWORD_REQUIRED"
    DUPLICATE_STUDENT_ID = "DUPLICATE_STUDENT_ID"
    COLUMN_COUNT = "COLUMN_COUNT"


class FileCode(StrEnum):
    """File errors (SPEC §5.2): nothing in the file is applied."""

    EMPTY_FILE = "EMPTY_FILE"
    HEADER_MISMATCH = "HEADER_MISMATCH"
    NOT_TEXT = "NOT_TEXT"
    FILE_TOO_LARGE = "FILE_TOO_LARGE"


ErrorCode = RowCode | FileCode


def error_code(text: str) -> ErrorCode:
    """The code a stored error names (row codes and file codes share no name)."""
    return RowCode(text) if text in RowCode.__members__ else FileCode(text)


@frozen
class RowError:
    code: RowCode
    message: str


@frozen
class FileProblem:
    code: FileCode
    message: str


class FileRejected(Exception):
    """Raised by decode/template when the file as a whole is at fault."""

    def __init__(self, code: FileCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.problem = FileProblem(code, message)


class RawRow(NamedTuple):
    """One CSV record as read: `line` is the physical line it starts on (header = 1).

    `fields` are the original values, untrimmed, exactly as many as the
    record had (COLUMN_COUNT is validate's job). `text` is the record's line
    as written, without its line break, when the record is exactly one
    physical line (almost always); None when a quoted field spans lines. It
    is what a row's line digest is taken over (processing/digests.py).

    RawRow, Row (and rules.Student/Decision) are NamedTuples rather than
    frozen attrs classes: they are made once per row, 500,000 times a run,
    and a NamedTuple is built about four times faster (bench/processing.py).
    """

    line: int
    fields: tuple[str, ...]
    text: str | None = None


class Row(NamedTuple):
    """A row that passed field validation: trimmed and normalized."""

    line: int
    school_code: str
    student_id: str
    first_name: str
    last_name: str
    grade: str  # "K", "1".."12"
    username: str
    password: str | None  # None when blank: keep the current one
    class_name: str
    status: str  # "A", "D", "X" or "I"
