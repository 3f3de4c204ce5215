"""A CSV record too long for the csv module, read in blocks and kept in part (SPEC §3.2).

processing/records.py hands over a record once it passes RECORD_LIMIT
characters: the csv module would build it whole (a 200 MB line of commas is
200 million fields, 1.6 GB; one 50 MB field a 200 MB UCS-4 buffer plus the
value). `_Record` is the csv module's state machine for its default dialect
with strict=False, run over blocks of text with str.find, str.count and one
regex, so a hostile 200 MB record costs seconds and a few MB. It keeps what
validation and errors.csv use: the first KEEP_FIELDS values (one longer than
KEEP_CHARS once trimmed is cut, see `Cut`), how many columns there are, and
whether any holds something. Such a record is always rejected (no column may
be that long), and where it ends, so where the next record starts and on
which line, is exactly where the csv module ends it
(tests/processing/test_records.py compares the two on generated text).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Protocol

from processing.model import TEMPLATE_COLUMNS

KEEP_FIELDS = len(TEMPLATE_COLUMNS) + 3
"""Values kept of a record with more columns (errors.csv shows School Code and Student ID)."""
KEEP_CHARS = 1024
"""Characters kept of a long value of a long record, from its first non-blank one."""

_COLUMNS = len(TEMPLATE_COLUMNS)
# What str.strip() removes (every str.isspace() character is below U+3001), and commas.
SPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
_SPACE_OR_COMMA = SPACE + ","
# Values past KEEP_FIELDS in bulk: each quoted without quotes or commas inside (text may
# follow the closing quote), or unquoted without quotes, and followed by a comma; so
# every comma in such a run ends one value.
_PLAIN_RUN = re.compile(r'(?:(?:"[^",]*+"[^",\r\n]*+|[^",\r\n]*+),)++')
_QUOTED_TEXT = re.compile(r'(?:[^"]++|"")*+')  # inside quotes, up to the closing quote
_CUT_MARK = "…"


class Cut(tuple[str, ...]):
    """The values of a record kept in part, with what validation needs of the rest.

    `columns` is how many columns the record has (empty ones past the
    template's nine and past the last value are not counted: Excel's
    ",,,"); only the first KEEP_FIELDS values are kept. `lengths` maps the
    column of each value cut short to its length after trimming; a cut value
    ends with "…", so it can never pass validation as the shorter value kept.
    """

    columns: int
    lengths: Mapping[int, int]

    def __new__(
        cls, values: Iterable[str] = (), columns: int = 0, lengths: Mapping[int, int] | None = None
    ) -> Cut:
        self = super().__new__(cls, values)
        self.columns = columns
        self.lengths = lengths or {}
        return self


class Blocks(Protocol):
    """Where the rest of the text comes from (records._Source)."""

    def block(self) -> str:
        """The next characters, "" at the end; never ending between a CR and its LF."""

    def unread(self, text: str) -> None:
        """Put back what follows the record."""


def read_long(pending: list[str], source: Blocks) -> tuple[tuple[str, ...] | None, int]:
    """Read a record from its start: the lines csv read of it, then `source`.

    Returns its values (None when it is blank) and the line breaks read.
    """
    record = _Record()
    for index, text in enumerate(pending):
        end = record.feed(text)
        if end >= 0:  # (csv read on, so it cannot end before the last of them)
            source.unread("".join([text[end:], *pending[index + 1 :]]))
            break
    else:
        while True:
            text = source.block()
            if not text:
                record.end_of_file()
                break
            end = record.feed(text)
            if end >= 0:
                source.unread(text[end:])
                break
    return record.values(), record.breaks


def breaks(text: str) -> int:
    """Line breaks in `text` (CR, LF and CRLF each end a line)."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _unquoted_end(text: str, start: int) -> int:
    """Where unquoted text from `start` ends: at a line break, or after the comma before a
    quoted value (memchr-speed finds: a regex takes 5 s over 200 MB of commas)."""
    stop = len(text)
    for mark in ("\n", "\r"):
        found = text.find(mark, start, stop)
        if found >= 0:
            stop = found
    if text.find('"', start, stop) >= 0:
        found = text.find(',"', start, stop)
        if found >= 0:
            stop = found + 1
    return stop


def _content_end(text: str) -> int:
    """Just past the last character of `text` that is neither blank nor a comma; 0 if none."""
    if not text.replace(",", "").strip():
        return 0
    end = len(text)
    while True:  # rstrip with many characters is slow: only over the last 4096 with content
        start = max(0, end - 4096)
        part = text[start:end]
        if part.replace(",", "").strip():
            return start + len(part.rstrip(_SPACE_OR_COMMA))
        end = start


_START_RECORD, _START_FIELD, _UNQUOTED, _QUOTED, _QUOTE_IN_QUOTED = range(5)


