"""What the SSH listener is told besides its algorithms (server/algorithms.py):
sessions, timeouts and transport sizes, in one place.

Only SFTP is served: no shell, exec, pty, scp, agent or X11 forwarding. A dead
client is noticed after KEEPALIVE_COUNT unanswered keepalives, a connection
that has not signed in after LOGIN_TIMEOUT seconds is closed.
"""

from __future__ import annotations

from typing import Any

KEEPALIVE_SECONDS = 15.0
KEEPALIVE_COUNT = 4
LOGIN_TIMEOUT = 60
SSH_WINDOW = 2 * 1024 * 1024  # unread bytes a channel may hold (asyncssh's and OpenSSH's default)
# Packets up to 256 KiB: an SFTP WRITE of 32 KiB (OpenSSH's sftp) is a little more
# than asyncssh's default 32 KiB packet, so each came in two packets, each decrypted
# and handled in Python; larger writes (asyncssh, paramiko) in more. A warm 100 MB
# put inside one session: median 0.530 s before, 0.464 s after in one pair of runs
# (bench/sftp.py, 7 reps each); a later pair showed no difference beyond noise.
SSH_MAX_PACKET = 256 * 1024


def session_options() -> dict[str, Any]:
    """The `asyncssh.create_server` keyword arguments other than algorithms and keys
    (read at each start, so tests may change the module's values first)."""
    return {
        "allow_scp": False,
        "agent_forwarding": False,
        "x11_forwarding": False,
        "allow_pty": False,
        "window": SSH_WINDOW,
        "max_pktsize": SSH_MAX_PACKET,
        "keepalive_interval": KEEPALIVE_SECONDS,
        "keepalive_count_max": KEEPALIVE_COUNT,
        "login_timeout": LOGIN_TIMEOUT,
    }
