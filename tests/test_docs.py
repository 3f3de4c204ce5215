"""The project's own documentation cannot drift from the code (docs/).

- docs/config.md lists exactly the keys config.toml accepts, with the code's defaults;
- docs/district-guide.md lists exactly the error codes, with processing/error_codes.py's
  meaning and fix for each;
- no file of the repository refers to anything outside it;
- every result.json the realistic runs below write is valid against docs/result.schema.json;
- `eams --version` prints the version, and CHANGELOG.md has a section for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import re
import sqlite3
import subprocess
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from importlib.metadata import version
from pathlib import Path
from typing import Any

import attrs
import pytest
from jsonschema import Draft202012Validator

from processing.config import Config, ServerSettings, SmtpSettings, WebSettings
from processing.config_check import CONFIG_KEYS
from processing.error_codes import ERROR_CODES, fix_line, markdown_table
from processing.model import FileCode, RowCode, UploadJob
from processing.passwords import StudentPasswords
from processing.runner import Runner, RunOutcome
from processing.spool import spool_copy
from processing.store import Store, database_path
from server.cli import main
from tests.conftest import (
    ORDERS,
    SHE,
    SPR,
    add_toml_keys,
    csv_text,
    db_path,
    eams,
    make_config,
    student,
    write_csv,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


# ---- Markdown tables ------------------------------------------------------------------


def markdown_tables(path: Path) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header cells, body rows' cells) of every table in a Markdown file."""
    block: list[str] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2:
            rows = [_cells(row) for row in block]
            yield rows[0], rows[2:]
        block = []


def _cells(line: str) -> list[str]:
    """A table row's cells; a `|` inside backticks does not split (none is written)."""
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def _code_span(cell: str) -> str | None:
    match = re.fullmatch(r"`([^`]+)`", cell)
    return match.group(1) if match else None


# ---- 1. config.md: every key, nothing else ---------------------------------------------


def documented_config() -> dict[str, list[str]]:
    """`key path` -> its row, from every table of docs/config.md whose first column is Key."""
    documented: dict[str, list[str]] = {}
    for header, rows in markdown_tables(DOCS / "config.md"):
        if header[0] != "Key":
            continue
        for row in rows:
            key = _code_span(row[0])
            assert key is not None, f"config.md: the Key cell {row[0]!r} is not one `key`"
            assert key not in documented, f"config.md documents {key} twice"
            documented[key] = row
    return documented


def code_config_keys() -> set[str]:
    return {
        f"{table}.{key}" if table else key for table, keys in CONFIG_KEYS.items() for key in keys
    }


def test_config_md_documents_exactly_the_keys_the_config_accepts() -> None:
    documented, accepted = set(documented_config()), code_config_keys()
    assert not accepted - documented, f"keys missing from docs/config.md: {accepted - documented}"
    assert not documented - accepted, (
        f"docs/config.md keys the code refuses: {documented - accepted}"
    )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@pytest.mark.parametrize(
    ("table", "settings"),
    [("server", ServerSettings), ("smtp", SmtpSettings), ("web", WebSettings)],
)
def test_config_md_defaults_are_the_codes(table: str, settings: type[Any]) -> None:
    documented = documented_config()
    defaults = {f.name: f.default for f in attrs.fields(settings)}
    for key in sorted(CONFIG_KEYS[table]):
        row = documented.get(f"{table}.{key}")
        assert row is not None, f"docs/config.md has no row for {table}.{key}"
        assert row[2] == f"`{_toml(defaults[key])}`", (f"{table}.{key}", row[2])


# ---- 2. error codes: the code's table, the guide's table -------------------------------


def test_every_error_code_has_one_entry_in_the_table() -> None:
    codes = {*RowCode, *FileCode}
    assert set(ERROR_CODES) == codes
    for code, entry in ERROR_CODES.items():
        assert entry.code is code
        for text in (entry.meaning, entry.fix):
            assert text and "\n" not in text and "|" not in text, (code, text)
    assert fix_line("UNKNOWN_SCHOOL") == (
        f"How to fix UNKNOWN_SCHOOL: {ERROR_CODES[RowCode.UNKNOWN_SCHOOL].fix}"
    )


