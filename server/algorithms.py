"""The SSH algorithms eAMS offers, in one place (SPEC §3.2 "modern algorithms only").

asyncssh's defaults offer far more than OpenSSH does: SHA-1 (`ssh-rsa`
signatures, `diffie-hellman-group14-sha1`, `hmac-sha1`), 64-bit MACs
(`umac-64`), the `secp256k1` curve and ssh.com extensions. A client that asks
for one of them (`ssh -o KexAlgorithms=diffie-hellman-group14-sha1`) would get
it. So every list is explicit here: a subset of OpenSSH 9's server defaults
(`myproposal.h`), in OpenSSH's order, minus anything with SHA-1 and minus
64-bit MACs. What asyncssh cannot do (sntrup761x25519) is left out.
tests/server/test_limits_logins.py reads the server's KEXINIT and checks it
against these lists, and checks that OpenSSH cannot negotiate the weak ones.

Order matters little (the client's order decides) but follows OpenSSH 9.9+:
the post-quantum hybrid first, the AEAD ciphers (chacha20-poly1305, AES-GCM,
no separate MAC) before CTR.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncssh

KEX_ALGS = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
)
"""Key exchange. OpenSSH 9 also offers sntrup761x25519-sha512, which asyncssh lacks."""

ENCRYPTION_ALGS = (
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
"""Ciphers: exactly OpenSSH's; the AEAD ones first (a later issue measures throughput)."""

MAC_ALGS = (
    "umac-128-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "umac-128@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
"""MACs (only used with the CTR ciphers): OpenSSH's without umac-64 and hmac-sha1."""

HOST_KEY_ALGS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
"""Host key signatures: the RSA host key signs with SHA-2 only (never `ssh-rsa`)."""

SIGNATURE_ALGS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
"""Client key signatures announced in `server-sig-algs` (OpenSSH PubkeyAcceptedAlgorithms)."""

COMPRESSION_ALGS = ("none", "zlib@openssh.com")
"""OpenSSH's: zlib only after sign-in, so nobody can make the server inflate data unsigned."""


def server_options() -> dict[str, Any]:
    """The `asyncssh.create_server` keyword arguments that fix what is negotiated."""
    return {
        "kex_algs": list(KEX_ALGS),
        "encryption_algs": list(ENCRYPTION_ALGS),
        "mac_algs": list(MAC_ALGS),
        "compression_algs": list(COMPRESSION_ALGS),
        "signature_algs": list(SIGNATURE_ALGS),
    }


def host_key_pairs(keys: Sequence[asyncssh.SSHKey]) -> list[asyncssh.SSHKeyPair]:
    """The host keys as key pairs that offer only HOST_KEY_ALGS, in that order.

    asyncssh has no server option for this: each key pair advertises every
    algorithm its key type can sign with (an RSA key: `ssh-rsa`,
    `ssh-rsa-sha224@ssh.com`, ...), taken from its `host_key_algorithms`
    when the server starts. A key with none left (DSA) is not offered at all.
    tests/server/test_asyncssh_contract_logins.py pins that attribute.
    """
    pairs = []
    for pair in asyncssh.load_keypairs(list(keys)):
        offered = {alg.decode("ascii") for alg in pair.host_key_algorithms}
        allowed = [alg.encode("ascii") for alg in HOST_KEY_ALGS if alg in offered]
        if allowed:
            pair.host_key_algorithms = allowed
            pairs.append(pair)
    return pairs
