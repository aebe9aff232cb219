"""Assemble the service layer the CLI and the HTTP API share: Redis, ledger, directory, rates, engine.

``open_services(config)`` connects to ``[redis] url`` or, when it is empty, to the embedded
redis-server of ``data_dir`` (reusing the one a running gateway started, else starting one and
stopping it again on exit). ``[redis] cluster = true`` uses a Redis Cluster client.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, AsyncIterator

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.asyncio.retry import Retry

from gateway.config import Config
from gateway.credit.engine import CreditEngine
from gateway.credit.grants import Grants
from gateway.directory import Directory
from gateway.ledger.client import MAX_IN_FLIGHT, Ledger
from gateway.ledger.embedded import EmbeddedRedis, ensure_redis
from gateway.ratestore import RateStore

__all__ = ["Services", "open_services", "redis_client"]


def redis_client(url: str, *, cluster: bool = False, timeout_s: float = 1.0) -> Any:
    """An asyncio Redis (or Redis Cluster) client with the ledger's timeouts and no silent retries."""
    common: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": False,
    }
    if cluster:
        return RedisCluster.from_url(url, max_connections=MAX_IN_FLIGHT + 8, **common)
    # One immediate retry on a broken connection only: after a Redis restart every pooled
    # connection is stale and fails once. Timeouts are not retried (that would only hide an
    # outage behind a longer wait: the engine's outage policy decides). The ledger scripts are
    # idempotent, so a retried call cannot charge twice.
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    # A bounded pool that waits for a free connection (up to the timeout) instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=MAX_IN_FLIGHT + 8, timeout=timeout_s,
                                                    retry=retry, health_check_interval=0, **common)
    return aioredis.Redis(connection_pool=pool)


@dataclass(slots=True)
class Services:
    config: Config
    client: Any
    ledger: Ledger
    directory: Directory
    rates: RateStore
    engine: CreditEngine
    grants: Grants
    url: str
    embedded: EmbeddedRedis | None = None


@contextlib.asynccontextmanager
async def open_services(config: Config, *, pipeline: bool = False) -> AsyncIterator[Services]:
    embedded: EmbeddedRedis | None = None
    url = config.redis.url
    if not url:
        url, embedded = ensure_redis(config.data_dir.resolve(), config.redis.appendfsync)
    client = redis_client(url, cluster=config.redis.cluster, timeout_s=config.redis.timeout_s)
    try:
        if config.redis.cluster:
            # Learn the slot map once, before concurrent first requests race to do it (redis-py
            # drops connections in use when several initializations overlap).
            await client.initialize()
        ledger = Ledger(client, pipeline=pipeline and not config.redis.cluster)
        directory = Directory(client)
        rates = RateStore(client)
        engine = CreditEngine(ledger=ledger, directory=directory, rates=rates, config=config.credit)
        grants = Grants(engine, client, ttl_s=config.credit.grant_ttl_s)
        engine.sweeps.append(grants.release_expired)
        yield Services(config=config, client=client, ledger=ledger, directory=directory, rates=rates,
                       engine=engine, grants=grants, url=url, embedded=embedded)
    finally:
        if "ledger" in locals():
            await ledger.close()
        await client.aclose()
        if embedded is not None:
            embedded.stop()