def test_district_guide_documents_exactly_the_error_codes() -> None:
    documented: list[str] = []
    for header, rows in markdown_tables(DOCS / "district-guide.md"):
        if header[0] == "Code":
            documented += [_code_span(row[0]) or row[0] for row in rows]
    codes = {str(code) for code in (*RowCode, *FileCode)}
    assert len(documented) == len(set(documented)), "a code is in the district guide twice"
    assert not codes - set(documented), f"codes missing from the guide: {codes - set(documented)}"
    assert not set(documented) - codes, f"the guide lists unknown codes: {set(documented) - codes}"
    assert set(documented) == {str(code) for code in ERROR_CODES}


def test_district_guide_error_table_is_the_codes_table() -> None:
    """The guide carries the table processing/error_codes.py renders, word for word."""
    guide = (DOCS / "district-guide.md").read_text(encoding="utf-8")
    assert markdown_table() in guide, (
        "docs/district-guide.md's error table differs from processing/error_codes.py: "
        "paste the output of `python -m processing.error_codes` into section 10"
    )


def _email_bodies(cfg: Path) -> list[str]:
    """The text of every queued email, oldest first."""
    with contextlib.closing(sqlite3.connect(db_path(cfg))) as db:
        rows = db.execute("SELECT message FROM outbox ORDER BY id").fetchall()
    bodies = []
    for (raw,) in rows:
        message = email.message_from_bytes(bytes(raw), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        part = message.get_body(("plain",))
        assert part is not None
        bodies.append(str(part.get_content()).replace("\r\n", "\n"))
    return bodies


def test_result_txt_and_emails_say_how_to_fix_each_code_of_the_run(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    rows = [student("S1"), student("S2", school="9999"), student("S3", grade="13")]
    rows += [student("S4", school="9999")]
    assert _process(cfg, "partial.csv", rows) == 0
    bad = cfg.parent / "bad.csv"
    bad.write_text("Student ID;School Code\r\n", encoding="utf-8")
    assert eams("process", "--district", SPR, str(bad), config=cfg)[0] == 1
    folder = cfg.parent / "homes" / SPR / "results"
    partial_txt, failed_txt = (p.read_text("utf-8") for p in sorted(folder.glob("*.result.txt")))
    partial_email, failed_email = _email_bodies(cfg)
    expected = [fix_line("UNKNOWN_SCHOOL"), fix_line("INVALID_GRADE")]  # the table's order
    for text in (partial_txt, partial_email):
        assert [line for line in text.splitlines() if line.startswith("How to fix")] == expected
    for text in (failed_txt, failed_email):
        assert [line for line in text.splitlines() if line.startswith("How to fix")] == [
            fix_line("HEADER_MISMATCH")
        ]


# ---- 3. nothing refers outside the repository ------------------------------------------

# Written in pieces, so this file does not match its own rule.
OUTSIDE = ("../" + "shared", "shared/" + "SPEC")
URL = re.compile(r"https?://([^/\s\"'`<>)\]]+)([^\s\"'`<>)\]]*)")
EXAMPLE_HOST = re.compile(r"(^|\.)(example\.(com|org|net)|[a-z0-9-]+\.example|localhost)$")
# Identifiers that are URLs by convention, never fetched: a JSON Schema dialect and the
# SVG namespace.
IDENTIFIERS = {"json-schema.org/draft/2020-12/schema", "www.w3.org/2000/svg"}
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def repository_files() -> list[Path]:
    """Tracked files and new ones not ignored (docs written before their first commit)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    paths = {ROOT / name for name in listed.decode("utf-8").split("\0") if name}
    return sorted(p for p in paths if p.is_file())


def test_no_file_refers_to_a_path_outside_the_repository() -> None:
    found = []
    for path in repository_files():
        text = path.read_bytes().decode("utf-8", errors="replace")
        name = path.relative_to(ROOT)
        found += [f"{name}: {needle}" for needle in OUTSIDE if needle in text]
        for match in URL.finditer(text):
            host, rest = match.group(1).split(":")[0].lower(), match.group(2)
            if EXAMPLE_HOST.search(host) or host in ("127.0.0.1", "[::1]"):
                continue
            if f"{host}{rest}" in IDENTIFIERS:
                continue
            found.append(f"{name}: {match.group(0)}")
    assert not found, "references outside the repository:\n" + "\n".join(found)


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            slug = _slug(line.lstrip("#"))
            n, unique = 0, slug
            while unique in anchors:
                n += 1
                unique = f"{slug}-{n}"
            anchors.add(unique)
    return anchors


def test_every_markdown_link_points_into_the_repository() -> None:
    broken = []
    for path in repository_files():
        if path.suffix != ".md":
            continue
        for target in MARKDOWN_LINK.findall(path.read_text(encoding="utf-8")):
            if URL.match(target):
                continue  # an http(s) link: the test above decides
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(ROOT)}: ({target})"
            if not linked.is_relative_to(ROOT) or not linked.exists():
                broken.append(f"{where} names no file of the repository")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{where} names no heading of {linked.name}")
    assert not broken, "\n".join(broken)


def test_readme_links_into_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in (
        "district-guide.md",
        "operator-guide.md",
        "config.md",
        "result.schema.json",
        "capacity.md",
    ):
        assert f"(docs/{doc})" in readme, doc
    assert "(CHANGELOG.md)" in readme


# ---- 4. result.json against docs/result.schema.json ------------------------------------


def schema_validator() -> Draft202012Validator:
    schema = json.loads((DOCS / "result.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _process(cfg: Path, name: str, rows: list[Any], *extra: str, district: str = SPR) -> int:
    path = write_csv(cfg.parent / name, rows)
    code, out, err = eams("process", "--district", district, *extra, str(path), config=cfg)
    assert code in (0, 1), out + err
    return code


async def _dry_run(cfg: Path, district: str, data: bytes) -> RunOutcome:
    """A check/ upload: spooled and run as the server runs it, results written."""
    config = Config.from_toml(cfg)
    store = await Store.open(database_path(config.server.data))
    try:
        await store.sync_config(config)
        runner = Runner(config, store, StudentPasswords.from_data_dir(config.server.data))
        source = cfg.parent / "check-upload.csv"
        source.write_bytes(data)
        spooled, size = spool_copy(source, config.server.data, district)
        job = UploadJob(
            district_id=district,
            spool_path=spooled,
            size=size,
            received_at=datetime.now(UTC).replace(microsecond=0),
            source="check/students.csv",
            dry_run=True,
        )
        outcome: RunOutcome = await runner.run(await store.enqueue_run(job))
        return outcome
    finally:
        await store.close()


def run_every_kind_of_result(tmp_path: Path) -> list[dict[str, Any]]:
    """Springfield (delta) and Shelbyville (full sync) go through every kind of run;
    returns every result.json written, as parsed."""
    cfg = make_config(tmp_path, districts=(SPR, SHE), licenses=200)
    add_toml_keys(cfg, f"districts.{SHE}", sync="full")
    roster = [student(f"S{n:03d}") for n in range(1, 41)]
    assert _process(cfg, "first.csv", roster) == 0  # done
    partial = [student("S041"), student("S042", school="9999"), student("S043", grade="13")]
    assert _process(cfg, "partial.csv", partial) == 0  # done with errors
    bad_header = cfg.parent / "bad-header.csv"
    bad_header.write_text("Student ID,School Code\r\nS1,0101\r\n", encoding="utf-8")
    assert eams("process", "--district", SPR, str(bad_header), config=cfg)[0] == 1  # failed
    workbook = cfg.parent / "workbook.csv"
    workbook.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    assert eams("process", "--district", SPR, str(workbook), config=cfg)[0] == 1  # NOT_TEXT
    leavers = [student(f"S{n:03d}", "D") for n in range(1, 31)]
    assert _process(cfg, "leavers.csv", leavers) == 1  # held
    held = next(r for r in _runs(cfg) if r["state"] == "held")
    code, out, err = eams("approve", held["run_id"], "--district", SPR, config=cfg)
    assert code == 0, out + err  # result.json rewritten: done
    regular = ORDERS[SPR][1]
    assert _process(cfg, "regular.csv", [student("R001")], "--order", regular) == 0
    asyncio.run(_dry_run(cfg, SPR, csv_text([student("S050"), student("S051", "D")]).encode()))

    she_roster = [student(f"T{n:03d}") for n in range(1, 11)]
    assert _process(cfg, "she.csv", she_roster, district=SHE) == 0
    assert _process(cfg, "she-2.csv", she_roster[:8], district=SHE) == 0  # 2 missing
    asyncio.run(
        _dry_run(cfg, SHE, csv_text(she_roster[:7]).encode())
    )  # dry run: 1 would be missing
    assert _process(cfg, "she-empty.csv", [], district=SHE) == 1  # full sync, empty: held

    results = []
    for district in (SPR, SHE):
        folder = cfg.parent / "homes" / district / "results"
        for path in sorted(folder.glob("*.result.json")):
            results.append(json.loads(path.read_text(encoding="utf-8")))
    return results


def _runs(cfg: Path) -> list[dict[str, Any]]:
    code, out, err = eams("runs", "--json", config=cfg)
    assert code == 0, err
    listed: list[dict[str, Any]] = json.loads(out)
    return listed


def _kinds(result: dict[str, Any]) -> set[str]:
    kinds = {result["state"]}
    if result["state"] == "done":
        kinds.add("partial" if result["errors"] else "clean")
    if result["dry_run"]:
        kinds.add("dry_run")
    if result["sync"] == "full" and result["missing"]:
        kinds.add("full_sync_missing")
    if result["file_error"] and result["file_error"]["code"] == "NOT_TEXT":
        kinds.add("not_text")
    if result["licenses"]["order"] == ORDERS[SPR][1]:
        kinds.add("other_order")
    return kinds


def test_every_result_json_the_runs_write_is_valid_against_the_schema(tmp_path: Path) -> None:
    validator = schema_validator()
    results = run_every_kind_of_result(tmp_path)
    problems = [
        f"{result['district']} {result['run_id']}: {error.json_path}: {error.message}"
        for result in results
        for error in validator.iter_errors(result)
    ]
    assert not problems, "\n".join(problems)
    seen = set().union(*(_kinds(r) for r in results))
    expected = {"clean", "partial", "failed", "held", "dry_run", "full_sync_missing"}
    assert expected | {"not_text", "other_order"} <= seen, seen
    # every field the code writes is a property of the schema, and the schema asks for
    # no field the code never writes (held_reason is written for held runs only)
    schema = json.loads((DOCS / "result.schema.json").read_text(encoding="utf-8"))
    written = set().union(*(set(r) for r in results))
    assert written == set(schema["properties"])


@pytest.mark.parametrize(
    "change",
    [
        {"surprise": 1},
        {"state": "approved"},
        {"rows": -1},
        {"run_id": "2026-11-28"},
        {"file": {"name": "students.csv", "bytes": 1, "sha256": "ABC"}},
        {"held_reason": "not held"},
    ],
    ids=["extra-field", "state", "negative", "run-id", "sha256", "held-reason-when-done"],
)
def test_the_schema_refuses_what_the_code_never_writes(change: dict[str, Any]) -> None:
    good = {
        "run_id": "20261128-193000-7",
        "district": "springfield",
        "state": "done",
        "received_at": "2026-11-28T19:30:00Z",
        "finished_at": "2026-11-28T19:30:01Z",
        "encoding": "utf-8",
        "rows": 1,
        "added": 1,
        "updated": 0,
        "unchanged": 0,
        "activated": 0,
        "deactivated": 0,
        "transferred": 0,
        "errors": 0,
        "file_error": None,
        "licenses": {"order": "ENT-SPR-2026", "licenses": 5, "used": 1, "available": 4},
        "sync": "delta",
        "missing": 0,
        "dry_run": False,
        "file": {"name": "students.csv", "bytes": 90, "sha256": "0" * 64},
    }
    validator = schema_validator()
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, **change})


# ---- eams --version and the changelog --------------------------------------------------


def test_eams_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"eams {version('eams')}\n"


def test_the_changelog_has_a_section_for_this_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## {re.escape(project['version'])}\b", changelog, re.MULTILINE), (
        f"CHANGELOG.md has no '## {project['version']}' section"
    )
