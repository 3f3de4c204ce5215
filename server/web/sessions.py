"""Who is signed in to the web console: server-side sessions, kept as hashes.

The browser holds a random token (256 bits) in an HttpOnly, SameSite=Strict
cookie; the server keeps only its SHA-256, with who signed in, the CSRF token
of the session, when it ends, and a fingerprint of the password hash that
signed in. A session whose account's password was changed or removed (a
SIGHUP with a new config) no longer matches and ends at its next request.
Sessions live in the server's memory: a restart signs everyone out, which is
the safe direction.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

from attrs import frozen

from processing.config import Config

MAX_SESSIONS = 10_000  # the oldest go first: sign-ins cannot grow memory without bound


@frozen
class Session:
    kind: str  # "operator" or "district"
    name: str  # the operator's sign-in name, or the district id
    csrf: str
    expires_at: float  # monotonic seconds
    fingerprint: str  # of the password hash that signed in

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    @property
    def who(self) -> str:
        """How the audit log and the run record name this person."""
        return self.name if self.is_operator else f"district:{self.name}"

    def may_see(self, district_id: str) -> bool:
        return self.is_operator or self.name == district_id


def password_fingerprint(config: Config, kind: str, name: str) -> str | None:
    """A digest of the account's current password hash (None: no such account, or it
    may not sign in to the web)."""
    if kind == "operator":
        account = config.operators.get(name)
        stored = account.password_hash if account is not None else None
    else:
        district = config.districts.get(name)
        ok = district is not None and district.web_login and district.password_hash
        stored = district.password_hash if ok and district is not None else None
    return hashlib.sha256(stored.encode()).hexdigest() if stored else None


class Sessions:
    def __init__(
        self, minutes: Callable[[], int], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._minutes = minutes  # read at each sign-in, so a reload applies
        self._clock = clock
        self._by_hash: dict[str, Session] = {}

    def start(self, kind: str, name: str, fingerprint: str) -> tuple[str, Session]:
        """A new session: (the token for the cookie, the session)."""
        token = secrets.token_urlsafe(32)
        session = Session(
            kind,
            name,
            secrets.token_urlsafe(32),
            self._clock() + self._minutes() * 60.0,
            fingerprint,
        )
        self._by_hash[_hash(token)] = session
        while len(self._by_hash) > MAX_SESSIONS:
            del self._by_hash[next(iter(self._by_hash))]
        return token, session

    def get(self, token: str | None, config: Config) -> Session | None:
        """The session of this cookie, if it is still valid under `config`."""
        if not token:
            return None
        key = _hash(token)
        session = self._by_hash.get(key)
        if session is None:
            return None
        current = password_fingerprint(config, session.kind, session.name)
        if self._clock() >= session.expires_at or current != session.fingerprint:
            del self._by_hash[key]
            return None
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._by_hash.pop(_hash(token), None)

    def __len__(self) -> int:
        return len(self._by_hash)

    def stored_keys(self) -> list[str]:
        """What the server holds (tests check that no token is among them)."""
        return list(self._by_hash)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
