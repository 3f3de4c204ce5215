"""server/accounts.py: scrypt password hashes, timing parity, and the ban list."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from attrs import evolve

from processing.config import Config
from server import accounts
from server.accounts import Accounts, BanList, ScryptHash, hash_password, verify_password

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDummyKeyForTestsOnly dba@sis"
PASSWORD = "correct horse battery staple"


def make_config(tmp_path: Path, password_hash: str) -> Config:
    text = f"""
[server]

[districts.springfield]
name = "Springfield Public Schools"
username = "springfield"
password_hash = "{password_hash}"
authorized_keys = ["{KEY}"]
[districts.springfield.order]
id = "ENT-SPR-2026"
licenses = 10
[[districts.springfield.schools]]
code = "0101"
name = "Lincoln Elementary"

[districts.shelby]
name = "Shelbyville Schools"
username = "shelby"
authorized_keys = ["{KEY}"]
[districts.shelby.order]
id = "ENT-SHE-2026"
licenses = 10
[[districts.shelby.schools]]
code = "1"
name = "Shelbyville High"
"""
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return Config.from_toml(path)


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def accts(tmp_path: Path, stored: str) -> Accounts:
    return Accounts(make_config(tmp_path, stored))


# --- hashing -------------------------------------------------------------------


def test_hash_format(stored: str) -> None:
    scheme, n, r, p, *_ = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    parsed = ScryptHash.parse(stored)
    assert parsed is not None
    assert len(parsed.salt) == 16 and len(parsed.digest) == 32
    assert parsed.render() == stored


def test_round_trip_and_wrong_password(stored: str) -> None:
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, PASSWORD + " ")
    assert not verify_password(stored, "")


def test_salted() -> None:
    assert hash_password("same") != hash_password("same")


def test_non_ascii_and_surrogates() -> None:
    stored = hash_password("pässwörd-密码")
    assert verify_password(stored, "pässwörd-密码")
    assert not verify_password(stored, "\udcff")  # never raises


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "scrypt$",
        "scrypt$16384$8$1$c2FsdA==",
        "bcrypt$16384$8$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$abc$8$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$16384$8$1$not base64!$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$16384$8$1$c2FsdA==$aGFzaA==",  # digest too short
        "scrypt$1000$8$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",  # n not a power of two
        "scrypt$1073741824$8$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",  # n too large
        "scrypt$16384$0$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$16384$8$1$$aGFzaGhhc2hoYXNoaGFzaA==",  # empty salt
    ],
)
def test_malformed_hash_is_never_a_match(bad: str) -> None:
    assert verify_password(bad, PASSWORD) is False


# --- accounts ------------------------------------------------------------------


def test_district_lookup(accts: Accounts) -> None:
    district = accts.district_for("springfield")
    assert district is not None and district.id == "springfield"
    assert accts.district_for("nobody") is None
    assert accts.district_for("Springfield") is None  # logins are exact, like OpenSSH


def test_check_password(accts: Accounts) -> None:
    district = accts.check_password("springfield", PASSWORD)
    assert district is not None and district.id == "springfield"
    assert accts.check_password("springfield", "wrong") is None
    assert accts.check_password("nobody", PASSWORD) is None
    assert accts.check_password("shelby", PASSWORD) is None  # key-only district


def test_has_password(accts: Accounts) -> None:
    assert accts.has_password("springfield")
    assert not accts.has_password("shelby")
    assert not accts.has_password("nobody")


def test_authorized_keys(accts: Accounts) -> None:
    assert accts.authorized_keys("springfield") == [KEY]
    assert accts.authorized_keys("nobody") == []


def test_malformed_stored_hash_still_runs_scrypt(tmp_path: Path, stored: str) -> None:
    # config.toml refuses such a value (SPEC 3.2); Accounts must hold even if one got through
    config = make_config(tmp_path, stored)
    broken = evolve(config.district("springfield"), password_hash="scrypt$broken")
    accts = Accounts(evolve(config, districts={**config.districts, "springfield": broken}))
    assert accts.check_password("springfield", PASSWORD) is None


def test_every_check_runs_exactly_one_scrypt(
    accts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = accounts._scrypt

    def counting(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
        calls.append(1)
        return real(password, salt, n, r, p, dklen)

    monkeypatch.setattr(accounts, "_scrypt", counting)
    for username, password in [
        ("springfield", PASSWORD),
        ("springfield", "wrong"),
        ("nobody", "x"),
        ("shelby", "x"),
    ]:
        calls.clear()
        accts.check_password(username, password)
        assert len(calls) == 1, username


def _median_seconds(check: object, runs: int = 5) -> float:
    assert callable(check)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        check()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_unknown_user_costs_like_a_wrong_password(accts: Accounts) -> None:
    """Timing parity: compared with each other, not against absolute seconds."""
    wrong = _median_seconds(lambda: accts.check_password("springfield", "wrong"))
    unknown = _median_seconds(lambda: accts.check_password("nobody", "wrong"))
    key_only = _median_seconds(lambda: accts.check_password("shelby", "wrong"))
    # Without the dummy hash an unknown user would be ~1000x faster than scrypt.
    assert 0.2 < unknown / wrong < 5
    assert 0.2 < key_only / wrong < 5


# --- ban list ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += minutes * 60


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_banned_after_n_failures(clock: FakeClock) -> None:
    bans = BanList(attempts=3, ban_minutes=15, clock=clock)
    assert bans.record_failure("203.0.113.5") is False
    assert bans.record_failure("203.0.113.5") is False
    assert not bans.is_banned("203.0.113.5")
    assert bans.record_failure("203.0.113.5") is True
    assert bans.is_banned("203.0.113.5")
    # Further failures while banned neither re-report nor extend the ban.
    assert bans.record_failure("203.0.113.5") is False


def test_ban_expires(clock: FakeClock) -> None:
    bans = BanList(attempts=2, ban_minutes=15, clock=clock)
    bans.record_failure("203.0.113.5")
    bans.record_failure("203.0.113.5")
    clock.advance(14.9)
    bans.record_failure("203.0.113.5")  # does not extend the ban
    assert bans.is_banned("203.0.113.5")
    clock.advance(0.2)
    assert not bans.is_banned("203.0.113.5")
    assert len(bans) == 0
    # After expiry the count starts again from zero.
    assert bans.record_failure("203.0.113.5") is False
    assert bans.record_failure("203.0.113.5") is True


def test_stale_failures_are_forgotten(clock: FakeClock) -> None:
    bans = BanList(attempts=3, ban_minutes=15, clock=clock)
    bans.record_failure("203.0.113.5")
    bans.record_failure("203.0.113.5")
    clock.advance(16)
    assert bans.record_failure("203.0.113.5") is False
    assert bans.record_failure("203.0.113.5") is False
    assert bans.record_failure("203.0.113.5") is True


def test_success_resets_count(clock: FakeClock) -> None:
    bans = BanList(attempts=3, ban_minutes=15, clock=clock)
    bans.record_failure("203.0.113.5")
    bans.record_failure("203.0.113.5")
    bans.record_success("203.0.113.5")
    assert bans.record_failure("203.0.113.5") is False
    assert bans.record_failure("203.0.113.5") is False
    assert bans.record_failure("203.0.113.5") is True


def test_success_does_not_lift_a_ban(clock: FakeClock) -> None:
    bans = BanList(attempts=1, ban_minutes=15, clock=clock)
    assert bans.record_failure("203.0.113.5") is True
    bans.record_success("203.0.113.5")
    assert bans.is_banned("203.0.113.5")


def test_addresses_are_independent(clock: FakeClock) -> None:
    bans = BanList(attempts=2, ban_minutes=15, clock=clock)
    bans.record_failure("203.0.113.5")
    bans.record_failure("198.51.100.7")
    assert bans.record_failure("203.0.113.5") is True
    assert bans.is_banned("203.0.113.5")
    assert not bans.is_banned("198.51.100.7")
    assert not bans.is_banned("2001:db8::1")


def test_ipv4_mapped_ipv6_is_the_same_address(clock: FakeClock) -> None:
    bans = BanList(attempts=2, ban_minutes=15, clock=clock)
    bans.record_failure("::ffff:203.0.113.5")
    assert bans.record_failure("203.0.113.5") is True
    assert bans.is_banned("::ffff:203.0.113.5")


def test_zero_minutes_turns_banning_off(clock: FakeClock) -> None:
    bans = BanList(attempts=1, ban_minutes=0, clock=clock)
    assert bans.record_failure("203.0.113.5") is False
    assert not bans.is_banned("203.0.113.5")


def test_memory_is_bounded(clock: FakeClock) -> None:
    bans = BanList(attempts=5, ban_minutes=15, clock=clock, max_entries=100)
    for i in range(1000):
        bans.record_failure(f"10.0.{i // 256}.{i % 256}")
    assert len(bans) == 100
    # The most recent addresses are the ones kept.
    for _ in range(4):
        bans.record_failure("10.0.3.231")
    assert bans.is_banned("10.0.3.231")


def test_expired_entries_are_dropped(clock: FakeClock) -> None:
    bans = BanList(attempts=5, ban_minutes=15, clock=clock)
    for i in range(50):
        bans.record_failure(f"10.0.0.{i}")
    clock.advance(15)
    bans.record_failure("10.0.1.1")
    assert len(bans) == 1


def test_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        BanList(attempts=0, ban_minutes=15)
