"""The ledger scripts, one behaviour at a time, on a real redis-server and on a real Redis Cluster."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.ledger.client import Ledger, RateTerms, decode_account
from gateway.ledger.keys import OrgKeys
from gateway.ledger.reconcile import reconcile

ORG = "acme"
MONTH = "202611"
# 0.10/min, 30/6 increments, 0.01 connection fee
TERMS = RateTerms(connection_fee=10_000, rate_per_min=100_000, initial_increment_s=30, subsequent_increment_s=6)
UNIT = 1_000_000


async def reserve(ledger: Ledger, call: str, **kw):
    args = dict(pays="credits", terms=TERMS, chunk_s=60, lease_ms=60_000, month=MONTH, meta={"user": "alice"})
    args.update(kw)
    return await ledger.reserve(ORG, call, **args)


async def books_ok(ledger: Ledger) -> None:
    rep = await reconcile(ledger, ORG)
    assert rep.ok, rep.problems


async def test_fund_adds_money_once_per_idempotency_key(ledger: Ledger) -> None:
    first = await ledger.fund(ORG, 5 * UNIT, idempotency_key="purchase-1")
    again = await ledger.fund(ORG, 5 * UNIT, idempotency_key="purchase-1")
    other = await ledger.fund(ORG, 2 * UNIT, idempotency_key="purchase-2")
    assert first == again
    assert first.balance == 5 * UNIT
    assert other.balance == 7 * UNIT
    assert (await ledger.balance(ORG)).balance == 7 * UNIT
    audit = await ledger.audit_entries(ORG)
    assert [(e["type"], e["amount"], e["balance"]) for _, e in audit] == [
        ("fund", str(5 * UNIT), str(5 * UNIT)),
        ("fund", str(2 * UNIT), str(7 * UNIT)),
    ]
    await books_ok(ledger)


async def test_fund_refuses_balances_past_the_exact_lua_range(ledger: Ledger) -> None:
    ok = await ledger.fund(ORG, ledger.max_balance - 1)
    refused = await ledger.fund(ORG, 2)
    assert ok.ok and not refused.ok and refused.reason == "too_large"
    assert (await ledger.balance(ORG)).balance == ledger.max_balance - 1


async def test_reserve_holds_one_chunk_and_reports_the_longest_duration(ledger: Ledger) -> None:
    await ledger.fund(ORG, UNIT)
    g = await reserve(ledger, "c1")
    # 60 s = 30 + 5x6: 0.10 + fee 0.01 held; 1.00 covers fee + 594 s (0.99) at 0.10/min
    assert (g.ok, g.granted_s, g.held, g.final, g.max_s) == (True, 60, 110_000, False, 594)
    bal = await ledger.balance(ORG)
    assert (bal.balance, bal.reserved, bal.available, bal.live) == (UNIT, 110_000, UNIT - 110_000, 1)
    await books_ok(ledger)


async def test_reserve_refuses_when_fee_and_first_increment_are_not_covered(ledger: Ledger) -> None:
    await ledger.fund(ORG, 59_999)  # fee 0.01 + 30 s at 0.10/min = 0.06
    g = await reserve(ledger, "c1")
    assert (g.ok, g.reason) == (False, "no_credit")
    bal = await ledger.balance(ORG)
    assert (bal.reserved, bal.live) == (0, 0)
    # a replay of the refused call gives the same answer and still holds nothing
    assert await reserve(ledger, "c1") == g
    assert (await ledger.balance(ORG)).reserved == 0


async def test_reserve_on_a_small_balance_is_a_final_grant_of_whole_increments(ledger: Ledger) -> None:
    await ledger.fund(ORG, 80_000)  # fee 0.01 + 0.07 -> 42 s at 0.10/min = 30 + 2x6
    g = await reserve(ledger, "c1")
    assert (g.ok, g.granted_s, g.held, g.final) == (True, 42, 80_000, True)


async def test_replayed_reserve_returns_the_first_result_and_changes_nothing(ledger: Ledger) -> None:
    await ledger.fund(ORG, UNIT)
    g1 = await reserve(ledger, "c1")
    await ledger.fund(ORG, UNIT)  # the world changed; the replay must not re-decide
    g2 = await reserve(ledger, "c1")
    assert g1 == g2
    assert (await ledger.balance(ORG)).reserved == g1.held


async def test_extend_commits_the_used_chunk_and_holds_the_next(ledger: Ledger) -> None:
    await ledger.fund(ORG, UNIT)
    await reserve(ledger, "c1")
    e1 = await ledger.extend(ORG, "c1", 1, month=MONTH, lease_ms=60_000)
    # commits fee + first increment (the call is answered): 0.01 + 0.05; holds up to 120 s
    assert (e1.ok, e1.reason, e1.granted_s, e1.held, e1.seq) == (True, "ok", 120, 210_000, 1)
    assert (e1.balance, e1.reserved) == (UNIT - 60_000, 150_000)
    e2 = await ledger.extend(ORG, "c1", 2, month=MONTH, lease_ms=60_000)
    assert (e2.granted_s, e2.held, e2.balance) == (180, 310_000, UNIT - 110_000)
    await books_ok(ledger)


async def test_extend_replay_and_out_of_order_seq_change_nothing(ledger: Ledger) -> None:
    await ledger.fund(ORG, UNIT)
    await reserve(ledger, "c1")
    e1 = await ledger.extend(ORG, "c1", 1, month=MONTH, lease_ms=60_000)
    before = await ledger.balance(ORG)
    assert await ledger.extend(ORG, "c1", 1, month=MONTH, lease_ms=60_000) == e1
    skipped = await ledger.extend(ORG, "c1", 3, month=MONTH, lease_ms=60_000)
    assert (skipped.ok, skipped.reason) == (False, "bad_seq")
    assert await ledger.balance(ORG) == before


async def test_extend_to_the_end_of_the_money_then_final_then_nothing(ledger: Ledger) -> None:
    await ledger.fund(ORG, 150_000)  # fee 0.01 + 84 s (0.14) = 0.15
    g = await reserve(ledger, "c1")
    assert (g.granted_s, g.final) == (60, False)
    e1 = await ledger.extend(ORG, "c1", 1, month=MONTH, lease_ms=60_000)
    assert (e1.reason, e1.granted_s, e1.held, e1.final) == ("final", 84, 150_000, True)
    e2 = await ledger.extend(ORG, "c1", 2, month=MONTH, lease_ms=60_000)
    assert (e2.reason, e2.granted_s, e2.final) == ("final", 84, True)
    s = await ledger.settle(ORG, "c1", 3, month=MONTH, answered=True, duration_ms=84_040, end_reason="credit_exhausted")
    assert (s.charge, s.billed_s, s.balance, s.reserved) == (150_000, 84, 0, 0)
    await books_ok(ledger)


async def test_settle_charges_the_exact_price_and_writes_one_cdr(ledger: Ledger) -> None:
    await ledger.fund(ORG, UNIT)
    await reserve(ledger, "c1")
    s = await ledger.settle(ORG, "c1", 1, month=MONTH, answered=True, duration_ms=31_001, end_reason="normal",
                            extra={"answer": "2026-11-25T10:00:00Z"})
    # 32 s -> 36 s billed: 0.01 + ceil(0.10 * 36 / 60) = 0.07
    assert (s.ok, s.charge, s.billed_s, s.balance, s.reserved, s.debit) == (True, 70_000, 36, UNIT - 70_000, 0, 70_000)
    again = await ledger.settle(ORG, "c1", 1, month=MONTH, answered=True, duration_ms=99_000, end_reason="normal")
    assert again == s
    cdrs = await ledger.cdr_entries(ORG)
    assert len(cdrs) == 1
    cdr = cdrs[0][1]
    assert (cdr["call"], cdr["charge"], cdr["billed_s"], cdr["end_reason"], cdr["paid"]) == ("c1", "70000", "36", "normal", "credits")
    assert json.loads(cdr["meta"]) == {"user": "alice"}
    assert json.loads(cdr["extra"]) == {"answer": "2026-11-25T10:00:00Z"}
    bal = await ledger.balance(ORG)
    assert (bal.live, bal.spent) == (0, 70_000)
    await books_ok(ledger)


async def test_unanswered_call_releases_everything_and_still_leaves_a_cdr(ledger: Ledger) -> None:
    await ledger.fund(ORG, UNIT)
    await reserve(ledger, "c1")
    s = await ledger.settle(ORG, "c1", 1, month=MONTH, answered=False, duration_ms=0, end_reason="cancelled")
    assert (s.charge, s.balance, s.reserved) == (0, UNIT, 0)
    cdrs = await ledger.cdr_entries(ORG)
    assert [(c["call"], c["charge"], c["answered"], c["end_reason"]) for _, c in cdrs] == [("c1", "0", "0", "cancelled")]
    assert len(await ledger.audit_entries(ORG)) == 1  # only the funding
    await books_ok(ledger)


async def test_settle_never_charges_beyond_the_time_granted(ledger: Ledger) -> None:
    await ledger.fund(ORG, UNIT)
    g = await reserve(ledger, "c1")
    s = await ledger.settle(ORG, "c1", 1, month=MONTH, answered=True, duration_ms=3_600_000, end_reason="normal")
    assert s.charge == g.held and s.billed_s == g.granted_s


async def test_scripts_reload_after_the_script_cache_is_flushed(ledger: Ledger, ledger_client) -> None:
    await ledger.fund(ORG, UNIT)
    await reserve(ledger, "c1")
    await ledger_client.script_flush()
    e1 = await ledger.extend(ORG, "c1", 1, month=MONTH, lease_ms=60_000)
    assert e1.ok and e1.granted_s == 120
    await ledger_client.script_flush()
    assert await ledger.extend(ORG, "c1", 1, month=MONTH, lease_ms=60_000) == e1


async def test_concurrent_call_limit_and_emergency_bypass(ledger: Ledger) -> None:
    await ledger.fund(ORG, UNIT)
    assert (await reserve(ledger, "c1", max_live=1)).ok
    refused = await reserve(ledger, "c2", max_live=1)
    assert (refused.ok, refused.reason) == (False, "concurrency")
    sos = await reserve(ledger, "c3", max_live=1, pays="included", terms=RateTerms(), emergency=True)
    assert sos.ok and sos.held == 0 and sos.granted_s == 100_000_000


async def test_daily_spend_limit_caps_the_grant(ledger: Ledger) -> None:
    await ledger.fund(ORG, 10 * UNIT)
    g = await reserve(ledger, "c1", daily_limit=80_000)
    assert (g.ok, g.granted_s, g.held, g.final) == (True, 42, 80_000, True)
    refused = await reserve(ledger, "c2", daily_limit=80_000)
    assert (refused.ok, refused.reason) == (False, "daily_limit")


async def test_plan_minutes_first_then_credits_with_a_licence(ledger: Ledger, ledger_client) -> None:
    k = OrgKeys(ORG)
    await ledger_client.hset(k.allotments, "domestic:domestic", 90)  # 1.5 pooled minutes
    await ledger.fund(ORG, UNIT)
    g = await reserve(ledger, "c1", pays="plan", bucket="domestic:domestic", licence=True)
    assert (g.granted_s, g.held, g.final) == (60, 0, False)  # one whole minute from the pool
    e1 = await ledger.extend(ORG, "c1", 1, month=MONTH, lease_ms=60_000)
    # no whole minute left in the pool: the next 60 s on credits, no connection fee at the switch
    assert (e1.granted_s, e1.held, e1.final) == (120, 100_000, False)
    s = await ledger.settle(ORG, "c1", 2, month=MONTH, answered=True, duration_ms=95_000, end_reason="normal")
    # 60 s of minutes, then 35 s on credits -> 36 s billed (30 + 6) = 0.06
    assert (s.charge, s.extra, s.billed_s) == (60_000, 60, 96)
    used = await ledger_client.hget(k.minutes(MONTH), "domestic:domestic:used")
    assert int(used) == 60
    cdr = (await ledger.cdr_entries(ORG))[0][1]
    assert (cdr["paid"], cdr["minutes_s"]) == ("plan+credits", "60")
    await books_ok(ledger)


async def test_plan_minutes_without_licence_end_with_the_pool(ledger: Ledger, ledger_client) -> None:
    await ledger_client.hset(OrgKeys(ORG).allotments, "domestic:domestic", 60)
    g = await reserve(ledger, "c1", pays="plan", bucket="domestic:domestic", licence=False)
    assert (g.granted_s, g.max_s) == (60, 60)
    e1 = await ledger.extend(ORG, "c1", 1, month=MONTH, lease_ms=60_000)
    assert (e1.granted_s, e1.final, e1.held) == (60, True, 0)
    refused = await reserve(ledger, "c2", pays="plan", bucket="domestic:domestic", licence=False)
    assert (refused.ok, refused.reason) == (False, "no_minutes")


async def test_expire_settles_a_call_whose_owner_vanished_once(ledger: Ledger) -> None:
    await ledger.fund(ORG, UNIT)
    g = await reserve(ledger, "c1", lease_ms=50)
    alive = await reserve(ledger, "c2", lease_ms=60_000)
    await asyncio.sleep(0.1)
    done = await ledger.expire_due(ORG)
    assert [c for c, _ in done] == ["c1"]
    assert done[0][1].charge == g.held  # the chunk held counts as used
    assert await ledger.expire_due(ORG) == []
    not_due = await ledger.expire(ORG, "c2")
    assert (not_due.ok, not_due.reason) == (False, "not_due")
    late_bye = await ledger.settle(ORG, "c1", 1, month=MONTH, answered=True, duration_ms=1_000, end_reason="normal")
    assert late_bye == done[0][1]  # the sweeper won; the late BYE changes nothing
    cdrs = [c for _, c in await ledger.cdr_entries(ORG)]
    assert [(c["call"], c["end_reason"]) for c in cdrs] == [("c1", "interrupted")]
    bal = await ledger.balance(ORG)
    assert bal.reserved == alive.held and bal.live == 1
    await books_ok(ledger)


async def test_late_settle_charges_no_more_than_is_available(ledger: Ledger) -> None:
    await ledger.fund(ORG, 50_000)
    s = await ledger.late_settle(ORG, "off1", terms=TERMS, answered=True, duration_ms=600_000, end_reason="normal")
    assert (s.charge, s.extra, s.balance) == (50_000, 1_010_000 - 50_000, 0)
    assert await ledger.late_settle(ORG, "off1", terms=TERMS, answered=True, duration_ms=1, end_reason="x") == s
    cdr = (await ledger.cdr_entries(ORG))[0][1]
    assert (cdr["charge"], cdr["uncollected"]) == ("50000", "960000")
    await books_ok(ledger)


async def test_late_settle_of_a_call_whose_reserve_did_land_releases_its_reservation(ledger: Ledger) -> None:
    # The reserve ran in Redis but its reply was lost (a timeout): the gateway, failing open, let the
    # call run offline and records it with late_settle. The reservation must be released and counted
    # as paid, not left behind with its lease and its place in 'live'.
    await ledger.fund(ORG, UNIT)
    g = await reserve(ledger, "lost")
    assert g.ok and (await ledger.balance(ORG)).reserved == g.held
    ext = await ledger.extend(ORG, "lost", 1, month=MONTH, lease_ms=60_000)
    assert ext.ok
    s = await ledger.late_settle(ORG, "lost", terms=TERMS, answered=True, duration_ms=90_000, end_reason="normal")
    price = 10_000 + 100_000 * 90 // 60  # fee + 90 s (30 + 10x6) at 0.10/min
    assert (s.ok, s.charge, s.extra) == (True, price, 0)
    bal = await ledger.balance(ORG)
    assert (bal.balance, bal.reserved, bal.live) == (UNIT - price, 0, 0)
    assert await ledger.live_call_ids(ORG) == []
    assert await ledger.expire_due(ORG) == []  # nothing left for the sweeper to charge again
    (cdr,) = [c for _, c in await ledger.cdr_entries(ORG)]
    assert (cdr["call"], cdr["charge"], cdr["uncollected"]) == ("lost", str(price), "0")
    await books_ok(ledger)


async def test_crossing_the_recharge_threshold_queues_one_purchase(ledger: Ledger, ledger_client) -> None:
    k = OrgKeys(ORG)
    await ledger.fund(ORG, UNIT)
    await ledger_client.hset(k.account, mapping={"rc_threshold": 900_000, "rc_amount": 50 * UNIT})
    assert await ledger.fund(ORG, 0) is not None  # settings beside the packed account survive a script
    for n in range(5):
        await reserve(ledger, f"c{n}")
        await ledger.settle(ORG, f"c{n}", 1, month=MONTH, answered=True, duration_ms=60_000, end_reason="normal")
    purchases = await ledger_client.xrange(k.purchases)
    assert len(purchases) == 1
    assert purchases[0][1][b"amount"] == str(50 * UNIT).encode()
    await ledger.fund(ORG, 50 * UNIT, kind="recharge", idempotency_key="p1")
    assert decode_account(await ledger_client.hget(k.account, "v"))["rc_pending"] == 0


async def test_reaching_zero_writes_one_notice_to_the_outbox(ledger: Ledger, ledger_client) -> None:
    await ledger.fund(ORG, 110_000)
    await reserve(ledger, "c1")
    await ledger.settle(ORG, "c1", 1, month=MONTH, answered=True, duration_ms=60_000, end_reason="normal")
    assert (await ledger.balance(ORG)).balance == 0
    notices = await ledger_client.xrange(OrgKeys(ORG).outbox)
    assert [n[1][b"kind"] for n in notices] == [b"balance_zero"]


async def test_pipelined_ledger_reloads_scripts_and_survives_a_redis_restart(tmp_path) -> None:
    """The pipelined connection: NOSCRIPT after a flush reloads; a dead Redis fails fast; it reconnects."""
    from gateway.ledger.client import LedgerUnavailable
    from gateway.services import redis_client

    try:
        from _procs import RedisProcess
    except ImportError:  # pragma: no cover
        from tests._procs import RedisProcess

    server = RedisProcess(tmp_path / "r", appendonly=True, args=["--appendfsync", "always"])
    server.start()
    client = redis_client(server.url, timeout_s=0.5)
    ledger = Ledger(client, pipeline=True)
    try:
        await ledger.fund(ORG, 100 * UNIT)
        grants = await asyncio.gather(*(reserve(ledger, f"c{i}") for i in range(50)))
        assert all(g.ok for g in grants)
        await client.script_flush()
        again = await asyncio.gather(*(ledger.extend(ORG, f"c{i}", 1, month=MONTH, lease_ms=60_000) for i in range(50)))
        assert all(e.ok for e in again)
        server.kill()
        with pytest.raises(LedgerUnavailable):
            await ledger.extend(ORG, "c0", 2, month=MONTH, lease_ms=60_000)
        server.restart()  # AOF with fsync always: nothing was lost
        e2 = await ledger.extend(ORG, "c0", 2, month=MONTH, lease_ms=60_000)
        assert e2.ok and e2.seq == 2
        assert (await reconcile(ledger, ORG)).ok
    finally:
        await ledger.close()
        await client.aclose()
        server.stop()
