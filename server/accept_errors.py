"""Running out of file descriptors never leaves the server in an error loop (SPEC §3.2).

The connection caps of server/logins.py keep silent clients from using up the
descriptors; this covers what is left (many signed-in sessions, open files,
an operator's low `ulimit -n`). See `AcceptErrors`.
"""

from __future__ import annotations

import asyncio
import asyncio.constants
import logging
import resource
from typing import Any

from server.logins import LogThrottle, left_out_note

log = logging.getLogger("eams.server")


class AcceptErrors:
    """An event loop exception handler that keeps "out of file descriptors" quiet.

    When accept() fails with EMFILE/ENFILE, asyncio (BaseSelectorEventLoop.
    _accept_connection) reports it through the loop's exception handler with a
    traceback, once per waiting connection (up to the backlog, 100), and each
    time schedules `_start_serving` to listen again ACCEPT_RETRY_DELAY (1 s)
    later. It recovers by itself once descriptors are free, but the default
    handler writes hundreds of tracebacks a second meanwhile, and retries still
    pending when the listener closes fail once more each ("Invalid file
    descriptor: -1"). This handler writes one line per THROTTLE_SECONDS, drops
    those stale retries, and passes every other error on to the handler that
    was there before. tests/server/test_asyncssh_contract_logins.py pins what
    it matches in asyncio.
    """

    MESSAGE = "socket.accept() out of system resource"
    RETRY = "_start_serving"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._throttle = LogThrottle()
        self._last_failure: float | None = None

    def install(self) -> None:
        self._loop.set_exception_handler(self)

    async def uninstall(self) -> None:
        """Restore the previous handler once no retry asyncio scheduled can still fire."""
        if self._last_failure is not None:
            delay = asyncio.constants.ACCEPT_RETRY_DELAY
            await asyncio.sleep(max(0.0, self._last_failure + delay + 0.1 - self._loop.time()))
        if self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == self.MESSAGE:
            self._last_failure = loop.time()
            left_out = self._throttle.allow("accept")
            if left_out is not None:
                log.error(
                    "cannot accept new connections: %s (descriptor limit %d);"
                    " trying again every second%s",
                    context.get("exception"),
                    resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                    left_out_note(left_out),
                )
        elif self._is_stale_retry(context):
            log.debug("dropped a retry of accept() on a closed listener")
        elif self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def _is_stale_retry(self, context: dict[str, Any]) -> bool:
        callback = getattr(context.get("handle"), "_callback", None)
        return getattr(callback, "__name__", "") == self.RETRY and isinstance(
            context.get("exception"), (ValueError, OSError)
        )
