"""server/ftp_refusal.py: a real listener on port 0, real clients (asyncio streams, curl)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from server.ftp_refusal import GREETING, REFUSAL, start_ftp_refusal

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


@pytest.fixture
async def ftp_server() -> AsyncIterator[asyncio.Server]:
    server = await start_ftp_refusal("127.0.0.1", 0, idle_timeout=0.2)
    try:
        yield server
    finally:
        server.close()
        await server.wait_closed()


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


@pytest.fixture
async def connect(ftp_server: asyncio.Server) -> AsyncIterator[Connect]:
    writers: list[asyncio.StreamWriter] = []

    async def open_client() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(ftp_server))
        writers.append(writer)
        return reader, writer

    yield open_client
    for writer in writers:
        writer.close()
        await writer.wait_closed()


async def read_until_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


async def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5.0) -> None:
    """The server logs after it closed the socket: wait for that, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(text in r.getMessage() for r in caplog.records):
        assert asyncio.get_running_loop().time() < deadline, f"no log line with {text!r}"
        await asyncio.sleep(0.01)


async def test_greets_then_refuses_and_closes(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.ftp_refusal")
    reader, writer = await connect()
    assert await asyncio.wait_for(reader.readline(), 5) == GREETING
    assert GREETING == b"220 MY Access eAMS: plain FTP is not accepted here\r\n"
    writer.write(b"USER springfield\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), 5) == REFUSAL
    assert REFUSAL == b"530 plain FTP is not accepted: use SFTP on port 22\r\n"
    assert await read_until_eof(reader) == b""  # closed after the first answer
    await wait_for_log(caplog, "refused plain FTP client 127.0.0.1:")


async def test_curl_reports_access_denied(ftp_server: asyncio.Server) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    url = f"ftp://127.0.0.1:{port_of(ftp_server)}/"
    process = await asyncio.create_subprocess_exec(
        curl,
        "-s",
        "-S",
        "--max-time",
        "10",
        url,
        "-u",
        "a:b",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 20)
    message = stderr.decode(errors="replace")
    assert process.returncode != 0
    assert "530" in message and "access denied" in message.lower(), message
    assert stdout == b""


async def test_silent_client_is_closed(connect: Connect) -> None:
    reader, _writer = await connect()
    assert await asyncio.wait_for(reader.readline(), 5) == GREETING
    # idle_timeout is 0.2 s: the server hangs up without an answer.
    assert await read_until_eof(reader) == b""


async def test_long_line_is_cut_and_answered(connect: Connect) -> None:
    reader, writer = await connect()
    await asyncio.wait_for(reader.readline(), 5)
    writer.write(b"A" * 100_000)  # no newline, far over the 512-byte limit
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), 5) == REFUSAL
    assert await read_until_eof(reader) == b""


async def test_client_that_hangs_up_at_once(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.ftp_refusal")
    _reader, writer = await connect()
    writer.close()
    await writer.wait_closed()
    await wait_for_log(caplog, "(0 command(s) answered)")


async def test_more_clients_than_allowed_get_421() -> None:
    server = await start_ftp_refusal("127.0.0.1", 0, idle_timeout=5, max_clients=1)
    writers: list[asyncio.StreamWriter] = []
    try:
        port = port_of(server)
        first_reader, first = await asyncio.open_connection("127.0.0.1", port)
        writers.append(first)
        assert await asyncio.wait_for(first_reader.readline(), 5) == GREETING
        second_reader, second = await asyncio.open_connection("127.0.0.1", port)
        writers.append(second)
        assert (await read_until_eof(second_reader)).startswith(b"421 ")
        first.write(b"QUIT\r\n")
        await first.drain()
        assert await read_until_eof(first_reader) == REFUSAL
    finally:
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
