"""District SFTP accounts: password hashes, key lists and the login ban list (SPEC §2).

No asyncssh here: `server/logins.py` asks these objects yes/no questions from its
SSHServer hooks, so the policy (what is a valid password or key, when is an
address banned) is tested without a network.

District account passwords are few and guard a whole district's roster, so
they are hashed with scrypt (unlike student passwords, SPEC §4). A login for an
unknown user, or for a district that only has keys, runs one scrypt against a
dummy hash, so the time a refusal takes does not tell an attacker which
usernames exist. The checks run in a pool of their own (server/password_checks.py).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Callable

from attrs import evolve, frozen

from processing.config import Config, District

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
DK_BYTES = 32
# Bounds for parameters read from config.toml: a typo such as n=2**30 must
# fail the login, not take the server's memory.
_MAX_N = 2**20
_MAX_R = 32
_MAX_P = 16
_MAX_MEM = 256 * 1024 * 1024


@frozen
class ScryptHash:
    """A parsed `scrypt$n$r$p$salt$hash` value."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, stored: str) -> ScryptHash | None:
        """The parsed hash, or None if `stored` is not one we can check safely."""
        parts = stored.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            return None
        try:
            n, r, p = (int(x, 10) for x in parts[1:4])
            salt = base64.b64decode(parts[4], validate=True)
            digest = base64.b64decode(parts[5], validate=True)
        except (ValueError, binascii.Error):
            return None
        if not (2 <= n <= _MAX_N and n & (n - 1) == 0):
            return None
        if not (1 <= r <= _MAX_R and 1 <= p <= _MAX_P and salt and len(digest) >= 16):
            return None
        return cls(n=n, r=r, p=p, salt=salt, digest=digest)

    def render(self) -> str:
        """The `password_hash` text for config.toml."""
        salt = base64.b64encode(self.salt).decode("ascii")
        digest = base64.b64encode(self.digest).decode("ascii")
        return f"scrypt${self.n}${self.r}${self.p}${salt}${digest}"

    def matches(self, password: str) -> bool:
        """Run scrypt once and compare in constant time."""
        try:
            derived = _scrypt(password, self.salt, self.n, self.r, self.p, len(self.digest))
        except (ValueError, MemoryError):
            return False
        return hmac.compare_digest(derived, self.digest)


def hash_password(password: str) -> str:
    """A new `password_hash` value for config.toml (what `eams hash-password` prints)."""
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, DK_BYTES)
    return ScryptHash(n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, salt=salt, digest=digest).render()


def verify_password(stored: str, password: str) -> bool:
    """True if `password` matches `stored`; a malformed `stored` is never a match."""
    parsed = ScryptHash.parse(stored)
    return parsed is not None and parsed.matches(password)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    # surrogatepass: a client-sent string can never make the check raise.
    secret = password.encode("utf-8", "surrogatepass")
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=_MAX_MEM)


class Accounts:
    """The SFTP logins of one loaded config; rebuilt when the config is reloaded."""

    def __init__(self, config: Config) -> None:
        self._by_username: dict[str, District] = {d.username: d for d in config.districts.values()}
        self._hashes: dict[str, ScryptHash] = {}
        self._keys: dict[str, frozenset[bytes]] = {}
        for district in self._by_username.values():
            parsed = ScryptHash.parse(district.password_hash or "")
            if parsed is not None:
                self._hashes[district.username] = parsed
            self._keys[district.username] = frozenset(
                blob for blob in map(_key_blob, district.authorized_keys) if blob is not None
            )
        # Computed once here, so every failed lookup costs one scrypt, like a
        # wrong password for a real district does.
        self._dummy = ScryptHash.parse(hash_password(secrets.token_urlsafe(16)))
        assert self._dummy is not None

    def district_for(self, username: str) -> District | None:
        """The district whose SFTP login is `username` (exact match), if any."""
        return self._by_username.get(username)

    def has_password(self, username: str) -> bool:
        """True if the account can log in with a password (key-only districts cannot)."""
        return username in self._hashes

    def check_password(self, username: str, password: str) -> District | None:
        """The district if `password` is right for `username`, else None.

        Always runs exactly one scrypt, for unknown users and key-only
        districts too, so timing does not reveal which usernames exist.
        """
        district = self._by_username.get(username)
        stored = self._hashes.get(username)
        if district is None or stored is None:
            assert self._dummy is not None
            self._dummy.matches(password)
            return None
        return district if stored.matches(password) else None

    def authorized_keys(self, username: str) -> list[str]:
        """The district's OpenSSH public key lines ([] for unknown users)."""
        district = self._by_username.get(username)
        return list(district.authorized_keys) if district is not None else []

    def check_key(self, username: str, key_blob: bytes) -> District | None:
        """The district if `key_blob` (a public key in SSH wire format, as a client
        offers it) is one of `username`'s authorized_keys, else None.

        Compared as bytes: an authorized_keys line is `type base64(blob) comment`,
        and the blob is exactly what the client sends, so no key parsing is needed.
        """
        if key_blob in self._keys.get(username, frozenset()):
            return self._by_username[username]
        return None


