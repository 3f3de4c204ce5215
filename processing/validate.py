"""Field validation of one CSV record (SPEC §4, row errors of §5.1).

`validate` turns a RawRow into a trimmed, normalized Row, or into the list of
*every* problem of that row: a district fixes its SIS data in one pass instead
of one error per upload. It is pure (no database: USERNAME_TAKEN,
DUPLICATE_STUDENT_ID and the status rules need state and live elsewhere).

It runs once per row of files of up to hundreds of thousands of rows, so the
valid path is kept to a few dict look-ups and precompiled regex matches; all
message building happens only on the error path.

Messages are read by a district SIS administrator: each names the column and
the value (never the Password's), and what to change. Excel's typical damage
(leading zeros dropped from school codes, IDs turned into 1.23457E+11, status
letters pasted from a PDF as Greek or Cyrillic look-alikes) is named as such.
"""

from __future__ import annotations

import re
from functools import lru_cache

from processing.config import DEFAULT_GRADES
from processing.long_records import Cut
from processing.model import TEMPLATE_COLUMNS, RawRow, Row, RowCode, RowError
from processing.rules import normalize_grade

MAX_NAME = 64
MAX_STUDENT_ID = 32
MIN_USERNAME, MAX_USERNAME = 3, 64
MIN_PASSWORD, MAX_PASSWORD = 4, 64
_SHOW_MAX = 40
_COLUMNS = len(TEMPLATE_COLUMNS)

_STUDENT_ID = re.compile(r"[A-Za-z0-9._-]{1,32}").fullmatch
_STUDENT_ID_CHAR = re.compile(r"[^A-Za-z0-9._-]").search
_SCIENTIFIC = re.compile(r"\d+(?:\.\d+)?[eE][+-]?\d+").fullmatch
_USERNAME = re.compile(r"[A-Za-z0-9._@-]{3,64}").fullmatch
_USERNAME_CHAR = re.compile(r"[^A-Za-z0-9._@-]").search
# Unicode category Cc is exactly U+0000-U+001F and U+007F-U+009F.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]").search
_VISIBLE = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)]}

_STATUS = {letter: letter.upper() for letter in "ADXIadxi"}
_HOMOGLYPHS = {
    "\u0391": ("A", "a Greek capital alpha"),
    "\u03a7": ("X", "a Greek capital chi"),
    "\u0399": ("I", "a Greek capital iota"),
    "\u03b1": ("A", "a Greek small alpha"),
    "\u03c7": ("X", "a Greek small chi"),
    "\u03b9": ("I", "a Greek small iota"),
    "\u0410": ("A", "a Cyrillic capital A"),
    "\u0425": ("X", "a Cyrillic capital Ha"),
    "\u0406": ("I", "a Cyrillic capital I"),
    "\u0430": ("A", "a Cyrillic small a"),
    "\u0445": ("X", "a Cyrillic small ha"),
    "\u0456": ("I", "a Cyrillic small i"),
}
_STATUS_WORDS = {"ACTIVE": "A", "ACTIVATE": "A", "DEACTIVATED": "D", "DEACTIVATE": "D"}

# Every spelling of a grade that a district is likely to send, so the valid
# path is one dict look-up; anything else goes through normalize_grade.
_GRADE_FAST = {
    spelling: normalize_grade(spelling)
    for grade in DEFAULT_GRADES
    for spelling in {grade, grade.lower(), grade.zfill(2), "0", "00", "KG", "kg", "Kg"}
}
_GRADE_ORDER = {grade: index for index, grade in enumerate(DEFAULT_GRADES)}


