"""Make CDRs for the report tests: real ones through the ledger's scripts, and many at once by XADD.

``call()`` runs a call through ``Ledger.reserve`` / ``extend`` / ``settle`` with the meta the credit
engine writes and the extras the B2BUA writes, so the report reads exactly what production writes.
``xadd_cdrs()`` writes CDRs shaped like settle.lua's straight into the stream, with explicit entry
ids (a month of calls in a second), for volume and date-range tests.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.ledger.client import Ledger, RateTerms
from gateway.ledger.keys import OrgKeys

ORG = "acme"
MONTH = "202611"
UNIT = 1_000_000
# 0.10/min, 30/6 increments, 0.01 connection fee
TERMS = RateTerms(connection_fee=10_000, rate_per_min=100_000, initial_increment_s=30, subsequent_increment_s=6)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def meta(*, user: str = "alice", caller: str = "+442071234567", callee: str = "+33142685300",
         dialed: str = "0033142685300", number_class: str = "international", destination: str = "France",
         prefix: str = "33", currency: str = "GBP", direction: str = "outbound", conference_id: str = "",
         coverage: str = "credits", org: str = ORG) -> dict[str, Any]:
    """The meta the credit engine gives ``Ledger.reserve`` (gateway/credit/engine.py)."""
    return {"org": org, "user": user, "caller": caller, "callee": callee, "dialed": dialed, "class": number_class,
            "destination": destination, "prefix": prefix, "currency": currency, "direction": direction,
            "conference_id": conference_id, "coverage": coverage}


async def call(
    ledger: Ledger,
    call_id: str,
    *,
    start: datetime,
    ring_s: float = 2.0,
    duration_s: float = 75.0,
    answered: bool = True,
    end_reason: str = "normal",
    pays: str = "credits",
    terms: RateTerms = TERMS,
    bucket: str = "",
    licence: bool = True,
    sip_status: int | None = None,
    org: str = ORG,
    **meta_kw: Any,
) -> Any:
    """One call through reserve, as many extends as its length needs, and settle; returns the settlement."""
    g = await ledger.reserve(org, call_id, pays=pays, terms=terms, chunk_s=60, lease_ms=600_000, bucket=bucket,
                             licence=licence, meta=meta(org=org, **meta_kw), month=MONTH)
    assert g.ok, g
    seq = g.seq
    granted = g.granted_s
    while answered and granted < duration_s and not g.final:
        g = await ledger.extend(org, call_id, seq + 1, month=MONTH, lease_ms=600_000)
        assert g.ok, g
        seq, granted = g.seq, g.granted_s
    answer = start + timedelta(seconds=ring_s) if answered else None
    end = (answer + timedelta(seconds=duration_s)) if answer else start + timedelta(seconds=ring_s)
    extra = {"start": iso(start), "answer": iso(answer) if answer else "", "end": iso(end),
             "sip_call_id": f"{call_id}@pbx.example", "sip_status": sip_status or (200 if answered else 487)}
    s = await ledger.settle(org, call_id, seq + 1, month=MONTH, answered=answered,
                            duration_ms=int(duration_s * 1000) if answered else 0, end_reason=end_reason, extra=extra)
    assert s.ok, s
    return s


def cdr_fields(i: int, start: datetime, *, user: str, duration_s: int = 61, charge: int = 150_000,
               currency: str = "GBP", destination: str = "France", number_class: str = "international",
               with_times: bool = True) -> dict[str, str]:
    """Fields of one CDR as settle.lua writes them (meta and extra as the engine and B2BUA write them)."""
    answer = start + timedelta(seconds=3)
    end = answer + timedelta(seconds=duration_s)
    extra = ({"start": iso(start), "answer": iso(answer), "end": iso(end), "sip_call_id": f"v{i}@pbx",
              "sip_status": 200} if with_times else {})
    return {
        "call": f"v{i}", "answered": "1", "duration_ms": str(duration_s * 1000), "billed_s": str(duration_s + 5),
        "charge": str(charge), "minutes_s": "0", "paid": "credits", "rate": "100000", "fee": "10000",
        "inc1": "30", "inc2": "6", "end_reason": "normal", "ts": iso(end),
        "meta": json.dumps(meta(user=user, destination=destination, number_class=number_class, currency=currency,
                                callee=f"+3314268{i % 10000:04d}"), separators=(",", ":"), sort_keys=True),
        "extra": json.dumps(extra, separators=(",", ":"), sort_keys=True),
    }


async def xadd_cdrs(client: Any, n: int, *, first: datetime, step_s: float, org: str = ORG,
                    users: tuple[str, ...] = ("alice", "bob", "carol"), batch: int = 2000, **kw: Any) -> None:
    """``n`` CDRs of calls started every ``step_s`` from ``first``, each settled when it ended (the id)."""
    key = OrgKeys(org).cdrs
    for lo in range(0, n, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(lo, min(n, lo + batch)):
            start = first + timedelta(seconds=i * step_s)
            f = cdr_fields(i, start, user=users[i % len(users)], **kw)
            settled = datetime.fromisoformat(f["ts"])
            pipe.xadd(key, f, id=f"{int(settled.timestamp() * 1000)}-{i}")
        await pipe.execute()


async def xadd_bulk(client: Any, n: int, *, first: datetime, step_ms: int, org: str = ORG,
                    users: tuple[str, ...] = ("alice", "bob", "carol", "dave"), batch: int = 5000) -> None:
    """``n`` CDRs like ``xadd_cdrs`` writes, from string templates: fast enough for 10^5..10^6 entries."""
    key = OrgKeys(org).cdrs
    metas = [json.dumps(meta(user=u), separators=(",", ":"), sort_keys=True) for u in users]
    t0 = int(first.timestamp() * 1000)
    for lo in range(0, n, batch):
        pipe = client.pipeline(transaction=False)
        for i in range(lo, min(n, lo + batch)):
            ms = t0 + i * step_ms
            start = datetime.fromtimestamp(ms / 1000, timezone.utc)
            s = start.strftime("%Y-%m-%dT%H:%M:%S")
            end_ms = ms + 64_000
            e = datetime.fromtimestamp(end_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            extra = (f'{{"answer":"{s}.500Z","end":"{e}.500Z","sip_call_id":"b{i}@pbx","sip_status":200,'
                     f'"start":"{s}.000Z"}}')
            pipe.execute_command(
                "XADD", key, f"{end_ms}-{i}", "call", f"b{i}", "answered", "1", "duration_ms", "63500",
                "billed_s", "66", "charge", str(120_000 + i % 1000), "minutes_s", "0", "paid", "credits",
                "rate", "100000", "fee", "10000", "inc1", "30", "inc2", "6", "end_reason", "normal",
                "ts", f"{e}.500Z", "meta", metas[i % len(metas)], "extra", extra)
        await pipe.execute()
