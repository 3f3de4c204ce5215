"""The policy under the SSH hooks, without a network: reservations in BanList, LogThrottle.

tests/server/test_limits_logins.py proves the same end to end with real clients;
these pin the rules one at a time (SPEC §3.2 "bans are exact").
"""

from __future__ import annotations

from server.accounts import Attempt, BanList
from server.logins import LogThrottle, shown
from tests.server.test_accounts import FakeClock

ADDRESS = "203.0.113.5"


def test_an_address_gets_at_most_attempts_reservations_at_once() -> None:
    bans = BanList(attempts=3, ban_minutes=15, clock=FakeClock())
    assert [bans.reserve(ADDRESS) for _ in range(4)] == [Attempt.GRANTED] * 3 + [Attempt.BUSY]
    assert bans.reserve("198.51.100.7") is Attempt.GRANTED  # other addresses are apart
    assert bans.record_failure(ADDRESS, reserved=True) is False
    assert bans.record_failure(ADDRESS, reserved=True) is False
    assert bans.reserve(ADDRESS) is Attempt.BUSY  # 2 failures + 1 still being checked
    assert bans.record_failure(ADDRESS, reserved=True) is True
    assert bans.reserve(ADDRESS) is Attempt.BANNED


def test_a_success_gives_its_reservation_back() -> None:
    bans = BanList(attempts=2, ban_minutes=15, clock=FakeClock())
    assert bans.reserve(ADDRESS) is Attempt.GRANTED
    assert bans.reserve(ADDRESS) is Attempt.GRANTED
    assert bans.reserve(ADDRESS) is Attempt.BUSY
    bans.record_success(ADDRESS, reserved=True)
    assert bans.reserve(ADDRESS) is Attempt.GRANTED


def test_a_success_among_parallel_guesses_does_not_reset_their_count() -> None:
    """Otherwise the right password, arriving among 30 guesses, would buy them more checks."""
    bans = BanList(attempts=3, ban_minutes=15, clock=FakeClock())
    for _ in range(3):
        assert bans.reserve(ADDRESS) is Attempt.GRANTED
    bans.record_failure(ADDRESS, reserved=True)
    bans.record_success(ADDRESS, reserved=True)  # the third is still being checked
    assert bans.reserve(ADDRESS) is Attempt.GRANTED
    assert bans.reserve(ADDRESS) is Attempt.BUSY
    bans.record_failure(ADDRESS, reserved=True)
    assert bans.record_failure(ADDRESS, reserved=True) is True
    assert bans.is_banned(ADDRESS)


def test_a_success_alone_still_resets_the_count() -> None:
    bans = BanList(attempts=2, ban_minutes=15, clock=FakeClock())
    assert bans.reserve(ADDRESS) is Attempt.GRANTED
    bans.record_failure(ADDRESS, reserved=True)
    assert bans.reserve(ADDRESS) is Attempt.GRANTED
    bans.record_success(ADDRESS, reserved=True)
    assert len(bans) == 0


def test_reservations_outlive_a_ban_without_extending_it() -> None:
    clock = FakeClock()
    bans = BanList(attempts=1, ban_minutes=15, clock=clock)
    assert bans.reserve(ADDRESS) is Attempt.GRANTED
    assert bans.record_failure(ADDRESS) is True  # e.g. a rejected key, unreserved
    assert bans.record_failure(ADDRESS, reserved=True) is False
    clock.advance(15.1)
    assert bans.reserve(ADDRESS) is Attempt.GRANTED


def test_banning_off_grants_every_attempt() -> None:
    bans = BanList(attempts=1, ban_minutes=0, clock=FakeClock())
    assert {bans.reserve(ADDRESS) for _ in range(10)} == {Attempt.GRANTED}
    assert bans.record_failure(ADDRESS, reserved=True) is False


def test_the_log_throttle_counts_what_it_leaves_out() -> None:
    clock = FakeClock()
    throttle = LogThrottle(seconds=10, max_keys=2, clock=clock)
    assert throttle.allow("a") == 0
    assert [throttle.allow("a") for _ in range(3)] == [None, None, None]
    assert throttle.allow("b") == 0
    clock.now += 10
    assert throttle.allow("a") == 3
    assert throttle.allow("c") == 0  # a third key: the table stays within max_keys


def test_shown_escapes_and_cuts_client_text() -> None:
    assert shown("evil\nuser\x1b[2J") == "'evil\\nuser\\x1b[2J'"
    assert shown("right\u202eto-left") == "'right\\u202eto-left'"
    assert shown("x" * 100, limit=8) == "'xxxxxxxx'..."
