"""The district's home folder as SFTP sees it: path confinement and write rules (SPEC §3).

Everything here is pure path logic (plus `os.path.realpath` for links on disk),
so the rules can be tested exhaustively without an SSH server; `server/sftp.py`
calls these functions from its hooks and turns a refusal message into an SFTP
permission-denied status.

Two separate questions, answered by two groups of functions:

* Where is it? `resolve()` maps a client path to a real path and refuses
  anything that is not inside the home folder *after* following links on disk.
  asyncssh's `chroot` option only maps paths textually, which a client can
  escape with two SYMLINK requests (SPEC §3); checking the resolved path, as
  SFTPGo's `toRootRelative` does, closes that hole whatever links exist.
* What may be done to it? `classify()` names the few paths that have a meaning
  (students.csv, check/, results/ ...) and the `*_refusal()` functions return
  the message a district administrator sees, or None when the request is
  allowed. Decide on the virtual path of the *resolved* location
  (`to_virtual(root, resolve(root, path))`), so a link on disk can never turn a
  refused location into an allowed one.
"""

from __future__ import annotations

import enum
import os
import re
from pathlib import Path

UPLOAD_NAME = "students.csv"
TEMPLATE_NAME = "students_template.csv"
CHECK_DIR = "/check"
RESULTS_DIR = "/results"
UPLOAD_FOLDERS = ("/", CHECK_DIR)
# WinSCP writes `students.csv.filepart`; other clients use these suffixes.
TEMP_SUFFIXES = (".filepart", ".part", ".partial", ".tmp")
# Longer client paths are refused before they reach the file system.
MAX_PATH_CHARS = 4096
# Unicode's control characters (category Cc): C0, DEL and C1.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

OUTSIDE_HOME = "path is outside your home folder"
ONLY_UPLOAD = "only students.csv can be uploaded here"
RESULTS_READ_ONLY = "results/ is read-only: you can download and delete result files"
TEMPLATE_READ_ONLY = "students_template.csv is read-only"
NO_MKDIR = "new folders cannot be created: upload students.csv to / or to check/"
NO_RMDIR = "folders cannot be removed"
NO_LINKS = "links cannot be created here"
RENAME_ONLY_TEMP = (
    "only a temporary upload (.filepart, .part, .partial, .tmp) can be renamed,"
    " and only to students.csv"
)
RENAME_TEMP_TARGET = "a temporary upload can only be renamed to students.csv in the same folder"
NO_RENAME_UPLOAD = "students.csv cannot be renamed: upload a new students.csv instead"
NO_RENAME_FOLDER = "folders cannot be renamed"
NO_REMOVE = "only students.csv, temporary uploads and result files can be deleted"
CONTROL_CHARACTERS = "file names may not contain control characters"
TRAILING_SLASH = "a file name may not end with /"
TRAILING_DOT_OR_SPACE = "file names may not end with a dot or a space"


class JailError(PermissionError):
    """A client path that must not be served; the message is shown to the client."""


class PathKind(enum.Enum):
    """The paths of a home folder that have a meaning of their own (SPEC §3)."""

    ROOT = "root"
    UPLOAD = "upload"  # /students.csv or /check/students.csv
    TEMP_UPLOAD = "temp_upload"  # a client's temporary upload name in / or /check/
    TEMPLATE = "template"  # /students_template.csv
    CHECK_DIR = "check_dir"  # /check
    RESULTS_DIR = "results_dir"  # /results
    RESULT_FILE = "result_file"  # a file directly in /results/
    OTHER = "other"


def resolve(root: Path, virtual: bytes | str, cwd: str = "/") -> Path:
    """Map an SFTP path to the real path it names, refusing anything outside `root`.

    `virtual` is absolute (`/x`) or relative to the virtual `cwd`; `.` and `..`
    collapse textually and never climb above `/`, like a chroot (so WinSCP's
    "go up" from `/` stays at `/`). The mapped path is then resolved with
    `os.path.realpath`, which follows every link that exists on disk (a missing
    tail is kept as written), and the result must be `root` or inside it.
    Returning the resolved path means the caller acts on what was checked.

    Raises JailError for NUL bytes, backslashes (a Windows client's
    `check\\students.csv` must not become a file with a backslash in its name),
    control characters, names that are not UTF-8, overlong paths, and any escape.
    """
    real_root = _real_root(root)
    virtual_path = normalize(virtual, cwd)
    mapped = os.path.join(real_root, *virtual_path.split("/")[1:])
    resolved = os.path.realpath(mapped)
    if not _is_within(resolved, real_root):
        raise JailError(OUTSIDE_HOME)
    return Path(resolved)


