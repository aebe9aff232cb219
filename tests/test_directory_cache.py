"""The call path's directory cache on a real redis-server: fresh after a change, and the last known
records while Redis is unreachable (so a bounded fail-open can still identify a caller)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.directory import Directory, DirectoryCache
from gateway.ledger.client import LedgerUnavailable
from gateway.services import redis_client

try:
    from _procs import RedisProcess
except ImportError:  # pragma: no cover
    from tests._procs import RedisProcess


@pytest.fixture
def killable_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", appendonly=True, args=["--appendfsync", "always"]).start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_change_is_seen_at_once_and_the_last_known_records_serve_an_outage(
        killable_redis: RedisProcess) -> None:
    client = redis_client(killable_redis.url, timeout_s=0.3)
    directory = Directory(client)
    cache = DirectoryCache(directory, ttl_s=60.0)
    cache.watch()
    try:
        org, _ = await directory.create_org("Acme", country="GB", currency="GBP", org_id="acme")
        await directory.add_trunk(org, "127.0.0.1:5070")
        await directory.add_user(org, "alice", number="+442079460001", licence=True)
        assert [t.address for t in await cache.list_trunks()] == ["127.0.0.1:5070"]
        assert (await cache.user_by_number("acme", "+442079460001")).id == "alice"  # type: ignore[union-attr]
        assert await cache.user_by_number("acme", "+442079460002") is None
        assert (await cache.get_org("acme")).name == "Acme"

        # Another process adds a trunk: the change is published and the cache reads again.
        await Directory(client).add_trunk(org, "127.0.0.2")
        for _ in range(50):
            if len(await cache.list_trunks()) == 2:
                break
            await asyncio.sleep(0.05)
        assert sorted(t.address for t in await cache.list_trunks()) == ["127.0.0.1:5070", "127.0.0.2"]

        killable_redis.kill()
        await asyncio.sleep(0.5)  # the watcher notices and marks everything stale
        # Stale entries are read again first; with Redis gone the last known ones answer.
        assert sorted(t.address for t in await cache.list_trunks()) == ["127.0.0.1:5070", "127.0.0.2"]
        # ...but a caller that asks for Redis's word (a miss checked again) gets the outage: a
        # source the last known trunks do not name may be one added since (503, never 403).
        with pytest.raises(LedgerUnavailable):
            await cache.list_trunks(fresh=True)
        assert (await cache.get_org("acme")).id == "acme"
        assert (await cache.user_by_number("acme", "+442079460001")).id == "alice"  # type: ignore[union-attr]
        # Nothing is invented: what was never found still fails as an outage.
        with pytest.raises(LedgerUnavailable):
            await cache.user_by_number("acme", "+442079460002")
        with pytest.raises(LedgerUnavailable):
            await cache.list_carriers()

        killable_redis.restart()
        await Directory(redis_client(killable_redis.url, timeout_s=1.0)).add_user(
            org, "bob", number="+442079460002")
        for _ in range(100):
            try:
                if await cache.user_by_number("acme", "+442079460002") is not None:
                    break
            except LedgerUnavailable:
                pass
            await asyncio.sleep(0.05)
        assert (await cache.user_by_number("acme", "+442079460002")).id == "bob"  # type: ignore[union-attr]
    finally:
        await cache.stop()
        await client.aclose()


def _count_reads(directory: Directory, **methods: str) -> dict[str, int]:
    """Count the Redis reads the cache makes through ``directory``'s methods: label=method name."""
    reads = dict.fromkeys(methods, 0)

    def counted(label: str, real: Any) -> Any:
        async def read(*args: Any) -> Any:
            reads[label] += 1
            return await real(*args)
        return read

    for label, name in methods.items():
        setattr(directory, name, counted(label, getattr(directory, name)))
    return reads


