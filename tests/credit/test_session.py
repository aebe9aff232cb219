"""In-call enforcement: the deadline arithmetic (pure) and a CallSession on a real engine and redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from test_engine import UNIT, World, build

from rating_core import UNLIMITED_SECONDS

from gateway.config import CreditConfig
from gateway.credit.session import CallSession, CreditExhausted, plan_deadlines, renewal_lead
from gateway.ledger.reconcile import reconcile


@pytest.mark.parametrize(
    ("granted", "final", "chunk", "lead", "now", "renew", "end"),
    [
        # paid through 60 s from answer at t=100: renew 5 s before, end at 160
        (60, False, 60, 5.0, 100.0, 155.0, 160.0),
        # paid well ahead: still renew once a chunk from the last grant
        (120, False, 60, 5.0, 150.0, 205.0, 220.0),
        # paid only a little ahead: a lead before the paid end comes first
        (70, False, 60, 5.0, 150.0, 165.0, 170.0),
        # final grant: no renewal, end at the paid time
        (42, True, 60, 5.0, 110.0, None, 142.0),
        # unlimited (included, emergency): no end, renew once a chunk to keep the lease alive
        (UNLIMITED_SECONDS, False, 60, 5.0, 100.0, 155.0, None),
        (UNLIMITED_SECONDS, True, 60, 5.0, 100.0, None, None),
        # renewal already due: never in the past
        (60, False, 60, 5.0, 158.0, 158.0, 160.0),
    ],
)
def test_plan_deadlines(granted: int, final: bool, chunk: int, lead: float, now: float,
                        renew: float | None, end: float | None) -> None:
    d = plan_deadlines(answered_at=100.0, now=now, granted_s=granted, final=final, chunk_s=chunk, lead_s=lead)
    assert (d.renew_at, d.end_at) == (renew, end)


@pytest.mark.parametrize("chunk", [1, 2, 6, 30, 60, 600])
@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999, 5.0, -1.0])
def test_renewal_lead_stays_under_half_a_chunk(chunk: int, jitter: float) -> None:
    lead = renewal_lead(chunk, jitter)
    assert 0 < lead < chunk / 2 + 1e-9
    assert lead <= 20.0


def test_renewal_leads_spread_with_jitter() -> None:
    leads = {round(renewal_lead(60, j / 10), 3) for j in range(10)}
    assert len(leads) == 10  # calls answered together renew at ten different moments


@pytest.fixture
async def short_chunks(redis_url: str) -> AsyncIterator[World]:
    w = await build(redis_url, CreditConfig(debit_interval_s=2))
    try:
        yield w
    finally:
        await w.client.aclose()


async def test_session_renews_then_ends_exactly_when_the_money_runs_out(short_chunks: World) -> None:
    w = short_chunks
    # USA: 0.10/min, 30 s then 6 s steps, fee 0.01: 0.07 pays the fee and 36 s.
    await w.ledger.fund(w.org.id, 70_000)
    alice = await w.user("alice")
    auth = await w.engine.authorize(w.org, call_id="s1", dialed="+12125550123", user=alice)
    assert auth.granted_s == 30  # one whole initial increment covers the 2 s chunk
    ended: list[CreditExhausted] = []
    loop = asyncio.get_running_loop()
    session = CallSession(w.engine, auth, on_exhausted=ended.append, jitter=0.0)
    # Pretend the call was answered 29 s ago: the first renewal is due at once, and the money covers
    # only one more 6 s step, so the grant turns final and the end is at 36 s.
    answered = loop.time() - 29.0
    session.answered(answered)
    for _ in range(200):
        if ended:
            break
        await asyncio.sleep(0.05)
    assert ended and ended[0].reason == "credit_exhausted" and ended[0].paid_s == 36
    assert loop.time() - answered == pytest.approx(36.0, abs=0.3)
    settled = await w.engine.settle(auth, answered=True, duration_ms=session.elapsed_ms(), end_reason="credit_exhausted")
    assert settled is not None and settled.charge == 70_000 and settled.balance == 0
    assert (await reconcile(w.ledger, w.org.id)).ok


async def test_stopped_session_fires_nothing(short_chunks: World) -> None:
    w = short_chunks
    await w.ledger.fund(w.org.id, UNIT)
    auth = await w.engine.authorize(w.org, call_id="s2", dialed="+12125550123", user=await w.user("alice"))
    ended: list[CreditExhausted] = []
    session = CallSession(w.engine, auth, on_exhausted=ended.append, jitter=0.0)
    session.answered(asyncio.get_running_loop().time() - 29.9)
    session.stop()
    await asyncio.sleep(0.5)
    assert ended == [] and auth.seq == 0  # no renewal was sent either
