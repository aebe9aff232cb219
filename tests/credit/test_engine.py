"""The credit engine against a real redis-server: authorize, extend, settle, and the outage policy."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rating_core import RateDeck

from gateway.config import CreditConfig
from gateway.credit import CreditEngine, CreditRefused
from gateway.directory import Directory, Org
from gateway.ledger.client import Ledger
from gateway.ledger.reconcile import reconcile
from gateway.ratestore import RateStore
from gateway.services import redis_client

try:
    from _procs import RedisProcess
except ImportError:  # pragma: no cover
    from tests._procs import RedisProcess

DECK = """prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,connection_fee,effective_from
44,United Kingdom,0.02,GBP,60,60,0,
4420,London,0.01,GBP,60,60,0,
1,USA,0.10,GBP,30,6,0.01,
"""
UNIT = 1_000_000


@dataclasses.dataclass
class World:
    engine: CreditEngine
    ledger: Ledger
    directory: Directory
    org: Org
    client: Any

    async def user(self, name: str) -> Any:
        return await self.directory.get_user(self.org.id, name)


async def build(url: str, config: CreditConfig) -> World:
    client = redis_client(url, timeout_s=0.5)
    ledger = Ledger(client)
    directory = Directory(client)
    rates = RateStore(client)
    await rates.save(RateDeck.from_csv_text(DECK))
    engine = CreditEngine(ledger=ledger, directory=directory, rates=rates, config=config)
    org, _ = await directory.create_org("Acme", country="GB", currency="GBP")
    await directory.add_user(org, "alice", number="+442079460001", licence=True, plan="none")
    await directory.add_user(org, "bob", number="+442079460002", licence=False, plan="domestic")
    await directory.add_user(org, "carol", number="+442079460003", licence=False, plan="none")
    return World(engine=engine, ledger=ledger, directory=directory, org=org, client=client)


@pytest.fixture
async def world(redis_url: str) -> AsyncIterator[World]:
    w = await build(redis_url, CreditConfig(debit_interval_s=60))
    try:
        yield w
    finally:
        await w.client.aclose()


async def test_credit_call_is_reserved_extended_and_settled_exactly(world: World) -> None:
    await world.ledger.fund(world.org.id, UNIT)
    alice = await world.user("alice")
    auth = await world.engine.authorize(world.org, call_id="c1", dialed="0012125550123", user=alice)
    assert (auth.paid_by, auth.destination.number, auth.destination.number_class.value) == (
        "credits", "+12125550123", "international")
    assert (auth.granted_s, auth.grant.held) == (60, 110_000)
    assert auth.max_duration_s == 594  # (1.00 - 0.01 fee) at 0.10/min, 6 s steps
    g = await world.engine.extend(auth, remaining_s=5)
    assert (g.granted_s, auth.seq) == (120, 1)
    s = await world.engine.settle(auth, answered=True, duration_ms=75_500, end_reason="normal")
    assert s is not None and s.charge == 10_000 + 130_000  # 76 s -> 78 s billed -> 0.13 + fee
    cdr = (await world.ledger.cdr_entries(world.org.id))[0][1]
    meta = json.loads(cdr["meta"])
    assert (meta["user"], meta["callee"], meta["class"], meta["destination"], meta["caller"]) == (
        "alice", "+12125550123", "international", "USA", "+442079460001")
    assert (await reconcile(world.ledger, world.org.id)).ok


async def test_longest_prefix_decides_the_rate(world: World) -> None:
    await world.ledger.fund(world.org.id, UNIT)
    alice = await world.user("alice")
    london = await world.engine.authorize(world.org, call_id="c1", dialed="02079460999", user=alice)
    other = await world.engine.authorize(world.org, call_id="c2", dialed="01614960000", user=alice)
    assert (london.rate.destination, london.rate.rate_per_min) == ("London", 10_000)
    assert (other.rate.destination, other.rate.rate_per_min) == ("United Kingdom", 20_000)


@pytest.mark.parametrize(
    "user,dialed,status,code",
    [
        ("alice", "0012125550123", 402, "no_credit"),  # unfunded
        ("carol", "0012125550123", 403, "no_licence"),
        ("alice", "+999999", 404, "invalid_number"),
        ("alice", "0207946", 484, "incomplete_number"),
        (None, "02079460000", 403, "unknown_user"),
        ("alice", "+33123456789", 403, "not_rated"),
    ],
)
async def test_refusals(world: World, user: str | None, dialed: str, status: int, code: str) -> None:
    u = await world.user(user) if user else None
    with pytest.raises(CreditRefused) as info:
        await world.engine.authorize(world.org, call_id="c1", dialed=dialed, user=u)
    assert (info.value.refusal.status, info.value.refusal.code) == (status, code)
    assert (await world.ledger.balance(world.org.id)).reserved == 0


async def test_emergency_passes_unfunded_and_unknown_and_is_never_charged(world: World) -> None:
    auth = await world.engine.authorize(world.org, call_id="sos", dialed="9999", user=None)
    assert auth.decision.emergency and auth.paid_by == "included"
    s = await world.engine.settle(auth, answered=True, duration_ms=3_600_000, end_reason="normal")
    assert s is not None and s.charge == 0
    assert (await world.ledger.balance(world.org.id)).balance == 0


async def test_domestic_plan_minutes_come_from_the_pooled_allotment(world: World) -> None:
    bob = await world.user("bob")
    auth = await world.engine.authorize(world.org, call_id="c1", dialed="02079460000", user=bob)
    assert (auth.paid_by, auth.decision.bucket, auth.granted_s, auth.grant.held) == ("plan", "domestic:domestic", 60, 0)
    assert auth.max_duration_s == 1200 * 60  # bob's 1,200 GB minutes, pooled for the organization
    await world.engine.extend(auth, remaining_s=5)
    s = await world.engine.settle(auth, answered=True, duration_ms=61_000, end_reason="normal")
    assert s is not None and (s.charge, s.extra) == (0, 120)  # plan minutes round up to whole minutes


async def test_cancel_before_answer_releases_everything(world: World) -> None:
    await world.ledger.fund(world.org.id, UNIT)
    auth = await world.engine.authorize(world.org, call_id="c1", dialed="0012125550123", user=await world.user("alice"))
    assert (await world.ledger.balance(world.org.id)).reserved == 110_000
    s = await world.engine.release(auth)
    assert s is not None and s.charge == 0
    bal = await world.ledger.balance(world.org.id)
    assert (bal.balance, bal.reserved, bal.live) == (UNIT, 0, 0)


async def test_sweep_settles_reservations_of_a_dead_process(world: World) -> None:
    await world.ledger.fund(world.org.id, UNIT)
    auth = await world.engine.authorize(world.org, call_id="c1", dialed="0012125550123",
                                        user=await world.user("alice"), lease_ms=50)
    await asyncio.sleep(0.1)
    assert await world.engine.sweep() == 1
    cdr = (await world.ledger.cdr_entries(world.org.id))[0][1]
    assert (cdr["end_reason"], int(cdr["charge"])) == ("interrupted", auth.grant.held)
    assert (await reconcile(world.ledger, world.org.id)).ok


# -- the ledger goes away ------------------------------------------------------------------


@pytest.fixture
def durable_redis(tmp_path: Path):
    """A redis-server with every write fsynced, so a SIGKILL loses nothing (like production AOF)."""
    server = RedisProcess(tmp_path / "redis", appendonly=True, args=["--appendfsync", "always"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_fail_closed_refuses_new_calls_with_503_and_retry_after(durable_redis: RedisProcess) -> None:
    w = await build(durable_redis.url, CreditConfig(on_ledger_outage="fail_closed", outage_grace_s=20))
    try:
        durable_redis.kill()
        with pytest.raises(CreditRefused) as info:
            await w.engine.authorize(w.org, call_id="c1", dialed="0012125550123", user=None)
        # unknown user: refused by policy before the ledger is even asked
        assert info.value.refusal.status == 403
        alice_like = dataclasses.replace(await _alice_offline(w), licence=True)
        with pytest.raises(CreditRefused) as info:
            await w.engine.authorize(w.org, call_id="c2", dialed="0012125550123", user=alice_like)
        assert (info.value.refusal.status, info.value.refusal.retry_after) == (503, 20)
        # an emergency call passes even with the ledger down
        sos = await w.engine.authorize(w.org, call_id="sos", dialed="999", user=None)
        assert sos.fail_open and sos.decision.emergency
    finally:
        await w.client.aclose()


async def _alice_offline(w: World) -> Any:
    from gateway.directory import User

    return User(org=w.org.id, id="alice", number="+442079460001", licence=True, plan="none", country="GB")


async def test_live_call_survives_an_outage_within_grace_and_settles_once_after(durable_redis: RedisProcess) -> None:
    w = await build(durable_redis.url, CreditConfig(outage_grace_s=30))
    try:
        await w.ledger.fund(w.org.id, UNIT)
        auth = await w.engine.authorize(w.org, call_id="c1", dialed="0012125550123", user=await w.user("alice"))
        durable_redis.kill()
        g = await w.engine.extend(auth, remaining_s=5)
        assert (g.final, g.granted_s, g.reason) == (True, 60 + 30, "ledger_outage")
        assert await w.engine.settle(auth, answered=True, duration_ms=70_000, end_reason="ledger_outage") is None
        assert w.engine.pending_settlements == 1
        assert await w.engine.retry_pending() == 1  # still down: kept
        durable_redis.restart()
        assert await w.engine.retry_pending() == 0
        assert auth.settled is not None
        # the call was granted 60 s before the outage: it is charged for what was reserved, no more
        assert auth.settled.charge == 110_000
        assert await w.engine.retry_pending() == 0
        rep = await reconcile(w.ledger, w.org.id)
        assert rep.ok and rep.cdrs == 1
    finally:
        await w.client.aclose()


async def test_fail_open_is_bounded_and_settled_when_the_ledger_returns(durable_redis: RedisProcess) -> None:
    cfg = CreditConfig(on_ledger_outage="fail_open", fail_open_max_s=120, fail_open_max_amount="0.30")
    w = await build(durable_redis.url, cfg)
    try:
        await w.ledger.fund(w.org.id, UNIT)
        alice = await w.user("alice")
        durable_redis.kill()
        a1 = await w.engine.authorize(w.org, call_id="c1", dialed="0012125550123", user=alice)
        assert a1.fail_open and a1.granted_s == 120  # capped by time: 120 s cost 0.21 of the 0.30
        a2 = await w.engine.authorize(w.org, call_id="c2", dialed="0012125550123", user=alice)
        assert a2.fail_open and a2.granted_s == 48  # the 0.09 left of the bound: fee + 48 s
        with pytest.raises(CreditRefused) as info:
            await w.engine.authorize(w.org, call_id="c3", dialed="0012125550123", user=alice)
        assert info.value.refusal.status == 503
        assert await w.engine.settle(a1, answered=True, duration_ms=100_000, end_reason="normal") is None
        durable_redis.restart()
        assert await w.engine.retry_pending() == 0
        assert a1.settled is not None and a1.settled.charge == 10_000 + 170_000  # 100 s -> 102 s billed
        assert await w.engine.settle(a2, answered=False, duration_ms=0, end_reason="cancelled") is not None
        rep = await reconcile(w.ledger, w.org.id)
        assert rep.ok and rep.cdrs == 2
    finally:
        await w.client.aclose()
