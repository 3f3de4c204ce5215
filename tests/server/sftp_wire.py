"""A bare SFTP v3 client over an asyncssh channel, one packet at a time.

asyncssh's own SFTP client splits large reads, refuses replies over 4 MiB and
always reads its replies; the limit tests need a client that sends exactly the
requests an attacker would (READ with len=2^32-1, hundreds pipelined) and that
may never read the answers.
"""

from __future__ import annotations

import struct
from typing import Any

import asyncssh

INIT, VERSION, OPEN, CLOSE, READ, OPENDIR, READDIR = 1, 2, 3, 4, 5, 11, 12
STATUS, HANDLE, DATA, NAME = 101, 102, 103, 104
FX_OK, FX_EOF = 0, 1
FXF_READ = 0x01


class StatusError(Exception):
    """A STATUS reply other than OK where a handle or data was expected."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class WireSFTP:
    """Requests are sent with `send_*` (returning the request id) and answered by `reply()`."""

    def __init__(self, writer: asyncssh.SSHWriter[bytes], reader: asyncssh.SSHReader[bytes]):
        self.writer = writer
        self.reader = reader
        self._next_id = 0

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection) -> WireSFTP:
        writer, reader, _ = await conn.open_session(subsystem="sftp", encoding=None)
        wire = cls(writer, reader)
        wire._packet(bytes([INIT]) + struct.pack(">I", 3))
        kind, _ = await wire._receive()
        assert kind == VERSION
        return wire

    def _packet(self, payload: bytes) -> None:
        self.writer.write(struct.pack(">I", len(payload)) + payload)

    def _request(self, kind: int, body: bytes) -> int:
        self._next_id += 1
        self._packet(bytes([kind]) + struct.pack(">I", self._next_id) + body)
        return self._next_id

    async def _receive(self) -> tuple[int, bytes]:
        (length,) = struct.unpack(">I", await self.reader.readexactly(4))
        payload = await self.reader.readexactly(length)
        return payload[0], payload[1:]

    async def reply(self) -> tuple[int, int, bytes]:
        """(type, request id, body) of the next reply."""
        kind, rest = await self._receive()
        (request_id,) = struct.unpack(">I", rest[:4])
        return kind, request_id, rest[4:]

    async def open(self, path: str, pflags: int = FXF_READ) -> bytes:
        """A file handle, or StatusError."""
        self._request(OPEN, _string(path.encode()) + struct.pack(">II", pflags, 0))
        return await self._handle()

    async def opendir(self, path: str) -> bytes:
        """A folder handle, or StatusError."""
        self._request(OPENDIR, _string(path.encode()))
        return await self._handle()

    async def readdir_all(self, handle: bytes) -> None:
        """READDIR until EOF (the folder handle stays open)."""
        for _ in range(1000):
            self._request(READDIR, _string(handle))
            kind, _, body = await self.reply()
            if kind == STATUS:
                assert self._status(body)[0] == FX_EOF, body
                return
            assert kind == NAME, kind
        raise AssertionError("READDIR never reached EOF")

    async def close_handle(self, handle: bytes) -> None:
        self.send_close(handle)
        kind, _, body = await self.reply()
        assert kind == STATUS and self._status(body)[0] == FX_OK, body

    async def _handle(self) -> bytes:
        kind, _, body = await self.reply()
        if kind == STATUS:
            raise StatusError(*self._status(body))
        assert kind == HANDLE, (kind, body)
        (length,) = struct.unpack(">I", body[:4])
        return body[4 : 4 + length]

    @staticmethod
    def _status(body: bytes) -> tuple[int, str]:
        code, length = struct.unpack(">II", body[:8])
        return code, body[8 : 8 + length].decode()

    def send_read(self, handle: bytes, offset: int, length: int) -> int:
        return self._request(READ, _string(handle) + struct.pack(">QI", offset, length))

    def send_close(self, handle: bytes) -> int:
        return self._request(CLOSE, _string(handle))

    @staticmethod
    def data_length(kind: int, body: bytes) -> int:
        """The length of a DATA reply's bytes (it must be a DATA reply)."""
        assert kind == DATA, (kind, body[:200])
        (length,) = struct.unpack(">I", body[:4])
        return int(length)

    def close(self) -> Any:
        return self.writer.close()
