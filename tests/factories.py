"""The students.csv rows and files, config.toml text and district password hash that
tests/ and bench/ build their inputs from.

Why one module: the benches and the tests used to write the template and the
config by hand, each with its own quoting, line endings and key order; a change
to the template or to a config key now has one place to go, and a bench and a
test that mean the same file write the same bytes. It imports only the standard
library and `processing.model` (and `server.accounts` for a hash), so a bench
uses it without pytest: `from tests.factories import student, roster`.

Which students a file holds (random statuses and row errors for the crash
campaign, realistic names for the throughput bench, a few changes per round for
the load bench) stays with its bench or test: that is the experiment, not the
format.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processing.model import TEMPLATE_COLUMNS

# ---- rows -------------------------------------------------------------------------------

PASSWORD_MARK = "Pw-"  # every generated student password starts with it: easy to grep for


def pw(student_id: str) -> str:
    """A distinctive password per student, easy to grep for."""
    return f"{PASSWORD_MARK}{student_id}-q7Z"


def student(
    student_id: str,
    status: str = "A",
    *,
    school: str = "0101",
    first: str = "Ana",
    last: str = "Lee",
    grade: str = "5",
    username: str | None = None,
    password: str | None = None,
    class_name: str = "Room 1",
) -> list[str]:
    """One students.csv row, in TEMPLATE_COLUMNS order; every field can be set."""
    return [
        school,
        student_id,
        first,
        last,
        grade,
        f"u{student_id}".lower() if username is None else username,
        pw(student_id) if password is None else password,
        class_name,
        status,
    ]


def numbered_student(
    n: int, *, status: str = "A", first: str = "Ann", school: str = "0101"
) -> list[str]:
    """Row `n` of a plain roster: S00001 Ann Lee1, grade 3, user00001, one shared password."""
    return student(
        f"S{n:05d}",
        status,
        school=school,
        first=first,
        last=f"Lee{n}",
        grade="3",
        username=f"user{n:05d}",
        password="pw-1234",
        class_name="",
    )


# ---- files ------------------------------------------------------------------------------


def csv_text(
    rows: Iterable[Sequence[str] | str], newline: str = "\r\n", header: bool = True
) -> str:
    """The template header (unless header=False) and rows; a str row is written verbatim."""
    out = io.StringIO()
    _write_rows(out, rows, newline, header)
    return out.getvalue()


def roster(
    rows: Iterable[Sequence[str] | str],
    *,
    encoding: str = "utf-8",
    newline: str = "\r\n",
    header: bool = True,
) -> bytes:
    """A students.csv as uploaded: csv_text encoded ("utf-8-sig" adds a BOM)."""
    return csv_text(rows, newline, header).encode(encoding)


def numbered_roster(count: int, *, start: int = 1, status: str = "A", first: str = "Ann") -> bytes:
    """`count` numbered_student rows from `start`, as uploaded."""
    rows = [numbered_student(n, status=status, first=first) for n in range(start, start + count)]
    return roster(rows)


def write_csv(
    path: Path,
    rows: Iterable[Sequence[str] | str] = (),
    *,
    encoding: str = "utf-8",
    newline: str = "\r\n",
    header: bool = True,
) -> Path:
    """Write a students.csv; encoding "utf-8-sig" adds a UTF-8 BOM, "utf-16" a UTF-16 one.

    Rows are streamed to the file, so a generator of 500,000 rows is never held in
    memory as one string (the benches write files that big).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding=encoding, newline="") as out:
        _write_rows(out, rows, newline, header)
    return path


def _write_rows(out: Any, rows: Iterable[Sequence[str] | str], newline: str, header: bool) -> None:
    writer = csv.writer(out, lineterminator=newline)
    if header:
        writer.writerow(TEMPLATE_COLUMNS)
    for row in rows:
        if isinstance(row, str):
            out.write(row + newline)
        else:
            writer.writerow(row)


# ---- district logins ------------------------------------------------------------------------

SFTP_PASSWORD = "district-sftp-pw-2026"


@functools.cache
def password_hash(password: str = SFTP_PASSWORD) -> str:
    """The config's `password_hash` for `password`: one scrypt per process and password
    (it is deliberately slow)."""
    from server.accounts import hash_password

    return hash_password(password)


# ---- config.toml --------------------------------------------------------------------------

OPERATOR = "support@myaccess.example"
SCHOOLS = (("0101", "Lincoln Elementary"), ("0102", "Roosevelt Middle"), ("0201", "Jefferson High"))


@dataclass(frozen=True)
class District:
    """One `[districts.<id>]` table with its Enterprise order, regular orders and schools.

    `settings` are further keys of the district table (grades, deactivation_guard,
    schedule, stale_after_hours, ...), written in the order given.
    """

    district_id: str
    name: str
    order: tuple[str, int]  # (id, licenses) of the Enterprise order
    password_hash: str | None = None
    authorized_keys: tuple[str, ...] = ()
    notify: tuple[str, ...] = ()  # () means sis-admin@<id>.k12.example
    settings: Mapping[str, Any] = field(default_factory=dict)
    regular_orders: tuple[tuple[str, int], ...] = ()
    schools: tuple[tuple[str, str], ...] = SCHOOLS


def server_table(folder: Path, *, host_keys: Path | None = None, **settings: Any) -> dict[str, Any]:
    """A `[server]` table on 127.0.0.1, port 0, no FTP refusal, its folders under `folder`."""
    return {
        "listen": "127.0.0.1",
        "port": 0,
        "ftp_refusal_port": 0,
        "host_keys": str(host_keys or folder / "host_keys"),
        "homes": str(folder / "homes"),
        "data": str(folder / "data"),
        **settings,
    }


def toml_value(value: Any) -> str:
    """A TOML value: a JSON string, number, boolean or list of them is valid TOML."""
    return json.dumps(value)


def config_toml(
    server: Mapping[str, Any],
    districts: Iterable[District],
    *,
    operators: Sequence[str] = (OPERATOR,),
    smtp: Mapping[str, Any] | None = None,
) -> str:
    """The text of a config.toml: `[server]`, `[operators]`, `[smtp]` if given, districts."""
    lines = ["[server]", *_keys(server), "", "[operators]", *_keys({"notify": list(operators)})]
    if smtp is not None:
        lines += ["", "[smtp]", *_keys(smtp)]
    for district in districts:
        lines += _district_lines(district)
    return "\n".join(lines) + "\n"


def _keys(table: Mapping[str, Any]) -> list[str]:
    return [f"{key} = {toml_value(value)}" for key, value in table.items()]


def _district_lines(district: District) -> list[str]:
    d = district.district_id
    keys: dict[str, Any] = {"name": district.name, "username": d}
    if district.password_hash is not None:
        keys["password_hash"] = district.password_hash
    if district.authorized_keys:
        keys["authorized_keys"] = list(district.authorized_keys)
    keys["notify"] = list(district.notify or (f"sis-admin@{d}.k12.example",))
    keys.update(district.settings)
    order_id, licenses = district.order
    lines = ["", f"[districts.{d}]", *_keys(keys)]
    lines += ["", f"[districts.{d}.order]", *_keys({"id": order_id, "licenses": licenses})]
    for regular_id, regular_licenses in district.regular_orders:
        lines += ["", f"[[districts.{d}.regular_orders]]"]
        lines += _keys({"id": regular_id, "licenses": regular_licenses})
    for code, name in district.schools:
        lines += ["", f"[[districts.{d}.schools]]", *_keys({"code": code, "name": name})]
    return lines
