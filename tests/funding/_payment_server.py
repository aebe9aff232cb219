"""A real local HTTP payment provider for the funding tests, and a wait helper.

``PaymentServer``: an aiohttp server on 127.0.0.1 that answers as its ``script`` says, one step
per request (then its ``default``), remembers answers by idempotency key like a real provider, and
records every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web


class PaymentServer:
    """Steps: 'succeed', 'decline', 'timeout' (answer nothing until released), '500', '400'."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.default = "succeed"
        self.decline_reason = "card expired"
        self.requests: list[dict[str, Any]] = []
        self.headers: list[str] = []
        self.answers: dict[str, dict[str, Any]] = {}
        self.release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/purchases", self._purchase)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release.set()  # let any 'timeout' handler finish, so cleanup does not wait for it
        if self._runner is not None:
            await self._runner.cleanup()

    async def _purchase(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(request.headers.get("Idempotency-Key", ""))
        step = self.script.pop(0) if self.script else self.default
        if step == "timeout":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.release.wait(), 10)
            return web.json_response({"status": "succeeded", "id": "late"})
        if step in ("500", "400"):
            return web.json_response({"error": "boom"}, status=int(step))
        key = body["idempotency_key"]
        if key not in self.answers:
            n = len(self.answers) + 1
            self.answers[key] = ({"status": "succeeded", "id": f"pay_{n}", "reason": ""} if step == "succeed"
                                 else {"status": "declined", "id": f"pay_{n}", "reason": self.decline_reason})
        return web.json_response(self.answers[key])

    def keys(self) -> list[str]:
        return [r["idempotency_key"] for r in self.requests]


async def wait_until(check: Callable[[], Awaitable[bool]], *, limit_s: float = 20.0, what: str = "") -> None:
    """Poll ``check`` until it holds; fail (not a timing assertion: a safety net) if it never does."""
    deadline = time.monotonic() + limit_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)
