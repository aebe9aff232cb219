"""One process of the recharge-crossing test: N concurrent calls debiting one balance at once.

Run as ``python _debit_worker.py URL ORG PREFIX N``; prints a JSON summary. Every call reserves
its first chunk, extends once, and settles (all gathered, so their debits land together).
"""

from __future__ import annotations

import asyncio
import json
import sys

from gateway.ledger.client import Ledger, RateTerms
from gateway.services import redis_client

# 0.10/min, 60/60, no fee: every call below charges exactly 0.20 for its 120 s.
TERMS = RateTerms(connection_fee=0, rate_per_min=100_000, initial_increment_s=60, subsequent_increment_s=60)


async def call(ledger: Ledger, org: str, call_id: str, start: asyncio.Event) -> int:
    await start.wait()
    g = await ledger.reserve(org, call_id, pays="credits", terms=TERMS, chunk_s=60, lease_ms=120_000, month="202611")
    assert g.ok, g
    e = await ledger.extend(org, call_id, 1, month="202611", lease_ms=120_000)
    assert e.ok, e
    s = await ledger.settle(org, call_id, 2, month="202611", answered=True, duration_ms=120_000, end_reason="normal")
    assert s.ok, s
    return s.charge


async def main(url: str, org: str, prefix: str, n: int) -> None:
    client = redis_client(url, timeout_s=30.0)
    ledger = Ledger(client, pipeline=True)
    start = asyncio.Event()
    tasks = [asyncio.ensure_future(call(ledger, org, f"{prefix}-{i}", start)) for i in range(n)]
    start.set()
    charges = await asyncio.gather(*tasks)
    await ledger.close()
    await client.aclose()
    print(json.dumps({"calls": n, "charged": sum(charges)}))


if __name__ == "__main__":
    url, org, prefix, n = sys.argv[1:5]
    asyncio.run(main(url, org, prefix, int(n)))
