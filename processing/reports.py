"""Result files in the district's `results/` folder (SPEC §6.2, §6.3).

Rendering is pure (result dict -> text); writing is atomic (a temp file in the
same folder, fsync, rename), so a district's script never reads half a file,
and a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from processing.error_codes import fix_lines
from processing.model import TEMPLATE_COLUMNS, FileFacts, PlannedError, RunResult, Student, iso

ERRORS_HEADER = ("Line", "Error Code", "Message", *TEMPLATE_COLUMNS)
MISSING_HEADER = (
    "School Code",
    "Student ID",
    "First Name",
    "Last Name",
    "Grade",
    "Username",
    "Class Name",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def defuse(value: str) -> str:
    """Prefix `'` to values a spreadsheet would run as a formula (CSV injection)."""
    return "'" + value if value.startswith(_FORMULA_START) else value


def render_errors_csv(errors: Iterable[PlannedError]) -> str:
    """`Line,Error Code,Message,` + the nine template columns with the row's values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(ERRORS_HEADER)
    width = len(TEMPLATE_COLUMNS)
    for error in errors:
        values = list(error.values[:width]) + [""] * (width - len(error.values[:width]))
        writer.writerow(
            [
                "" if error.line is None else str(error.line),
                error.code,
                defuse(error.message),
                *(defuse(v) for v in values),
            ]
        )
    return out.getvalue()


def render_missing_csv(missing: Iterable[Student]) -> str:
    """missing.csv (SPEC §6.3): who full sync deactivated, or would, for being absent;
    the stored values, under errors.csv's encoding, line endings and formula rule."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(MISSING_HEADER)
    for s in missing:
        values = (s.school_code, s.student_id, s.first_name, s.last_name, s.grade)
        writer.writerow([defuse(v) for v in (*values, s.username, s.class_name)])
    return out.getvalue()


def render_result_json(result: RunResult) -> str:
    return json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"


def render_result_txt(
    result: RunResult, district_name: str, error_codes: Iterable[str] = ()
) -> str:
    """The same facts as result.json, for a person; then a "How to fix" line for the
    file error and for each code in `error_codes` (the codes of the rejected rows)."""
    lines = [
        f"MY Access eAMS processing result for {district_name}",
        "",
        f"Run:          {result.run_id}",
        _file_line(result.file),
        f"Received:     {iso(result.received_at)}",
        f"Finished:     {iso(result.finished_at)}",
        f"Encoding:     {result.encoding or 'unknown'}",
    ]
    state = result.state
    if result.dry_run:
        lines.append("Mode:         DRY RUN (check/): nothing was applied; counts show what would")
    if state == "failed":
        error = result.file_error
        lines += [
            "",
            "Result:       FAILED: the file was rejected and nothing was applied.",
            f"Error:        {error.code}: {error.message}" if error else "Error:",
        ]
    elif state == "held":
        lines += [
            "",
            "Result:       HELD: nothing was applied.",
            f"Reason:       {result.held_reason or ''}",
            "An operator must approve this run (eams approve) or discard it.",
        ]
    else:
        outcome = "done" if result.errors == 0 else f"done with {result.errors} rejected rows"
        lines += ["", f"Result:       {outcome}"]
    lines += [
        "",
        f"Rows:         {result.rows}",
        f"Added:        {result.added}",
        f"Updated:      {result.updated}",
        f"  activated:    {result.activated}",
        f"  deactivated:  {result.deactivated}",
        f"  transferred:  {result.transferred}",
        f"Unchanged:    {result.unchanged}",
        f"Errors:       {result.errors}",
    ]
    if result.sync == "full":
        would = "would be " if state == "held" or result.dry_run else ""
        lines += [
            f"Missing:      {result.missing} (full sync: active students on no row of the "
            f"file {would}deactivated; counted in deactivated, not in rows)",
        ]
    licenses = result.licenses
    lines += [
        "",
        f"Licenses on order {licenses.order}: {licenses.licenses} total, "
        f"{licenses.used} used, {licenses.available} available",
    ]
    if result.errors or state == "failed":
        lines += ["", f"Details of every rejected row: results/{result.run_id}.errors.csv"]
    if result.missing:
        lines += ["", f"The missing students: results/{result.run_id}.missing.csv"]
    fixes = fix_lines([*error_codes, *([result.file_error.code] if result.file_error else [])])
    if fixes:
        lines += ["", *fixes]
    return "\n".join(lines) + "\n"


def _file_line(file: FileFacts | None) -> str:
    """The processed bytes, as result.json's `file` names them (SPEC §6.2)."""
    if file is None:  # a run recorded before result.json had `file`
        return "File:         students.csv"
    return f"File:         {file.name}, {file.bytes} bytes, SHA-256 {file.sha256}"


RESULT_MODE = 0o640
"""Result files: the server's user and its group (operators), whatever the umask (SPEC §3.2)."""


def atomic_write(path: Path, text: str) -> None:
    """Write via a temp file in the same folder, fsync, then rename over `path`.

    The temp name starts with `.eams-`, which the SFTP listing hides, and a
    failed write (a full disk) removes it: a district never sees half a file.
    The file is RESULT_MODE from its creation on (fchmod: the umask cannot widen
    or narrow it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".eams-tmp-{path.name}.{os.getpid()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, RESULT_MODE)
        with open(fd, "w", encoding="utf-8", newline="") as handle:
            os.fchmod(fd, RESULT_MODE)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_results(
    results_dir: Path,
    result: RunResult,
    district_name: str,
    errors: Iterable[PlannedError],
    missing: Sequence[Student] = (),
) -> list[Path]:
    """Write `<run_id>.result.json`, `.result.txt` and, when needed, `.errors.csv` and
    `.missing.csv`."""
    run_id = result.run_id
    written = []
    errors = list(errors)
    if errors:
        path = results_dir / f"{run_id}.errors.csv"
        atomic_write(path, render_errors_csv(errors))
        written.append(path)
    if missing:
        path = results_dir / f"{run_id}.missing.csv"
        atomic_write(path, render_missing_csv(missing))
        written.append(path)
    for suffix, text in (
        ("result.txt", render_result_txt(result, district_name, {e.code for e in errors})),
        ("result.json", render_result_json(result)),
    ):
        path = results_dir / f"{run_id}.{suffix}"
        atomic_write(path, text)
        written.append(path)
    return written
