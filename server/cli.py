"""The `eams` command line (SPEC §7).

Every command takes `--config PATH` (default ./config.toml). Exit status: 0 on
success, 2 for a usage or config error (one-line reason on stderr), 1
otherwise. `eams process` runs exactly the path an SFTP upload runs: spool
copy, queued run record, `Runner.run`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from attrs import frozen

from processing.config import Config, ConfigError
from processing.jobs import CLI_SOURCE, UploadJob, spool_copy
from processing.model import RunRecord, iso, utc_now
from processing.passwords import KEY_FILE, StudentPasswords
from processing.reports import render_result_txt
from processing.runner import Runner, RunOutcome
from processing.store import DB_FILE, Store, database_path
from server.accounts import hash_password

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A usage or config problem: exit 2 with this one-line reason."""


class CommandFailed(Exception):
    """The command ran but did not succeed: exit 1 with this one-line reason."""


@frozen
class Runtime:
    config: Config
    store: Store
    runner: Runner


# `eams students` / `eams licenses` table columns, in display order (SPEC §7's fields)
STUDENT_FIELDS = (
    "student_id",
    "school_code",
    "first_name",
    "last_name",
    "grade",
    "username",
    "class_name",
    "status",
    "order",
)
ORDER_FIELDS = ("order", "kind", "licenses", "used", "available")


def load_config(path: str) -> Config:
    try:
        return Config.from_toml(path)
    except ConfigError as exc:
        more = (
            f" (and {len(exc.problems) - 1} more; run eams check-config)"
            if len(exc.problems) > 1
            else ""
        )
        raise UsageError(f"{exc.problems[0]}{more}") from None


@asynccontextmanager
async def open_runtime(config: Config) -> AsyncIterator[Runtime]:
    """Open the store, mirror the config into it, and build a Runner."""
    data = config.server.data
    store = await Store.open(database_path(data))
    try:
        for warning in await store.sync_config(config):
            print(f"warning: {warning}", file=sys.stderr)
        passwords = StudentPasswords.from_data_dir(data)
        yield Runtime(config, store, Runner(config, store, passwords))
    finally:
        await store.close()


def _district(config: Config, district_id: str) -> None:
    if district_id not in config.districts:
        known = ", ".join(sorted(config.districts)) or "none"
        raise UsageError(f"unknown district {district_id!r} (configured: {known})")


def _print_outcome(outcome: RunOutcome, config: Config) -> None:
    district = config.district(outcome.record.district_id)
    print(render_result_txt(outcome.result, district.name), end="")
    if not outcome.result.dry_run or outcome.record.seq:
        folder = config.server.homes / district.id / "results"
        print(f"Result files: {folder}/{outcome.result.run_id}.result.*")


def _outcome_status(outcome: RunOutcome) -> int:
    return EXIT_OK if outcome.result.state == "done" else EXIT_FAIL


# ---- commands ---------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = Config.from_toml(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.config}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EXIT_USAGE
    for warning in [*config.warnings, *asyncio.run(_license_warnings(config))]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: OK ({len(config.districts)} district(s))")
    return EXIT_OK


async def _license_warnings(config: Config) -> list[str]:
    """Licenses lowered below what is in use, when a database exists to compare with."""
    path = database_path(config.server.data)
    if not path.exists():
        return []
    store = await Store.open(path)
    try:
        return await store.license_warnings(config)
    finally:
        await store.close()


