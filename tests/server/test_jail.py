"""server/jail.py: confinement after resolving links, and the home-folder rules (SPEC §3)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server import jail
from server.jail import JailError, PathKind


@pytest.fixture
def root(tmp_path: Path) -> Path:
    home = tmp_path / "homes" / "springfield"
    (home / "check").mkdir(parents=True)
    (home / "results").mkdir()
    (home / "students_template.csv").write_text("School Code\n")
    return home


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside"
    secret.mkdir()
    (secret / "passwd").write_text("root:x:0:0\n")
    return secret


# --- resolve: mapping --------------------------------------------------------


def test_root_maps_to_home(root: Path) -> None:
    real = Path(os.path.realpath(root))
    assert jail.resolve(root, "/") == real
    assert jail.resolve(root, b"") == real
    assert jail.resolve(root, ".") == real


def test_absolute_paths_stay_under_home(root: Path) -> None:
    real = Path(os.path.realpath(root))
    assert jail.resolve(root, "/students.csv") == real / "students.csv"
    assert jail.resolve(root, b"/check/students.csv") == real / "check" / "students.csv"
    assert jail.resolve(root, "/etc/passwd") == real / "etc" / "passwd"


def test_relative_paths_use_cwd(root: Path) -> None:
    real = Path(os.path.realpath(root))
    assert jail.resolve(root, "students.csv", cwd="/check") == real / "check" / "students.csv"
    assert jail.resolve(root, "../results", cwd="/check") == real / "results"
    assert jail.resolve(root, "x", cwd="check/") == real / "check" / "x"


@pytest.mark.parametrize(
    "path", ["..", "../..", "/..", "/../../etc/passwd", "check/../../..", "a/./../../../x"]
)
def test_dotdot_never_climbs_above_home(root: Path, path: str) -> None:
    resolved = jail.resolve(root, path)
    assert jail.to_virtual(root, resolved) in ("/", "/etc/passwd", "/x")
    assert resolved.is_relative_to(os.path.realpath(root))


def test_dotdot_etc_passwd_is_not_the_real_one(root: Path) -> None:
    resolved = jail.resolve(root, "/../../../../../../../etc/passwd")
    assert resolved == Path(os.path.realpath(root)) / "etc" / "passwd"
    assert jail.write_refusal("/../../etc/passwd") == jail.ONLY_UPLOAD


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("check\\students.csv", "backslashes"),
        ("..\\..\\etc\\passwd", "backslashes"),
        (b"students.csv\x00.txt", "NUL"),
        ("students\x00", "NUL"),
        (b"\xff\xfe.csv", "UTF-8"),
        ("/" + "a" * 5000, "too long"),
    ],
)
def test_bad_names_refused(root: Path, path: str | bytes, message: str) -> None:
    with pytest.raises(JailError, match=message):
        jail.resolve(root, path)


def test_jail_error_is_permission_error() -> None:
    assert issubclass(JailError, PermissionError)


# --- resolve: links on disk --------------------------------------------------


def test_symlink_pointing_outside_refused(root: Path, outside: Path) -> None:
    os.symlink(outside, root / "out")
    os.symlink(outside / "passwd", root / "check" / "passwd")
    for path in ("/out", "/out/passwd", "out/../out/passwd", "/check/passwd"):
        with pytest.raises(JailError, match="outside your home folder"):
            jail.resolve(root, path)


def test_relative_symlink_climbing_out_refused(root: Path) -> None:
    os.symlink("../../..", root / "up")
    with pytest.raises(JailError):
        jail.resolve(root, "/up/etc/passwd")


def test_symlink_chain_ending_outside_refused(root: Path, outside: Path) -> None:
    os.symlink(outside, root / "c3")
    os.symlink("c3", root / "c2")
    os.symlink("/c2", root / "c1")  # absolute link text means the real /, not the home
    os.symlink("../c2", root / "results" / "c0")
    for path in ("/c1", "/c2/passwd", "/results/c0"):
        with pytest.raises(JailError):
            jail.resolve(root, path)


def test_symlink_chain_staying_inside_allowed(root: Path) -> None:
    real = Path(os.path.realpath(root))
    (root / "results" / "r.txt").write_text("ok")
    os.symlink("results", root / "l2")
    os.symlink("../l2", root / "check" / "l1")
    assert jail.resolve(root, "/check/l1/r.txt") == real / "results" / "r.txt"
    assert jail.to_virtual(root, jail.resolve(root, "/check/l1/r.txt")) == "/results/r.txt"


def test_symlink_inside_that_stays_inside_allowed(root: Path) -> None:
    real = Path(os.path.realpath(root))
    os.symlink("check", root / "chk")
    assert jail.resolve(root, "/chk/students.csv") == real / "check" / "students.csv"


def test_dangling_symlink_outside_refused(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "nowhere" / "new.csv", root / "dangling")
    with pytest.raises(JailError):
        jail.resolve(root, "/dangling")


def test_symlink_loop_inside_does_not_hang(root: Path) -> None:
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    resolved = jail.resolve(root, "/loop1")
    assert resolved.is_relative_to(os.path.realpath(root))


def test_spec_chroot_escape_layout_refused(root: Path) -> None:
    """SPEC §3: `esc -> a/b/c/d/../../../..` then `a/b/c/d -> ../../..` makes esc the real /."""
    (root / "a" / "b" / "c" / "d").mkdir(parents=True)
    os.symlink("a/b/c/d/../../../..", root / "esc")
    (root / "a" / "b" / "c" / "d").rmdir()
    os.symlink("../../..", root / "a" / "b" / "c" / "d")
    # Proof that the layout really escapes on disk:
    escaped = os.path.realpath(root / "esc")
    assert not Path(escaped).is_relative_to(os.path.realpath(root))
    for path in ("/esc", "esc/etc/passwd", "/esc/tmp", "/a/b/c/d/../../../../esc"):
        with pytest.raises(JailError, match="outside your home folder"):
            jail.resolve(root, path)
    # `..` collapses before links are followed, so d/.. is just c.
    assert jail.to_virtual(root, jail.resolve(root, "/a/b/c/d/..")) == "/a/b/c"
    # d itself points at the home folder: inside, allowed.
    assert jail.to_virtual(root, jail.resolve(root, "/a/b/c/d")) == "/"


def test_root_itself_is_realpathed(tmp_path: Path, root: Path) -> None:
    alias = tmp_path / "alias"
    os.symlink(root, alias)
    assert jail.resolve(alias, "/check") == Path(os.path.realpath(root)) / "check"
    assert jail.to_virtual(alias, root / "check") == "/check"


# --- to_virtual --------------------------------------------------------------


def test_to_virtual(root: Path) -> None:
    assert jail.to_virtual(root, root) == "/"
    assert jail.to_virtual(root, root / "check" / "students.csv") == "/check/students.csv"
    assert jail.to_virtual(root, root / "results") == "/results"


def test_to_virtual_outside_refused(root: Path, outside: Path) -> None:
    with pytest.raises(JailError):
        jail.to_virtual(root, outside / "passwd")
    with pytest.raises(JailError):
        jail.to_virtual(root, root.parent / (root.name + "-other"))


def test_round_trip(root: Path) -> None:
    for virtual in ("/", "/students.csv", "/check", "/results/x.result.txt"):
        assert jail.to_virtual(root, jail.resolve(root, virtual)) == virtual


def test_sibling_with_common_prefix_is_outside(root: Path) -> None:
    sibling = root.parent / (root.name + "2")
    sibling.mkdir()
    os.symlink(sibling, root / "sib")
    with pytest.raises(JailError):
        jail.resolve(root, "/sib")


# --- classify ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/", PathKind.ROOT),
        ("", PathKind.ROOT),
        ("/..", PathKind.ROOT),
        ("/students.csv", PathKind.UPLOAD),
        ("students.csv", PathKind.UPLOAD),
        (b"/students.csv", PathKind.UPLOAD),
        ("/check/students.csv", PathKind.UPLOAD),
        ("check/students.csv", PathKind.UPLOAD),
        ("/results/../students.csv", PathKind.UPLOAD),
        ("/students.csv.filepart", PathKind.TEMP_UPLOAD),
        ("/check/students.csv.filepart", PathKind.TEMP_UPLOAD),
        ("/x.part", PathKind.TEMP_UPLOAD),
        ("/x.partial", PathKind.TEMP_UPLOAD),
        ("/x.tmp", PathKind.TEMP_UPLOAD),
        ("/check/x.tmp", PathKind.TEMP_UPLOAD),
        ("/x.filepart", PathKind.TEMP_UPLOAD),
        ("/.tmp", PathKind.OTHER),
        ("/x.TMP", PathKind.OTHER),
        ("/students_template.csv", PathKind.TEMPLATE),
        ("/check/students_template.csv", PathKind.OTHER),
        ("/check", PathKind.CHECK_DIR),
        ("/check/", PathKind.CHECK_DIR),
        ("/results", PathKind.RESULTS_DIR),
        ("/results/20261128-193000-7.result.txt", PathKind.RESULT_FILE),
        ("/results/x.tmp", PathKind.RESULT_FILE),
        ("/results/sub/x.txt", PathKind.OTHER),
        ("/Students.csv", PathKind.OTHER),
        ("/students.csv ", PathKind.OTHER),
        ("/check/check", PathKind.OTHER),
        ("/other/students.csv", PathKind.OTHER),
        ("/other/x.tmp", PathKind.OTHER),
    ],
)
def test_classify(path: str | bytes, kind: PathKind) -> None:
    assert jail.classify(path) is kind


def test_folder_and_name() -> None:
    assert jail.folder_of("/") == "/"
    assert jail.folder_of("/students.csv") == "/"
    assert jail.folder_of("/check/students.csv") == "/check"
    assert jail.folder_of("check/x/y") == "/check/x"
    assert jail.name_of("/check/students.csv") == "students.csv"
    assert jail.name_of("/") == ""


# --- write ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/students.csv",
        "/check/students.csv",
        "/students.csv.filepart",
        "/check/students.csv.filepart",
        "/x.tmp",
        "/x.part",
        "/x.partial",
        "/check/x.filepart",
    ],
)
def test_write_allowed(path: str) -> None:
    assert jail.write_refusal(path) is None


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/Students.csv", 'only students.csv can be uploaded here (not "Students.csv")'),
        ("/check/Students.csv", 'only students.csv can be uploaded here (not "Students.csv")'),
        ("/students.txt", 'only students.csv can be uploaded here (not "students.txt")'),
        ("/x.TMP", 'only students.csv can be uploaded here (not "x.TMP")'),
        ("/bad\nname", 'only students.csv can be uploaded here (not "bad?name")'),
        ("/results/x.result.txt", jail.RESULTS_READ_ONLY),
        ("/results/new.csv", jail.RESULTS_READ_ONLY),
        ("/results/sub/x", jail.RESULTS_READ_ONLY),
        ("/results", jail.RESULTS_READ_ONLY),
        ("/students_template.csv", "students_template.csv is read-only"),
        ("/other/students.csv", "only students.csv can be uploaded here"),
        ("/check/sub/students.csv", "only students.csv can be uploaded here"),
        ("/", "only students.csv can be uploaded here"),
        ("/check", "only students.csv can be uploaded here"),
    ],
)
def test_write_refused(path: str, message: str) -> None:
    assert jail.write_refusal(path) == message


def test_refusal_echo_is_bounded() -> None:
    message = jail.write_refusal("/" + "x" * 300)
    assert message is not None and len(message) < 150


# --- rename --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("/students.csv.filepart", "/students.csv"),
        ("/x.tmp", "/students.csv"),
        ("x.part", "students.csv"),
        ("/check/students.csv.filepart", "/check/students.csv"),
        ("/check/x.partial", "/check/students.csv"),
    ],
)
def test_rename_allowed(old: str, new: str) -> None:
    assert jail.rename_refusal(old, new) is None


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("/x.tmp", "/other.csv", 'only students.csv can be uploaded here (not "other.csv")'),
        ("/x.tmp", "/Students.csv", 'only students.csv can be uploaded here (not "Students.csv")'),
        ("/x.tmp", "/check/students.csv", jail.RENAME_TEMP_TARGET),
        ("/check/x.tmp", "/students.csv", jail.RENAME_TEMP_TARGET),
        ("/x.tmp", "/y.tmp", jail.RENAME_TEMP_TARGET),
        ("/x.tmp", "/results/x.csv", jail.RESULTS_READ_ONLY),
        ("/x.tmp", "/students_template.csv", jail.TEMPLATE_READ_ONLY),
        ("/students.csv", "/old.csv", jail.NO_RENAME_UPLOAD),
        ("/students.csv", "/students.csv.filepart", jail.NO_RENAME_UPLOAD),
        ("/check/students.csv", "/students.csv", jail.NO_RENAME_UPLOAD),
        ("/other.csv", "/students.csv", jail.RENAME_ONLY_TEMP),
        ("/results/a.result.txt", "/students.csv", jail.RESULTS_READ_ONLY),
        ("/results", "/r", jail.RESULTS_READ_ONLY),
        ("/students_template.csv", "/students.csv", jail.TEMPLATE_READ_ONLY),
        ("/check", "/check2", jail.NO_RENAME_FOLDER),
        ("/", "/x", jail.NO_RENAME_FOLDER),
    ],
)
def test_rename_refused(old: str, new: str, message: str) -> None:
    assert jail.rename_refusal(old, new) == message


# --- remove, mkdir, rmdir, links -------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/results/20261128-193000-7.errors.csv", "/students.csv", "/check/students.csv", "/x.tmp"],
)
def test_remove_allowed(path: str) -> None:
    assert jail.remove_refusal(path) is None


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/students_template.csv", jail.TEMPLATE_READ_ONLY),
        ("/", jail.NO_RMDIR),
        ("/check", jail.NO_RMDIR),
        ("/results", jail.NO_RMDIR),
        ("/results/sub/x", jail.RESULTS_READ_ONLY),
        ("/other.csv", jail.NO_REMOVE),
        ("/Students.csv", jail.NO_REMOVE),
    ],
)
def test_remove_refused(path: str, message: str) -> None:
    assert jail.remove_refusal(path) == message


@pytest.mark.parametrize("path", ["/new", "/check/sub", "/a/b/c/d"])
def test_mkdir_refused(path: str) -> None:
    assert jail.mkdir_refusal(path) == jail.NO_MKDIR


def test_mkdir_in_results_refused_as_read_only() -> None:
    assert jail.mkdir_refusal("/results/sub") == jail.RESULTS_READ_ONLY


@pytest.mark.parametrize("path", ["/check", "/results", "/", "/other"])
def test_rmdir_refused(path: str) -> None:
    assert jail.rmdir_refusal(path) == jail.NO_RMDIR


def test_links_refused() -> None:
    assert jail.link_refusal() == jail.NO_LINKS
