"""One-time funding: check the minimum, then add the money through the ledger's fund script."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from rating_core.money import format_money

from gateway.errors import ConfigError, InvalidInput
from gateway.directory import Org

if TYPE_CHECKING:
    from gateway.services import Services

__all__ = ["FundingRefused", "fund_once"]


class FundingRefused(InvalidInput):
    """A funding request below the minimum, too large, or not allowed for the organization."""


async def fund_once(svc: "Services", org: Org, amount: int, *, idempotency_key: str = "") -> dict[str, Any]:
    """Add ``amount`` micro-units (at least the organization's minimum funding)."""
    if amount < org.min_funding:
        raise FundingRefused(
            f"funding must be at least {format_money(org.min_funding)} {org.currency}", "amount")
    provider = svc.config.payments.provider
    if provider != "manual":
        raise ConfigError(f"payment provider {provider!r} is not available in this version")
    key = idempotency_key or f"manual-{uuid.uuid4().hex}"
    result = await svc.ledger.fund(org.id, amount, kind="fund", idempotency_key=key,
                                   note="manual top-up")
    if not result.ok:
        raise FundingRefused(
            "the balance would exceed the largest balance the ledger holds" if result.reason == "too_large"
            else f"funding refused: {result.reason}", "amount")
    return {"org": org.id, "funded": format_money(result.amount), "balance": format_money(result.balance),
            "currency": org.currency}
