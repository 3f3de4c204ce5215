"""Text stream -> checked header -> numbered raw rows (SPEC §4, §5.2).

The header is the contract with the district's SIS extract: exact names in
exact order. When it differs, the file is rejected as a whole (HEADER_MISMATCH)
with the *first* difference spelled out, because "the header is wrong" alone
sends an SIS admin comparing nine column names by eye. Semicolon- and
tab-separated exports (Excel with a European list separator, "Text (Tab
delimited)") are recognized and named, since that is the usual cause.

Rows are streamed: O(1) memory in the number of rows, so a 500,000-row file
costs no more memory than a 5-row one. Each row carries the physical line it
starts on (header = line 1 when it is the first line), which is what the
district sees in a text editor and what errors.csv reports.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

from processing.model import TEMPLATE_COLUMNS, FileCode, FileRejected, RawRow

if TYPE_CHECKING:
    from _csv import Reader

# The default limit (128 KiB) would turn one long field into a csv.Error. The
# file size is capped by decode (max_upload_mb), so "unlimited" is safe; the
# C long on some platforms is 32-bit, hence the fallback.
try:
    csv.field_size_limit(sys.maxsize)
except OverflowError:  # pragma: no cover - 32-bit C long
    csv.field_size_limit(2**31 - 1)

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
TEXT_LIMIT = 4096
"""RawRow.text is kept for lines up to this long: a row that fits the template is far
shorter, and a hostile 50 MB line is not copied once more for a digest."""
_VISIBLE = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}


def read_rows(text: TextIO, known: KnownLine | None = None) -> Iterator[RawRow]:
    """Check the header now, then return an iterator over the data rows.

    The header is checked eagerly (before this returns) so a caller learns of
    a file error before it starts any work on rows. Raises FileRejected with
    EMPTY_FILE (no header) or HEADER_MISMATCH. The iterator skips blank lines
    and rows with only empty cells (Excel's ",,,,,,,," rows) and never raises:
    a record the csv module cannot parse ends the iteration as a final RawRow
    with no fields, which validation reports as a column count error.

    With `known`, each physical line where a record starts (up to TEXT_LIMIT
    characters) is first offered to `known(line number, text without its
    line break)`; when it returns True, the line is taken as that record and
    neither parsed nor yielded. That is how the digest scan skips unchanged
    lines (processing/digests.py): records are found exactly as without it,
    since csv parses every record that is not skipped, from the same place.
    """
    lines = _Lines(text)
    reader = csv.reader(lines, strict=False)
    _check_header(reader)
    if known is None:
        return _records(reader, lines)
    return _records_skipping(reader, lines, known)


KnownLine = Callable[[int, str], bool]


class _Lines:
    """The text's physical lines for csv.reader, remembering the last one handed out.

    A line read past the reader (by `_records_skipping`) can be handed back
    with `push`, so the reader parses the record that starts on it.
    """

    __slots__ = ("_pending", "last", "source")

    def __init__(self, text: TextIO) -> None:
        self.source = iter(text)
        self.last = ""
        self._pending: str | None = None

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._pending
        if line is None:
            line = next(self.source)
        else:
            self._pending = None
        # a hostile 50 MB line is not kept alive a moment longer than the csv module keeps it
        self.last = line if len(line) <= TEXT_LIMIT else ""
        return line

    def push(self, line: str) -> None:
        self._pending = line

    def take_text(self) -> str | None:
        """The last line without its line break (None if it was over TEXT_LIMIT)."""
        line = self.last
        return line.rstrip("\r\n") if line else None


def _check_header(reader: Reader) -> None:
    try:
        for header in reader:
            if _has_content(header):
                break
        else:
            raise FileRejected(
                FileCode.EMPTY_FILE,
                "the file has no header row: expected "
                f'"{",".join(TEMPLATE_COLUMNS)}" on the first line',
            )
    except csv.Error as error:
        raise FileRejected(
            FileCode.HEADER_MISMATCH, f"the header row could not be read as CSV: {error}"
        ) from None
    problem = header_problem(header)
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


def _records(reader: Reader, lines: _Lines) -> Iterator[RawRow]:
    """Yield non-blank records with the physical line each one starts on.

    A record that took exactly one line (of at most TEXT_LIMIT characters)
    carries that line's text without its line break, for the line digest.
    """
    line_num = reader.line_num
    while True:
        start = line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error:
            yield RawRow(start, ())
            return
        line_num = reader.line_num
        if fields and _has_content(fields):
            text = lines.take_text() if line_num == start else None
            yield RawRow(start, tuple(fields), text)


def _records_skipping(reader: Reader, lines: _Lines, known: KnownLine) -> Iterator[RawRow]:
    """`_records`, offering each record's first line to `known` before parsing it."""
    number = reader.line_num  # physical lines consumed so far
    for line in lines.source:
        number += 1
        if len(line) <= TEXT_LIMIT and known(number, line.rstrip("\r\n")):
            continue
        lines.push(line)  # the reader parses the record that starts here
        before = reader.line_num
        try:
            fields = next(reader)
        except csv.Error:
            yield RawRow(number, ())
            return
        used = reader.line_num - before
        start, number = number, number + used - 1
        if fields and _has_content(fields):
            yield RawRow(start, tuple(fields), lines.take_text() if used == 1 else None)


def _has_content(fields: list[str]) -> bool:
    """False for a blank record (Excel's ",,,,,,,,"); one C-level join, not a loop."""
    return bool("".join(fields).strip())


def _show(value: str) -> str:
    """A value as quoted in messages: control characters visible, cut at 40 characters."""
    value = value.translate(_VISIBLE)
    return value if len(value) <= _SHOW_MAX else value[:_SHOW_MAX] + "…"
