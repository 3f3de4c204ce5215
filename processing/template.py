"""Text stream -> checked header -> numbered raw rows (SPEC §4, §5.2).

The header is the contract with the district's SIS extract: exact names in
exact order. When it differs, the file is rejected as a whole (HEADER_MISMATCH)
with the *first* difference spelled out, because "the header is wrong" alone
sends an SIS admin comparing nine column names by eye. Semicolon- and
tab-separated exports (Excel with a European list separator, "Text (Tab
delimited)") are recognized and named, since that is the usual cause.

Rows are streamed: O(1) memory in the number of rows, so a 500,000-row file
costs no more memory than a 5-row one, and bounded whatever a row's shape (a
200 MB line of commas, one 50 MB value): processing/records.py reads them.
Each row carries the physical line it starts on (header = line 1 when it is
the first line), which is what the district sees in a text editor and what
errors.csv reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

from processing.model import TEMPLATE_COLUMNS, FileCode, FileRejected, RawRow
from processing.records import Cut, KnownLine, records

_SEPARATORS = (
    (
        ";",
        'the file is separated by semicolons (";"), not commas: in Excel use '
        '"CSV (Comma delimited)" or set the list separator to a comma',
    ),
    (
        "\t",
        "the file is separated by tabs, not commas: in Excel use "
        '"CSV (Comma delimited)", not "Text (Tab delimited)"',
    ),
)
_FOLDED = tuple(name.casefold() for name in TEMPLATE_COLUMNS)
_SHOW_MAX = 40
_VISIBLE = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def read_rows(text: TextIO, known: KnownLine | None = None) -> Iterator[RawRow]:
    """Check the header now, then return an iterator over the data rows.

    The header is checked eagerly (before this returns) so a caller learns of
    a file error before it starts any work on rows. Raises FileRejected with
    EMPTY_FILE (no header) or HEADER_MISMATCH. The iterator skips blank lines
    and rows with only empty cells (Excel's ",,,,,,,," rows) and never raises:
    a record the csv module cannot parse ends the iteration as a final RawRow
    with no fields, which validation reports as a column count error.

    Records are read by processing/records.py, in memory bounded whatever
    their shape: a record of more than KEEP_FIELDS columns or with a value
    cut short has its fields as a `Cut`.

    With `known`, each physical line where a data record starts (up to
    TEXT_LIMIT characters) is first offered to `known(line number, text
    without its line break)`; when it returns True, the line is taken as that
    record and neither parsed nor yielded. That is how the digest scan skips
    unchanged lines (processing/digests.py): records are found exactly as
    without it, since csv parses every record that is not skipped, from the
    same place.
    """
    rows = records(text, known)
    _check_header(next(rows, None))
    return rows


def _check_header(header: RawRow | None) -> None:
    if header is None:
        raise FileRejected(
            FileCode.EMPTY_FILE,
            "the file has no header row: expected "
            f'"{",".join(TEMPLATE_COLUMNS)}" on the first line',
        )
    if not header.fields:  # the csv module could not parse it
        raise FileRejected(FileCode.HEADER_MISMATCH, "the header row could not be read as CSV")
    problem = header_problem(list(header.fields))
    if problem is None and isinstance(header.fields, Cut):  # names past the twelfth column
        problem = (
            f"the header row has {header.fields.columns} columns: expected "
            f'only "{",".join(TEMPLATE_COLUMNS)}"'
        )
    if problem is not None:
        raise FileRejected(FileCode.HEADER_MISMATCH, problem)


def header_problem(header: list[str]) -> str | None:
    """None when `header` is the template's; else a message naming the first difference.

    Cells are trimmed, a stray BOM character is dropped and trailing empty
    cells (Excel's ",,,") are ignored; the names themselves compare exactly.
    """
    cells = [_header_cell(cell) for cell in header]
    while cells and not cells[-1]:
        cells.pop()
    if tuple(cells) == TEMPLATE_COLUMNS:
        return None
    difference = _first_difference(cells)
    hints = []
    separator = _separator_hint(cells)
    if separator:
        hints.append(separator)
    elif [cell.casefold() for cell in cells] == list(_FOLDED):
        hints.append(
            "column names must match exactly, including upper and lower case: "
            "copy the header row from students_template.csv"
        )
    elif not any(cell.casefold() in _FOLDED for cell in cells):
        hints.append(
            "the first line must be the header row of students_template.csv "
            f'("{",".join(TEMPLATE_COLUMNS)}")'
        )
    return "; ".join([difference, *hints])


def _header_cell(cell: str) -> str:
    """Trim a header cell, and unquote it where a space or BOM kept csv from doing so."""
    cell = cell.replace("\ufeff", "").strip()
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        cell = cell[1:-1].strip()
    return cell


def _cell(found: str) -> str:
    """A header cell as quoted in the message, cut at the first ";" or tab.

    A file without its header row starts with a student; separated by
    semicolons, that whole row is one cell, Password included. Only its
    first value is shown, so a message never echoes a password.
    """
    for separator in (";", "\t"):
        if separator in found:
            return _show(found.split(separator, 1)[0]) + separator.replace("\t", "\\t") + "…"
    return _show(found)


def _first_difference(cells: list[str]) -> str:
    for index, expected in enumerate(TEMPLATE_COLUMNS):
        column = index + 1
        if index >= len(cells):
            return f'column {column}: expected "{expected}", found nothing'
        found = cells[index]
        if found != expected:
            if not found:
                return f'column {column}: expected "{expected}", found an empty cell'
            case = " (upper/lower case differs)" if found.casefold() == expected.casefold() else ""
            return f'column {column}: expected "{expected}", found "{_cell(found)}"{case}'
    for index in range(len(TEMPLATE_COLUMNS), len(cells)):
        if cells[index]:
            return f'column {index + 1}: unexpected "{_cell(cells[index])}"'
    raise AssertionError("header_problem called with the template header")  # pragma: no cover


def _separator_hint(cells: list[str]) -> str | None:
    """Name the separator when the header was clearly split by something other than commas."""
    joined = ",".join(cells)
    count, hint = max((joined.count(sep), hint) for sep, hint in _SEPARATORS)
    return hint if count else None


def _show(value: str) -> str:
    """A value as quoted in messages: control characters visible, cut at 40 characters."""
    value = value.translate(_VISIBLE)
    return value if len(value) <= _SHOW_MAX else value[:_SHOW_MAX] + "…"
