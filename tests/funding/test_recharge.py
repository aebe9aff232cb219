"""Auto-recharge: one purchase per crossing however many calls cross, funded once, failures recorded by policy."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from _payment_server import wait_until

from gateway.funding import RechargeWorker, TestProvider, purchase_key
from gateway.funding.providers import HttpProvider
from gateway.ledger.client import RateTerms, decode_account
from gateway.ledger.keys import OrgKeys

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("_debit_worker.py")
UNIT = 1_000_000
TERMS = RateTerms(connection_fee=0, rate_per_min=100_000, initial_increment_s=60, subsequent_increment_s=60)
FAST = {"poll_interval_s": 0.02, "recharge_backoff_s": 0.02, "claim_idle_s": 0.2}


async def setup_org(svc, *, funds: int, threshold: int, amount: int = 50 * UNIT, billing_region=None):
    org, _ = await svc.directory.create_org("Acme", country="GB", currency="GBP", billing_region=billing_region)
    await svc.ledger.fund(org.id, funds)
    await svc.directory.set_recharge(org, threshold=threshold, amount=amount)
    return org


async def debit(svc, org, call_id: str, seconds: int = 60) -> None:
    g = await svc.ledger.reserve(org.id, call_id, pays="credits", terms=TERMS, chunk_s=60, lease_ms=60_000,
                                 month="202611")
    assert g.ok, g
    s = await svc.ledger.settle(org.id, call_id, 1, month="202611", answered=True, duration_ms=seconds * 1000,
                                end_reason="normal")
    assert s.ok, s


def worker(svc, provider, consumer: str, **cfg) -> RechargeWorker:
    config = svc.config.payments.__class__(**{**FAST, **cfg})
    return RechargeWorker(client=svc.client, ledger=svc.ledger, directory=svc.directory, provider=provider,
                          config=config, consumer=consumer)


async def entries(svc, key: str) -> list[dict[str, str]]:
    return [e for _, e in await svc.ledger.stream(key)]


async def audit_kinds(svc, org) -> list[str]:
    return [e["type"] for _, e in await svc.ledger.audit_entries(org.id)]


async def rc_pending(svc, org) -> int:
    return decode_account(await svc.client.hget(OrgKeys(org.id).account, "v"))["rc_pending"]


async def run_until(workers, check, what: str) -> None:
    tasks = [asyncio.ensure_future(w.run()) for w in workers]
    try:
        await wait_until(check, what=what)
        for w in workers:
            await w.consumer.idle()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_many_calls_crossing_at_once_from_two_processes_buy_and_fund_once(
        make_services, payment_server, redis_url) -> None:
    svc = await make_services()
    org = await setup_org(svc, funds=100 * UNIT, threshold=90 * UNIT)
    procs = [subprocess.Popen([sys.executable, str(WORKER), redis_url, org.id, f"p{i}", "100"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    charged = 0
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        charged += json.loads(out)["charged"]
    assert charged == 200 * 200_000  # 200 calls of 0.20: 40.00, well past the 90.00 threshold
    k = OrgKeys(org.id)
    purchases = await svc.ledger.stream(k.purchases)
    assert [e["kind"] for _, e in purchases] == ["recharge"]
    assert await rc_pending(svc, org) == 1

    # Two workers (as two gateway processes would run) share the stream through the group.
    providers = [HttpProvider(payment_server.url, timeout_s=2.0, retries=1, backoff_s=0.01) for _ in range(2)]
    workers = [worker(svc, p, f"w{i}") for i, p in enumerate(providers)]
    try:
        await run_until(workers, lambda: _has(svc, k.outbox, "recharge_succeeded"), "the recharge was funded")
    finally:
        for p in providers:
            await p.close()
    key = purchase_key(org.id, purchases[0][0])
    assert payment_server.keys() == [key]
    assert payment_server.requests[0]["amount"] == "50.00"
    assert (await audit_kinds(svc, org)).count("recharge") == 1
    assert (await svc.ledger.balance(org.id)).balance == 100 * UNIT - charged + 50 * UNIT
    assert await rc_pending(svc, org) == 0
    notes = [e for e in await entries(svc, k.outbox) if e["kind"] == "recharge_succeeded"]
    assert [(n["amount"], n["balance"]) for n in notes] == [(str(50 * UNIT), str(110 * UNIT))]
    assert await svc.client.xpending(k.purchases, "recharge") == {"pending": 0, "min": None, "max": None,
                                                                  "consumers": []}


async def _has(svc, stream: str, kind: str) -> bool:
    return any(e.get("kind") == kind for e in await entries(svc, stream))


async def test_reprocessing_an_entry_or_a_replayed_answer_funds_nothing_more(make_services, payment_server) -> None:
    svc = await make_services()
    org = await setup_org(svc, funds=UNIT, threshold=UNIT)
    await debit(svc, org, "c1")
    k = OrgKeys(org.id)
    (entry_id, fields), = await svc.ledger.stream(k.purchases)
    key = purchase_key(org.id, entry_id)
    provider = HttpProvider(payment_server.url, timeout_s=2.0, retries=0)
    try:
        # A handling that got the provider's answer and died before funding: the purchase happened.
        from gateway.funding.providers import PurchaseRequest
        await provider.purchase(PurchaseRequest(idempotency_key=key, org=org.id, amount=50 * UNIT, currency="GBP",
                                                reason="auto-recharge"))
        # The dead consumer read the entry and never acknowledged it.
        await svc.client.xgroup_create(k.purchases, "recharge", id="0")
        await svc.client.xreadgroup("recharge", "dead", {k.purchases: ">"})
        w = worker(svc, provider, "alive")
        await run_until([w], lambda: _has(svc, k.outbox, "recharge_succeeded"), "the entry was taken over")
        assert payment_server.keys() == [key, key]  # the replay got the first answer
        assert len(payment_server.answers) == 1
        assert (await svc.ledger.balance(org.id)).balance == 50 * UNIT + UNIT - 100_000
        # The same entry handled again (a redelivery): neither the provider nor the balance sees it.
        assert await w.handle(org.id, entry_id, fields) is True
        assert payment_server.keys() == [key, key]
        # And the ledger itself refuses a second funding under that key.
        again = await svc.ledger.fund(org.id, 50 * UNIT, kind="recharge", idempotency_key=key)
        assert again.balance == 50 * UNIT + UNIT - 100_000
    finally:
        await provider.close()
    assert (await audit_kinds(svc, org)).count("recharge") == 1
    assert [e["kind"] for e in await entries(svc, k.outbox)] == ["recharge_succeeded"]


async def test_a_decline_is_recorded_once_and_never_retried(make_services) -> None:
    svc = await make_services()
    org = await setup_org(svc, funds=UNIT, threshold=UNIT)
    await debit(svc, org, "c1")
    k = OrgKeys(org.id)
    provider = TestProvider("decline")
    w = worker(svc, provider, "w")
    await run_until([w], lambda: _has(svc, k.outbox, "recharge_failed"), "the decline was recorded")
    for _ in range(3):  # later rounds start nothing more
        await w.consumer.poll()
        await w.consumer.idle()
    assert len(provider.requests) == 1
    failed, = [e for e in await entries(svc, k.outbox) if e["kind"] == "recharge_failed"]
    assert (failed["reason"], failed["amount"], failed["balance"]) == ("card expired", str(50 * UNIT), "900000")
    assert "recharge" not in await audit_kinds(svc, org)
    assert (await svc.ledger.balance(org.id)).balance == 900_000
    # rc_pending is clear: only a new crossing (after a top-up above the threshold) buys again.
    assert await rc_pending(svc, org) == 0
    await debit(svc, org, "c2")
    assert len(await entries(svc, k.purchases)) == 1
    await svc.ledger.fund(org.id, 250_000)  # 1.05: above the threshold again
    await debit(svc, org, "c3")
    assert len(await entries(svc, k.purchases)) == 2


async def test_an_unanswered_purchase_is_retried_a_bounded_number_of_times(make_services, payment_server) -> None:
    payment_server.default = "timeout"
    svc = await make_services()
    org = await setup_org(svc, funds=UNIT, threshold=UNIT)
    await debit(svc, org, "c1")
    k = OrgKeys(org.id)
    provider = HttpProvider(payment_server.url, timeout_s=0.1, retries=1, backoff_s=0.01)
    try:
        w = worker(svc, provider, "w", recharge_attempts=3)
        await run_until([w], lambda: _has(svc, k.outbox, "recharge_failed"), "the purchase was given up")
    finally:
        await provider.close()
    (entry_id, _), = await svc.ledger.stream(k.purchases)
    assert payment_server.keys() == [purchase_key(org.id, entry_id)] * 6  # 3 attempts x (1 + 1 retry)
    failed, = [e for e in await entries(svc, k.outbox) if e["kind"] == "recharge_failed"]
    assert "timed out (3 attempts)" in failed["reason"]
    assert (await svc.ledger.balance(org.id)).balance == 900_000
    assert await rc_pending(svc, org) == 0
    assert await svc.client.hlen(k.purchase_attempts) == 0


async def test_a_region_mismatch_is_refused_without_asking_the_provider(make_services) -> None:
    svc = await make_services()
    org = await setup_org(svc, funds=UNIT, threshold=UNIT, billing_region="US")
    await debit(svc, org, "c1")
    k = OrgKeys(org.id)
    provider = TestProvider("succeed")
    await run_until([worker(svc, provider, "w")], lambda: _has(svc, k.outbox, "recharge_failed"), "refused")
    assert provider.requests == []
    failed, = [e for e in await entries(svc, k.outbox) if e["kind"] == "recharge_failed"]
    assert "differs from its billing-address region US" in failed["reason"]
    assert "recharge" not in await audit_kinds(svc, org)
