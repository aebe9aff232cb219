"""Decide what pays for a call, or why it may not be placed: pure functions, no I/O.

The engine gathers the facts (organization, user, normalized destination, the rate in force) and
asks ``decide``; the answer is a ``Decision`` (credits, plan minutes or included, and whether the
call may continue on credits when minutes run out) or a ``Refusal`` carrying its SIP status.
SPEC section 2 lists what draws on credits; section 3 the order of the checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dialplans import Destination, NumberClass, coverage, get_plan

from rating_core import Rate

from gateway.credit.errors import Refusal, refusal

__all__ = ["Decision", "decide", "Direction"]

Direction = Literal["outbound", "inbound_tollfree", "dialout"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What pays: ``credits``, ``plan`` (minutes of ``bucket``, '<plan>:<bucket>') or ``included``."""

    pays: Literal["credits", "plan", "included"]
    bucket: str = ""
    licence: bool = False
    emergency: bool = False
    reason: str = ""


def decide(
    *,
    destination: Destination,
    rate: Rate | None,
    org_currency: str,
    direction: Direction,
    user_licence: bool | None,
    user_plan: str | None,
    user_country: str | None,
    blocked_classes: tuple[str, ...] = (),
    blocked_prefixes: tuple[str, ...] = (),
) -> Decision | Refusal:
    """``user_licence`` None means the caller is not a known user of the organization."""
    cls = destination.number_class
    # Emergency calls always pass: no user, licence, balance or block can stop them.
    if cls is NumberClass.EMERGENCY:
        return Decision(pays="included", emergency=True, reason="emergency call")
    if cls is NumberClass.INVALID:
        return refusal("invalid_number")
    if cls is NumberClass.EXTENSION:
        return refusal("not_pstn")

    if direction == "inbound_tollfree":
        # The organization owning the toll-free number pays every inbound minute from credits.
        rated = _rated(rate, org_currency)
        if rated is not None:
            return rated
        return Decision(pays="credits", licence=True, reason="inbound toll-free call")

    if cls.value in blocked_classes or any(destination.number.lstrip("+").startswith(p) for p in blocked_prefixes):
        return refusal("blocked")
    if user_licence is None or user_plan is None or user_country is None:
        return refusal("unknown_user")

    cover = coverage(get_plan(user_plan), destination, user_country=user_country,
                     conference_dialout=direction == "dialout")
    if cover.kind == "included":
        return Decision(pays="included", reason=cover.reason)
    if cover.kind == "plan":
        # Minutes first; credits after them only with a licence and a rate to charge by.
        may_switch = user_licence and rate is not None and rate.currency == org_currency
        return Decision(pays="plan", bucket=f"{user_plan}:{cover.bucket}", licence=may_switch,
                        reason=cover.reason)
    if not user_licence:
        return refusal("no_licence")
    rated = _rated(rate, org_currency)
    if rated is not None:
        return rated
    return Decision(pays="credits", licence=True, reason=cover.reason)


def _rated(rate: Rate | None, currency: str) -> Refusal | None:
    if rate is None:
        return refusal("not_rated")
    if rate.currency != currency:
        return refusal("currency")
    return None
