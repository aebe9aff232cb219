"""Funding fixtures: the gateway's services on the test redis-server, and a real local payment provider.

``payment_server``: a ``_payment_server.PaymentServer`` (aiohttp on 127.0.0.1 playing the HTTP
payment provider of ``gateway.funding.providers``), stopped after the test.
``make_services(**sections)``: ``Services`` for a configuration whose ``[redis] url`` is the
flushed test server, closed after the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from _payment_server import PaymentServer
from gateway.config import Config
from gateway.services import Services, open_services


@pytest.fixture
async def payment_server() -> AsyncIterator[PaymentServer]:
    server = PaymentServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make_services(redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Services]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**sections: Any) -> Services:
            raw: dict[str, Any] = {"data_dir": str(tmp_path / "data"), "redis": {"url": redis_url, "timeout_s": 5.0}}
            raw.update(sections)
            return await stack.enter_async_context(open_services(Config.from_dict(raw)))

        yield make
