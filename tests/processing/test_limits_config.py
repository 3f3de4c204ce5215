"""SPEC §3.2 on the processing side, continued (1 and 3: test_limits_processing.py).

2. check-config, and a SIGHUP, which loads the file the same way, refuse a
   config with no districts or no [server], and password hashes logins could
   never check.
4. The database, the key, result files and spool files are 0600/0640 whatever
   the umask.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from processing.config import Config
from processing.passwords import SCRYPT_MAX_MEM, scrypt_problem
from processing.spool import spool_copy
from processing.store import Store, database_path
from server.accounts import ScryptHash, verify_password
from tests.conftest import SPR, make_config
from tests.processing.test_limits_processing import EAMS, ROOT, roster

# ---- 2. check-config refuses what would take districts or the server down ------------------


def check_config(text: str, tmp_path: Path) -> tuple[int, str, str]:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [*EAMS, "check-config", "--config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def with_hash(tmp_path: Path, value: str) -> str:
    """The default test config with springfield's password_hash set to `value`."""
    text = make_config(tmp_path).read_text(encoding="utf-8")
    lines = [
        f"password_hash = {json.dumps(value)}" if line.startswith("password_hash = ") else line
        for line in text.split("\n")
    ]
    return "\n".join(lines)


AGAIN = ": run `eams hash-password` for a new value"
SALT, DIGEST = "c2FsdHNhbHRzYWx0c2FsdA==", "aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g="
HASHES = [
    (
        f"scrypt$1073741824$8$1${SALT}${DIGEST}",
        "scrypt n must be a power of two from 2 to 1048576, not '1073741824'" + AGAIN,
    ),
    (
        "scrypt$abc$x$y$zz$qq",
        "scrypt n must be a power of two from 2 to 1048576, not 'abc'" + AGAIN,
    ),
    (
        f"scrypt$1000$8$1${SALT}${DIGEST}",
        "scrypt n must be a power of two from 2 to 1048576, not '1000'" + AGAIN,
    ),
    (f"scrypt$16384$64$1${SALT}${DIGEST}", "scrypt r must be from 1 to 32, not '64'" + AGAIN),
    (f"scrypt$16384$x$1${SALT}${DIGEST}", "scrypt r must be from 1 to 32, not 'x'" + AGAIN),
    (f"scrypt$16384$8$17${SALT}${DIGEST}", "scrypt p must be from 1 to 16, not '17'" + AGAIN),
    (
        f"scrypt$16384$8$1$not base64!${DIGEST}",
        "the salt is not base64 of at least one byte" + AGAIN,
    ),
    (f"scrypt$16384$8$1${SALT}$aGFzaA==", "the hash is not base64 of at least 16 bytes" + AGAIN),
    (
        f"scrypt$1048576$8$1${SALT}${DIGEST}",
        "scrypt n = 1048576 with r = 8 needs 1024 MiB per login, more than the 256 MiB "
        "allowed" + AGAIN,
    ),
    (f"scrypt$131072$1$1${SALT}${DIGEST}", "scrypt n = 131072 needs r >= 2" + AGAIN),
    ("bcrypt$2b$12$abc", "must be a value from `eams hash-password` (scrypt$n$r$p$salt$hash)"),
]


@pytest.mark.parametrize(("value", "problem"), HASHES, ids=[h[0][:24] for h in HASHES])
def test_check_config_refuses_a_password_hash_no_login_could_check(
    tmp_path: Path, value: str, problem: str
) -> None:
    """Such a hash passed, and locked the district out with only "wrong password" logged."""
    code, out, err = check_config(with_hash(tmp_path, value), tmp_path)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"districts.springfield.password_hash: {problem}",
        f"{tmp_path / 'config.toml'}: 1 problem(s)",
    ]


NO_SERVER = "server: required: a [server] table (listen, port, homes, data, ...)"
NO_DISTRICTS = "districts: required: at least one [districts.<id>] table"


def test_check_config_refuses_an_empty_config(tmp_path: Path) -> None:
    """It said "OK (0 district(s))", and a SIGHUP with it signed every district out."""
    code, out, err = check_config("", tmp_path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        NO_SERVER,
        NO_DISTRICTS,
        f"{tmp_path / 'config.toml'}: 2 problem(s)",
    ]


