"""The `eams serve` process: logging, signals and the event loop around `EamsServer`.

SIGHUP reloads config.toml (a broken file is refused and the old one stays);
SIGTERM/SIGINT stop accepting, let runs in progress finish, and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from processing.config import Config
from server import log_format
from server.app import BindError, EamsServer

log = logging.getLogger("eams.server")


async def run_server(config: Config, port: int | None = None) -> int:
    app = EamsServer(config, port=port)
    try:
        await app.start()
    except BindError as exc:
        log.error("%s", exc)
        return 1
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[Any]] = []

    def request_stop() -> None:
        if not stopping:
            stopping.append(asyncio.create_task(app.stop()))

    reloads: set[asyncio.Task[bool]] = set()

    def request_reload() -> None:
        task = asyncio.create_task(app.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    loop.add_signal_handler(signal.SIGHUP, request_reload)
    await app.stopped.wait()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)
    return 0


def serve(config: Config, *, port: int | None = None) -> int:
    """Blocking entry point for `eams serve`."""
    log_format.configure(config.server.log_format)
    # A big district's run parses in a worker thread and holds the GIL in turns of
    # the switch interval; the event loop serving every SFTP session waits up to
    # one turn per I/O event. 1 ms (default 5) keeps small uploads quick meanwhile.
    sys.setswitchinterval(0.001)
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    return asyncio.run(run_server(config, port))