async def test_concurrent_readers_of_a_stale_entry_share_one_redis_read(redis_url: str) -> None:
    client = redis_client(redis_url, timeout_s=2.0)
    directory = Directory(client)
    cache = DirectoryCache(directory, ttl_s=60.0)
    try:
        org, _ = await directory.create_org("Acme", country="GB", currency="GBP", org_id="acme")
        await directory.add_user(org, "alice", number="+442079460001", licence=True)
        reads = _count_reads(directory, org="get_org", user="user_by_number", trunks="list_trunks")

        async def burst() -> None:
            orgs = await asyncio.gather(*(cache.get_org("acme") for _ in range(200)))
            users = await asyncio.gather(*(cache.user_by_number("acme", "+442079460001") for _ in range(200)))
            assert {o.name for o in orgs} == {"Acme"} and {u.id for u in users} == {"alice"}  # type: ignore[union-attr]

        await burst()
        assert reads == {"org": 1, "user": 1, "trunks": 0}  # cold: one read each for 200 callers
        await burst()
        assert reads == {"org": 1, "user": 1, "trunks": 0}  # fresh: none
        await directory.update_org(org, name="Acme Ltd")
        cache.invalidate()  # what the watcher does on the change's message
        orgs = await asyncio.gather(*(cache.get_org("acme") for _ in range(200)))
        assert reads["org"] == 2 and {o.name for o in orgs} == {"Acme Ltd"}  # stale: one read again, the new name

        # Misses are not cached, but concurrent ones still share their read; a caller that asks for
        # Redis's word reads on its own; a caller that gives up does not cancel the others' read.
        misses = await asyncio.gather(*(cache.user_by_number("acme", "+442079460009") for _ in range(50)))
        assert misses == [None] * 50 and reads["user"] == 2
        await asyncio.gather(*(cache.list_trunks(fresh=True) for _ in range(3)))
        assert reads["trunks"] == 3
        cache.invalidate()
        waiters = [asyncio.ensure_future(cache.get_org("acme")) for _ in range(5)]
        await asyncio.sleep(0)
        waiters[0].cancel()
        done = await asyncio.gather(*waiters[1:])
        assert {o.name for o in done} == {"Acme Ltd"} and reads["org"] == 3
    finally:
        await client.aclose()


async def test_a_strangers_flood_reads_the_trunks_once_and_a_new_trunk_is_found_at_once(redis_url: str) -> None:
    from gateway.b2bua.routing import identify_source

    client = redis_client(redis_url, timeout_s=2.0)
    directory = Directory(client)
    cache = DirectoryCache(directory, ttl_s=60.0)
    cache.watch()
    try:
        org, _ = await directory.create_org("Acme", country="GB", currency="GBP", org_id="acme")
        await directory.add_trunk(org, "127.0.0.1:5070")
        reads = _count_reads(directory, trunks="list_trunks")
        assert (await identify_source(cache, "127.0.0.1", 5070)) is not None
        assert reads["trunks"] == 1
        for _ in range(500):  # a flood from one unknown source
            assert await identify_source(cache, "127.0.0.9", 5060) is None
        assert reads["trunks"] == 2  # one fresh read confirmed the miss; the rest were answered from memory
        assert await identify_source(cache, "127.0.0.9", 5061) is None  # another source: checked on its own
        assert reads["trunks"] == 3

        # The stranger becomes a trunk: the change's message makes the cache forget its strangers.
        await Directory(client).add_trunk(org, "127.0.0.9:5060")
        for _ in range(100):
            if await identify_source(cache, "127.0.0.9", 5060) is not None:
                break
            await asyncio.sleep(0.02)
        origin = await identify_source(cache, "127.0.0.9", 5060)
        assert origin is not None and origin.kind == "trunk"

        # Without a change, a stranger is read for again once its time is up.
        cache.STRANGER_TTL_S = 0.05
        before = reads["trunks"]
        assert await identify_source(cache, "127.0.0.8", 5060) is None
        assert await identify_source(cache, "127.0.0.8", 5060) is None
        assert reads["trunks"] == before + 1
        await asyncio.sleep(0.1)
        assert await identify_source(cache, "127.0.0.8", 5060) is None
        assert reads["trunks"] == before + 2
    finally:
        await cache.stop()
        await client.aclose()