def _key_blob(line: str) -> bytes | None:
    """The wire-format public key of an `ssh-ed25519 AAAA... comment` line."""
    parts = line.split()
    if len(parts) < 2:
        return None
    try:
        return base64.b64decode(parts[1], validate=True)
    except (ValueError, binascii.Error):
        return None


@frozen
class _Strikes:
    failures: int
    expires_at: float  # when this entry is forgotten (or the ban ends)
    banned: bool
    pending: int = 0  # attempts reserved and being checked right now


class Attempt(enum.Enum):
    """What `BanList.reserve` answers for a login attempt about to be checked."""

    GRANTED = "granted"  # check it; then record_failure/record_success(reserved=True)
    BUSY = "busy"  # every remaining attempt is being checked: wait, then ask again
    BANNED = "banned"  # refuse without checking


class BanList:
    """Failed logins per address, and temporary bans (SPEC §2 login_attempts, ban_minutes).

    Exact (SPEC §3.2): an attempt is *reserved* before its password is checked,
    and counts as a failure unless it is proven right. An address gets a
    reservation only while failures + reservations < login_attempts, so 60
    parallel guesses get at most `attempts` scrypt checks, however fast they
    arrive; the others wait (BUSY) and see the ban. A success gives its
    reservation back (`record_success`).

    An entry is forgotten `ban_minutes` after its last failure (or ban), so a
    district that mistypes its password now and then is never banned, and the
    table only holds addresses seen recently. It is also capped at
    `max_entries`, dropping the least recently seen address, so a flood from
    many addresses cannot grow memory without bound. `ban_minutes = 0` turns
    banning off.
    """

    def __init__(
        self,
        attempts: int,
        ban_minutes: float,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._attempts = attempts
        self._seconds = max(0.0, ban_minutes * 60.0)
        self._clock = clock
        self._max_entries = max_entries
        # Insertion order is last-update order, and every update sets
        # expires_at = now + _seconds, so expired entries are always at the front.
        self._entries: dict[str, _Strikes] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def reserve(self, address: str) -> Attempt:
        """Reserve one login attempt for `address` before checking its password."""
        if self._seconds <= 0:
            return Attempt.GRANTED
        now = self._clock()
        self._forget_expired(now)
        key = _key(address)
        entry = self._entries.get(key)
        if entry is None:
            entry = _Strikes(0, now + self._seconds, False)
        elif entry.banned:
            return Attempt.BANNED
        if entry.failures + entry.pending >= self._attempts:
            return Attempt.BUSY
        self._put(key, evolve(entry, pending=entry.pending + 1, expires_at=now + self._seconds))
        return Attempt.GRANTED

    def record_failure(self, address: str, *, reserved: bool = False) -> bool:
        """Count a failed login (keeping its reservation, if it had one); True if this
        failure got the address banned."""
        if self._seconds <= 0:
            return False
        now = self._clock()
        self._forget_expired(now)
        key = _key(address)
        entry = self._entries.get(key)
        pending = entry.pending if entry is not None else 0
        if reserved:
            pending = max(0, pending - 1)
        if entry is not None and entry.banned:
            self._entries[key] = evolve(entry, pending=pending)  # the ban is not extended
            return False
        failures = (entry.failures if entry is not None else 0) + 1
        banned = failures >= self._attempts
        self._put(key, _Strikes(failures, now + self._seconds, banned, pending))
        return banned

    def record_success(self, address: str, *, reserved: bool = False) -> None:
        """A good login gives its reservation back and resets the count, unless other
        attempts from the address are being checked right now (a right password among
        parallel guesses must not buy the guesses more checks). It never lifts a ban.

        (A banned address is refused before it can authenticate; a success can
        only come from a connection opened before the ban, perhaps by someone
        else behind the same NAT address as the attacker.)
        """
        key = _key(address)
        entry = self._entries.get(key)
        if entry is None:
            return
        pending = max(0, entry.pending - 1) if reserved else entry.pending
        if entry.banned or pending:
            self._entries[key] = evolve(entry, pending=pending)
        else:
            del self._entries[key]

    def failures(self, address: str) -> int:
        """Recent failed logins of `address` (0 for one never seen failing)."""
        entry = self._entries.get(_key(address))
        return entry.failures if entry is not None else 0

    def is_banned(self, address: str) -> bool:
        """True while the address's ban lasts."""
        now = self._clock()
        self._forget_expired(now)
        entry = self._entries.get(_key(address))
        return entry is not None and entry.banned and now < entry.expires_at

    def _put(self, key: str, entry: _Strikes) -> None:
        self._entries.pop(key, None)
        self._entries[key] = entry
        while len(self._entries) > self._max_entries:
            del self._entries[next(iter(self._entries))]

    def _forget_expired(self, now: float) -> None:
        while self._entries:
            first_key = next(iter(self._entries))
            if self._entries[first_key].expires_at > now:
                break
            del self._entries[first_key]


def address_key(address: str) -> str:
    """One key per client address (see `_key`), for counting connections per address."""
    return _key(address)


def _key(address: str) -> str:
    """One key per client: `::ffff:1.2.3.4` (IPv4 on a dual-stack socket) is `1.2.3.4`."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
