"""The `eams` command line (SPEC §7).

Every command takes `--config PATH` (default ./config.toml). Exit status: 0 on
success, 2 for a usage or config error (one-line reason on stderr), 1
otherwise. `eams process` runs exactly the path an SFTP upload runs: spool
copy, queued run record, `Runner.run`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from server.commands import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    UsageError,
    cmd_approve,
    cmd_backup,
    cmd_check_config,
    cmd_discard,
    cmd_hash_password,
    cmd_licenses,
    cmd_process,
    cmd_runs,
    cmd_students,
    cmd_token,
    load_config,
)

# ---- argument parsing ----------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's usage errors exit 2 already
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", default="config.toml", help="path to config.toml")
    parser = _Parser(prog="eams", description="MY Access eAMS server and operator tools")
    parser.add_argument("--version", action="version", version=f"eams {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, handler: Callable[..., Any], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text)
        p.set_defaults(handler=handler)
        return p

    serve = add("serve", _serve, "run the SFTP server, processing and email sender")
    serve.add_argument("--port", type=int, help="SFTP port (overrides [server] port)")
    add("check-config", cmd_check_config, "validate config.toml")
    add("hash-password", cmd_hash_password, "print a password_hash for a district login")
    add("fingerprints", _fingerprints, "print the host keys' SHA256 fingerprints")
    process = add("process", cmd_process, "process a students.csv as if uploaded")
    process.add_argument("--district", required=True)
    process.add_argument("--order", help="apply against this order instead of the enterprise one")
    process.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    process.add_argument("file")
    students = add("students", cmd_students, "list a district's students")
    students.add_argument("--district", required=True)
    students.add_argument("--json", action="store_true")
    licenses = add("licenses", cmd_licenses, "list a district's orders and licenses")
    licenses.add_argument("--district", required=True)
    licenses.add_argument("--json", action="store_true")
    runs = add("runs", cmd_runs, "list processing runs, newest first")
    runs.add_argument("--district")
    runs.add_argument("--json", action="store_true")
    backup = add("backup", cmd_backup, "copy the database and password key into a new folder")
    backup.add_argument("path")
    for name, handler, text in (
        ("approve", cmd_approve, "apply a held run"),
        ("discard", cmd_discard, "drop a held run"),
    ):
        p = add(name, handler, text)
        p.add_argument("run_id")
        p.add_argument("--district", help="needed only when the run id exists in two districts")
    token = add("token", cmd_token, "API tokens for operators' scripts: create, list, revoke")
    token.add_argument("action", choices=("create", "list", "revoke"))
    token.add_argument("name", nargs="?")
    return parser


def _version() -> str:
    """The installed package's version (pyproject.toml), as `eams --version` prints it."""
    try:
        return version("eams")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _serve(args: argparse.Namespace) -> int:
    from server.process import serve  # the SFTP edge is imported only by `serve`

    return serve(load_config(args.config), port=args.port)


def _fingerprints(args: argparse.Namespace) -> int:
    from server.hostkeys import fingerprints

    config = load_config(args.config)
    for line in fingerprints(config.server.host_keys):
        print(line)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args = build_parser().parse_args(argv)
        result = args.handler(args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(_as_coroutine(result))
        return int(result)
    except UsageError as exc:
        print(f"eams: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"eams: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
    except BrokenPipeError:
        # The reader went away (`eams runs | head -1`): stop quietly, as a Unix tool
        # does. Python flushes stdout again at exit, so point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL


async def _as_coroutine(coro: Coroutine[Any, Any, int]) -> int:
    return await coro


if __name__ == "__main__":
    sys.exit(main())