class _Record:
    """One CSV record read as csv.reader reads it (default dialect, strict=False), in blocks.

    Only the first KEEP_FIELDS values are kept, and of each at most
    KEEP_CHARS characters; the others are counted and say whether they hold
    anything. `breaks` counts the line breaks read, the record's own included.
    """

    def __init__(self) -> None:
        self.state = _START_RECORD
        self.breaks = 0
        self.fields = 0  # values ended so far
        self.kept: list[str] = []
        self.lengths: dict[int, int] = {}
        self.last = -1  # the last value that is not blank
        self._new_value()

    def _new_value(self) -> None:
        self.length = 0
        self.raw: list[str] = []  # the value as sent, up to KEEP_CHARS
        self.raw_length = 0
        self.body: list[str] = []  # from its first non-blank character, up to KEEP_CHARS
        self.body_length = 0
        self.first = -1  # where its first non-blank character is
        self.end = 0  # just past its last non-blank character

    def feed(self, text: str) -> int:
        """Read on in `text`: the index just past the record's line break, or -1 (it goes on)."""
        i, size = 0, len(text)
        while i < size:
            state = self.state
            if state == _QUOTED:  # up to the closing quote, line breaks and "" included
                stop = _QUOTED_TEXT.match(text, i).end()  # type: ignore[union-attr]  # matches ""
                part = text[i:stop]
                self.breaks += breaks(part)
                self.add(part.replace('""', '"') if '""' in part else part)
                if stop == size:
                    return -1
                self.state = _QUOTE_IN_QUOTED
                i = stop + 1
                continue
            char = text[i]
            if char in "\r\n":  # the end of the line ends the record
                if state != _START_RECORD:
                    self.save()
                self.breaks += 1
                return i + 2 if text.startswith("\r\n", i) else i + 1
            if state == _QUOTE_IN_QUOTED:
                if char == '"':  # "" is a quote inside quotes
                    self.add('"')
                    self.state = _QUOTED
                    i += 1
                elif char == ",":
                    self.save()
                    self.state = _START_FIELD
                    i += 1
                else:  # text after the closing quote joins the value (strict=False)
                    self.state = _UNQUOTED
                continue
            if state != _UNQUOTED:  # a value starts
                run = _PLAIN_RUN.match(text, i) if self.fields >= KEEP_FIELDS else None
                if run is not None:
                    self.plain_run(text[i : run.end()])
                    i = run.end()
                    continue
                if char == '"':
                    self.state = _QUOTED
                    i += 1
                    continue
                self.state = _UNQUOTED
            stop = _unquoted_end(text, i)
            self.unquoted(text, i, stop)
            i = stop
        return -1

    def end_of_file(self) -> None:
        if self.state != _START_RECORD:
            self.save()

    def plain_run(self, run: str) -> None:
        """A _PLAIN_RUN of values past KEEP_FIELDS: counted, and the last with content found."""
        self.breaks += breaks(run)
        values = run.replace('"', "")  # the values' text, separated by their commas
        content = _content_end(values)
        if content:
            self.last = self.fields + values.count(",", 0, content)
        self.fields += run.count(",")

    def unquoted(self, text: str, start: int, stop: int) -> None:
        """Unquoted text of one line: each comma ends a value; counted, not split, past KEEP."""
        comma = text.find(",", start, stop)
        if comma < 0:
            self.add(text[start:stop])
            return
        self.add(text[start:comma])
        self.save()
        last = text.rfind(",", comma, stop)
        at = comma + 1
        while at <= last and self.fields < KEEP_FIELDS:
            comma = text.find(",", at, last + 1)
            self.add(text[at:comma])
            self.save()
            at = comma + 1
        if at <= last:  # values not kept: count them, and find the last one with content
            between = text[at:last]
            content = _content_end(between)
            if content:
                self.last = self.fields + between.count(",", 0, content)
            self.fields += between.count(",") + 1
        self.add(text[last + 1 : stop])
        self.state = _START_FIELD if last + 1 == stop else _UNQUOTED

    def add(self, text: str) -> None:
        """More of the value being read."""
        if not text:
            return
        offset = self.length
        self.length += len(text)
        if self.fields >= KEEP_FIELDS:  # only whether it holds anything matters
            if self.first < 0 and text.strip(SPACE):
                self.first = offset
            return
        if self.raw_length < KEEP_CHARS:
            part = text[: KEEP_CHARS - self.raw_length]
            self.raw.append(part)
            self.raw_length += len(part)
        if self.first < 0:
            lead = len(text) - len(text.lstrip(SPACE))
            if lead == len(text):
                return
            self.first = offset + lead
            offset, text = offset + lead, text[lead:]
        if self.body_length < KEEP_CHARS:
            part = text[: KEEP_CHARS - self.body_length]
            self.body.append(part)
            self.body_length += len(part)
        content = len(text.rstrip(SPACE))
        if content:
            self.end = offset + content

    def save(self) -> None:
        """The value being read ends."""
        index = self.fields
        if index < KEEP_FIELDS:
            if self.length <= KEEP_CHARS:
                value = "".join(self.raw)
            else:  # the same value once trimmed, unless it is cut short
                value = "".join(self.body)
                trimmed = self.end - self.first if self.first >= 0 else 0
                if trimmed > KEEP_CHARS:
                    value += _CUT_MARK
                    self.lengths[index] = trimmed
            self.kept.append(value)
        if self.first >= 0:
            self.last = index
        self.fields += 1
        self._new_value()

    def values(self) -> tuple[str, ...] | None:
        """The record's values as `records` yields them; None when it is blank."""
        if self.last < 0:
            return None
        columns = self.fields
        if columns > KEEP_FIELDS:  # as _kept counts them
            columns = max(_COLUMNS, self.last + 1)
        lengths = {column: n for column, n in self.lengths.items() if column < columns}
        if columns <= KEEP_FIELDS and not lengths:
            return tuple(self.kept[:columns])
        return Cut(self.kept[:columns], columns, lengths)
