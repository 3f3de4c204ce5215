"""validate: every row error code with realistic values, exact hints, passwords never echoed."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processing.config import DEFAULT_GRADES
from processing.model import TEMPLATE_COLUMNS, RawRow, Row, RowCode, RowError
from processing.validate import describe_grades, validate

SCHOOLS = frozenset({"0101", "0102", "2001"})
ALL_GRADES = frozenset(DEFAULT_GRADES)
MIDDLE = frozenset({"3", "4", "5", "6", "7", "8"})
GOOD = {
    "School Code": "0101",
    "Student ID": "S-2026.001_a",
    "First Name": "Renée",
    "Last Name": "O'Brien-Núñez",
    "Grade": "05",
    "Username": "renee.obrien@spring",
    "Password": "Tr0ub4dor&3",
    "Class Name": "Room 12 – Ms. Ortiz",
    "Status": "a",
}


def raw(**changes: str) -> RawRow:
    """The GOOD row on line 2 with some columns changed (School_Code= or "School Code")."""
    values = dict(GOOD)
    for key, value in changes.items():
        values[key.replace("_", " ")] = value
    return RawRow(2, tuple(values[column] for column in TEMPLATE_COLUMNS))


def errors(row: RawRow, grades: frozenset[str] = ALL_GRADES) -> list[RowError]:
    result = validate(row, SCHOOLS, grades)
    assert isinstance(result, list), result
    assert result
    return result


def only(row: RawRow, grades: frozenset[str] = ALL_GRADES) -> RowError:
    result = errors(row, grades)
    assert len(result) == 1, result
    return result[0]


def test_valid_row_is_trimmed_and_normalized() -> None:
    row = RawRow(7, (" 0101 ", "S1", "  Ann ", "Lee\u00a0", "kg", "ann", "", "", " d "))
    assert validate(row, SCHOOLS, ALL_GRADES) == Row(
        line=7,
        school_code="0101",
        student_id="S1",
        first_name="Ann",
        last_name="Lee",
        grade="K",
        username="ann",
        password=None,
        class_name="",
        status="D",
    )


def test_valid_row_keeps_everything() -> None:
    result = validate(raw(), SCHOOLS, ALL_GRADES)
    assert isinstance(result, Row)
    assert (result.grade, result.status, result.password) == ("5", "A", "Tr0ub4dor&3")
    assert result.class_name == "Room 12 – Ms. Ortiz"


@pytest.mark.parametrize(
    ("value", "grade"),
    [("K", "K"), ("k", "K"), ("KG", "K"), ("0", "K"), ("1", "1"), ("03", "3"), ("12", "12")],
)
def test_grade_spellings(value: str, grade: str) -> None:
    result = validate(raw(Grade=value), SCHOOLS, ALL_GRADES)
    assert isinstance(result, Row)
    assert result.grade == grade


@pytest.mark.parametrize("status", ["A", "a", "D", "d", "X", "x", "I", "i"])
def test_status_letters(status: str) -> None:
    result = validate(raw(Status=status), SCHOOLS, ALL_GRADES)
    assert isinstance(result, Row)
    assert result.status == status.upper()


def test_trailing_empty_columns_from_excel_are_ignored() -> None:
    row = RawRow(2, (*raw().fields, "", " ", ""))
    assert isinstance(validate(row, SCHOOLS, ALL_GRADES), Row)


def test_column_count() -> None:
    error = only(RawRow(2, ("0101", "S1", "Ann")))
    assert error == RowError(RowCode.COLUMN_COUNT, "expected 9 columns, found 3")
    error = only(RawRow(2, (*raw().fields, "extra")))
    assert error.code == RowCode.COLUMN_COUNT
    assert error.message.startswith("expected 9 columns, found 10")


def test_column_count_with_an_unclosed_quote() -> None:
    error = only(RawRow(5, ("0101", "S2", "Bob,Ray,6\r\nbob,,,A\r\n")))
    assert error.message == "expected 9 columns, found 3 (a quote may be unclosed on this line)"


def test_hundred_thousand_columns() -> None:
    error = only(RawRow(2, ("x",) * 100_000))
    assert error.message.startswith("expected 9 columns, found 100000")


@pytest.mark.parametrize(
    "column", ["School Code", "Student ID", "First Name", "Last Name", "Grade", "Username"]
)
def test_missing_required_field(column: str) -> None:
    error = only(raw(**{column: "  "}))
    assert error == RowError(RowCode.MISSING_FIELD, f"{column} is required")


def test_missing_status() -> None:
    assert only(raw(Status="")) == RowError(RowCode.MISSING_FIELD, "Status is required")


def test_every_problem_of_a_row_is_reported() -> None:
    row = RawRow(3, ("", "", "", "", "", "", "", "", ""))
    optional = {"Password", "Class Name"}
    assert [e.message for e in errors(row)] == [
        f"{column} is required" for column in TEMPLATE_COLUMNS if column not in optional
    ]


def test_unknown_school() -> None:
    error = only(raw(School_Code="9999"))
    assert error == RowError(
        RowCode.UNKNOWN_SCHOOL, 'school code "9999" is not one of the district\'s schools'
    )


def test_unknown_school_with_leading_zero_dropped_by_excel() -> None:
    error = only(raw(School_Code="101"))
    assert error.code == RowCode.UNKNOWN_SCHOOL
    assert error.message == (
        'school code "101" is not one of the district\'s schools: did you mean "0101"? '
        "Excel drops leading zeros: format the column as Text"
    )


def test_school_codes_are_compared_as_text() -> None:
    assert only(raw(School_Code="101.0")).code == RowCode.UNKNOWN_SCHOOL
    assert isinstance(validate(raw(School_Code="2001"), SCHOOLS, ALL_GRADES), Row)


def test_student_id_in_scientific_notation() -> None:
    error = only(raw(Student_ID="1.23457E+11"))
    assert error == RowError(
        RowCode.INVALID_FIELD,
        'Student ID "1.23457E+11" was changed by Excel into scientific notation: '
        "format the Student ID column as Text before saving",
    )


def test_student_id_bad_characters() -> None:
    error = only(raw(Student_ID="12 345"))
    assert error.code == RowCode.INVALID_FIELD
    assert error.message.startswith('Student ID "12 345" contains a space:')
    assert only(raw(Student_ID="S#1")).message.startswith('Student ID "S#1" contains "#"')


def test_student_id_too_long() -> None:
    error = only(raw(Student_ID="S" * 33))
    assert error.code == RowCode.FIELD_TOO_LONG
    assert "33 characters" in error.message
    assert isinstance(validate(raw(Student_ID="S" * 32), SCHOOLS, ALL_GRADES), Row)


@pytest.mark.parametrize("column", ["First Name", "Last Name", "Class Name"])
def test_text_too_long(column: str) -> None:
    error = only(raw(**{column: "Maximiliana" * 6}))  # 66 characters
    assert error.code == RowCode.FIELD_TOO_LONG
    assert error.message == (
        f'{column} "{"Maximiliana" * 3}Maximil…" is 66 characters long; at most 64 are allowed'
    )
    assert isinstance(validate(raw(**{column: "M" * 64}), SCHOOLS, ALL_GRADES), Row)


@pytest.mark.parametrize("column", ["First Name", "Last Name", "Class Name"])
def test_text_control_characters(column: str) -> None:
    error = only(raw(**{column: "Ann\x07e"}))
    assert error.code == RowCode.INVALID_FIELD
    assert error.message.startswith(f'{column} "Ann\\x07e" contains a control character (U+0007)')
    # C1 controls, e.g. the bytes Windows-1252 leaves undefined:
    assert only(raw(**{column: "Ann\x81e"})).code == RowCode.INVALID_FIELD


def test_invalid_grade() -> None:
    assert only(raw(Grade="14")) == RowError(RowCode.INVALID_GRADE, 'grade "14" is not K or 1-12')
    assert only(raw(Grade="Pre-K")).code == RowCode.INVALID_GRADE
    assert only(raw(Grade="５")).code == RowCode.INVALID_GRADE  # fullwidth digit


def test_grade_not_in_program() -> None:
    error = only(raw(Grade="02"), grades=MIDDLE)
    assert error == RowError(
        RowCode.GRADE_NOT_IN_PROGRAM, "grade 2 is not in the district's program (grades 3-8)"
    )


def test_describe_grades() -> None:
    assert describe_grades(MIDDLE) == "grades 3-8"
    assert describe_grades(ALL_GRADES) == "grades K-12"
    assert describe_grades(frozenset({"K", "2", "4", "5", "6", "11", "12"})) == (
        "grades K, 2, 4-6, 11, 12"
    )
    assert describe_grades(frozenset({"9"})) == "grade 9"


def test_username_rules() -> None:
    too_short = only(raw(Username="ab"))
    assert too_short.code == RowCode.INVALID_FIELD
    assert too_short.message == 'Username "ab" is too short: at least 3 characters'
    bad = only(raw(Username="ann lee"))
    assert bad.code == RowCode.INVALID_FIELD
    assert bad.message.startswith('Username "ann lee" contains a space')
    long = only(raw(Username="u" * 65))
    assert long.code == RowCode.FIELD_TOO_LONG
    assert isinstance(validate(raw(Username="u" * 64), SCHOOLS, ALL_GRADES), Row)
    assert isinstance(validate(raw(Username="a_b"), SCHOOLS, ALL_GRADES), Row)


def test_password_rules_never_echo_the_password() -> None:
    cases = [
        ("Zq9", RowCode.INVALID_FIELD),
        ("Kx7!" * 17, RowCode.FIELD_TOO_LONG),
        ("Sup3r\tS3cret", RowCode.INVALID_FIELD),
    ]
    for password, code in cases:
        error = only(raw(Password=password))
        assert error.code == code
        assert error.message.startswith("Password ")
        for piece in (password, password.strip(), password[:3], "Sup3r"):
            assert piece not in error.message


def test_password_never_appears_with_every_other_error() -> None:
    for password in ["Hunter2Secret", "pw", "x\x01yz", "Q" * 80]:
        row = RawRow(9, ("9", "1.2E+11", "\x00", "", "14", "a b", password, "C" * 90, "Α"))
        for error in errors(row):
            assert password not in error.message
            assert password.strip("\x01") not in error.message


def test_blank_password_keeps_the_current_one() -> None:
    result = validate(raw(Password="   "), SCHOOLS, ALL_GRADES)
    assert isinstance(result, Row)
    assert result.password is None


@pytest.mark.parametrize(
    ("status", "letter", "what"),
    [
        ("\u0391", "A", "a Greek capital alpha"),
        ("\u03a7", "X", "a Greek capital chi"),
        ("\u0399", "I", "a Greek capital iota"),
        ("\u03b1", "A", "a Greek small alpha"),
        ("\u0410", "A", "a Cyrillic capital A"),
        ("\u0425", "X", "a Cyrillic capital Ha"),
        ("\u0406", "I", "a Cyrillic capital I"),
        ("\u0445", "X", "a Cyrillic small ha"),
    ],
)
def test_status_homoglyphs(status: str, letter: str, what: str) -> None:
    error = only(raw(Status=status))
    assert error == RowError(
        RowCode.INVALID_STATUS,
        f'status "{status}" is not A, D, X or I: did you mean "{letter}"? '
        f"(it is {what}, often pasted from a PDF)",
    )


def test_greek_alpha_message_exactly() -> None:
    assert only(raw(Status="Α")).message == (
        'status "Α" is not A, D, X or I: did you mean "A"? '
        "(it is a Greek capital alpha, often pasted from a PDF)"
    )


def test_other_status() -> None:
    error = only(raw(Status="Q"))
    assert error == RowError(RowCode.INVALID_STATUS, 'status "Q" is not A, D, X or I')
    assert only(raw(Status="Active")).message == (
        'status "Active" is not A, D, X or I: use the single letter "A"'
    )


def test_long_values_are_truncated_in_messages() -> None:
    error = only(raw(Status="Q" * 100))
    assert error.message == f'status "{"Q" * 40}…" is not A, D, X or I'


def test_valid_rows_are_fast() -> None:
    row = raw()
    count = 20_000
    start = time.perf_counter()
    for _ in range(count):
        validate(row, SCHOOLS, ALL_GRADES)
    per_row = (time.perf_counter() - start) / count
    assert per_row < 50e-6  # ~3 µs on a laptop; generous for slow CI machines


@given(
    fields=st.lists(st.text(max_size=80), max_size=12).map(tuple),
    schools=st.frozensets(st.text(max_size=6), max_size=4),
    grades=st.frozensets(st.sampled_from(DEFAULT_GRADES), min_size=1),
)
def test_validate_never_raises(
    fields: tuple[str, ...], schools: frozenset[str], grades: frozenset[str]
) -> None:
    result = validate(RawRow(2, fields), schools, grades)
    if isinstance(result, Row):
        assert result.school_code in schools
        assert result.grade in grades
        assert result.status in {"A", "D", "X", "I"}
        assert result.password is None or 4 <= len(result.password) <= 64
    else:
        assert result
        assert all(isinstance(error, RowError) and error.message for error in result)


@given(
    fields=st.tuples(*[st.text(max_size=70)] * 6),
    # Framed by "Zq"/"q9" so a password is never an everyday word that a message
    # contains anyway ("school" is in "school code ... is not one of the schools").
    password=st.text(min_size=2, max_size=86)
    .map(lambda t: f"Zq{t}q9")
    .filter(lambda p: p.strip() == p),
    rest=st.tuples(st.text(max_size=70), st.text(max_size=5)),
)
def test_password_is_never_in_a_message(
    fields: tuple[str, ...], password: str, rest: tuple[str, str]
) -> None:
    row = RawRow(2, (*fields, password, *rest))
    result = validate(row, SCHOOLS, ALL_GRADES)
    if isinstance(result, list):
        for error in result:
            # Other fields may contain the password text themselves; only check when they don't.
            if not any(password in value for value in (*fields, *rest)):
                assert password not in error.message