def validate(
    raw: RawRow, school_codes: frozenset[str], grades: frozenset[str]
) -> Row | list[RowError]:
    """Return the row trimmed and normalized, or every field problem it has.

    `school_codes` are the district's codes (compared as text: "0101" is not
    "101"); `grades` the district's program, normalized ("K", "1".."12").
    Never raises, whatever the fields contain.
    """
    fields = raw.fields
    if len(fields) != _COLUMNS:
        # Excel's trailing ",,,"; a Cut this wide has a value past those it keeps
        if len(fields) > _COLUMNS and not "".join(fields[_COLUMNS:]).strip():
            if not isinstance(fields, Cut):
                fields = fields[:_COLUMNS]
            else:
                return [_column_count(fields)]
        else:
            return [_column_count(fields)]
    school, student_id, first, last, grade_raw, username, password, class_name, status_raw = map(
        str.strip, fields
    )
    errors: list[RowError] = []

    if school not in school_codes:
        errors.append(_missing(0) if not school else _unknown_school(school, school_codes))

    if not _STUDENT_ID(student_id):  # "1.2E5" passes: it is a valid ID, Excel writes "1.2E+05"
        errors.append(_bad_student_id(student_id, _cut(fields, 1)))

    if len(first) > MAX_NAME or not first or _CONTROL(first):
        errors.append(_bad_text(2, first, _cut(fields, 2)))
    if len(last) > MAX_NAME or not last or _CONTROL(last):
        errors.append(_bad_text(3, last, _cut(fields, 3)))

    grade = _GRADE_FAST.get(grade_raw)
    if grade is None:
        grade = normalize_grade(grade_raw)
    if grade is None or grade not in grades:
        errors.append(_bad_grade(grade_raw, grade, grades))

    if not _USERNAME(username):
        errors.append(_bad_username(username, _cut(fields, 5)))

    if password and (
        len(password) < MIN_PASSWORD or len(password) > MAX_PASSWORD or _CONTROL(password)
    ):
        errors.append(_bad_password(password, _cut(fields, 6)))

    if class_name and (len(class_name) > MAX_NAME or _CONTROL(class_name)):
        errors.append(_bad_text(7, class_name, _cut(fields, 7)))

    status = _STATUS.get(status_raw)
    if status is None:
        errors.append(_bad_status(status_raw))

    if errors or status is None or grade is None:
        return errors
    return Row(
        line=raw.line,
        school_code=school,
        student_id=student_id,
        first_name=first,
        last_name=last,
        grade=grade,
        username=username,
        password=password or None,
        class_name=class_name,
        status=status,
    )


def show(value: str) -> str:
    """A value as quoted in messages: control characters visible, cut at 40 characters."""
    value = value.translate(_VISIBLE)
    return value if len(value) <= _SHOW_MAX else value[:_SHOW_MAX] + "…"


def _error(code: RowCode, message: str) -> RowError:
    return RowError(code, message)


def _missing(column: int) -> RowError:
    return _error(RowCode.MISSING_FIELD, f"{TEMPLATE_COLUMNS[column]} is required")


def _cut(fields: tuple[str, ...], column: int) -> int | None:
    """The length (trimmed) of a value records.py cut short, for the message; else None."""
    return fields.lengths.get(column) if isinstance(fields, Cut) else None


def _column_count(fields: tuple[str, ...]) -> RowError:
    """Empty cells past the ninth and past the last value are not counted (Excel's ",,,")."""
    found = len(fields)
    if isinstance(fields, Cut):
        found = fields.columns
    else:
        while found > _COLUMNS and not fields[found - 1].strip():
            found -= 1
    message = f"expected {_COLUMNS} columns, found {found}"
    if any("\n" in field or "\r" in field for field in fields):
        message += " (a quote may be unclosed on this line)"
    elif found > _COLUMNS:
        message += (
            ": a value that contains a comma must be enclosed in double quotes, "
            'for example "Smith, Jr."'
        )
    return _error(RowCode.COLUMN_COUNT, message)


def _unknown_school(code: str, known: frozenset[str]) -> RowError:
    message = f'school code "{show(code)}" is not one of the district\'s schools'
    if code.isascii() and code.isdigit():
        for padded in sorted({code.zfill(len(k)) for k in known if len(k) > len(code)}):
            if padded in known:
                message += (
                    f': did you mean "{padded}"? Excel drops leading zeros: '
                    "format the column as Text"
                )
                break
    return _error(RowCode.UNKNOWN_SCHOOL, message)


def _too_long(column: str, value: str, limit: int, length: int | None) -> RowError:
    """`length`: the value's own when it was cut short (a cut value is longer than `limit`)."""
    size = len(value) if length is None else length
    return _error(
        RowCode.FIELD_TOO_LONG,
        f'{column} "{show(value)}" is {size} characters long; at most {limit} are allowed',
    )


