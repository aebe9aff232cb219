"""A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives, and a wait helper.

``SmtpSink(port)`` may be made before it is started: the port is then reserved but nothing listens
(an SMTP server that is down).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from _procs import free_port


class SmtpSink:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), msg))  # type: ignore[arg-type]
        return "250 OK"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, addr: str) -> list[EmailMessage]:
        return [m for rcpts, m in self.messages if addr in rcpts]


async def wait_until(check: Callable[[], Any], *, limit_s: float = 20.0, what: str = "") -> None:
    """Poll ``check`` (sync or async) until it holds; fail (a safety net, not a timing assertion) if never."""
    deadline = time.monotonic() + limit_s
    while True:
        ok = check()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)
