"""Funding fixtures: the gateway's services on the test redis-server, and a real local payment provider.

``payment_server``: a ``_payment_server.PaymentServer`` (aiohttp on 127.0.0.1 playing the HTTP
payment provider of ``gateway.funding.providers``), stopped after the test.
``make_services`` comes from tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from _payment_server import PaymentServer


@pytest.fixture
async def payment_server() -> AsyncIterator[PaymentServer]:
    server = PaymentServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
