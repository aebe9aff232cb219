"""Ledger operations per second from one process against a real redis-server on loopback.

A call session is reserve + two extends + settle (4 script calls). Sessions run concurrently;
``pipelined`` sends the script calls made in one event-loop turn together, in batches that one
script call each runs inside Redis (``gateway/ledger/_pipe.py``); ``direct`` sends each as its own
request over the connection pool. Prints ops/s for both and their ratio, and the CPU time Redis
and this process spent per operation: on a small machine the two share the cores, and the side
that is busy nearly all the wall time is the ceiling.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from bench.conftest import SMOKE
from gateway.ledger.client import Ledger, RateTerms
from gateway.services import redis_client

SESSIONS = 200 if SMOKE else 20_000
CONCURRENCY = 50 if SMOKE else 500
TERMS = RateTerms(connection_fee=10_000, rate_per_min=100_000, initial_increment_s=6, subsequent_increment_s=6)
RESULTS: dict[str, float] = {}


async def _redis_cpu_s(client) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _run(url: str, pipeline: bool) -> tuple[float, float, float, float]:
    """ops/s, wall s, this process's CPU s and redis-server's CPU s over the timed run."""
    client = redis_client(url, timeout_s=30.0)
    ledger = Ledger(client, pipeline=pipeline)
    await ledger.fund("bench", 10**15)
    todo = iter(range(SESSIONS))

    async def worker() -> None:
        # CONCURRENCY workers, each running sessions one after another: CONCURRENCY calls in flight.
        for i in todo:
            call = f"c{i}"
            g = await ledger.reserve("bench", call, pays="credits", terms=TERMS, chunk_s=60, lease_ms=600_000,
                                     month="202611")
            assert g.ok
            for seq in (1, 2):
                assert (await ledger.extend("bench", call, seq, month="202611", lease_ms=600_000)).ok
            assert (await ledger.settle("bench", call, 3, month="202611", answered=True, duration_ms=150_000,
                                        end_reason="normal")).ok

    redis_cpu = await _redis_cpu_s(client)
    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), timeout=600)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    redis_cpu = await _redis_cpu_s(client) - redis_cpu
    await ledger.close()
    await client.aclose()
    return SESSIONS * 4 / elapsed, elapsed, cpu, redis_cpu


@pytest.mark.parametrize("mode", ["direct", "pipelined"])
def test_ledger_ops_per_second(benchmark, redis_url: str, mode: str, capsys) -> None:
    # The gateway runs on uvloop; so does its benchmark.
    ops, wall, cpu, redis_cpu = benchmark.pedantic(lambda: uvloop.run(_run(redis_url, mode == "pipelined")),
                                                   rounds=1, iterations=1)
    RESULTS[mode] = ops
    n = SESSIONS * 4
    with capsys.disabled():
        print(f"\nledger {mode}: {ops:,.0f} ops/s ({SESSIONS:,} sessions x 4 script calls, "
              f"{CONCURRENCY} concurrent)")
        print(f"ledger {mode} CPU per op: python {cpu / n * 1e6:.1f} us ({cpu / wall:.0%} of wall), "
              f"redis-server {redis_cpu / n * 1e6:.1f} us ({redis_cpu / wall:.0%} of wall)")
        if len(RESULTS) == 2:
            print(f"ledger pipelined/direct: {RESULTS['pipelined'] / RESULTS['direct']:.1f}x")
    assert ops > 0
