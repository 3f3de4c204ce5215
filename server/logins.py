"""SSH sign-in: who may connect, sign in, and how many at once (SPEC §2, §3.2).

One `DistrictSSHServer` per connection, its hooks called by asyncssh in this order:
`connection_made` (the TCP connection is accepted), `validate_password` /
`validate_public_key` (each attempt), `auth_completed` (signed in),
`connection_lost` (always, once). The bounds, all read from `[server]` at the
moment they apply, so a SIGHUP changes them for the next connection:

- before sign-in: at most `max_unauthenticated` connections in all and
  `max_unauthenticated_per_address` from one address; one more is closed at
  once in `connection_made` (as OpenSSH's MaxStartups does), before it costs
  a key exchange or holds a descriptor for the 60 s login grace.
- bans (`server.accounts.BanList`): an attempt is reserved before scrypt runs,
  so parallel guesses from one address get at most `login_attempts` checks; a
  connection that ends unsigned after a rejected public key counts once. scrypt
  runs in its own bounded pool, addresses without failures first
  (server/password_checks.py, docs/capacity.md).
- per district: at most `max_sessions_per_district` signed-in connections;
  one more is refused with `too many sessions for this district`, checked
  before asyncssh answers USERAUTH_SUCCESS so the client shows the reason.

Every refusal is an SSH disconnect with a reason the client prints, and a log
line with the address (and district when known). Lines a flood would repeat
are throttled per address (`LogThrottle`), and client-chosen text (user
names) is logged escaped (`shown`), never raw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncssh

from server.accounts import Attempt, BanList, address_key
from server.password_checks import PasswordChecks

if TYPE_CHECKING:
    from server.app import EamsServer

log = logging.getLogger("eams.server")

BANNED = "too many failed logins from your address; try again later"
DISTRICT_FULL = "too many sessions for this district"
SERVER_BUSY = "too many connections are signing in; try again later"
ADDRESS_BUSY = "too many connections from your address are signing in; try again later"
THROTTLE_SECONDS = 10.0


def shown(text: str, limit: int = 64) -> str:
    """Client-chosen `text` as a log line may carry it: quoted, every control or
    invisible character escaped (`\\n`, `\\x1b`), cut at `limit` characters."""
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


class LogThrottle:
    """At most one log line per key every `seconds`; the next line counts the ones left out.

    A flood of refused connections must not become a flood of log lines (the disk,
    and the operator reading them). Keys are forgotten after `seconds`, and at most
    `max_keys` are kept, so memory stays bounded however many addresses there are.
    """

    def __init__(
        self,
        seconds: float = THROTTLE_SECONDS,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seconds, self._max_keys, self._clock = seconds, max_keys, clock
        self._last: dict[str, tuple[float, int]] = {}  # key -> (logged at, left out since)

    def allow(self, key: str) -> int | None:
        """None: leave this line out. Else: log it, saying how many were left out."""
        now = self._clock()
        logged_at, left_out = self._last.get(key, (-self._seconds, 0))
        if now - logged_at < self._seconds:
            self._last[key] = (logged_at, left_out + 1)
            return None
        if len(self._last) >= self._max_keys:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self._seconds}
            if len(self._last) >= self._max_keys:
                self._last.clear()
        self._last[key] = (now, 0)
        return left_out


def left_out_note(count: int) -> str:
    """The end of a throttled log line: how many like it were left out."""
    return f" ({count} more like this not logged)" if count else ""


class LoginLimits:
    """The server-wide counts behind the limits; one per server, kept across reloads."""

    def __init__(self) -> None:
        self.unauthenticated = 0
        self._by_address: Counter[str] = Counter()
        self._by_district: Counter[str] = Counter()
        self._attempts_changed = asyncio.Event()
        self.throttle = LogThrottle()
        self.password_checks = PasswordChecks()  # scrypt: bounded, clean addresses first

    def admit(self, address: str, max_total: int, max_per_address: int) -> str | None:
        """Count a new connection not yet signed in; else the reason it is refused."""
        if self.unauthenticated >= max_total:
            return SERVER_BUSY
        if self._by_address[address] >= max_per_address:
            return ADDRESS_BUSY
        self.unauthenticated += 1
        self._by_address[address] += 1
        return None

    def release(self, address: str) -> None:
        """A counted connection signed in or went away."""
        self.unauthenticated -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]

    def waiting_from(self, address: str) -> int:
        return self._by_address.get(address_key(address), 0)

    def sessions(self, district_id: str) -> int:
        return self._by_district.get(district_id, 0)

    def add_session(self, district_id: str) -> None:
        self._by_district[district_id] += 1

    def remove_session(self, district_id: str) -> None:
        self._by_district[district_id] -= 1
        if self._by_district[district_id] <= 0:
            del self._by_district[district_id]

    def attempts_changed(self) -> None:
        """Wake every attempt waiting for a slot (a reservation ended, a ban began)."""
        self._attempts_changed.set()
        self._attempts_changed = asyncio.Event()

    async def wait_attempts_changed(self) -> None:
        await self._attempts_changed.wait()


def refused_at_accept(app: EamsServer, peer: str) -> tuple[int, str] | None:
    """(disconnect code, reason) for a connection to refuse as soon as it is accepted
    (server/admission.py): a banned address. None lets it through to asyncssh."""
    address = address_key(peer)
    if not app.bans.is_banned(address):
        return None
    left_out = app.logins.throttle.allow(f"banned {address}")
    if left_out is not None:
        log.warning("refused connection from banned address %s%s", address, left_out_note(left_out))
    return asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE, BANNED


class DistrictSSHServer(asyncssh.SSHServer):
    """One SSH connection: password/key logins, the limits above, login log lines."""

    def __init__(self, app: EamsServer) -> None:
        self.app = app
        self.limits: LoginLimits = app.logins
        self.conn: asyncssh.SSHServerConnection | None = None
        self.address = "?"
        self.username = ""
        self._waiting = False  # counted in max_unauthenticated
        self._district: str | None = None  # counted in max_sessions_per_district
        self._signed_in = False
        self._by_password = False
        self._key_rejected = False
        self._counted = False  # a failure of this connection was counted already

    # ---- connect ----------------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.address = address_key(str(peer[0])) if peer else "?"
        settings = self.app.config.server
        # A banned address was refused before this object existed (refused_at_accept).
        refusal = self.limits.admit(
            self.address, settings.max_unauthenticated, settings.max_unauthenticated_per_address
        )
        if refusal is not None:
            which = "max_unauthenticated" if refusal == SERVER_BUSY else "per address"
            self._note(
                f"{which} {self.address}",
                "refused connection from %s: too many connections not signed in yet (%s)",
                self.address,
                which,
            )
            self._refuse(asyncssh.DISC_TOO_MANY_CONNECTIONS, refusal)
            return
        self._waiting = True
        self.app.connections.add(conn)

    def _refuse(self, code: int, reason: str) -> None:
        """Close at once, `reason` being the disconnect message the client shows.

        Scheduled rather than called: asyncssh sends its version line after this
        hook returns, and a client reads a DISCONNECT only after the version line.
        """
        assert self.conn is not None
        asyncio.get_running_loop().call_soon(self.conn.disconnect, code, reason)

    def _note(self, key: str, message: str, *args: Any) -> None:
        """A warning that a flood would repeat: at most one per key and THROTTLE_SECONDS."""
        left_out = self.limits.throttle.allow(key)
        if left_out is not None:
            log.warning(message + "%s", *args, left_out_note(left_out))

    # ---- authenticate -----------------------------------------------------------------

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        self.username = username
        bans = await self._reserve_attempt()
        try:
            accounts = self.app.accounts
            district = await self.limits.password_checks.run(
                bans.failures(self.address), lambda: accounts.check_password(username, password)
            )
        except BaseException:
            # Cancelled while scrypt ran (the client sent another request or went
            # away): the guess was made, so it counts.
            self._failed(bans, "connection ended during the password check", reserved=True)
            raise
        if district is None:
            if self._failed(bans, "wrong password or unknown user", reserved=True):
                raise asyncssh.PermissionDenied(BANNED)
            return False
        bans.record_success(self.address, reserved=True)
        self.limits.attempts_changed()
        self._check_room(district.id)
        self._by_password = True
        return True

    async def _reserve_attempt(self) -> BanList:
        """Reserve an attempt (SPEC §3.2 "counted before the password is checked"), waiting
        while this address's other attempts are being checked; refuse a banned address.
        Bounded by the login grace: asyncssh cancels this when the connection ends."""
        while True:
            bans = self.app.bans  # a reload may replace it
            attempt = bans.reserve(self.address)
            if attempt is Attempt.GRANTED:
                return bans
            if attempt is Attempt.BANNED:
                self._refuse_banned()
            await self.limits.wait_attempts_changed()

    def _refuse_banned(self) -> None:
        """A connection opened before its address was banned: no more attempts."""
        key, message = f"banned attempt {self.address}", "login refused: %s is banned"
        self._note(key, message, self.address)
        raise asyncssh.PermissionDenied(BANNED)

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # Synchronous on purpose: between this answer and auth_completed asyncssh does
        # not yield, so the room checked here is still there when it is taken.
        self.username = username
        if self.app.bans.is_banned(self.address):
            self._refuse_banned()
        district = self.app.accounts.check_key(username, key.public_data)
        if district is None:
            self._key_rejected = True
            return False
        self._check_room(district.id)
        return True

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self.username = username
        self._key_rejected = True  # certificates are not accepted
        return False

    def _failed(self, bans: BanList, why: str, *, reserved: bool = False) -> bool:
        """Count and log one failure; True if it got the address banned."""
        banned = bans.record_failure(self.address, reserved=reserved)
        self.app.metrics.login_failed("sftp")
        self._counted = True
        self.limits.attempts_changed()
        log.warning("login failed: user %s from %s (%s)", shown(self.username), self.address, why)
        if banned:
            settings = self.app.config.server
            log.warning(
                "banned %s for %s minutes after %d failed logins",
                self.address,
                settings.ban_minutes,
                settings.login_attempts,
            )
        return banned

    def _check_room(self, district_id: str) -> None:
        """Refuse a sign-in that would exceed max_sessions_per_district."""
        cap = self.app.config.server.max_sessions_per_district
        if self.limits.sessions(district_id) >= cap:
            self._note(
                f"district {district_id}",
                "login refused: district %s already has %d sessions (max_sessions_per_district);"
                " user %s from %s",
                district_id,
                cap,
                shown(self.username),
                self.address,
            )
            raise asyncssh.DisconnectError(asyncssh.DISC_TOO_MANY_CONNECTIONS, DISTRICT_FULL)

    def auth_completed(self) -> None:
        self._stop_waiting()
        self._signed_in = True
        assert self.conn is not None
        self.username = self.conn.get_extra_info("username") or self.username
        district = self.app.accounts.district_for(self.username)
        if district is not None:
            self._check_room(district.id)  # exact even if a check above was ever skipped
            self.limits.add_session(district.id)
            self._district = district.id
        if not self._by_password:
            self.app.bans.record_success(self.address)  # a password gave its reservation back
        log.info(
            "login: user %s from %s (district %s)",
            shown(self.username),
            self.address,
            district.id if district else "?",
        )

    # ---- disconnect -------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        if self.conn is not None:
            self.app.connections.discard(self.conn)
        self._stop_waiting()
        if self._district is not None:
            self.limits.remove_session(self._district)
            self._district = None
        if self._key_rejected and not (self._signed_in or self._counted):
            # Once per connection, however many keys it offered (OpenSSH tries each of
            # the user's keys in turn), and not on top of its wrong passwords.
            self._failed(self.app.bans, "public key not accepted")

    def _stop_waiting(self) -> None:
        if self._waiting:
            self._waiting = False
            self.limits.release(self.address)
