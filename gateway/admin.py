"""What an administrator reads and changes, as plain JSON-able views: one implementation for the CLI and the API.

Each function takes the service layer and an organization and returns the dicts both faces print or
send (money as decimal strings in the account currency, times ISO 8601 UTC), or raises a
``CreditgateError`` that carries what went wrong (``InvalidInput`` with its field, ``NotFound``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rating_core.money import format_money

from gateway.directory import Org
from gateway.errors import InvalidInput

if TYPE_CHECKING:
    from gateway.services import Services

__all__ = ["balance_view", "ledger_view", "configure_recharge", "recharge_view"]


async def balance_view(svc: "Services", org: Org) -> dict[str, Any]:
    """SPEC 9: ``{"balance", "reserved", "available", "currency"}``."""
    b = await svc.ledger.balance(org.id)
    return {"balance": format_money(b.balance), "reserved": format_money(b.reserved),
            "available": format_money(b.available), "currency": org.currency}


async def ledger_view(svc: "Services", org: Org, *, start: str = "-", end: str = "+",
                      limit: int | None = None) -> list[dict[str, Any]]:
    """Audit entries between two stream ids (``-``/``+``: the ends), oldest first, at most ``limit``."""
    entries = await svc.ledger.audit_entries(org.id, start=start, end=end)
    if limit is not None:
        entries = entries[:limit]
    return [
        {"id": eid, "ts": e["ts"], "type": e["type"], "amount": format_money(int(e["amount"])),
         "balance": format_money(int(e["balance"])), "call": e.get("call") or None, "note": e.get("note", "")}
        for eid, e in entries
    ]


async def configure_recharge(svc: "Services", org: Org, *, threshold: int | None, amount: int | None,
                             enabled: bool = True) -> dict[str, Any]:
    """Turn auto-recharge on (threshold and amount, the amount at least the minimum funding) or off."""
    if not enabled:
        await svc.directory.recharge_off(org)
        return {"org": org.id, "enabled": False}
    if threshold is None:
        raise InvalidInput("required to turn auto-recharge on", "threshold")
    if amount is None:
        raise InvalidInput("required to turn auto-recharge on", "amount")
    if threshold < 0:
        raise InvalidInput("must not be negative", "threshold")
    if amount < org.min_funding:
        raise InvalidInput(f"recharge amount must be at least {format_money(org.min_funding)} {org.currency}",
                           "amount")
    await svc.directory.set_recharge(org, threshold=threshold, amount=amount)
    return recharge_view(org, threshold, amount)


def recharge_view(org: Org, threshold: int, amount: int) -> dict[str, Any]:
    return {"org": org.id, "enabled": True, "threshold": format_money(threshold), "amount": format_money(amount),
            "currency": org.currency}
