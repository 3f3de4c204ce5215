"""Student passwords at rest (SPEC §4): AES-GCM encrypted, key outside the database.
Also what a district's SFTP `password_hash` may be (SPEC §2, §3.2): `scrypt_problem`.

Passwords are handed on to the MY Access login, so they must be recoverable
(encryption, not hashing). The key lives in `<data>/secret.key` (0600), never in
the database file, so a copied database alone reveals nothing.

Deciding "did the password change?" must not decrypt 500,000 blobs, so each
student also stores a keyed BLAKE2b digest of the password (a MAC under a key
derived from the same secret): comparing digests is cheap and the digest
cannot be brute-forced without the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_FILE = "secret.key"
_NONCE = 12


class StudentPasswords:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the student password key must be 32 bytes")
        self._aead = AESGCM(key)
        self._mac_key = hashlib.blake2b(key, digest_size=32, person=b"eams-pw-mac").digest()
        self._line_key = hashlib.blake2b(key, digest_size=32, person=b"eams-line").digest()

    @classmethod
    def from_data_dir(cls, data: Path) -> StudentPasswords:
        """Load `<data>/secret.key`, creating it (0600) on first start."""
        data.mkdir(parents=True, exist_ok=True)
        path = data / KEY_FILE
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            key = os.urandom(32)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:  # another process created it first
                key = path.read_bytes()
            else:
                os.fchmod(fd, 0o600)  # whatever the umask (SPEC §3.2)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(key)
                    handle.flush()
                    os.fsync(handle.fileno())
        return cls(key)

    def mac(self, password: str) -> bytes:
        return hashlib.blake2b(password.encode("utf-8"), key=self._mac_key, digest_size=16).digest()

    def line_digest(self, context: str) -> Callable[[str], bytes]:
        """Keyed digests of rows' lines under `context` (processing/digests.py).

        A line holds a password, so the digest is keyed like the password MAC.
        """
        base = hashlib.blake2b(key=self._line_key, digest_size=16)
        base.update(context.encode("utf-8", "surrogatepass") + b"\x00")

        def digest(text: str) -> bytes:
            hasher = base.copy()
            hasher.update(text.encode("utf-8", "surrogatepass"))
            return hasher.digest()

        return digest

    def encrypt_many(self, passwords: Iterable[str]) -> list[bytes]:
        """Encrypt a run's new passwords: each with its own random nonce, drawn in one call."""
        plain = [password.encode("utf-8") for password in passwords]
        nonces = os.urandom(_NONCE * len(plain))
        encrypt = self._aead.encrypt
        blobs = []
        for start, data in zip(range(0, len(nonces), _NONCE), plain, strict=True):
            nonce = nonces[start : start + _NONCE]
            blobs.append(nonce + encrypt(nonce, data, None))
        return blobs

    def decrypt(self, blob: bytes) -> str:
        return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], None).decode("utf-8")


# A district's SFTP password_hash: `scrypt$n$r$p$salt$hash` (`eams hash-password`).
# server/accounts.py checks logins with these bounds and hashlib's maxmem; config.py
# refuses any other value, so a typo is an error with its key path at check-config or
# SIGHUP, not a district locked out with only "wrong password" in the log.
SCRYPT_MAX_N = 2**20
SCRYPT_MAX_R = 32
SCRYPT_MAX_P = 16
SCRYPT_MAX_MEM = 256 * 1024 * 1024
_MIB = 1024 * 1024
_AGAIN = ": run `eams hash-password` for a new value"


def scrypt_problem(value: str) -> str | None:
    """Why `value` cannot be a district's password_hash; None when logins can check it.

    Besides the SPEC's bounds (n a power of two up to 2^20, r up to 32, p up
    to 16) and base64 salt and hash, the parameters must be ones OpenSSL's
    scrypt runs within SCRYPT_MAX_MEM: n below 2^(16 r), and 128 r (n + p + 2)
    bytes of memory (n = 2^20 with r = 8 would need 1 GiB).
    """
    parts = value.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return "must be a value from `eams hash-password` (scrypt$n$r$p$salt$hash)"
    n, r, p = (_whole(part) for part in parts[1:4])
    if n is None or not (2 <= n <= SCRYPT_MAX_N and n & (n - 1) == 0):
        return f"scrypt n must be a power of two from 2 to {SCRYPT_MAX_N}, not {parts[1]!r}{_AGAIN}"
    if r is None or not 1 <= r <= SCRYPT_MAX_R:
        return f"scrypt r must be from 1 to {SCRYPT_MAX_R}, not {parts[2]!r}{_AGAIN}"
    if p is None or not 1 <= p <= SCRYPT_MAX_P:
        return f"scrypt p must be from 1 to {SCRYPT_MAX_P}, not {parts[3]!r}{_AGAIN}"
    salt, digest = _base64(parts[4]), _base64(parts[5])
    if not salt:
        return f"the salt is not base64 of at least one byte{_AGAIN}"
    if digest is None or len(digest) < 16:
        return f"the hash is not base64 of at least 16 bytes{_AGAIN}"
    if n >= 2 ** (16 * r):
        return f"scrypt n = {n} needs r >= {(n.bit_length() - 1) // 16 + 1}{_AGAIN}"
    memory = 128 * r * (n + p + 2)
    if memory > SCRYPT_MAX_MEM:
        return (
            f"scrypt n = {n} with r = {r} needs {memory // _MIB} MiB per login, "
            f"more than the {SCRYPT_MAX_MEM // _MIB} MiB allowed{_AGAIN}"
        )
    return None


def _whole(text: str) -> int | None:
    try:
        return int(text, 10)  # as server/accounts.py reads it
    except ValueError:
        return None


def _base64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
