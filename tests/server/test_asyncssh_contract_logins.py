"""The asyncssh and asyncio internals server/logins.py and server/algorithms.py rely on.

Each test names one behaviour that is not a documented API; if an upgrade
changes it, the test fails here, before the limits silently stop working
(the end-to-end tests in test_limits_logins.py / test_limits_transport.py
would fail too, but less clearly).
"""

from __future__ import annotations

import asyncio
import asyncio.constants
import inspect
from asyncio.selector_events import BaseSelectorEventLoop

import asyncssh
from asyncssh.connection import SSHConnection, SSHServerConnection, SSHServerConnectionOptions

from server.accept_errors import AcceptErrors
from server.algorithms import HOST_KEY_ALGS, host_key_pairs


def test_asyncio_reports_emfile_through_the_exception_handler_and_retries() -> None:
    """AcceptErrors matches this message, and drops failing `_start_serving` retries."""
    source = inspect.getsource(BaseSelectorEventLoop._accept_connection)  # type: ignore[attr-defined]
    assert f"'message': '{AcceptErrors.MESSAGE}'" in source
    assert "errno.EMFILE" in source
    retry = source[source.index("self.call_later(constants.ACCEPT_RETRY_DELAY") :]
    assert retry.split(",")[1].strip() == f"self.{AcceptErrors.RETRY}"
    assert asyncio.constants.ACCEPT_RETRY_DELAY <= 1


def test_the_owner_sees_a_connection_before_asyncssh_sends_its_version() -> None:
    """Why `DistrictSSHServer._refuse` schedules the disconnect instead of sending it."""
    source = inspect.getsource(SSHConnection.connection_made)
    assert source.index("self._owner.connection_made(self)") < source.index("self._send_version()")


def test_a_disconnect_error_from_an_auth_hook_reaches_the_client() -> None:
    """validate_password/validate_public_key raise DisconnectError to refuse with a reason."""
    source = inspect.getsource(SSHConnection._reap_task)
    assert "except DisconnectError as exc:" in source
    assert "self._send_disconnect(exc.code, exc.reason, exc.lang)" in source


def test_every_key_not_in_authorized_client_keys_is_asked_of_the_owner() -> None:
    """Keys are matched in DistrictSSHServer.validate_public_key (no set_authorized_keys)."""
    source = inspect.getsource(SSHServerConnection._validate_client_public_key)
    assert "if self._authorized_client_keys:" in source
    assert "self._owner.validate_public_key(username, key)" in source


def test_the_server_offers_what_its_key_pairs_list_in_host_key_algorithms() -> None:
    source = inspect.getsource(SSHServerConnectionOptions.prepare)
    assert "for alg in keypair.host_key_algorithms:" in source
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    ed25519 = asyncssh.generate_private_key("ssh-ed25519")
    pairs = host_key_pairs([ed25519, rsa])
    assert [p.host_key_algorithms for p in pairs] == [
        [b"ssh-ed25519"],
        [b"rsa-sha2-512", b"rsa-sha2-256"],
    ]
    assert all(a.decode() in HOST_KEY_ALGS for p in pairs for a in p.host_key_algorithms)
