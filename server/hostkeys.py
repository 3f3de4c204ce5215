"""SSH host keys: generated once (ed25519 and rsa), then reused on every start.

A district's WinSCP pins the server's host key on first connect; regenerating
keys would make every district's job fail with a "host key changed" warning,
so keys are created only when missing and written 0600 from the first byte.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

KEYS = (("ssh_host_ed25519_key", "ssh-ed25519"), ("ssh_host_rsa_key", "ssh-rsa"))


def ensure_host_keys(folder: Path) -> list[Path]:
    """Create missing host keys in `folder`; return the key file paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, algorithm in KEYS:
        path = folder / name
        if not path.exists():
            key = (
                asyncssh.generate_private_key(algorithm, key_size=3072)
                if algorithm == "ssh-rsa"
                else asyncssh.generate_private_key(algorithm)
            )
            temp = path.with_name(f".{name}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(key.export_private_key())
            os.replace(temp, path)
            (folder / f"{name}.pub").write_bytes(key.export_public_key())
        paths.append(path)
    return paths


def fingerprints(folder: Path) -> list[str]:
    """`ED25519 SHA256:...` lines for districts to compare with WinSCP's prompt."""
    lines = []
    for path in ensure_host_keys(folder):
        key = asyncssh.read_private_key(path)
        kind = key.get_algorithm()
        lines.append(f"{kind} {key.get_fingerprint('sha256')} ({path.name})")
    return lines
