"""A text stream -> CSV records, in memory bounded by the file, not by its shape (SPEC §3.2).

The csv module builds a whole record before it hands it over, so it only ever
sees records of up to RECORD_LIMIT characters, read as lines of at most
LINE_LIMIT; every real row is far shorter (nine values of at most 64
characters). A record found longer is read again from its start by
processing/long_records.py, which keeps only what validation and errors.csv
use. A record of more than KEEP_FIELDS columns keeps only its first
KEEP_FIELDS values too (as a `Cut`, which knows how many there were): a
rejected row's values are kept until errors.csv is written.

Blank lines (Excel's ",,,,,,,," rows, a file of empty lines) are records the
rows skip; after BLANK_RUN of them in a row, the ones ahead are skipped by one
regex over a block, not parsed one by one (200 MB of newlines: a second).
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Callable, Iterator
from typing import TextIO

from processing.long_records import KEEP_FIELDS, Cut, breaks, read_long
from processing.model import TEMPLATE_COLUMNS, RawRow

__all__ = ["KEEP_FIELDS", "Cut", "KnownLine", "records"]

RECORD_LIMIT = 64 * 1024
"""Characters of a record the csv module parses; a longer one: long_records.read_long."""
LINE_LIMIT = RECORD_LIMIT + 1
"""Characters read at once: a longer physical line comes in pieces (and exceeds RECORD_LIMIT)."""
TEXT_LIMIT = 4096
"""RawRow.text is kept for lines up to this long: a row that fits the template is far
shorter, and a hostile line is not copied once more for a digest."""
BLANK_RUN = 8
"""Blank records in a row after which the blank lines ahead are skipped in bulk."""
BLOCK = 64 * 1024
"""Characters read at once by skip_blank and long_records."""

_COLUMNS = len(TEMPLATE_COLUMNS)
_BLANK_LINES = re.compile(r"(?:[ \t,]*+(?:\r\n|\r|\n))*+")
_BREAK = re.compile(r"\r\n|\r|\n")

KnownLine = Callable[[int, str], bool]


class _Oversized(Exception):
    """Raised through csv.reader when the record it reads grows past RECORD_LIMIT."""


def records(text: TextIO, known: KnownLine | None = None) -> Iterator[RawRow]:
    """Every non-blank record of `text` as a RawRow, from the first line on.

    A record csv cannot parse ends the iteration as a RawRow with no fields.
    With `known`, each line where a record starts after the first record (the
    header), up to TEXT_LIMIT characters, is first offered to `known(line
    number, text without its line break)`; when that returns True the line is
    taken as the record, unparsed (see template.read_rows).
    """
    source = _Source(text)
    reader = csv.reader(source, strict=False)
    pieces = iter(source.read_line, "")  # the text's lines, when nothing is read ahead
    lines, text_limit, keep = source.lines, TEXT_LIMIT, KEEP_FIELDS  # (tests lower them)
    blanks = 0
    offer: KnownLine | None = None  # from the second record on
    while True:
        if offer is not None:  # the lines it knows, in a tight loop: most of a nightly file
            number, line = source.number, ""
            while source.ahead:
                line = source.piece()
                if not line or len(line) > text_limit or not offer(number + 1, line.rstrip("\r\n")):
                    break
                number, line = number + 1, ""
            else:
                for line in pieces:
                    if len(line) > text_limit or not offer(number + 1, line.rstrip("\r\n")):
                        break
                    number += 1
                else:
                    line = ""
            source.number = number
            if not line:
                return
            source.push(line)
        lines.clear()
        source.size = 0
        start = source.number + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except _Oversized:
            kept, breaks_read = read_long(lines[:], source)
            lines.clear()
            source.number = start - 1 + breaks_read
        except csv.Error:
            yield RawRow(start, ())
            return
        else:
            if not fields or not "".join(fields).strip():
                kept = None
            elif len(fields) <= keep:
                kept = tuple(fields)
            else:
                kept = _kept(fields)
        if kept is None:
            blanks += 1
            if blanks >= BLANK_RUN:
                source.skip_blank()
            continue
        blanks = 0
        single = len(lines) == 1 and source.size <= text_limit
        yield RawRow(start, kept, lines[0].rstrip("\r\n") if single else None)
        offer = known


def _kept(fields: list[str]) -> tuple[str, ...]:
    """The values of a parsed record of more than KEEP_FIELDS: a Cut, unless its extra
    ones are empty."""
    end = len(fields)
    while end > _COLUMNS:  # the last non-blank value past the ninth, 64 values at a time
        start = max(_COLUMNS, end - 64)
        if "".join(fields[start:end]).strip():
            while not fields[end - 1].strip():
                end -= 1
            break
        end = start
    if end <= KEEP_FIELDS:
        return tuple(fields[:end])
    return Cut(fields[:KEEP_FIELDS], end)


class _Source:
    """The text's physical lines for csv.reader (counted), and blocks of it for read_long.

    A line longer than LINE_LIMIT comes in pieces of LINE_LIMIT characters;
    nothing is ever cut between a CR and its LF. `lines` and `size` are what
    csv read of the record in progress, so a record found too long is read
    again from its start. Text read ahead (a line handed back, the rest of a
    block) is served first.
    """

    __slots__ = (
        "_buffer",
        "_pos",
        "_pushed",
        "_read",
        "_readline",
        "ahead",
        "lines",
        "number",
        "read_line",
        "size",
    )

    def __init__(self, text: TextIO) -> None:
        self._read = text.read
        self._readline = text.readline
        self.read_line = functools.partial(text.readline, LINE_LIMIT)  # the next piece
        self._buffer = ""  # text read ahead, served from _pos on
        self._pos = 0
        self._pushed = ""
        self.ahead = False  # _pushed or _buffer holds something
        self.number = 0  # physical lines consumed
        self.lines: list[str] = []
        self.size = 0

    def __iter__(self) -> _Source:
        return self

    def __next__(self) -> str:
        line = self.piece() if self.ahead else self.read_line()
        if not line:
            raise StopIteration
        self.size += len(line)
        self.lines.append(line)
        if self.size > RECORD_LIMIT:
            if line[-1] == "\r":
                self.lines[-1] += self._lf()
            raise _Oversized
        self.number += 1
        return line

    def piece(self) -> str:
        """The next line, or the next LINE_LIMIT characters of a longer one; "" at the end."""
        if self._pushed:
            line, self._pushed = self._pushed, ""
            self.ahead = bool(self._buffer)
            return line
        if not self._buffer:
            return self.read_line()
        buffer, pos = self._buffer, self._pos
        found = _BREAK.search(buffer, pos, pos + LINE_LIMIT)
        end = found.end() if found else min(len(buffer), pos + LINE_LIMIT)
        self._advance(end)
        line = buffer[pos:end]
        if found is None and len(line) < LINE_LIMIT:  # the rest of the line is in the text
            line += self._readline(LINE_LIMIT - len(line))
        if line[-1] == "\r":  # its LF may be next
            line += self._lf()
        return line

    def push(self, line: str) -> None:
        """Hand back a line `piece` returned: it is the next one again."""
        self._pushed = line
        self.ahead = True

    def block(self) -> str:
        """The next BLOCK characters or so ("" at the end), never ending between CR and LF."""
        if self._buffer:
            text = self._buffer[self._pos : self._pos + BLOCK]
            self._advance(self._pos + len(text))
        else:
            text = self._read(BLOCK)
        if text.endswith("\r"):
            text += self._lf()
        return text

    def unread(self, text: str) -> None:
        if text:
            self._buffer = text + self._buffer[self._pos :]
            self._pos = 0
            self.ahead = True

    def _lf(self) -> str:
        """After a CR: the LF that follows it, consumed, or ""."""
        if self._buffer:
            after = self._buffer[self._pos]
            self._advance(self._pos + 1)
        else:
            after = self._read(1)
        if after == "\n":
            return after
        self.unread(after)
        return ""

    def _advance(self, pos: int) -> None:
        if pos >= len(self._buffer):
            self._buffer, self._pos = "", 0
            self.ahead = bool(self._pushed)
        else:
            self._pos = pos

    def skip_blank(self) -> None:
        """Consume the blank lines ahead (only spaces, tabs and commas), a block at a time."""
        if self._pushed:
            return
        while block := self.block():
            if block.count("\n") == len(block) or block.count("\r\n") * 2 == len(block):
                self.number += block.count("\n")  # only LFs or only CRLFs: no regex needed
                continue
            end = _BLANK_LINES.match(block).end()  # type: ignore[union-attr]  # matches ""
            self.number += breaks(block[:end])
            if end < len(block):
                self.unread(block[end:])
                return
