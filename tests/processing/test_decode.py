"""decode.open_text: encodings, the whole-file UTF-8 check, and file-level rejections."""

from __future__ import annotations

import io
import random
import zipfile
from pathlib import Path

import pytest

from processing.decode import CHUNK, open_text
from processing.model import TEMPLATE_HEADER, FileCode, FileRejected

MB = 1024 * 1024
LIMIT = 200 * MB
HEADER = TEMPLATE_HEADER + "\r\n"
ROW = "0101,S1,José,Núñez,5,jose.nunez,,Room 5,A\r\n"


def write(tmp_path: Path, data: bytes, name: str = "students.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def decode(path: Path, limit: int = LIMIT) -> tuple[str, str]:
    """Read the whole stream (tests only: production code streams it)."""
    text, label = open_text(path, limit)
    with text:
        return text.read(), label


def rejected(path: Path, limit: int = LIMIT) -> FileRejected:
    with pytest.raises(FileRejected) as caught:
        open_text(path, limit)
    return caught.value


def test_plain_utf8(tmp_path: Path) -> None:
    content = HEADER + ROW
    assert decode(write(tmp_path, content.encode("utf-8"))) == (content, "utf-8")


def test_ascii_is_utf8(tmp_path: Path) -> None:
    assert decode(write(tmp_path, HEADER.encode("ascii")))[1] == "utf-8"


def test_utf8_bom_from_excel_is_skipped(tmp_path: Path) -> None:
    content = HEADER + ROW
    text, label = decode(write(tmp_path, b"\xef\xbb\xbf" + content.encode("utf-8")))
    assert label == "utf-8 (BOM)"
    assert text == content  # no \ufeff left in front of "School Code"


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_with_bom(tmp_path: Path, codec: str) -> None:
    content = HEADER + ROW + "0101,S2,Zoë,Łukasz,K,zoe,,,A\r\n"
    bom = b"\xff\xfe" if codec == "utf-16-le" else b"\xfe\xff"
    assert decode(write(tmp_path, bom + content.encode(codec))) == (content, "utf-16")


def test_utf16_odd_trailing_byte_does_not_raise(tmp_path: Path) -> None:
    data = b"\xff\xfe" + HEADER.encode("utf-16-le") + b"A"
    text, label = decode(write(tmp_path, data))
    assert label == "utf-16"
    assert text.startswith(HEADER)


def test_windows_1252_accented_names(tmp_path: Path) -> None:
    content = HEADER + ROW
    data = content.encode("cp1252")
    assert b"Jos\xe9" in data
    assert decode(write(tmp_path, data)) == (content, "windows-1252")


def test_windows_1252_undefined_bytes_decode_like_latin1(tmp_path: Path) -> None:
    data = HEADER.encode() + b"0101,S1,Ana\x81\x8d\x8f\x90\x9d,Lee\xe9,5,ana,,,A\r\n"
    text, label = decode(write(tmp_path, data))
    assert label == "windows-1252"
    assert "Ana\x81\x8d\x8f\x90\x9d,Leeé" in text


def test_windows_1252_euro_sign(tmp_path: Path) -> None:
    data = HEADER.encode() + b"0101,S1,Ana,Lee,5,ana,,Cost \x80,A\r\n"
    text, label = decode(write(tmp_path, data))
    assert label == "windows-1252"
    assert "Cost €" in text


def _filler(size: int) -> bytes:
    """ASCII rows totalling at least `size` bytes."""
    row = b"0101,S1,Ann,Lee,5,ann.lee,,,A\r\n"
    return row * (size // len(row) + 1)


def test_whole_file_is_checked_not_only_the_first_chunk(tmp_path: Path) -> None:
    # First MiB: pure ASCII. Then a valid UTF-8 "é", then (later) a cp1252 "é":
    # the file is not UTF-8 and must be read as windows-1252 from the start.
    data = (
        HEADER.encode()
        + _filler(CHUNK + 1000)
        + "0101,S2,Renée,Lee,5,renee,,,A\r\n".encode()
        + _filler(CHUNK // 2)
        + b"0101,S3,Ren\xe9e,Lee,5,renee2,,,A\r\n"
    )
    text, label = decode(write(tmp_path, data))
    assert label == "windows-1252"
    assert "Ren\xe9e,Lee,5,renee2" in text  # the cp1252 byte read as é
    assert "RenÃ©e" in text  # and the UTF-8 one as the two cp1252 characters it is


def test_late_utf8_character_keeps_utf8(tmp_path: Path) -> None:
    tail = "0101,S2,Renée,Lee,5,renee,,,A\r\n"
    data = HEADER.encode() + _filler(3 * CHUNK) + tail.encode()
    text, label = decode(write(tmp_path, data))
    assert label == "utf-8"
    assert text.endswith(tail)


def test_multibyte_character_across_the_chunk_boundary(tmp_path: Path) -> None:
    prefix = HEADER.encode() + b"0101,S1,"
    data = prefix + b"x" * (CHUNK - len(prefix) - 1) + "é,Lee,5,ann,,,A\r\n".encode()
    assert data[CHUNK - 1 : CHUNK + 1] == "é".encode()  # split between two reads
    assert decode(write(tmp_path, data))[1] == "utf-8"


def test_utf8_sequence_cut_off_at_end_is_not_utf8(tmp_path: Path) -> None:
    data = HEADER.encode() + b"0101,S1,Ann,Lee,5,ann,,,A\xc3"
    text, label = decode(write(tmp_path, data))
    assert label == "windows-1252"
    assert text.endswith("AÃ")


def test_stream_keeps_line_endings_for_csv(tmp_path: Path) -> None:
    data = b"a\r\nb\rc\nd"
    text, _ = open_text(write(tmp_path, data), LIMIT)
    with text:
        assert isinstance(text, io.TextIOWrapper)
        assert list(text) == ["a\r\n", "b\r", "c\n", "d"]


@pytest.mark.parametrize(
    "data",
    [b"", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\r\n\r\n  \t\n", b"\xff\xfe \x00\n\x00"],
    ids=["zero-bytes", "utf8-bom-only", "utf16le-bom-only", "utf16be-bom-only", "blank", "u16-ws"],
)
def test_empty_file(tmp_path: Path, data: bytes) -> None:
    error = rejected(write(tmp_path, data))
    assert error.problem.code == FileCode.EMPTY_FILE
    assert error.problem.message.startswith("the file is empty: expected the header row")
    assert TEMPLATE_HEADER in error.problem.message


def test_xlsx_workbook(tmp_path: Path) -> None:
    path = tmp_path / "students.csv"
    with zipfile.ZipFile(path, "w") as workbook:
        workbook.writestr("[Content_Types].xml", "<Types/>")
        workbook.writestr("xl/workbook.xml", "<workbook/>")
    error = rejected(path)
    assert error.problem.code == FileCode.NOT_TEXT
    assert "looks like a binary file" in error.problem.message
    assert ".xlsx" in error.problem.message
    assert "save it as CSV" in error.problem.message


def test_tiny_file_with_xlsx_signature(tmp_path: Path) -> None:
    assert rejected(write(tmp_path, b"PK\x03\x04")).problem.code == FileCode.NOT_TEXT


def test_old_xls_workbook(tmp_path: Path) -> None:
    data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504
    error = rejected(write(tmp_path, data))
    assert error.problem.code == FileCode.NOT_TEXT
    assert ".xls" in error.problem.message


def test_nul_bytes(tmp_path: Path) -> None:
    data = HEADER.encode() + b"0101,S1,Ann\x00,Lee,5,ann,,,A\r\n"
    error = rejected(write(tmp_path, data))
    assert error.problem.code == FileCode.NOT_TEXT
    assert "NUL" in error.problem.message


def test_nul_byte_after_the_first_chunk(tmp_path: Path) -> None:
    data = HEADER.encode() + _filler(2 * CHUNK) + b"\x00"
    assert rejected(write(tmp_path, data)).problem.code == FileCode.NOT_TEXT


def test_random_binary(tmp_path: Path) -> None:
    data = random.Random(20261128).randbytes(100_000)
    error = rejected(write(tmp_path, data))
    assert error.problem.code == FileCode.NOT_TEXT
    assert "looks like a binary file" in error.problem.message


def test_many_control_bytes_without_nul(tmp_path: Path) -> None:
    data = (b"abc\x01\x02\x03\x04\x05\x06\x07\x08defgh\r\n") * 100
    error = rejected(write(tmp_path, data))
    assert error.problem.code == FileCode.NOT_TEXT
    assert "control characters" in error.problem.message


def test_a_few_control_bytes_are_left_to_validation(tmp_path: Path) -> None:
    data = HEADER.encode() + b"0101,S1,Ann\x07,Lee,5,ann,,,A\r\n"
    assert decode(write(tmp_path, data))[1] == "utf-8"


def test_utf16_without_bom(tmp_path: Path) -> None:
    error = rejected(write(tmp_path, HEADER.encode("utf-16-le")))
    assert error.problem.code == FileCode.NOT_TEXT
    assert "UTF-16" in error.problem.message


def test_utf16_bom_followed_by_binary(tmp_path: Path) -> None:
    data = b"\xff\xfe" + b"\x00\x00\x01\x00\x02\x00" * 100
    assert rejected(write(tmp_path, data)).problem.code == FileCode.NOT_TEXT


def test_file_too_large(tmp_path: Path) -> None:
    path = tmp_path / "students.csv"
    with path.open("wb") as file:
        file.write(HEADER.encode())
        file.truncate(3 * MB)  # sparse: the size is what counts
    error = rejected(path, limit=1 * MB)
    assert error.problem.code == FileCode.FILE_TOO_LARGE
    assert "3 MB" in error.problem.message
    assert "1 MB" in error.problem.message


def test_file_at_the_limit_is_accepted(tmp_path: Path) -> None:
    data = (HEADER + ROW).encode()
    assert decode(write(tmp_path, data), limit=len(data))[1] == "utf-8"
    error = rejected(write(tmp_path, data), limit=len(data) - 1)
    assert error.problem.code == FileCode.FILE_TOO_LARGE
    assert f"({len(data)} bytes)" in error.problem.message
