"""Server test fixtures: a started server with its web console (see web_fixtures.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.server.web_fixtures import WebHandle, web_server


@pytest.fixture
async def web(
    tmp_path: Path, shared_host_keys: Path, client_key: tuple[Path, str]
) -> AsyncIterator[WebHandle]:
    """The real server with its web console, stopped at the end of the test."""
    async for handle in web_server(tmp_path, shared_host_keys, client_key):
        yield handle