def resolve_entry(root: Path, virtual: bytes | str, cwd: str = "/") -> tuple[Path, str]:
    """The directory entry a path names, without following a link in its last component.

    For REMOVE: deleting a link deletes the link, never what it points at (a
    link in results/ that an operator left pointing at ../students.csv must not
    make "delete this result" delete students.csv). The folder holding the
    entry is resolved like any path and must be inside `root`; returns the real
    entry and its virtual path, which is what the remove rules are decided on.
    Callers also `resolve()` the full path, so a link that points out of the
    home is refused as every such path is.
    """
    path = normalize(virtual, cwd)
    if path == "/":
        return Path(_real_root(root)), "/"
    folder = resolve(root, folder_of(path))
    name = name_of(path)
    return folder / name, _join(to_virtual(root, folder), name)


def file_name_refusal(virtual: bytes | str) -> str | None:
    """Why a client path cannot name a file, or None (OPEN, SETSTAT, REMOVE, RENAME).

    A real file system refuses `students.csv/` (not a folder) and Windows drops a
    trailing dot or space; collapsing such a path would silently act on another
    name (`students.csv/` and `students.csv/.` were accepted as `students.csv`).
    Raises JailError first for what `normalize()` refuses in any path (control
    characters, NUL, length ...).
    """
    normalize(virtual)
    text = _text(virtual)
    if text.endswith("/"):
        return TRAILING_SLASH
    last = text.rsplit("/", 1)[-1]
    if last.endswith((".", " ")):
        return TRAILING_DOT_OR_SPACE
    return None


def to_virtual(root: Path, real: Path) -> str:
    """The SFTP path of a real path inside `root` ("/" for root itself).

    The inverse of `resolve()`, used for REALPATH answers and to classify where
    a request really lands. Raises JailError if `real` is not inside root.
    """
    real_root = _real_root(root)
    resolved = os.path.realpath(real)
    if not _is_within(resolved, real_root):
        raise JailError(OUTSIDE_HOME)
    relative = os.path.relpath(resolved, real_root)
    if relative == ".":
        return "/"
    return "/" + relative.replace(os.sep, "/")


def normalize(virtual: bytes | str, cwd: str = "/") -> str:
    """The absolute, collapsed virtual path (`/a/b`, never a trailing `/`).

    Refuses (JailError) what no real file name may contain, so every path that
    reaches the file system passed through here.
    """
    text = _text(virtual)
    if "\x00" in text:
        raise JailError("file names may not contain NUL characters")
    if "\\" in text:
        raise JailError("file names may not contain backslashes: use / between folders")
    if len(text) + len(cwd) > MAX_PATH_CHARS:
        raise JailError("path is too long")
    if _CONTROL.search(text):
        # A newline or an escape in a name would forge a log line or drive the operator's
        # terminal wherever the name is shown later (seen: `x.part\n... banned 10.6.6.6`).
        raise JailError(CONTROL_CHARACTERS)
    return _collapse(text, cwd)


def folder_of(virtual: bytes | str) -> str:
    """The virtual folder that holds `virtual` ("/" for top-level names and for "/")."""
    path = _collapse(_text(virtual))
    if path == "/":
        return "/"
    return path.rsplit("/", 1)[0] or "/"


def name_of(virtual: bytes | str) -> str:
    """The last component of `virtual` ("" for "/")."""
    return _collapse(_text(virtual)).rsplit("/", 1)[1]


def is_temp_name(name: str) -> bool:
    """True for a client's temporary upload name (`students.csv.filepart`, `x.part` ...)."""
    return any(name.endswith(suffix) and len(name) > len(suffix) for suffix in TEMP_SUFFIXES)


def classify(virtual_path: bytes | str) -> PathKind:
    """Which meaningful path of the home folder `virtual_path` is (SPEC §3)."""
    path = _collapse(_text(virtual_path))
    if path == "/":
        return PathKind.ROOT
    fixed = {
        "/" + UPLOAD_NAME: PathKind.UPLOAD,
        CHECK_DIR + "/" + UPLOAD_NAME: PathKind.UPLOAD,
        "/" + TEMPLATE_NAME: PathKind.TEMPLATE,
        CHECK_DIR: PathKind.CHECK_DIR,
        RESULTS_DIR: PathKind.RESULTS_DIR,
    }
    if path in fixed:
        return fixed[path]
    folder, name = folder_of(path), name_of(path)
    if folder in UPLOAD_FOLDERS and is_temp_name(name):
        return PathKind.TEMP_UPLOAD
    if folder == RESULTS_DIR:
        return PathKind.RESULT_FILE
    return PathKind.OTHER


