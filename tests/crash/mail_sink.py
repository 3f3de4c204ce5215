"""The campaign's mail server: aiosmtpd on 127.0.0.1, counting messages per (district, run).

Each run's email names its district and run id in the body ("District: ... (oak)",
"Run: 20261128-..."), so the checks can say of every run whether its email arrived
exactly once. Two kill points need the mail server's help to strike inside the
sender: `arm("hold")` holds the next DATA until the client is gone (the server
died mid-send: the message is not accepted); `arm("after-250")` signals as it
answers 250 (the server dies in sender.py's documented duplicate window).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller

_RUN_LINE = re.compile(r"^Run: (\S+)\r?$", re.M)
_DISTRICT_LINE = re.compile(r"^District: .* \(([a-z0-9-]+)\)\r?$", re.M)


class MailSink:
    """aiosmtpd on 127.0.0.1 in its own thread, counting messages per (district, run).

    `arm("hold")`: the next DATA signals `trigger` and is held until the client
    is gone (then not accepted). `arm("after-250")`: the next DATA is accepted
    and signals `trigger` as it answers 250.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: Counter[tuple[str, str]] = Counter()
        self.total = 0
        self.held_dropped = 0
        self._lock = threading.Lock()
        self._controller: Controller | None = None
        self._mode = "normal"
        self._signal: Callable[[], None] | None = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is None:
            self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def arm(self, mode: str, loop: asyncio.AbstractEventLoop, trigger: asyncio.Event) -> None:
        def signal() -> None:  # from the aiosmtpd thread into the campaign's loop
            loop.call_soon_threadsafe(trigger.set)

        with self._lock:
            self._mode = mode
            self._signal = signal

    def disarm(self) -> None:
        with self._lock:
            self._mode, self._signal = "normal", None

    def counts(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter(self.received)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        run = _RUN_LINE.search(text)
        district = _DISTRICT_LINE.search(text)
        key = (district.group(1) if district else "?", run.group(1) if run else "?")
        with self._lock:
            mode, fire = self._mode, self._signal
            if mode != "normal":
                self._mode, self._signal = "normal", None
        if mode == "hold" and fire is not None:
            fire()
            try:
                for _ in range(500):  # until the client is gone (at most 5 s)
                    if server.transport is None or server.transport.is_closing():
                        with self._lock:
                            self.held_dropped += 1
                        return "451 4.3.0 client gone"
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:  # aiosmtpd cancels the handler when the client goes
                with self._lock:
                    self.held_dropped += 1
                raise
        with self._lock:
            self.received[key] += 1
            self.total += 1
        if mode == "after-250" and fire is not None:
            fire()
        return "250 2.0.0 accepted"
