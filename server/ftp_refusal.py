"""The plain-FTP refusal listener (SPEC §2 `ftp_refusal_port`).

A district that points an FTP client at the server should learn in one line
what to do instead, rather than stare at "connection refused". So this
listener speaks just enough FTP for clients to show our text: a 220 greeting,
then `530` to the first command (USER for curl and most clients, which then
report "Access denied: 530"), then it hangs up.

It is an exposed port, so every resource is bounded: at most `max_line` bytes
are read per command, at most `max_commands` commands are answered, a client
silent for `idle_timeout` seconds is dropped, and at most `max_clients` are
served at once (the rest get `421` and are closed at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)

GREETING = b"220 MY Access eAMS: plain FTP is not accepted here\r\n"
REFUSAL = b"530 plain FTP is not accepted: use SFTP on port 22\r\n"
BUSY = b"421 too many connections: use SFTP on port 22\r\n"


async def start_ftp_refusal(
    host: str,
    port: int,
    *,
    idle_timeout: float = 15.0,
    max_commands: int = 1,
    max_line: int = 512,
    max_clients: int = 100,
) -> asyncio.Server:
    """Start listening; the caller owns the server (`close()` + `wait_closed()`).

    `max_commands` is clamped to 1..3: one answer is enough for every client
    tried, and a client cannot keep the socket busy with more.
    """
    max_commands = min(max(max_commands, 1), 3)
    active = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        peer = _peer(writer)
        if active >= max_clients:
            log.warning("FTP refusal: too many clients, dropped %s", peer)
            await _send_and_close(writer, BUSY, idle_timeout)
            return
        active += 1
        answered = 0
        try:
            writer.write(GREETING)
            while answered < max_commands:
                try:
                    line = await asyncio.wait_for(_read_line(reader, max_line), idle_timeout)
                except TimeoutError:
                    break
                if line is None:
                    break
                writer.write(REFUSAL)
                answered += 1
            await _send_and_close(writer, b"", idle_timeout)
        except (ConnectionError, OSError):
            writer.transport.abort()
        finally:
            if not writer.transport.is_closing():  # cancelled at shutdown
                writer.transport.abort()
            active -= 1
            log.info("refused plain FTP client %s (%d command(s) answered)", peer, answered)

    return await asyncio.start_server(handle, host, port, limit=max_line)


async def _read_line(reader: asyncio.StreamReader, max_line: int) -> bytes | None:
    """One command line of at most `max_line` bytes (cut there); None at EOF."""
    buffer = bytearray()
    while b"\n" not in buffer and len(buffer) < max_line:
        chunk = await reader.read(max_line - len(buffer))
        if not chunk:
            return bytes(buffer) if buffer else None
        buffer += chunk
    return bytes(buffer)


async def _send_and_close(writer: asyncio.StreamWriter, data: bytes, timeout: float) -> None:
    """Flush, then close; a client that does not read is aborted after `timeout`."""
    try:
        if data:
            writer.write(data)
        await asyncio.wait_for(writer.drain(), timeout)
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), timeout)
    except (TimeoutError, ConnectionError, OSError):
        writer.transport.abort()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
