"""Ledger fixtures: every ledger test runs on one redis-server (each request on its own, then
pipelined in batches) and on a three-node Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.ledger.client import Ledger
from gateway.services import redis_client


@pytest.fixture(params=["single", "pipelined", "cluster"])
def ledger_target(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """(url, is_cluster) of an emptied Redis: a single server (twice: direct and pipelined
    ledgers, see ``ledger``), then the local cluster."""
    if request.param == "cluster":
        return request.getfixturevalue("cluster_url"), True
    return request.getfixturevalue("redis_url"), False


@pytest.fixture
def ledger_pipelined(request: pytest.FixtureRequest) -> bool:
    """Whether this test's ``ledger`` batches its requests over one pipelined connection."""
    return request.node.callspec.params.get("ledger_target") == "pipelined"


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
async def ledger(ledger_client: Any, ledger_pipelined: bool) -> AsyncIterator[Ledger]:
    led = Ledger(ledger_client, pipeline=ledger_pipelined)
    assert (led._pipe is not None) == ledger_pipelined
    try:
        yield led
    finally:
        await led.close()
