"""A banned address is refused at TCP accept, before asyncssh builds a connection, and
every client still shows why (server/admission.py)."""

from __future__ import annotations

import asyncio
import struct
import weakref
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest

from server.admission import VERSION_LINE, AdmissionGate, disconnect_packet
from server.logins import BANNED
from tests.conftest import ServerHandle
from tests.server.test_limits_logins import openssh, refused_login


def parse_disconnect(packet: bytes) -> tuple[int, str]:
    length, padding = struct.unpack(">IB", packet[:5])
    assert len(packet) == 4 + length and len(packet) % 8 == 0 and padding >= 4
    payload = packet[5 : 4 + length - padding]
    kind, code, size = struct.unpack(">BII", payload[:9])
    assert kind == 1  # SSH_MSG_DISCONNECT
    reason = payload[9 : 9 + size].decode("utf-8")
    assert payload[9 + size :] == struct.pack(">I", 0)  # empty language tag
    return code, reason


@pytest.mark.parametrize("reason", ["", "x", BANNED, "é" * 40, "r" * 300])
def test_a_disconnect_packet_is_well_formed(reason: str) -> None:
    assert parse_disconnect(disconnect_packet(14, reason)) == (14, reason)


async def ban(handle: ServerHandle) -> None:
    for _ in range(handle.app.config.server.login_attempts):
        handle.app.bans.record_failure("127.0.0.1")
    assert handle.app.bans.is_banned("127.0.0.1")


async def test_a_banned_address_is_refused_before_asyncssh_sees_it(
    start_server: Any, tmp_path: Path
) -> None:
    handle: ServerHandle = await start_server(server={"login_attempts": 3, "ban_minutes": 5})
    await ban(handle)
    built: list[str] = []

    class Recording(weakref.WeakSet[Any]):
        """The server's set of SSH connections, noting each one asyncssh made."""

        def add(self, item: Any) -> None:
            built.append(type(item).__name__)
            super().add(item)

    handle.app.connections = Recording()

    # asyncssh and OpenSSH show the reason; paramiko is refused too.
    assert BANNED in await refused_login(handle)
    status, err = await openssh(handle, tmp_path)
    assert status == 255 and BANNED in err, err

    def with_paramiko() -> str:
        transport = paramiko.Transport(("127.0.0.1", handle.port))
        try:
            with pytest.raises(paramiko.SSHException) as info:
                transport.start_client(timeout=10)
            return str(info.value)
        finally:
            transport.close()

    assert await asyncio.to_thread(with_paramiko)  # refused (paramiko shows no reason)
    # A raw socket reads the version line and the DISCONNECT, then the end.
    reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
    try:
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert data.startswith(VERSION_LINE)
    assert parse_disconnect(data[len(VERSION_LINE) :]) == (
        asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
        BANNED,
    )
    assert built == []  # no SSH connection object was made for any of them
    # Another address still signs in, through asyncssh as before.
    async with handle.connect(local_addr=("127.0.0.2", 0)):
        pass
    assert len(built) == 1


async def test_the_gate_listens_where_asyncssh_asked_and_hands_over_its_connections() -> None:
    """Pins the asyncssh hook: create_server(tunnel=...) calls our create_server with its
    connection factory, host and port, and serves what our listener accepts."""
    calls: list[tuple[str, int]] = []

    class Recording(AdmissionGate):
        async def create_server(self, session_factory: Any, host: str, port: int) -> Any:
            calls.append((host, port))
            return await super().create_server(session_factory, host, port)

    gate = Recording(lambda peer: None)
    server = await asyncssh.create_server(
        asyncssh.SSHServer,
        "127.0.0.1",
        0,
        tunnel=gate,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
    )
    try:
        port = server.sockets[0].getsockname()[1]
        assert calls == [("127.0.0.1", 0)]
        with pytest.raises(asyncssh.PermissionDenied):  # asyncssh's own answer: it served us
            async with asyncssh.connect(
                "127.0.0.1", port, username="x", password="y", known_hosts=None
            ):
                pass
    finally:
        server.close()
        await server.wait_closed()
