"""Bytes on disk -> a text stream and the label of the encoding it was read as.

SPEC §4: UTF-8 with or without BOM, UTF-16 with BOM; anything else that is not
valid UTF-8 is read as Windows-1252 "and the result says so" (the label ends up
in result.json's `encoding`). Districts export from Excel and from SIS tools on
Windows, so all of these occur in practice.

Two design points:

* UTF-8 validity is decided over the *whole* file, in one streaming pass of an
  incremental decoder over 1 MiB chunks. Checking only the first chunk would
  read a file whose first é is on row 40,000 as UTF-8 and then fail (or
  silently replace characters) half-way through; decoding the whole file into
  one `str` would cost hundreds of MB for a 200 MB upload.
* The returned stream is an `io.TextIOWrapper` over the binary file, opened
  with `newline=""` so the csv module sees CR, LF and CRLF untranslated and can
  keep line breaks inside quoted fields. Memory stays O(1) in the file size.

Files that are not text at all (an .xlsx renamed to .csv, an .xls, random
bytes) are rejected up front with NOT_TEXT, instead of producing a "header
mismatch" that sends the district looking at the wrong problem.
"""

from __future__ import annotations

import codecs
import io
import os
from pathlib import Path
from typing import BinaryIO, TextIO

from processing.model import TEMPLATE_HEADER, FileCode, FileRejected

CHUNK = 1024 * 1024
"""Read size of the UTF-8 validation pass."""
SNIFF = 64 * 1024
"""How much of the start of the file the binary heuristics look at."""
CONTROL_LIMIT = 0.10
"""More than this share of control bytes in the first SNIFF bytes means binary."""

