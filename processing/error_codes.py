"""Every error code a district can see, what it means and how to fix it: one table.

The codes themselves are `RowCode` and `FileCode` (processing/model/rows.py);
this module adds, for each, a sentence saying what went wrong and a one-line
fix written for the district's SIS administrator (in the SIS, or in Excel when
the file passed through it). Everything that explains a code reads it from
here: the "How to fix" lines of `result.txt` (processing/reports.py) and of
the emails (processing/notify.py), the web console once it exists, and the
error-code table of docs/district-guide.md, which tests/test_docs.py keeps
identical to this one (`python -m processing.error_codes` prints it).

Text rules, since the same words go into a text file, an email and a Markdown
table: one line each, plain text, no `|`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from attrs import frozen

from processing.model import ErrorCode, FileCode, RowCode, error_code


@frozen
class ErrorHelp:
    code: ErrorCode
    meaning: str
    fix: str

    @property
    def is_file_error(self) -> bool:
        return isinstance(self.code, FileCode)


_ENTRIES = (
    # ---- row errors: the row is skipped, the other rows are applied ----
    ErrorHelp(
        RowCode.STUDENT_EXISTS,
        "Status X (create a deactivated student) on a row whose Student ID already exists "
        "in the district.",
        "Send an existing student with A, D or I; X only creates new students, so map the "
        "SIS's status to X only for students MY Access has never seen.",
    ),
    ErrorHelp(
        RowCode.STUDENT_NOT_FOUND,
        "Status D or I on a row whose Student ID does not exist in the district.",
        "Create the student first with A (active) or X (deactivated); if the student should "
        "exist, check the Student ID for a typo or a dropped leading zero.",
    ),
    ErrorHelp(
        RowCode.NO_LICENSE_AVAILABLE,
        "The row needs a license (a new active student, an activation, or a move onto the "
        "Enterprise order) and every license of the order is in use; nothing on the row "
        "was changed.",
        "Deactivate students who have left (status D) to free their licenses, or ask your "
        "MY Access account manager for more; then send the row again.",
    ),
    ErrorHelp(
        RowCode.INVALID_STATUS,
        "Status is not one of the letters A, D, X or I (a word such as Active, or a Greek "
        "or Cyrillic look-alike letter pasted from a PDF).",
        "Put the single letter A, D, X or I in the Status column, typed rather than pasted "
        "from a document.",
    ),
    ErrorHelp(
        RowCode.MISSING_FIELD,
        "A required value is empty: School Code, Student ID, First Name, Last Name, Grade, "
        "Username or Status.",
        "Fill in the column the message names in the SIS; only Class Name, and Password for "
        "a student who already exists, may be left blank.",
    ),
    ErrorHelp(
        RowCode.INVALID_FIELD,
        "A value has a character or a form its column does not allow (a space or an accent "
        "in a Student ID or Username, a control character, a password under 4 characters, "
        "a Student ID that Excel turned into 1.23457E+11).",
        "Correct the value the message quotes in the SIS; if Excel rewrote long numbers as "
        "1.23457E+11, format the column as Text before saving, or export straight from the "
        "SIS.",
    ),
    ErrorHelp(
        RowCode.FIELD_TOO_LONG,
        "A value is longer than its column allows (Student ID 32 characters; names, "
        "Username, Password and Class Name 64).",
        "Shorten the value in the SIS, or export a shorter field for that column.",
    ),
    ErrorHelp(
        RowCode.UNKNOWN_SCHOOL,
        "School Code is not one of the district's schools as configured in MY Access; "
        "codes compare as text, so 0101 and 101 differ.",
        "Use the codes your account manager set up; if Excel dropped the leading zeros, "
        "format the column as Text; ask your account manager to add a new school first.",
    ),
    ErrorHelp(
        RowCode.INVALID_GRADE,
        "Grade is not K (or KG or 0) or a number from 1 to 12.",
        "Export K, KG, 0 or 1-12 (03 is fine); map other values such as PK, 13 or "
        "Grade 3 in the SIS export.",
    ),
    ErrorHelp(
        RowCode.GRADE_NOT_IN_PROGRAM,
        "The grade is valid but not one of the grades the district's MY Access program covers.",
        "Leave students of other grades out of the extract, or ask your account manager "
        "to add the grade to the program.",
    ),
    ErrorHelp(
        RowCode.USERNAME_TAKEN,
        "Another student, in this district or in any other MY Access district, already "
        "has this username (upper and lower case count as the same).",
        "Give the student a different username in the SIS, for example with a district "
        "prefix or a number.",
    ),
    ErrorHelp(
        RowCode.PASSWORD_REQUIRED,
        "The row would create a new student (status A or X) but its Password is blank.",
        "Send a password of 4 to 64 characters for every new student; a blank password "
        "only keeps the current one of a student who already exists.",
    ),
    ErrorHelp(
        RowCode.DUPLICATE_STUDENT_ID,
        "The same Student ID is on more than one row of the file; none of those rows was applied.",
        "Send each student once: remove the extra rows in the extract (often one per class "
        "or per enrolment).",
    ),
    ErrorHelp(
        RowCode.COLUMN_COUNT,
        "The row does not have the template's nine columns, usually because of a comma "
        "inside an unquoted value or a quote that is never closed.",
        'Enclose values that contain a comma in double quotes ("Smith, Jr."), close every '
        "quote, and keep the nine columns; Excel's Save As CSV quotes for you.",
    ),
    # ---- file errors: nothing in the file is applied ----
    ErrorHelp(
        FileCode.EMPTY_FILE,
        "The file is empty or has only blank lines: there is no header row.",
        "Check that the SIS export ran and wrote its data before the upload; the file "
        "starts with the header row of students_template.csv.",
    ),
    ErrorHelp(
        FileCode.HEADER_MISMATCH,
        "The first row is not exactly the template's header: a column name, its case or "
        "its position differs, or the file is separated by semicolons or tabs.",
        "Copy the header row from students_template.csv and save as CSV (Comma delimited) "
        "or CSV UTF-8, not with semicolons or tabs.",
    ),
    ErrorHelp(
        FileCode.NOT_TEXT,
        "The file is not CSV text: an Excel workbook (.xlsx or .xls), a ZIP archive, "
        "other binary data, or UTF-16 without a byte order mark.",
        "In Excel use Save As, CSV UTF-8 (Comma delimited), and upload that file rather "
        "than the workbook.",
    ),
    ErrorHelp(
        FileCode.FILE_TOO_LARGE,
        "The file is larger than the server's upload limit (200 MB unless your account "
        "manager set another).",
        "Split the students into several files uploaded one after the other (each is "
        "processed on its own), or ask your account manager to raise the limit.",
    ),
)

ERROR_CODES: Mapping[ErrorCode, ErrorHelp] = MappingProxyType({e.code: e for e in _ENTRIES})
"""Every RowCode and FileCode, in the order the district guide lists them."""

_missing = [code for code in (*RowCode, *FileCode) if code not in ERROR_CODES]
if _missing or len(_ENTRIES) != len(ERROR_CODES):  # a new code without its help, or one twice
    raise RuntimeError(f"processing/error_codes.py: no single entry for {_missing}")


def fix_line(code: str) -> str:
    """`How to fix CODE: ...` for one code."""
    return f"How to fix {code}: {ERROR_CODES[error_code(code)].fix}"


def fix_lines(codes: Iterable[str]) -> list[str]:
    """One `How to fix` line per distinct code in `codes`, in the table's order."""
    present = {error_code(code) for code in codes}
    return [fix_line(code) for code in ERROR_CODES if code in present]


def markdown_table() -> str:
    """The table as docs/district-guide.md carries it (tests/test_docs.py compares them)."""
    lines = ["| Code | Kind | What it means | How to fix it |", "|---|---|---|---|"]
    for entry in ERROR_CODES.values():
        kind = "file" if entry.is_file_error else "row"
        lines.append(f"| `{entry.code}` | {kind} | {entry.meaning} | {entry.fix} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - prints the table for the district guide
    print(markdown_table(), end="")
