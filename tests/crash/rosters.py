"""The students.csv files the campaign's districts upload.

Each file mixes what a nightly extract really holds - mostly A, some I/D/X,
lower-case statuses, a few row errors of SPEC §5.1, now and then a Student ID
twice - so a kill can land in every branch of the rules. Row `i` of a district
is always the same student (same school, name, username, password unless the
file changes it), drawn from a pool of POOL ids, so later files update, move and
deactivate the students earlier files added.

The format (header, quoting) comes from tests.factories; line endings and the
encoding (with or without a BOM) vary per file.
"""

from __future__ import annotations

import random

from processing.model import TEMPLATE_COLUMNS
from tests.crash.world import SCHOOLS
from tests.factories import roster, student

POOL = 25000
PRELOAD_ROWS = 300
GRADES = ("K", "1", "2", "3", "4", "5", "6", "7", "8")
FIRST_NAMES = ("Ann", "Bea", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal")
CLASSES = ("", "Math 3", "Reading", "Science 5")
STATUS_WEIGHTS = (0.6, 0.1, 0.12, 0.1, 0.08)  # A, I, D, X, lower-case
PURGE_WEIGHTS = (0.15, 0.05, 0.7, 0.05, 0.05)  # mostly D: trips the deactivation guard


def student_row(district: str, i: int, rng: random.Random, status: str) -> list[str]:
    """Student `i` of `district`, now and then with another school, grade, name or class."""
    school = SCHOOLS[i % 3] if rng.random() > 0.1 else rng.choice(SCHOOLS)
    grade = GRADES[(i // 3) % 9] if rng.random() > 0.05 else rng.choice(GRADES)
    first = FIRST_NAMES[i % 8] if rng.random() > 0.3 else rng.choice(FIRST_NAMES)
    password = f"pw-{i:05d}"
    roll = rng.random()
    if roll < 0.05:
        password = f"pw-{i:05d}-{rng.randrange(9)}"
    elif roll < 0.08:
        password = ""  # keeps the current one; PASSWORD_REQUIRED for a new user
    klass = CLASSES[i % 4] if rng.random() > 0.2 else rng.choice(CLASSES)
    return student(
        f"S{i:06d}",
        status,
        school=school,
        first=first,
        last=f"L{i}",
        grade=grade,
        username=f"{district}.{i:05d}",
        password=password,
        class_name=klass,
    )


def damage(row: list[str], rng: random.Random) -> list[str]:
    """One row error of SPEC §5.1."""
    kind = rng.randrange(7)
    if kind == 0:
        row[4] = "14"  # INVALID_GRADE
    elif kind == 1:
        row[0] = "9999"  # UNKNOWN_SCHOOL
    elif kind == 2:
        row[2] = ""  # MISSING_FIELD
    elif kind == 3:
        row[8] = "Q"  # INVALID_STATUS
    elif kind == 4:
        row.append("extra")  # COLUMN_COUNT
    elif kind == 5:
        row[1] = "1.23457E+11"  # INVALID_FIELD (Excel)
    else:
        row[2] = "N" * 70  # FIELD_TOO_LONG
    return row


def make_file(
    district: str,
    rows: int,
    rng: random.Random,
    *,
    purge: bool = False,
    bad_token: str | None = None,
) -> bytes:
    """A students.csv of exactly `rows` data rows (a bad header naming `bad_token` if set)."""
    header = list(TEMPLATE_COLUMNS)
    if bad_token:
        header[2] = f"Nom {bad_token}"
    ids = rng.sample(range(POOL), rows)
    if rng.random() < 0.3 and rows > 10:  # DUPLICATE_STUDENT_ID: a few ids twice
        for k in range(rng.randint(1, 3)):
            ids[-1 - k] = ids[rng.randrange(rows - 4)]
    weights = PURGE_WEIGHTS if purge else STATUS_WEIGHTS
    newline = rng.choice(("\r\n", "\n"))
    lines = [header]
    for i in ids:
        status = rng.choices(("A", "I", "D", "X", "lower"), weights)[0]
        if status == "lower":
            status = rng.choice(("a", "d", "i"))
        row = student_row(district, i, rng, status)
        if rng.random() < 0.03:
            row = damage(row, rng)
        lines.append(row)
    encoding = rng.choice(("utf-8", "utf-8", "utf-8-sig"))
    return roster(lines, encoding=encoding, newline=newline, header=False)


def preload_file(district: str, seed: int) -> bytes:
    """The initial load onto the regular order: PRELOAD_ROWS rows, X (new user) made A."""
    data = make_file(district, PRELOAD_ROWS, random.Random(f"{seed}-{district}"))
    return data.replace(b",X\r\n", b",A\r\n").replace(b",X\n", b",A\n")
