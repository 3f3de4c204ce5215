"""server/jail.py's name rules and REMOVE's entry, and server/quotas.py's pure parts (SPEC §3.2).

The end-to-end behaviour is in tests/server/test_limits_sftp.py; these pin the
pure functions exhaustively without a server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server import jail
from server.jail import JailError
from server.quotas import STAGING_PREFIX, shown, uploads_in_progress


@pytest.fixture
def root(tmp_path: Path) -> Path:
    home = tmp_path / "homes" / "springfield"
    (home / "check").mkdir(parents=True)
    (home / "results").mkdir()
    (home / "students_template.csv").write_text("School Code\n")
    return home


@pytest.mark.parametrize("char", [*map(chr, range(1, 32)), "\x7f", "\x85", "\x9b"])
def test_every_control_character_is_refused_in_any_path(root: Path, char: str) -> None:
    for path in (f"students.csv.part{char}", f"check/{char}x", f"/results/{char}"):
        with pytest.raises(JailError, match=jail.CONTROL_CHARACTERS):
            jail.resolve(root, path)


@pytest.mark.parametrize("name", ["élève.csv.part", "学生.tmp", "a b.part", "x\u00a0.part"])
def test_printable_names_in_any_script_are_not_control_characters(root: Path, name: str) -> None:
    assert jail.resolve(root, name).name == name
    assert jail.file_name_refusal(name) is None


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("students.csv/", jail.TRAILING_SLASH),
        ("/", jail.TRAILING_SLASH),
        ("check/", jail.TRAILING_SLASH),
        ("students.csv/.", jail.TRAILING_DOT_OR_SPACE),
        ("students.csv/..", jail.TRAILING_DOT_OR_SPACE),
        (".", jail.TRAILING_DOT_OR_SPACE),
        ("students.csv.", jail.TRAILING_DOT_OR_SPACE),
        ("students.csv...", jail.TRAILING_DOT_OR_SPACE),
        ("check/students.csv ", jail.TRAILING_DOT_OR_SPACE),
        (b"students.csv.part\t", jail.CONTROL_CHARACTERS),
        ("x\x00", "NUL"),
        (b"\xff.part", "UTF-8"),
    ],
)
def test_file_name_refusals(path: str | bytes, message: str) -> None:
    try:
        refusal = jail.file_name_refusal(path)
    except JailError as exc:
        refusal = str(exc)
    assert refusal is not None and message in refusal


@pytest.mark.parametrize(
    "path", ["students.csv", "/check/students.csv", "students.csv.filepart", ".hidden", "a.b"]
)
def test_ordinary_file_names_pass(path: str) -> None:
    assert jail.file_name_refusal(path) is None


def test_resolve_entry_does_not_follow_the_last_link(root: Path) -> None:
    real = Path(os.path.realpath(root))
    os.symlink("../students.csv", root / "results" / "old.result.txt")
    os.symlink("results", root / "r")
    entry, virtual = jail.resolve_entry(root, "results/old.result.txt")
    assert (entry, virtual) == (real / "results" / "old.result.txt", "/results/old.result.txt")
    # Links in the folders above are followed: the entry is where it really is.
    entry, virtual = jail.resolve_entry(root, "/r/old.result.txt")
    assert (entry, virtual) == (real / "results" / "old.result.txt", "/results/old.result.txt")
    assert jail.resolve_entry(root, "/") == (real, "/")
    assert jail.resolve_entry(root, "check/x.part") == (real / "check" / "x.part", "/check/x.part")


def test_resolve_entry_refuses_a_folder_outside(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path, root / "out")
    with pytest.raises(JailError, match="outside your home folder"):
        jail.resolve_entry(root, "/out/secret")


def test_uploads_in_progress_counts_temp_and_staging_files_in_both_folders(root: Path) -> None:
    for name in ("a.part", "b.tmp", "check/c.partial", "check/students.csv.filepart"):
        (root / name).write_bytes(b"")
    (root / f"{STAGING_PREFIX}1").write_bytes(b"")
    (root / "check" / f"{STAGING_PREFIX}2").write_bytes(b"")
    for name in ("students.csv", "results/x.part", "check/notes.txt", ".part"):
        (root / name).write_bytes(b"")
    (root / "dir.part").mkdir()
    os.symlink("students.csv", root / "link.part")
    assert uploads_in_progress(root) == 6
    assert uploads_in_progress(root / "missing") == 0


def test_shown_escapes_and_cuts_client_names() -> None:
    assert shown(b"x.part\n\x1b[2J") == "b'x.part\\n\\x1b[2J'"
    assert shown("a\u202eb") == "'a\\u202eb'"
    long = shown("n" * 1000)
    assert long.startswith("'nnn") and long.endswith("... (1000 long)") and len(long) < 160