def cmd_hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("SFTP password for the district: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise UsageError("the password must have at least 8 characters")
    print(hash_password(password))
    return EXIT_OK


async def cmd_process(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _district(config, args.district)
    source = Path(args.file)
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    async with open_runtime(config) as rt:
        if args.order is not None:
            orders = {o["order"] for o in await rt.store.list_orders(args.district)}
            if args.order not in orders:
                raise UsageError(
                    f"district {args.district} has no order {args.order!r} "
                    f"(orders: {', '.join(sorted(orders))})"
                )
        received = utc_now()
        spooled, size = await asyncio.to_thread(
            spool_copy, source, config.server.data, args.district
        )
        job = UploadJob(
            district_id=args.district,
            spool_path=spooled,
            size=size,
            received_at=received,
            source=CLI_SOURCE + source.name,
            dry_run=args.dry_run,
            order_id=args.order,
        )
        if args.dry_run:
            try:
                outcome = await rt.runner.preview(job)
            finally:
                spooled.unlink(missing_ok=True)
            print("DRY RUN: nothing was applied or written.")
        else:
            record = await rt.store.enqueue_run(job)
            outcome = await rt.runner.run(record)
        _print_outcome(outcome, config)
        return _outcome_status(outcome)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print(
            "  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
        )


async def cmd_students(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _district(config, args.district)
    async with open_runtime(config) as rt:
        students = await rt.store.list_students(args.district)
    if args.json:
        print(json.dumps(students, ensure_ascii=False))
    else:
        _table(students, STUDENT_FIELDS)
    return EXIT_OK


async def cmd_licenses(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _district(config, args.district)
    async with open_runtime(config) as rt:
        orders = await rt.store.list_orders(args.district)
    if args.json:
        print(json.dumps(orders))
    else:
        _table(orders, ORDER_FIELDS)
    return EXIT_OK


def run_summary(record: RunRecord) -> dict[str, Any]:
    """A run as SPEC §6.2's object; queued runs have no result yet, so a stub."""
    if record.result is not None:
        return {**record.result.to_json(), "state": record.state}
    return {
        "run_id": record.run_id,
        "district": record.district_id,
        "state": record.state,
        "received_at": iso(record.received_at),
        "finished_at": None,
        "dry_run": record.dry_run,
    }


async def cmd_runs(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.district is not None:
        _district(config, args.district)
    async with open_runtime(config) as rt:
        runs = [run_summary(r) for r in await rt.store.list_runs(args.district)]
    if args.json:
        print(json.dumps(runs, ensure_ascii=False))
    else:
        rows = [
            {
                k: ("" if r.get(k) is None else r.get(k))
                for k in (
                    "run_id",
                    "district",
                    "state",
                    "rows",
                    "added",
                    "updated",
                    "unchanged",
                    "errors",
                )
            }
            | {"dry_run": "yes" if r.get("dry_run") else ""}
            for r in runs
        ]
        _table(
            rows,
            [
                "run_id",
                "district",
                "state",
                "dry_run",
                "rows",
                "added",
                "updated",
                "unchanged",
                "errors",
            ],
        )
    return EXIT_OK


async def _held_run(rt: Runtime, run_id: str, district: str | None) -> RunRecord:
    runs = await rt.store.find_runs(run_id, district)
    if not runs:
        raise CommandFailed(f"no run {run_id}" + (f" for district {district}" if district else ""))
    if len(runs) > 1:
        names = ", ".join(r.district_id for r in runs)
        raise UsageError(f"run id {run_id} exists for several districts ({names}): add --district")
    run = runs[0]
    if run.dry_run:
        raise CommandFailed(
            f"run {run_id} is a dry run (check/): it shows what would be held; "
            "nothing can be approved"
        )
    if run.state != "held":
        raise CommandFailed(f"run {run_id} is {run.state}, not held")
    return run


async def cmd_approve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    async with open_runtime(config) as rt:
        run = await _held_run(rt, args.run_id, args.district)
        if not run.spool_path or not os.path.exists(run.spool_path):
            raise CommandFailed(f"run {run.run_id}: the uploaded file is no longer in the spool")
        await rt.store.set_run_state(run, "approved", expect="held")
        outcome = await rt.runner.run(await rt.store.get_run(run.district_id, run.run_id))
        _print_outcome(outcome, config)
        return _outcome_status(outcome)


async def cmd_discard(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    async with open_runtime(config) as rt:
        run = await _held_run(rt, args.run_id, args.district)
        await rt.store.set_run_state(run, "discarded", expect="held")
        if run.spool_path:
            Path(run.spool_path).unlink(missing_ok=True)
    print(f"run {run.run_id} of {run.district_id} discarded; nothing was applied")
    return EXIT_OK


async def cmd_backup(args: argparse.Namespace) -> int:
    """Copy the database (online, while the server runs) and the password key into PATH."""
    config = load_config(args.config)
    target = Path(args.path)
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target}: exists and is not empty; give a new folder")
    target.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    async with open_runtime(config) as rt:
        await rt.store.backup(target / DB_FILE)
    os.chmod(target / DB_FILE, 0o600)
    key = config.server.data / KEY_FILE
    fd = os.open(target / KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.read_bytes())
    print(
        f"backup written to {target}: eams.sqlite3 and {KEY_FILE} (keep it private: it "
        "decrypts student passwords). Restore: stop eams, copy both into the data folder."
    )
    return EXIT_OK


# ---- argument parsing ----------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's usage errors exit 2 already
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--config", default="config.toml", help="path to config.toml")
    parser = _Parser(prog="eams", description="MY Access eAMS server and operator tools")
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
    return parser


def _serve(args: argparse.Namespace) -> int:
    from server.app import serve  # the SFTP edge is imported only by `serve`

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
