"""processing/records.py (and long_records.py) read records where and as the csv module does.

Long records (over RECORD_LIMIT) are read by `_Record`, blank lines skipped in
bulk; neither may change what a district gets: the same records, on the same
lines, with the same values (kept in part where records.py says so). The
limits are lowered here so that tiny texts take every path; the code is the
one that runs with the real limits.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processing import long_records, records
from processing.model import RawRow
from processing.records import Cut

Known = Callable[[int, str], bool]


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Limits small enough that generated texts cross every one of them."""
    monkeypatch.setattr(records, "RECORD_LIMIT", 12)
    monkeypatch.setattr(records, "LINE_LIMIT", 13)
    monkeypatch.setattr(records, "BLOCK", 5)
    monkeypatch.setattr(long_records, "KEEP_CHARS", 3)
    monkeypatch.setattr(records, "TEXT_LIMIT", 10)
    monkeypatch.setattr(records, "BLANK_RUN", 2)


def _lines(text: str) -> Iterator[str]:
    """Physical lines as a TextIOWrapper(newline="") gives them: CR, LF and CRLF end one."""
    return iter(io.StringIO(text, newline=""))


def reference(text: str, known: Known | None = None) -> list[RawRow]:
    """What records.records must yield: csv.reader on whole lines, a new one per record
    (it starts each record afresh anyway), and the rules in records.py's docstrings."""
    lines = list(_lines(text))
    out: list[RawRow] = []
    at = 0
    while at < len(lines):
        if known is not None and out:
            line = lines[at]
            if len(line) <= records.TEXT_LIMIT and known(at + 1, line.rstrip("\r\n")):
                at += 1
                continue
        consumed: list[str] = []

        def feed(start: int = at, consumed: list[str] = consumed) -> Iterator[str]:
            for line in lines[start:]:
                consumed.append(line)
                yield line

        fields = next(csv.reader(feed(), strict=False))
        start, at = at + 1, at + len(consumed)
        if not fields or not "".join(fields).strip():
            continue
        size = sum(map(len, consumed))
        long = size > records.RECORD_LIMIT
        out.append(RawRow(start, _expected(fields, long), _text(consumed, size, long)))
    return out


def _text(consumed: list[str], size: int, long: bool) -> str | None:
    if long or len(consumed) != 1 or size > records.TEXT_LIMIT:
        return None
    return consumed[0].rstrip("\r\n")


def _expected(fields: list[str], long: bool) -> tuple[str, ...]:
    columns = len(fields)
    if columns > long_records.KEEP_FIELDS:  # empty values past the ninth and the last do not count
        while columns > 9 and not fields[columns - 1].strip():
            columns -= 1
    kept, lengths = [], {}
    for index, value in enumerate(fields[: min(columns, long_records.KEEP_FIELDS)]):
        if long and len(value) > long_records.KEEP_CHARS:
            body = value.lstrip()[: long_records.KEEP_CHARS]
            if len(value.strip()) > long_records.KEEP_CHARS:
                body += "…"
                lengths[index] = len(value.strip())
            value = body
        kept.append(value)
    if columns <= long_records.KEEP_FIELDS and not lengths:
        return tuple(kept)
    return Cut(kept, columns, lengths)


def read(text: str, known: Known | None = None) -> list[RawRow]:
    return list(records.records(io.StringIO(text, newline=""), known))


def same(found: list[RawRow], expected: list[RawRow]) -> None:
    assert found == expected
    for got, want in zip(found, expected, strict=True):  # == ignores what a Cut knows
        assert type(got.fields) is type(want.fields)
        if isinstance(got.fields, Cut) and isinstance(want.fields, Cut):
            assert (got.fields.columns, dict(got.fields.lengths)) == (
                want.fields.columns,
                dict(want.fields.lengths),
            )


CSV_TEXT = st.text(alphabet=st.sampled_from(',"\r\n ab\t'), max_size=120)
VALUES = st.sampled_from(["", " ", "a", "ab c", "  abcdef  ", '"', '"q"', "x,y", "l\r\nm"])


@settings(max_examples=1500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=CSV_TEXT)
def test_records_are_the_csv_modules_whatever_the_text(small_limits: None, text: str) -> None:
    same(read(text), reference(text))


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=CSV_TEXT, known=st.sets(st.sampled_from(["", "a", "ab", "a,b", '"a"', " "])))
def test_known_lines_are_taken_where_records_start(
    small_limits: None, text: str, known: set[str]
) -> None:
    """Each line where a record starts after the first is offered; a known one is skipped.

    Blank lines skipped in bulk are not offered (no stored digest is a blank line's).
    """
    offered: list[tuple[int, str]] = []

    def is_known(number: int, line: str) -> bool:
        offered.append((number, line))
        return line in known

    found = read(text, is_known)
    made = list(offered)
    offered.clear()
    same(found, reference(text, is_known))

    def not_blank(offers: list[tuple[int, str]]) -> list[tuple[int, str]]:
        return [(n, line) for n, line in offers if line.strip(" \t,")]

    assert set(made) <= set(offered)
    assert not_blank(made) == not_blank(offered)


