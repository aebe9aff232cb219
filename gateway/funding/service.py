"""One-time funding: check the minimum, buy through the payment provider if one is configured, fund the ledger.

With ``[payments] provider = "manual"`` (the default) a funding records an operator's top-up.
With ``http`` or ``test`` it is a purchase: refused when the organization's region differs from
its billing-address region, charged through the provider under one idempotency key, and added to
the ledger (under that same key, so a retried request funds once) only when the provider says
it succeeded.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from rating_core.money import format_money

from gateway.directory import Org
from gateway.errors import InvalidInput
from gateway.funding.providers import PaymentProvider, PurchaseRequest, make_provider

if TYPE_CHECKING:
    from gateway.services import Services

__all__ = ["FundingRefused", "PaymentDeclined", "fund_once", "region_problem"]


class FundingRefused(InvalidInput):
    """A funding request below the minimum, too large, or not allowed for the organization."""


class PaymentDeclined(FundingRefused):
    """The payment provider declined the purchase (e.g. an expired card); nothing was funded."""

    status_hint = 402


def region_problem(org: Org) -> str:
    """Why a purchase for ``org`` is refused on region grounds, or '' when it is allowed."""
    if org.country != org.billing_region:
        return (f"purchases are refused: the organization's region {org.country} differs from its "
                f"billing-address region {org.billing_region}")
    return ""


async def fund_once(svc: "Services", org: Org, amount: int, *, idempotency_key: str = "",
                    provider: PaymentProvider | None = None) -> dict[str, Any]:
    """Add ``amount`` micro-units (at least the organization's minimum funding).

    ``provider`` overrides the one ``[payments]`` configures (the HTTP API keeps one open).
    Raises ``FundingRefused`` (nothing charged), ``PaymentDeclined``, or ``PaymentUnavailable``
    (the provider gave no answer: nothing funded; retrying with the same ``idempotency_key`` is safe).
    """
    if amount < org.min_funding:
        raise FundingRefused(
            f"funding must be at least {format_money(org.min_funding)} {org.currency}", "amount")
    own = provider is None
    if own:
        provider = make_provider(svc.config.payments)
    if provider is None:
        key = idempotency_key or f"manual-{uuid.uuid4().hex}"
        return await _fund(svc, org, amount, kind="fund", key=key, note="manual top-up")
    try:
        problem = region_problem(org)
        if problem:
            raise FundingRefused(problem, "org")
        key = idempotency_key or f"purchase:{org.id}:{uuid.uuid4().hex}"
        outcome = await provider.purchase(PurchaseRequest(idempotency_key=key, org=org.id, amount=amount,
                                                          currency=org.currency, reason="funding"))
    finally:
        if own:
            await provider.close()
    if not outcome.succeeded:
        raise PaymentDeclined(f"payment declined: {outcome.reason}", "payment")
    result = await _fund(svc, org, amount, kind="purchase", key=key, note=f"purchase {outcome.id}".strip())
    result["payment_id"] = outcome.id
    return result


async def _fund(svc: "Services", org: Org, amount: int, *, kind: str, key: str, note: str) -> dict[str, Any]:
    result = await svc.ledger.fund(org.id, amount, kind=kind, idempotency_key=key, note=note)
    if not result.ok:
        raise FundingRefused(
            "the balance would exceed the largest balance the ledger holds" if result.reason == "too_large"
            else f"funding refused: {result.reason}", "amount")
    return {"org": org.id, "funded": format_money(result.amount), "balance": format_money(result.balance),
            "currency": org.currency}
