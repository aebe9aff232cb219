"""One process of the no-overdraft test: N concurrent call sessions against one balance.

Run as ``python _overdraft_worker.py URL CLUSTER ORG PREFIX N SEED``; prints a JSON summary.
Each session reserves, extends while its simulated call lasts and credit remains, and settles;
some requests are replayed on purpose (a retry must never charge twice).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from gateway.ledger.client import Ledger, RateTerms
from gateway.services import redis_client

TERMS = RateTerms(connection_fee=10_000, rate_per_min=100_000, initial_increment_s=6, subsequent_increment_s=6)


async def session(ledger: Ledger, org: str, call: str, rng: random.Random, stats: dict[str, int]) -> None:
    g = await ledger.reserve(org, call, pays="credits", terms=TERMS, chunk_s=30, lease_ms=120_000, month="202611",
                             meta={"worker": call})
    if rng.random() < 0.1:
        assert await ledger.reserve(org, call, pays="credits", terms=TERMS, chunk_s=30, lease_ms=120_000,
                                    month="202611", meta={"worker": call}) == g
    if not g.ok:
        stats["refused"] += 1
        return
    stats["reserved"] += 1
    answered = rng.random() > 0.1
    wanted = rng.randint(0, 400)
    granted, final, seq = g.granted_s, g.final, 0
    while answered and wanted > granted and not final:
        seq += 1
        e = await ledger.extend(org, call, seq, month="202611", lease_ms=120_000)
        assert e.ok, e
        if rng.random() < 0.1:
            assert await ledger.extend(org, call, seq, month="202611", lease_ms=120_000) == e
        granted, final = e.granted_s, e.final
        stats["extends"] += 1
        await asyncio.sleep(rng.random() * 0.01)
    duration_ms = min(wanted, granted) * 1000 + rng.randint(0, 999) if answered else 0
    s = await ledger.settle(org, call, seq + 1, month="202611", answered=answered, duration_ms=duration_ms,
                            end_reason="normal")
    assert s.ok, s
    if rng.random() < 0.1:
        assert await ledger.settle(org, call, seq + 1, month="202611", answered=answered,
                                   duration_ms=duration_ms, end_reason="normal") == s
    stats["settled"] += 1
    stats["charged"] += s.charge
    stats["min_balance"] = min(stats["min_balance"], s.balance)


async def main(url: str, cluster: bool, org: str, prefix: str, n: int, seed: int) -> None:
    client = redis_client(url, cluster=cluster, timeout_s=30.0)
    if cluster:
        await client.initialize()  # learn the slots once, before 500 sessions race to do it
    ledger = Ledger(client, pipeline=not cluster)
    rng = random.Random(seed)
    stats = {"refused": 0, "reserved": 0, "extends": 0, "settled": 0, "charged": 0, "min_balance": 1 << 62}
    await asyncio.gather(*(session(ledger, org, f"{prefix}-{i}", random.Random(rng.random()), stats)
                           for i in range(n)))
    await client.aclose()
    print(json.dumps(stats))


if __name__ == "__main__":
    url, cluster, org, prefix, n, seed = sys.argv[1:7]
    asyncio.run(main(url, cluster == "1", org, prefix, int(n), int(seed)))
