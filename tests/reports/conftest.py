"""Report fixtures: a ledger on the flushed session redis-server (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.ledger.client import Ledger
from gateway.services import redis_client


@pytest.fixture
async def ledger_client(redis_url: str) -> AsyncIterator[Any]:
    """The client the gateway itself uses (bytes replies, the ledger's timeouts, a bit more patient)."""
    client = redis_client(redis_url, timeout_s=10.0)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def ledger(ledger_client: Any) -> AsyncIterator[Ledger]:
    led = Ledger(ledger_client)
    try:
        yield led
    finally:
        await led.close()