_MIB = 1024 * 1024
_UTF8_BOM = codecs.BOM_UTF8
_UTF16_BOMS = ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_SIGNATURES = (
    (b"PK\x03\x04", "a ZIP archive or an .xlsx workbook"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0", "an old-style Excel .xls workbook"),
)
_WHITESPACE = b" \t\r\n\f\v"
# Control bytes that a text file does not contain; \t \r \n \f are fine.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F])
_CONTROL_CHARS = {c: None for c in range(0x20) if c not in (0x09, 0x0A, 0x0C, 0x0D)} | {0x7F: None}

# cp1252 leaves 0x81, 0x8D, 0x8F, 0x90 and 0x9D undefined; Python's codec raises
# on them. Map them like latin-1 (to U+0081 etc., as browsers do) so reading
# as Windows-1252 can never fail; validate then reports them as control
# characters in the field where they appear.
_CP1252_ERRORS = "eams-cp1252-latin1"


def _latin1_fallback(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error(_CP1252_ERRORS, _latin1_fallback)

UTF8 = "utf-8"
UTF8_BOM = "utf-8 (BOM)"
UTF16 = "utf-16"
WINDOWS_1252 = "windows-1252"

_NOT_TEXT_ADVICE = (
    'save it as CSV (in Excel: "Save As", then "CSV UTF-8 (Comma delimited)") and upload that file'
)


def open_text(path: Path, max_bytes: int) -> tuple[TextIO, str]:
    """Open `path` for csv reading; return the text stream and the encoding label.

    The label is one of "utf-8", "utf-8 (BOM)", "utf-16", "windows-1252". The
    stream is positioned after any BOM, decodes without ever raising, and must
    be closed by the caller. Raises FileRejected for FILE_TOO_LARGE,
    EMPTY_FILE and NOT_TEXT; nothing is left open when it raises.
    """
    binary = path.open("rb")
    try:
        size = os.fstat(binary.fileno()).st_size
        if size > max_bytes:
            raise FileRejected(
                FileCode.FILE_TOO_LARGE,
                f"the file is {_megabytes(size)}, over the limit of {_megabytes(max_bytes)}: "
                "send the students in several smaller files (each upload is processed "
                "on its own) or ask your MY Access account manager to raise the limit",
            )
        head = binary.read(SNIFF)
        offset, python_encoding, label = _sniff(head)
        binary.seek(offset)
        if label == UTF16:
            _check_utf16(binary, python_encoding)
        else:
            valid_utf8 = _check_bytes(binary)
            if not valid_utf8:
                python_encoding, label = "cp1252", WINDOWS_1252
        binary.seek(offset)
        errors = _CP1252_ERRORS if label == WINDOWS_1252 else "replace"
        text = io.TextIOWrapper(binary, encoding=python_encoding, errors=errors, newline="")
    except BaseException:
        binary.close()
        raise
    return text, label


def _sniff(head: bytes) -> tuple[int, str, str]:
    """Reject obvious binaries from the first bytes; return (BOM length, codec, label)."""
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            raise FileRejected(
                FileCode.NOT_TEXT,
                f"the file looks like a binary file ({what}), not a CSV text file; "
                f"{_NOT_TEXT_ADVICE}",
            )
    for bom, codec in _UTF16_BOMS:
        if head.startswith(bom):
            return len(bom), codec, UTF16
    offset, label = (len(_UTF8_BOM), UTF8_BOM) if head.startswith(_UTF8_BOM) else (0, UTF8)
    if b"\x00" in head:
        raise FileRejected(FileCode.NOT_TEXT, _nul_message(head))
    _check_control_share(len(head) - len(head.translate(None, _CONTROL_BYTES)), len(head))
    return offset, "utf-8", label


def _check_bytes(binary: BinaryIO) -> bool:
    """Stream the rest of an 8-bit file: reject NULs and blank files; say if it is UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    valid = True
    blank = True
    while chunk := binary.read(CHUNK):
        if b"\x00" in chunk:
            raise FileRejected(FileCode.NOT_TEXT, _nul_message(chunk))
        if blank and chunk.strip(_WHITESPACE):
            blank = False
        if valid:
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                valid = False
    if blank:
        raise _empty()
    if valid:
        try:
            decoder.decode(b"", final=True)  # a multi-byte sequence cut off at EOF
        except UnicodeDecodeError:
            valid = False
    return valid


def _check_utf16(binary: BinaryIO, codec: str) -> None:
    """UTF-16 has no invalid-byte test worth making; reject blank and binary-looking text."""
    decoder = codecs.getincrementaldecoder(codec)(errors="replace")
    first = True
    while chunk := binary.read(CHUNK):
        text = decoder.decode(chunk)
        if first:
            head = text[: SNIFF // 2]
            if "\x00" in head:
                raise FileRejected(
                    FileCode.NOT_TEXT,
                    "the file starts with a UTF-16 byte order mark but contains NUL "
                    f"characters, so it looks like a binary file; {_NOT_TEXT_ADVICE}",
                )
            controls = len(head) - len(head.translate(_CONTROL_CHARS))
            _check_control_share(controls, len(head))
            first = False
        if text.strip():
            return
    if decoder.decode(b"", final=True).strip():
        return
    raise _empty()


def _check_control_share(controls: int, total: int) -> None:
    if total and controls / total > CONTROL_LIMIT:
        raise FileRejected(
            FileCode.NOT_TEXT,
            f"the file looks like a binary file (for example an .xlsx workbook): "
            f"{controls} of the first {total} characters are control characters; "
            f"{_NOT_TEXT_ADVICE}",
        )


def _nul_message(sample: bytes) -> str:
    even, odd = sample[0::2], sample[1::2]
    if len(sample) >= 8 and (odd.count(0) > len(odd) * 0.9 or even.count(0) > len(even) * 0.9):
        return (
            "the file looks like UTF-16 text without a byte order mark, which cannot be "
            f"read reliably; {_NOT_TEXT_ADVICE}"
        )
    return (
        "the file contains NUL bytes, so it looks like a binary file (for example an "
        f".xlsx workbook), not a CSV text file; {_NOT_TEXT_ADVICE}"
    )


def _empty() -> FileRejected:
    return FileRejected(
        FileCode.EMPTY_FILE,
        f'the file is empty: expected the header row "{TEMPLATE_HEADER}" '
        "followed by one row per student",
    )


def _megabytes(size: int) -> str:
    """Human size for messages: "250.3 MB"; small limits (tests, tiny configs) in bytes too."""
    if size >= _MIB // 10:
        return f"{size / _MIB:.1f}".removesuffix(".0") + " MB"
    return f"{size / _MIB:.4f} MB ({size} bytes)"
