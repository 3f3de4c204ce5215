"""The `eams` commands (SPEC §7), one function each: load the config, open the store,
call processing's service functions, print. `server/cli.py` parses the arguments."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import hashlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

from attrs import frozen

from processing import console, held_runs
from processing.config import Config, ConfigError
from processing.model import RunRecord, iso
from processing.passwords import KEY_FILE, StudentPasswords
from processing.reports import render_result_txt
from processing.runner import Runner, RunOutcome
from processing.spool import CLI_SOURCE, accept
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


def known_district(config: Config, district_id: str) -> None:
    if district_id not in config.districts:
        known = ", ".join(sorted(config.districts)) or "none"
        raise UsageError(f"unknown district {district_id!r} (configured: {known})")


def print_outcome(outcome: RunOutcome, config: Config) -> None:
    district = config.district(outcome.record.district_id)
    codes = sorted({str(e.code) for e in outcome.errors})
    print(render_result_txt(outcome.result, district.name, codes), end="")
    if not outcome.result.dry_run or outcome.record.seq:
        folder = config.server.homes / district.id / "results"
        print(f"Result files: {folder}/{outcome.result.run_id}.result.*")


def outcome_status(outcome: RunOutcome) -> int:
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
    known_district(config, args.district)
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
        job = await asyncio.to_thread(
            partial(
                accept,
                source,
                config.server.data,
                args.district,
                source=CLI_SOURCE + source.name,
                dry_run=args.dry_run,
                order_id=args.order,
            )
        )
        spooled = job.spool_path
        if args.dry_run:
            try:
                outcome = await rt.runner.preview(job)
            finally:
                spooled.unlink(missing_ok=True)
            print("DRY RUN: nothing was applied or written.")
        else:
            record = await rt.store.enqueue_run(job)
            outcome = await rt.runner.run(record)
        print_outcome(outcome, config)
        return outcome_status(outcome)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in rows:
        print(
            "  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
        )


async def cmd_students(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    known_district(config, args.district)
    async with open_runtime(config) as rt:
        students = await rt.store.list_students(args.district)
    if args.json:
        print(json.dumps(students, ensure_ascii=False))
    else:
        _table(students, STUDENT_FIELDS)
    return EXIT_OK


async def cmd_licenses(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    known_district(config, args.district)
    async with open_runtime(config) as rt:
        orders = await rt.store.list_orders(args.district)
    if args.json:
        print(json.dumps(orders))
    else:
        _table(orders, ORDER_FIELDS)
    return EXIT_OK


async def cmd_runs(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.district is not None:
        known_district(config, args.district)
    async with open_runtime(config) as rt:
        runs = [console.run_object(r) for r in await rt.store.list_runs(args.district)]
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
    try:
        return await held_runs.find_held(rt.store, run_id, district)
    except held_runs.AmbiguousRun as exc:
        raise UsageError(str(exc)) from None
    except held_runs.CannotDecide as exc:
        raise CommandFailed(str(exc)) from None


async def cmd_approve(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    async with open_runtime(config) as rt:
        run = await _held_run(rt, args.run_id, args.district)
        try:
            outcome = await held_runs.approve(rt.runner, run, by="cli", address="local")
        except held_runs.CannotDecide as exc:
            raise CommandFailed(str(exc)) from None
        print_outcome(outcome, config)
        return outcome_status(outcome)


async def cmd_discard(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    async with open_runtime(config) as rt:
        run = await _held_run(rt, args.run_id, args.district)
        try:
            await held_runs.discard(rt.store, run, by="cli", address="local")
        except held_runs.CannotDecide as exc:
            raise CommandFailed(str(exc)) from None
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


async def cmd_token(args: argparse.Namespace) -> int:
    """`eams token create|list|revoke`: API tokens (SPEC §9). A token is printed once;
    only its SHA-256 is stored, so a lost token is revoked and made anew."""
    config = load_config(args.config)
    async with open_runtime(config) as rt:
        store = rt.store
        if args.action == "create":
            if not args.name:
                raise UsageError("eams token create NAME: give the token a name")
            token = secrets.token_urlsafe(32)  # 256 bits
            digest = hashlib.sha256(token.encode()).hexdigest()
            if not await store.create_token(args.name, digest):
                raise CommandFailed(f"a token named {args.name!r} exists: revoke it first")
            await store.record_audit(
                who="cli",
                action="token create",
                district_id=None,
                detail=args.name,
                address="local",
            )
            print(token)
            print(
                f"API token {args.name!r} created. It is shown only now: keep it where your "
                "script reads it (send it as Authorization: Bearer <token>).",
                file=sys.stderr,
            )
        elif args.action == "revoke":
            if not args.name:
                raise UsageError("eams token revoke NAME: name the token to revoke")
            if not await store.revoke_token(args.name):
                raise CommandFailed(f"no token named {args.name!r}")
            await store.record_audit(
                who="cli",
                action="token revoke",
                district_id=None,
                detail=args.name,
                address="local",
            )
            print(f"token {args.name!r} revoked: it stops working now")
        else:
            tokens = await store.list_tokens()
            _table(
                [
                    {
                        "name": t.name,
                        "created": iso(t.created_at),
                        "last_used": iso(t.last_used_at) if t.last_used_at else "never",
                    }
                    for t in tokens
                ],
                ["name", "created", "last_used"],
            )
    return EXIT_OK
