"""Replies a client has not taken yet: how much of them one SFTP session may hold (SPEC §3.2).

asyncssh handles one request at a time per session but never waits for its
replies to be sent: a client that pipelines READs (each answered with up to
256 KiB) and does not read the answers would make the server buffer every
reply in memory. Before a READ, the session waits while more than
REPLY_BACKLOG is unsent, so it stops taking requests, the SSH window of the
client's requests fills, and the client cannot send more. Other sessions are
not affected: each runs its own task.
"""

from __future__ import annotations

import contextlib
from typing import Any

REPLY_BACKLOG = 1024 * 1024


class ReplyBacklog:
    """The unsent replies of one SFTP channel, and the wait for them to drain.

    The wait is the channel session's `drain()`, what asyncssh's own
    `SSHWriter.drain` calls (the SFTP server's writer is not reachable from the
    SFTPServer object); tests/server/test_asyncssh_contract_sftp.py pins it.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.waiting = False  # for tests and diagnostics: paused on this client
        channel.set_write_buffer_limits(high=REPLY_BACKLOG)  # asyncssh pauses above it

    async def wait(self) -> bool:
        """Wait until a reply may be added; False when the client is gone.

        After a drop asyncssh still hands the session every request it had
        received (up to the SSH window, tens of thousands of READs): those are
        not worth reading a file for.
        """
        if self.channel.get_write_buffer_size() > REPLY_BACKLOG:
            drain = getattr(getattr(self.channel, "_session", None), "drain", None)
            if drain is not None:
                self.waiting = True
                try:
                    # Raises the connection's error once it is gone: checked below.
                    with contextlib.suppress(Exception):
                        await drain(None)
                finally:
                    self.waiting = False
        return not self.channel.is_closing()
