"""template.read_rows: header check, physical line numbers, CSV quoting, streaming."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processing.decode import open_text
from processing.long_records import KEEP_CHARS, KEEP_FIELDS, Cut
from processing.model import TEMPLATE_COLUMNS, TEMPLATE_HEADER, FileCode, FileRejected, RawRow
from processing.template import read_rows

LIMIT = 200 * 1024 * 1024
SEMICOLON_HINT = (
    'the file is separated by semicolons (";"), not commas: in Excel use '
    '"CSV (Comma delimited)" or set the list separator to a comma'
)


def rows(tmp_path: Path, content: str | bytes) -> list[RawRow]:
    """Write a real file, decode it and read every row, as the runner does."""
    path = tmp_path / "students.csv"
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    text, _ = open_text(path, LIMIT)
    with text:
        return list(read_rows(text))


def header_error(tmp_path: Path, header: str) -> FileRejected:
    with pytest.raises(FileRejected) as caught:
        rows(tmp_path, header + "\r\n0101,S1,Ann,Lee,5,ann,,,A\r\n")
    assert caught.value.problem.code == FileCode.HEADER_MISMATCH
    return caught.value


def fields(*values: str) -> tuple[str, ...]:
    return tuple(values)


ANN = fields("0101", "S1", "Ann", "Lee", "5", "ann", "", "", "A")
BOB = fields("0101", "S2", "Bob", "Ray", "6", "bob", "pw12", "Room 1", "D")
ANN_LINE, BOB_LINE = ",".join(ANN), ",".join(BOB)  # RawRow.text: the record's one line


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"], ids=["CRLF", "LF", "CR"])
def test_line_endings(tmp_path: Path, newline: str) -> None:
    lines = [TEMPLATE_HEADER, ",".join(ANN), ",".join(BOB)]
    assert rows(tmp_path, newline.join(lines) + newline) == [
        RawRow(2, ANN, ANN_LINE),
        RawRow(3, BOB, BOB_LINE),
    ]


def test_no_newline_at_end(tmp_path: Path) -> None:
    content = TEMPLATE_HEADER + "\n" + ",".join(ANN)
    assert rows(tmp_path, content) == [RawRow(2, ANN, ANN_LINE)]


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"], ids=["CRLF", "LF", "CR"])
def test_quoted_fields_and_line_numbers_after_them(tmp_path: Path, newline: str) -> None:
    content = newline.join(
        [
            TEMPLATE_HEADER,
            '0101,S1,"Smith, Jr.","O""Brien",5,ann,,"Room 1',
            'second line",A',
            ",".join(BOB),
            '0101,S3,"a',
            "",
            'b",Lee,5,cid,,,A',
            ",".join(ANN),
        ]
    )
    room = f"Room 1{newline}second line"
    assert rows(tmp_path, content + newline) == [
        RawRow(2, fields("0101", "S1", "Smith, Jr.", 'O"Brien', "5", "ann", "", room, "A")),
        RawRow(4, BOB, BOB_LINE),
        RawRow(5, fields("0101", "S3", f"a{newline}{newline}b", "Lee", "5", "cid", "", "", "A")),
        RawRow(8, ANN, ANN_LINE),
    ]


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    content = "\r\n".join(
        [TEMPLATE_HEADER, "", ",".join(ANN), ",,,,,,,,", "   ", " , ,\t,", ",".join(BOB), "", ""]
    )
    assert rows(tmp_path, content) == [RawRow(3, ANN, ANN_LINE), RawRow(7, BOB, BOB_LINE)]


def test_values_are_not_trimmed_here(tmp_path: Path) -> None:
    content = TEMPLATE_HEADER + "\n 0101 ,S1,Ann ,Lee,5,ann,,, a \n"
    assert rows(tmp_path, content)[0].fields == fields(
        " 0101 ", "S1", "Ann ", "Lee", "5", "ann", "", "", " a "
    )


def test_header_only_file_is_valid(tmp_path: Path) -> None:
    assert rows(tmp_path, TEMPLATE_HEADER + "\r\n") == []
    assert rows(tmp_path, TEMPLATE_HEADER) == []
    assert rows(tmp_path, TEMPLATE_HEADER + "\r\n\r\n,,,,,,,,\r\n") == []


def test_header_tolerates_spaces_trailing_cells_quotes_and_a_second_bom(tmp_path: Path) -> None:
    header = "\ufeff" + ", ".join(f'"{name}"' for name in TEMPLATE_COLUMNS) + ",,,"
    content = "\ufeff" + header + "\r\n" + ",".join(ANN) + "\r\n"
    assert rows(tmp_path, content) == [RawRow(2, ANN, ANN_LINE)]


def test_excel_windows_1252_file(tmp_path: Path) -> None:
    content = TEMPLATE_HEADER + "\r\n0101,S1,José,Zoë,5,jose,,,A\r\n"
    assert rows(tmp_path, content.encode("cp1252"))[0].fields[2:4] == ("José", "Zoë")


def test_utf16_file(tmp_path: Path) -> None:
    content = TEMPLATE_HEADER + "\r\n" + ",".join(ANN) + "\r\n"
    assert rows(tmp_path, b"\xff\xfe" + content.encode("utf-16-le")) == [RawRow(2, ANN, ANN_LINE)]


def test_header_swapped_columns(tmp_path: Path) -> None:
    columns = list(TEMPLATE_COLUMNS)
    columns[2], columns[3] = columns[3], columns[2]
    error = header_error(tmp_path, ",".join(columns))
    assert error.problem.message == 'column 3: expected "First Name", found "Last Name"'


def test_header_missing_column(tmp_path: Path) -> None:
    error = header_error(tmp_path, ",".join(TEMPLATE_COLUMNS[:8]))
    assert error.problem.message == 'column 9: expected "Status", found nothing'


def test_header_extra_column(tmp_path: Path) -> None:
    error = header_error(tmp_path, TEMPLATE_HEADER + ",Foo")
    assert error.problem.message == 'column 10: unexpected "Foo"'
    error = header_error(tmp_path, TEMPLATE_HEADER + ",,Foo,")
    assert error.problem.message == 'column 11: unexpected "Foo"'


def test_header_empty_cell(tmp_path: Path) -> None:
    error = header_error(tmp_path, TEMPLATE_HEADER.replace("Username", ""))
    assert error.problem.message == 'column 6: expected "Username", found an empty cell'


def test_header_differs_only_by_case(tmp_path: Path) -> None:
    error = header_error(tmp_path, TEMPLATE_HEADER.replace("First Name", "First name"))
    message = error.problem.message
    assert message.startswith('column 3: expected "First Name", found "First name"')
    assert "upper/lower case" in message
    error = header_error(tmp_path, TEMPLATE_HEADER.upper())
    assert "including upper and lower case" in error.problem.message


def test_semicolon_separated(tmp_path: Path) -> None:
    error = header_error(tmp_path, ";".join(TEMPLATE_COLUMNS))
    message = error.problem.message
    assert message.startswith('column 1: expected "School Code", found "School Code;…"')
    assert message.endswith(SEMICOLON_HINT)


def test_tab_separated(tmp_path: Path) -> None:
    error = header_error(tmp_path, "\t".join(TEMPLATE_COLUMNS))
    message = error.problem.message
    assert "the file is separated by tabs, not commas" in message
    assert "\t" not in message  # shown as \x09, not as a raw tab
    assert "semicolons" not in message


def test_long_header_value_is_truncated(tmp_path: Path) -> None:
    error = header_error(tmp_path, "x" * 100 + "," + TEMPLATE_HEADER)
    assert f'found "{"x" * 40}…"' in error.problem.message


def test_data_without_header(tmp_path: Path) -> None:
    error = header_error(tmp_path, ",".join(ANN))
    message = error.problem.message
    assert message.startswith('column 1: expected "School Code", found "0101"')
    assert "the first line must be the header row" in message


def test_no_header_at_all() -> None:
    for content in ["", "\r\n\r\n", ",,,,,,,,\r\n , \r\n"]:
        with pytest.raises(FileRejected) as caught:
            read_rows(io.StringIO(content, newline=""))
        assert caught.value.problem.code == FileCode.EMPTY_FILE


def test_header_is_checked_eagerly(tmp_path: Path) -> None:
    path = tmp_path / "students.csv"
    path.write_text("Foo,Bar\r\n")
    text, _ = open_text(path, LIMIT)
    with text, pytest.raises(FileRejected):
        read_rows(text)  # no iteration needed


def test_rows_are_streamed(tmp_path: Path) -> None:
    path = tmp_path / "students.csv"
    path.write_text(TEMPLATE_HEADER + "\n" + (",".join(ANN) + "\n") * 10_000)
    text, _ = open_text(path, LIMIT)
    with text:
        iterator = read_rows(text)
        assert iter(iterator) is iterator  # an iterator, not a list
        first = next(iterator)
        assert first == RawRow(2, ANN, ANN_LINE)
        assert text.buffer.tell() < path.stat().st_size  # the rest is not read yet
        assert sum(1 for _ in iterator) == 9_999


def test_unterminated_quote_at_end_of_file(tmp_path: Path) -> None:
    content = TEMPLATE_HEADER + "\r\n" + ",".join(ANN) + '\r\n0101,S2,"Bob,Ray,6\r\nbob,,,A\r\n'
    assert rows(tmp_path, content) == [
        RawRow(2, ANN, ANN_LINE),
        RawRow(3, fields("0101", "S2", "Bob,Ray,6\r\nbob,,,A\r\n")),
    ]


def test_one_megabyte_field(tmp_path: Path) -> None:
    name = "N" * 1_000_000
    content = TEMPLATE_HEADER + f"\r\n0101,S1,{name},Lee,5,ann,,,A\r\n" + ",".join(BOB)
    result = rows(tmp_path, content)
    # kept in part (processing/records.py): enough for the error, with its length
    assert result[0].fields[2] == name[:KEEP_CHARS] + "…"
    assert isinstance(result[0].fields, Cut) and result[0].fields.lengths == {2: 1_000_000}
    assert result[1] == RawRow(3, BOB, BOB_LINE)


def test_hundred_thousand_columns(tmp_path: Path) -> None:
    content = TEMPLATE_HEADER + "\r\n" + ",".join(["x"] * 100_000) + "\r\n" + ",".join(BOB)
    result = rows(tmp_path, content)
    assert isinstance(result[0].fields, Cut) and result[0].fields.columns == 100_000
    assert len(result[0].fields) == KEEP_FIELDS  # the rest is counted, not kept
    assert result[1] == RawRow(3, BOB, BOB_LINE)


def test_csv_error_ends_with_an_empty_row(tmp_path: Path) -> None:
    """The csv module's only remaining error here is the field size limit: lower it briefly."""
    content = TEMPLATE_HEADER + "\r\n" + ",".join(ANN) + "\r\n0101,S2,Bobbbbbbbbbbbbbbbbb\r\n"
    path = tmp_path / "students.csv"
    path.write_text(content + ",".join(BOB) + "\r\n")
    text, _ = open_text(path, LIMIT)
    with text:
        iterator = read_rows(text)
        old = csv.field_size_limit(15)
        try:
            result = list(iterator)
        finally:
            csv.field_size_limit(old)
    assert result == [RawRow(2, ANN, ANN_LINE), RawRow(3, ())]


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.text(max_size=300).map(lambda s: s.encode("utf-8")),
        st.binary(max_size=300).map(lambda b: (TEMPLATE_HEADER + "\r\n").encode() + b),
        st.text(alphabet=st.sampled_from(',"\r\n ;\tAé\x00\x81'), max_size=200).map(
            lambda s: (TEMPLATE_HEADER + "\n" + s).encode("utf-8")
        ),
        st.binary(max_size=300).map(lambda b: b"\xff\xfe" + b),
    )
)
def test_arbitrary_bytes_give_rows_or_a_file_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "students.csv"
    path.write_bytes(data)
    try:
        text, label = open_text(path, LIMIT)
    except FileRejected:
        return
    with text:
        try:
            result = list(read_rows(text))
        except FileRejected:
            return
    assert label in {"utf-8", "utf-8 (BOM)", "utf-16", "windows-1252"}
    previous = 1
    for row in result:
        assert isinstance(row, RawRow)
        assert row.line > previous
        assert all(isinstance(value, str) for value in row.fields)
        previous = row.line
