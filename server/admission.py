"""Connections refused before asyncssh builds anything for them (SPEC §3.2 bans).

A banned address that reconnects in a tight loop still costs the server a TCP
accept. It used to cost much more: asyncssh builds a connection object and
re-evaluates its per-connection options before our `connection_made` hook can
refuse it, about 1.1 ms of the event loop's time per refusal. Fifty addresses
guessing passwords made 435 connections a second, and the event loop spent
four times its quiet-rush time on them while 2,000 districts uploaded
(bench/capacity.py, hostile rush).

`AdmissionGate` is handed to `asyncssh.create_server` as its `tunnel`: the
one hook asyncssh offers ahead of a connection (it calls our
`create_server(factory, host, port)` and wants something shaped like an
`asyncio.Server` back). We listen ourselves; each accepted TCP connection
first meets a `_Gate` protocol, which asks `refusal(address)`. A refused
connection gets the SSH version line and a DISCONNECT with the reason (what
asyncssh sent before, so every client still shows why) and is closed when
the client hangs up (at most LINGER seconds later); any
other is handed to asyncssh's own connection object, and the gate then only
passes the transport's calls through. tests/server/test_asyncssh_contract.py
pins the hook.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

VERSION_LINE = b"SSH-2.0-eAMS\r\n"
_DISCONNECT = 1  # SSH_MSG_DISCONNECT (RFC 4253 11.1)
_BLOCK = 8  # packets before key exchange: no cipher, 8-byte blocks, no MAC
LINGER = 5.0  # seconds a refused connection waits for its client to hang up


def disconnect_packet(code: int, reason: str) -> bytes:
    """An unencrypted SSH DISCONNECT packet (RFC 4253 section 6), as sent before key exchange."""
    text = reason.encode("utf-8")
    payload = struct.pack(">BII", _DISCONNECT, code, len(text)) + text + struct.pack(">I", 0)
    padding = _BLOCK - (5 + len(payload)) % _BLOCK
    if padding < 4:
        padding += _BLOCK
    length = 1 + len(payload) + padding
    return struct.pack(">IB", length, padding) + payload + bytes(padding)


class AdmissionGate:
    """Passed as `tunnel=` to asyncssh: listens on (host, port) and lets through only
    the connections `refusal(address)` has no (code, reason) for."""

    def __init__(self, refusal: Callable[[str], tuple[int, str] | None]) -> None:
        self.refusal = refusal
        self.refused = 0  # for tests and diagnostics

    async def create_server(
        self, session_factory: Callable[[str, int], Any], host: str, port: int
    ) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: _Gate(self, session_factory), host or None, port, reuse_address=True
        )


class _Gate(asyncio.Protocol):
    """One accepted connection: refused here, or asyncssh's from its first byte on."""

    def __init__(self, gate: AdmissionGate, session_factory: Callable[[str, int], Any]) -> None:
        self._gate = gate
        self._factory = session_factory
        self._inner: asyncio.Protocol | None = None
        self._linger: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        refusal = self._gate.refusal(str(peer[0])) if peer else None
        if refusal is not None:
            self._gate.refused += 1
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(VERSION_LINE + disconnect_packet(*refusal))
            # Half-close and read what the client sends until it hangs up: closing at
            # once would reset the connection under its version line, and a client
            # told "broken pipe" never reads the reason.
            transport.write_eof()
            self._linger = asyncio.get_running_loop().call_later(LINGER, transport.close)
            return
        self._inner = self._factory("", 0)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            return False  # a refused client read the reason and hung up: close
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()
