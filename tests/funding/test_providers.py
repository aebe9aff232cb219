"""Payment providers: the HTTP contract against a real local server, retries, and the scripted test provider."""

from __future__ import annotations

import pytest

from gateway.config import PaymentsConfig
from gateway.funding.providers import (
    HttpProvider,
    PaymentError,
    PaymentUnavailable,
    PurchaseRequest,
    TestProvider,
    make_provider,
)

REQ = PurchaseRequest(idempotency_key="recharge:acme:1-0", org="acme", amount=50_000_000, currency="GBP",
                      reason="auto-recharge")


def http(server, **kw) -> HttpProvider:
    args = {"timeout_s": 0.3, "retries": 3, "backoff_s": 0.01}
    args.update(kw)
    return HttpProvider(server.url, **args)


async def test_http_purchase_sends_the_contract_and_reads_the_answer(payment_server) -> None:
    p = http(payment_server)
    try:
        outcome = await p.purchase(REQ)
    finally:
        await p.close()
    assert (outcome.status, outcome.id, outcome.succeeded) == ("succeeded", "pay_1", True)
    assert payment_server.requests == [{"idempotency_key": "recharge:acme:1-0", "org": "acme", "amount": "50.00",
                                        "currency": "GBP", "reason": "auto-recharge"}]
    assert payment_server.headers == ["recharge:acme:1-0"]


async def test_http_decline_carries_the_providers_reason(payment_server) -> None:
    payment_server.default = "decline"
    p = http(payment_server)
    try:
        outcome = await p.purchase(REQ)
    finally:
        await p.close()
    assert (outcome.status, outcome.reason, outcome.succeeded) == ("declined", "card expired", False)


@pytest.mark.parametrize("failures", [["timeout"], ["500", "timeout", "500"]], ids=["timeout", "mixed"])
async def test_http_retries_timeouts_and_5xx_with_the_same_idempotency_key(payment_server, failures) -> None:
    payment_server.script = list(failures)
    p = http(payment_server)
    try:
        outcome = await p.purchase(REQ)
    finally:
        await p.close()
    assert outcome.succeeded
    assert payment_server.keys() == [REQ.idempotency_key] * (len(failures) + 1)
    assert set(payment_server.headers) == {REQ.idempotency_key}


async def test_http_gives_up_after_its_retries_as_unavailable(payment_server) -> None:
    payment_server.default = "500"
    p = http(payment_server, retries=2)
    try:
        with pytest.raises(PaymentUnavailable, match="500"):
            await p.purchase(REQ)
    finally:
        await p.close()
    assert len(payment_server.requests) == 3


async def test_http_4xx_is_final_and_not_retried(payment_server) -> None:
    payment_server.default = "400"
    p = http(payment_server)
    try:
        with pytest.raises(PaymentError, match="400") as info:
            await p.purchase(REQ)
    finally:
        await p.close()
    assert not isinstance(info.value, PaymentUnavailable)
    assert len(payment_server.requests) == 1


async def test_http_unreachable_provider_is_unavailable() -> None:
    from _procs import free_port

    p = HttpProvider(f"http://127.0.0.1:{free_port()}", timeout_s=1.0, retries=0, backoff_s=0.01)
    try:
        with pytest.raises(PaymentUnavailable, match="unreachable"):
            await p.purchase(REQ)
    finally:
        await p.close()


@pytest.mark.parametrize(("outcome", "status", "reason"), [("succeed", "succeeded", ""),
                                                           ("decline", "declined", "card expired")])
async def test_test_provider_is_scripted_and_answers_replays_alike(outcome, status, reason) -> None:
    p = make_provider(PaymentsConfig(provider="test", test_outcome=outcome))
    assert isinstance(p, TestProvider)
    first = await p.purchase(REQ)
    assert (first.status, first.reason) == (status, reason)
    assert await p.purchase(REQ) == first
    assert len(p.requests) == 2


async def test_test_provider_timeout_and_manual_has_no_provider() -> None:
    with pytest.raises(PaymentUnavailable, match="timed out"):
        await TestProvider("timeout").purchase(REQ)
    assert make_provider(PaymentsConfig()) is None
