"""Student passwords at rest (SPEC §4): AES-GCM encrypted, key outside the database.

Passwords are handed on to the MY Access login, so they must be recoverable
(encryption, not hashing). The key lives in `<data>/secret.key` (0600), never in
the database file, so a copied database alone reveals nothing.

Deciding "did the password change?" must not decrypt 500,000 blobs, so each
student also stores a keyed BLAKE2b digest of the password (a MAC under a key
derived from the same secret): comparing digests is cheap and the digest
cannot be brute-forced without the key.
"""

from __future__ import annotations

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
