"""Shared fixtures: real redis-server processes on loopback, always cleaned up, and a data_dir.

``redis_server`` / ``redis_url`` / ``redis_client``: one session-wide server, flushed before each test
(restarted first if a fault test killed it). ``redis_cluster`` / ``cluster_url``: one session-wide
three-master Redis Cluster, flushed before each test. ``tmp_data_dir``: a fresh gateway data_dir.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

try:  # tests/ without __init__.py (pytest puts tests/ on sys.path) or as a package
    from _procs import RedisClusterProcs, RedisProcess
except ImportError:  # pragma: no cover
    from tests._procs import RedisClusterProcs, RedisProcess


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A session-wide redis-server on 127.0.0.1 (no persistence); tests may kill() and restart() it."""
    server = RedisProcess(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """URL of the session server, emptied (FLUSHALL) before this test."""
    if not redis_server.is_running():
        redis_server.restart()  # a previous test killed it
    with contextlib.closing(redis_server.client()) as r:
        r.flushall()
        r.script_flush()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client of the emptied session server (bytes replies), closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcs]:
    """A session-wide three-master Redis Cluster on 127.0.0.1 (``.startup_nodes``, ``.url``)."""
    cluster = RedisClusterProcs(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()  # stops what it started if it fails
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: RedisClusterProcs) -> str:
    """URL of the session cluster (any node), every master emptied before this test."""
    redis_cluster.flushall()
    return redis_cluster.url


@pytest.fixture
def tmp_data_dir(tmp_path: Path) -> Path:
    """A fresh, empty directory to use as the gateway's ``data_dir``."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return data_dir


@pytest.fixture
async def make_services(redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``make(**sections)``: ``Services`` for a configuration whose ``[redis] url`` is the emptied test
    server (more sections as given), closed after the test."""
    from gateway.config import Config
    from gateway.services import open_services

    async with contextlib.AsyncExitStack() as stack:

        async def make(**sections: Any) -> Any:
            raw: dict[str, Any] = {"data_dir": str(tmp_path / "data"), "redis": {"url": redis_url, "timeout_s": 5.0}}
            raw.update(sections)
            return await stack.enter_async_context(open_services(Config.from_dict(raw)))

        yield make
