"""One-time funding: a manual top-up, or a purchase through the provider that funds only on success."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.funding import FundingRefused, PaymentDeclined, PaymentUnavailable, fund_once

ROOT = Path(__file__).resolve().parents[2]
UNIT = 1_000_000


async def org_of(svc, name="Acme", billing_region=None):
    org, _ = await svc.directory.create_org(name, country="GB", currency="GBP", billing_region=billing_region)
    return org


async def audit(svc, org):
    return [(e["type"], e["amount"], e["note"]) for _, e in await svc.ledger.audit_entries(org.id)]


async def test_manual_provider_records_a_top_up(make_services) -> None:
    svc = await make_services()
    org = await org_of(svc)
    assert await fund_once(svc, org, 60 * UNIT) == {"org": org.id, "funded": "60.00", "balance": "60.00",
                                                    "currency": "GBP"}
    with pytest.raises(FundingRefused, match="at least 50.00 GBP"):
        await fund_once(svc, org, 49 * UNIT)
    assert await audit(svc, org) == [("fund", str(60 * UNIT), "manual top-up")]


async def test_http_purchase_funds_once_per_idempotency_key(make_services, payment_server) -> None:
    svc = await make_services(payments={"provider": "http", "url": payment_server.url, "timeout_s": 2.0})
    org = await org_of(svc)
    first = await fund_once(svc, org, 75 * UNIT, idempotency_key="order-1")
    assert first == {"org": org.id, "funded": "75.00", "balance": "75.00", "currency": "GBP", "payment_id": "pay_1"}
    # A retried request (the same key): the provider replays its answer, the ledger adds nothing.
    again = await fund_once(svc, org, 75 * UNIT, idempotency_key="order-1")
    assert again["balance"] == "75.00"
    assert payment_server.keys() == ["order-1", "order-1"]
    assert payment_server.requests[0] == {"idempotency_key": "order-1", "org": org.id, "amount": "75.00",
                                          "currency": "GBP", "reason": "funding"}
    assert await audit(svc, org) == [("purchase", str(75 * UNIT), "purchase pay_1")]
    # Without a key each purchase gets its own.
    await fund_once(svc, org, 50 * UNIT)
    assert len(set(payment_server.keys())) == 2
    assert (await svc.ledger.balance(org.id)).balance == 125 * UNIT


async def test_declined_purchase_funds_nothing(make_services, payment_server) -> None:
    payment_server.default = "decline"
    svc = await make_services(payments={"provider": "http", "url": payment_server.url})
    org = await org_of(svc)
    with pytest.raises(PaymentDeclined, match="card expired"):
        await fund_once(svc, org, 50 * UNIT)
    assert (await svc.ledger.balance(org.id)).balance == 0
    assert await audit(svc, org) == []


async def test_unanswered_purchase_funds_nothing(make_services) -> None:
    svc = await make_services(payments={"provider": "test", "test_outcome": "timeout"})
    org = await org_of(svc)
    with pytest.raises(PaymentUnavailable):
        await fund_once(svc, org, 50 * UNIT)
    assert (await svc.ledger.balance(org.id)).balance == 0


async def test_region_mismatch_is_refused_before_any_charge(make_services, payment_server) -> None:
    svc = await make_services(payments={"provider": "http", "url": payment_server.url})
    org = await org_of(svc, billing_region="FR")
    with pytest.raises(FundingRefused, match="region GB differs from its billing-address region FR"):
        await fund_once(svc, org, 50 * UNIT)
    assert payment_server.requests == []
    assert (await svc.ledger.balance(org.id)).balance == 0
    # A manual top-up is an operator's record, not a purchase: allowed.
    manual = await make_services()
    assert (await fund_once(manual, org, 50 * UNIT))["balance"] == "50.00"


def test_cli_fund_goes_through_the_configured_provider(redis_url, tmp_path) -> None:
    def cli(outcome: str, *args: str) -> subprocess.CompletedProcess[str]:
        cfg = tmp_path / f"{outcome}.toml"
        cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "{redis_url}"\n'
                       f'[payments]\nprovider = "test"\ntest_outcome = "{outcome}"\n')
        return subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(cfg)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    made = cli("succeed", "org", "create", "Acme", "--country", "GB", "--currency", "GBP", "--json")
    assert made.returncode == 0, made.stderr
    org = json.loads(made.stdout)["id"]
    ok = cli("succeed", "fund", org, "60", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["balance"] == "60.00"
    declined = cli("decline", "fund", org, "60", "--json")
    assert (declined.returncode, declined.stdout) == (1, "")
    assert declined.stderr.strip() == "error: payment: payment declined: card expired"
    far = cli("succeed", "org", "create", "Far Co", "--country", "GB", "--currency", "GBP", "--billing-region", "US",
              "--json")
    refused = cli("succeed", "fund", json.loads(far.stdout)["id"], "60", "--json")
    assert refused.returncode == 1 and "differs from its billing-address region US" in refused.stderr