def test_check_config_refuses_a_config_without_server(tmp_path: Path) -> None:
    """Without [server] the server silently listened on 0.0.0.0:22."""
    text = make_config(tmp_path).read_text(encoding="utf-8")
    server, rest = text.split("\n[operators]", 1)
    assert server.startswith("[server]")
    code, out, err = check_config("[operators]" + rest, tmp_path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [NO_SERVER, f"{tmp_path / 'config.toml'}: 1 problem(s)"]


def test_check_config_refuses_a_config_without_districts(tmp_path: Path) -> None:
    text = make_config(tmp_path).read_text(encoding="utf-8")
    code, out, err = check_config(text.split("\n[districts.")[0], tmp_path)
    assert (code, out) == (2, "")
    assert err.splitlines() == [NO_DISTRICTS, f"{tmp_path / 'config.toml'}: 1 problem(s)"]


def test_the_test_config_and_the_bundled_one_still_pass(tmp_path: Path) -> None:
    code, out, err = check_config(make_config(tmp_path).read_text(encoding="utf-8"), tmp_path)
    assert (code, out.strip(), err) == (0, f"{tmp_path / 'config.toml'}: OK (1 district(s))", "")
    bundled = Config.from_toml(ROOT / "config.toml")
    assert all(scrypt_problem(d.password_hash or "") is None for d in bundled.districts.values())


@pytest.mark.parametrize("text", ["", "[server]\n"], ids=["empty", "no districts"])
async def test_a_sighup_with_a_config_without_districts_keeps_the_old_one(
    start_server: Any, text: str
) -> None:
    """SIGHUP loads the file as check-config does: refused, the districts still sign in."""
    handle = await start_server()
    handle.config_path.write_text(text, encoding="utf-8")
    assert await handle.app.reload() is False
    assert list(handle.app.config.districts) == [SPR]
    async with handle.connect() as conn, conn.start_sftp_client() as sftp:
        assert "students_template.csv" in await sftp.listdir(".")


def _hash_with(n: int, r: int, p: int) -> str:
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(b"pw", salt=salt, n=n, r=r, p=p, dklen=32, maxmem=SCRYPT_MAX_MEM)
    return ScryptHash(n=n, r=r, p=p, salt=salt, digest=digest).render()


@pytest.mark.parametrize(
    ("n", "r", "p"),
    [
        (2, 1, 1),
        (2**15, 1, 1),
        (2**16, 1, 1),
        (2**16, 2, 1),
        (2**17, 8, 1),
        (2**18, 8, 1),
        (2**19, 2, 1),
        (2**20, 2, 1),
        (2**20, 1, 1),
        (2**10, 32, 16),
        (2**16, 32, 1),
    ],
)
def test_config_accepts_exactly_the_parameters_logins_can_check(n: int, r: int, p: int) -> None:
    """scrypt_problem agrees with server/accounts.py and with OpenSSL's limits under the
    memory logins allow: what config accepts verifies, what it refuses cannot."""
    salt = base64.b64encode(b"0123456789abcdef").decode()
    value = f"scrypt${n}${r}${p}${salt}${'A' * 44}"
    parsed = ScryptHash.parse(value)
    try:
        hashlib.scrypt(b"pw", salt=b"s", n=n, r=r, p=p, dklen=16, maxmem=SCRYPT_MAX_MEM)
    except ValueError:
        runs = False
    else:
        runs = True
    assert (scrypt_problem(value) is None) == (parsed is not None and runs)
    if runs and n * r * p <= 2**18:  # (the slow ones are covered by `runs` above)
        good = _hash_with(n, r, p)
        assert scrypt_problem(good) is None and verify_password(good, "pw")


# ---- 4. files on disk: 0600/0640 whatever the umask -----------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 022 the database, the key, result and spool files were 0644."""
    config_path = make_config(tmp_path)
    data = Config.from_toml(config_path).server.data
    source = tmp_path / "students.csv"
    source.write_bytes(roster(3) + b"0101,S9,Ann,Lee,3,u9,pw-999999,,Q\r\n")  # one error
    os.chmod(source, 0o644)
    done = subprocess.run(
        [*EAMS, "process", "--district", SPR, str(source), "--config", str(config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        umask=0o022,
    )
    assert done.returncode == 0, done.stderr
    assert _mode(database_path(data)) == 0o600
    assert _mode(data / "secret.key") == 0o600
    results = sorted((tmp_path / "homes" / SPR / "results").iterdir())
    assert [p.name.split(".", 1)[1] for p in results] == [
        "errors.csv",
        "result.json",
        "result.txt",
    ]
    assert {p.name: _mode(p) for p in results} == {p.name: 0o640 for p in results}
    assert _mode(source) == 0o644  # the operator's own file is left as it was

    old = os.umask(0o022)
    try:
        spooled, _ = spool_copy(source, data, SPR)  # a 0644 file is copied, not linked
        assert (_mode(spooled), spooled.stat().st_nlink, _mode(source)) == (0o600, 1, 0o644)
        os.chmod(source, 0o640)  # as the server stages an upload: linked, 0640 kept
        linked, _ = spool_copy(source, data, SPR, tag="upload")
        assert (_mode(linked), linked.stat().st_nlink) == (0o640, 2)

        async def open_fresh() -> dict[str, int]:
            """A new database while it is open: its -wal and -shm exist then."""
            store = await Store.open(tmp_path / "fresh" / "eams.sqlite3")
            try:
                await store.sync_config(Config.from_toml(config_path))
                return {p.name: _mode(p) for p in (tmp_path / "fresh").iterdir()}
            finally:
                await store.close()

        modes = asyncio.run(open_fresh())
    finally:
        os.umask(old)
    assert modes == {
        name: 0o600 for name in ("eams.sqlite3", "eams.sqlite3-wal", "eams.sqlite3-shm")
    }


def test_an_older_world_readable_database_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "eams.sqlite3"
    sqlite3.connect(path).close()
    os.chmod(path, 0o644)

    async def open_close() -> None:
        await (await Store.open(path)).close()

    asyncio.run(open_close())
    assert _mode(path) == 0o600