def _bad_student_id(value: str, length: int | None = None) -> RowError:
    if not value:
        return _missing(1)
    if len(value) > MAX_STUDENT_ID:
        return _too_long("Student ID", value, MAX_STUDENT_ID, length)
    if _SCIENTIFIC(value):
        return _error(
            RowCode.INVALID_FIELD,
            f'Student ID "{show(value)}" was changed by Excel into scientific notation: '
            "format the Student ID column as Text before saving",
        )
    bad = _STUDENT_ID_CHAR(value)
    character = _describe(bad.group()) if bad else "a character that is not allowed"
    return _error(
        RowCode.INVALID_FIELD,
        f'Student ID "{show(value)}" contains {character}: only letters A-Z, '
        'digits and ".", "_", "-" are allowed',
    )


def _bad_text(column: int, value: str, length: int | None = None) -> RowError:
    """First Name, Last Name (required) and Class Name (optional)."""
    name = TEMPLATE_COLUMNS[column]
    if not value:
        return _missing(column)
    if len(value) > MAX_NAME:
        return _too_long(name, value, MAX_NAME, length)
    bad = _CONTROL(value)
    character = _describe(bad.group()) if bad else "a control character"
    return _error(
        RowCode.INVALID_FIELD,
        f'{name} "{show(value)}" contains {character}: remove it in the SIS',
    )


def _bad_grade(value: str, grade: str | None, grades: frozenset[str]) -> RowError:
    if not value:
        return _missing(4)
    if grade is None:
        return _error(RowCode.INVALID_GRADE, f'grade "{show(value)}" is not K or 1-12')
    return _error(
        RowCode.GRADE_NOT_IN_PROGRAM,
        f"grade {grade} is not in the district's program ({describe_grades(grades)})",
    )


def _bad_username(value: str, length: int | None = None) -> RowError:
    if not value:
        return _missing(5)
    if len(value) > MAX_USERNAME:
        return _too_long("Username", value, MAX_USERNAME, length)
    bad = _USERNAME_CHAR(value)
    if bad:
        return _error(
            RowCode.INVALID_FIELD,
            f'Username "{show(value)}" contains {_describe(bad.group())}: only letters A-Z, '
            'digits and ".", "_", "@", "-" are allowed',
        )
    return _error(
        RowCode.INVALID_FIELD,
        f'Username "{show(value)}" is too short: at least {MIN_USERNAME} characters',
    )


def _bad_password(value: str, length: int | None = None) -> RowError:
    """Never quotes the value: passwords appear in no result, error file or log."""
    if len(value) > MAX_PASSWORD:
        size = len(value) if length is None else length
        return _error(
            RowCode.FIELD_TOO_LONG,
            f"Password is {size} characters long; at most {MAX_PASSWORD} are allowed",
        )
    if len(value) < MIN_PASSWORD:
        return _error(
            RowCode.INVALID_FIELD,
            f"Password is too short: at least {MIN_PASSWORD} characters "
            "(leave it blank to keep the current password)",
        )
    return _error(
        RowCode.INVALID_FIELD,
        "Password contains a control character (such as a tab or line break): remove it",
    )


def _bad_status(value: str) -> RowError:
    if not value:
        return _missing(8)
    message = f'status "{show(value)}" is not A, D, X or I'
    homoglyph = _HOMOGLYPHS.get(value)
    word = _STATUS_WORDS.get(value.upper())
    if homoglyph is not None:
        letter, what = homoglyph
        message += f': did you mean "{letter}"? (it is {what}, often pasted from a PDF)'
    elif word is not None:
        message += f': use the single letter "{word}"'
    return _error(RowCode.INVALID_STATUS, message)


def _describe(character: str) -> str:
    if character == " ":
        return "a space"
    if _CONTROL(character):
        return f"a control character (U+{ord(character):04X})"
    if character.isspace():
        return f"a special space (U+{ord(character):04X})"
    return f'"{character}"'


@lru_cache(maxsize=64)
def describe_grades(grades: frozenset[str]) -> str:
    """ "grades 3-8", "grades K, 2, 4-6": the program as a district admin would write it."""
    ordered = sorted((g for g in grades if g in _GRADE_ORDER), key=_GRADE_ORDER.__getitem__)
    if not ordered:
        return "no grades"
    runs: list[list[str]] = []
    for grade in ordered:
        if runs and _GRADE_ORDER[grade] == _GRADE_ORDER[runs[-1][-1]] + 1:
            runs[-1].append(grade)
        else:
            runs.append([grade])
    parts = [
        run[0] if len(run) == 1 else f"{run[0]}{'-' if len(run) > 2 else ', '}{run[-1]}"
        for run in runs
    ]
    return ("grade " if len(ordered) == 1 else "grades ") + ", ".join(parts)