@settings(max_examples=500)
@given(text=st.text(alphabet=st.sampled_from(',,,,"\r\n a'), max_size=300))
def test_records_at_the_real_limits(text: str) -> None:
    """Many columns in a short record: the csv module's path, with KEEP_FIELDS."""
    same(read(text), reference(text))


@settings(max_examples=500, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.lists(VALUES, max_size=30), max_size=8),
    newline=st.sampled_from(["\r\n", "\n", "\r"]),
    quote_all=st.booleans(),
)
def test_records_of_written_rows(
    small_limits: None, rows: list[list[str]], newline: str, quote_all: bool
) -> None:
    out = io.StringIO()
    if quote_all:
        csv.writer(out, lineterminator=newline, quoting=csv.QUOTE_ALL).writerows(rows)
    else:
        csv.writer(out, lineterminator=newline).writerows(rows)
    same(read(out.getvalue()), reference(out.getvalue()))


@pytest.mark.parametrize(
    "text",
    [
        "a,b\r" + "\n" * 40 + ",,,\n" * 40 + "c\r\n",  # blank runs across blocks
        "h\r\n" + "a" * 40 + "\r\nb\r\n",  # a long line, its CRLF at a piece's edge
        "h\n" + "a" * 12 + "\r\nb\n",
        "h\n" + "a" * 11 + "\r\nb\n",
        "h\n" + "a" * 13 + "\r\r\nb\n",
        'h\n"' + "a\r\n" * 20 + '",b\nc\n',  # a quoted value over many lines
        "h\n" + '"a",' * 30 + "\nc\n",  # plain quoted values past KEEP_FIELDS
        "h\n" + '"a\n",' * 30 + '"",""\nc\n',
        "h\n" + '"",' * 30 + '"x"\nc\n',
        "h\n" + ",,,,,,,,,,,," + '"x",' + '"",' * 150 + '" "\nc\n',  # the last value, far back
        "h\n" + ",,,,,,,,,,,," + '"x","y",' + '"",' * 3 + '" "\nc\n',
        "h\n" + "," * 40 + "x," * 3 + "\nc\n",
        'h\n"' + '""' * 20 + '",b\n',  # doubled quotes in a long quoted value
        "h\n" + "," * 12 + '"a"x,' * 10 + '"b""c",d\n',  # text after quotes; "" ends a run
        "h\n" + "," * 12 + 'a,"b",' * 10 + '"\r\n",\n',
        "h\n" + "," * 12 + '"",' * 10 + ' , ,"  " ,\n',  # a blank run ends the record
        "h\n" + " " * 30 + "ab" + " " * 30 + ",b\n",  # long, but short once trimmed
        'h\n"' + " " * 30 + '"\n',
    ],
)
def test_records_at_the_edges(small_limits: None, text: str) -> None:
    same(read(text), reference(text))


@pytest.mark.parametrize(
    "text",
    [
        "h\n" + "x," * 20 + "\n",
        "h\n" + "x," * 3 + "," * 100 + "y\n",
        "h\n" + "x," * 10 + " ," * 100 + "\r\n",
        "h\n" + "a,b,c,d,e,f,g,h,i,j," + ",\t" * 200 + "\nz\n",
    ],
)
def test_many_columns_in_a_short_record(text: str) -> None:
    same(read(text), reference(text))


def test_real_limits_on_a_long_line_and_many_blank_ones() -> None:
    """The real constants: a 200,000-column line, 100,000 blank lines, then a row."""
    text = "h\r\n" + "x," * 100_000 + "y\r\n" + "\r\n" * 50_000 + ",,,\n" * 50_000 + "a,b\r\n"
    found = read(text)
    assert found[1] == RawRow(2, ("x",) * long_records.KEEP_FIELDS)
    assert isinstance(found[1].fields, Cut) and found[1].fields.columns == 100_001
    assert found[2] == RawRow(100_003, ("a", "b"), "a,b")


def test_space_is_what_strip_removes() -> None:
    assert set(long_records.SPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


def test_a_cut_survives_a_pickle() -> None:
    import pickle

    cut = Cut(("a", "b…"), 20, {1: 5000})
    again = pickle.loads(pickle.dumps(cut))
    assert again == cut and (again.columns, again.lengths) == (20, {1: 5000})
