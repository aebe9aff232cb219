"""The shared Redis Cluster fixture is healthy: hash-tagged keys and a two-key Lua script work on it."""

from __future__ import annotations

import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster

pytestmark = pytest.mark.cluster

# Both keys carry the tag {o}, so they share a slot and one script may touch both atomically.
MOVE = """
local moved = redis.call('DECRBY', KEYS[1], ARGV[1])
return {moved, redis.call('INCRBY', KEYS[2], ARGV[1])}
"""


async def test_hash_tagged_key_roundtrip(redis_cluster, cluster_url: str) -> None:
    assert len(redis_cluster.startup_nodes) == 3
    client = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster.startup_nodes])
    try:
        await client.set("cg:{x}:k", b"v")
        assert await client.get("cg:{x}:k") == b"v"
        assert len(client.get_primaries()) == 3
    finally:
        await client.aclose()


async def test_lua_script_on_two_keys_of_one_slot(cluster_url: str) -> None:
    client = RedisCluster.from_url(cluster_url)
    try:
        await client.set("cg:{o}:a", 10)
        move = client.register_script(MOVE)
        assert await move(keys=["cg:{o}:a", "cg:{o}:b"], args=[3]) == [7, 3]
        assert await client.get("cg:{o}:b") == b"3"
    finally:
        await client.aclose()


async def test_each_test_starts_with_an_empty_cluster(cluster_url: str) -> None:
    client = RedisCluster.from_url(cluster_url)
    try:
        assert await client.dbsize() == 0
        for i in range(20):  # spread over the masters so the next test's flush is exercised
            await client.set(f"k{i}", i)
    finally:
        await client.aclose()


async def test_each_test_starts_with_an_empty_cluster_again(cluster_url: str) -> None:
    await test_each_test_starts_with_an_empty_cluster(cluster_url)