def write_refusal(virtual_path: bytes | str) -> str | None:
    """Why a write/create of `virtual_path` is refused, or None if it is allowed.

    Only students.csv and temporary upload names may be written, in / and in
    check/. A wrong name is refused at OPEN, naming the file, so a district
    that uploads `Students.csv` sees why at once instead of a silent no-op.
    """
    path = _collapse(_text(virtual_path))
    kind = classify(path)
    if kind in (PathKind.UPLOAD, PathKind.TEMP_UPLOAD):
        return None
    if _under_results(path):
        return RESULTS_READ_ONLY
    if kind is PathKind.TEMPLATE:
        return TEMPLATE_READ_ONLY
    if folder_of(path) in UPLOAD_FOLDERS and kind is PathKind.OTHER:
        return f'{ONLY_UPLOAD} (not "{_shown(name_of(path))}")'
    return ONLY_UPLOAD


def rename_refusal(old: bytes | str, new: bytes | str) -> str | None:
    """Why renaming `old` to `new` is refused, or None if it is allowed.

    The one rename that is allowed completes a safe upload: a temporary upload
    becomes students.csv in the same folder (WinSCP's `.filepart` dance), which
    is also what starts processing (SPEC §3.1).
    """
    old_path = _collapse(_text(old))
    new_path = _collapse(_text(new))
    kind = classify(old_path)
    if kind is PathKind.TEMP_UPLOAD:
        target = classify(new_path)
        if target is PathKind.UPLOAD and folder_of(new_path) == folder_of(old_path):
            return None
        refusal = write_refusal(new_path)
        if refusal is not None:
            return refusal
        return RENAME_TEMP_TARGET
    if kind is PathKind.UPLOAD:
        return NO_RENAME_UPLOAD
    if _under_results(old_path):
        return RESULTS_READ_ONLY
    if kind is PathKind.TEMPLATE:
        return TEMPLATE_READ_ONLY
    if kind in (PathKind.ROOT, PathKind.CHECK_DIR):
        return NO_RENAME_FOLDER
    return RENAME_ONLY_TEMP


def remove_refusal(virtual_path: bytes | str) -> str | None:
    """Why removing `virtual_path` is refused, or None if it is allowed.

    Districts clean up their result files, a stale students.csv and their own
    temporary uploads; everything else is the server's.
    """
    path = _collapse(_text(virtual_path))
    kind = classify(path)
    if kind in (PathKind.RESULT_FILE, PathKind.UPLOAD, PathKind.TEMP_UPLOAD):
        return None
    if kind is PathKind.TEMPLATE:
        return TEMPLATE_READ_ONLY
    if kind in (PathKind.ROOT, PathKind.CHECK_DIR, PathKind.RESULTS_DIR):
        return NO_RMDIR
    if _under_results(path):
        return RESULTS_READ_ONLY
    return NO_REMOVE


def mkdir_refusal(virtual_path: bytes | str) -> str:
    """The message for MKDIR: the folder layout is fixed (SPEC §3)."""
    if _under_results(_collapse(_text(virtual_path))):
        return RESULTS_READ_ONLY
    return NO_MKDIR


def rmdir_refusal(virtual_path: bytes | str) -> str:
    """The message for RMDIR: check/ and results/ are needed by the server."""
    if _collapse(_text(virtual_path)).startswith(RESULTS_DIR + "/"):
        return RESULTS_READ_ONLY
    return NO_RMDIR


def link_refusal() -> str:
    """The message for SYMLINK and LINK: links are how a chroot is escaped."""
    return NO_LINKS


def _text(virtual: bytes | str) -> str:
    if isinstance(virtual, bytes):
        try:
            return virtual.decode("utf-8")
        except UnicodeDecodeError:
            raise JailError("file names must be UTF-8") from None
    return virtual


def _collapse(text: str, cwd: str = "/") -> str:
    """Join to cwd and collapse `.`/`..`/empty components, never above `/`."""
    start = [] if text.startswith("/") else _parts(cwd)
    parts = start + text.split("/")
    out: list[str] = []
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            if out:
                out.pop()
            continue
        out.append(part)
    return "/" + "/".join(out)


def _join(folder: str, name: str) -> str:
    return folder + name if folder.endswith("/") else folder + "/" + name


def _parts(cwd: str) -> list[str]:
    return [p for p in _collapse(cwd if cwd.startswith("/") else "/" + cwd).split("/") if p]


def _real_root(root: Path) -> str:
    return os.path.realpath(root)


def _is_within(path: str, root: str) -> bool:
    if path == root:
        return True
    prefix = root if root.endswith(os.sep) else root + os.sep
    return path.startswith(prefix)


def _under_results(path: str) -> bool:
    return path == RESULTS_DIR or path.startswith(RESULTS_DIR + "/")


def _shown(name: str, limit: int = 80) -> str:
    """A client-supplied name made safe to echo in a status message."""
    cleaned = "".join(c if c.isprintable() else "?" for c in name)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."
