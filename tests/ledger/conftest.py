"""Ledger fixtures: every ledger test runs on one redis-server and on a three-node Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.ledger.client import Ledger
from gateway.services import redis_client


@pytest.fixture(params=["single", "cluster"])
def ledger_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(url, is_cluster) of an emptied Redis: a single server, then the local cluster."""
    if request.param == "single":
        return request.getfixturevalue("redis_url"), False
    return request.getfixturevalue("cluster_url"), True


@pytest.fixture
async def ledger_client(ledger_target: tuple[str, bool]) -> AsyncIterator[Any]:
    url, cluster = ledger_target
    client = redis_client(url, cluster=cluster, timeout_s=5.0)
    if cluster:
        await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def ledger(ledger_client: Any) -> Ledger:
    return Ledger(ledger_client)
