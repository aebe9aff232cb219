"""What pays for a call, or why not: the pure policy, table-driven (no Redis, no sockets)."""

from __future__ import annotations

import pytest

from dialplans import DialPlan, normalize
from rating_core import Rate

from gateway.credit.errors import Refusal
from gateway.credit.policy import Decision, decide

GB = DialPlan.for_country("GB")


def rate(currency: str = "GBP") -> Rate:
    return Rate(prefix="44", destination="UK", rate_per_min=20_000, currency=currency, initial_increment_s=60,
                subsequent_increment_s=60, connection_fee=0, effective_from=0)


def dest(dialed: str):
    return normalize(dialed, GB)


USER = {"user_licence": True, "user_plan": "domestic", "user_country": "GB"}
NO_LICENCE = {"user_licence": False, "user_plan": "domestic", "user_country": "GB"}
NO_PLAN = {"user_licence": True, "user_plan": "none", "user_country": "GB"}
NO_PLAN_NO_LICENCE = {"user_licence": False, "user_plan": "none", "user_country": "GB"}
INTL_PLAN = {"user_licence": False, "user_plan": "domestic_international", "user_country": "GB"}
UNKNOWN = {"user_licence": None, "user_plan": None, "user_country": None}


@pytest.mark.parametrize(
    "dialed,user,direction,expected",
    [
        # emergency always passes, whoever calls, in every dialing form
        ("999", UNKNOWN, "outbound", ("included", "", True)),
        ("9999", NO_PLAN_NO_LICENCE, "outbound", ("included", "", True)),
        ("112", USER, "outbound", ("included", "", True)),
        # domestic on a domestic plan: minutes first, credits after them with a licence
        ("02079460000", USER, "outbound", ("plan", "domestic:domestic", False)),
        ("02079460000", NO_LICENCE, "outbound", ("plan", "domestic:domestic", False)),
        # international on a domestic-only plan: credits (needs a licence)
        ("0012125550123", USER, "outbound", ("credits", "", False)),
        ("0012125550123", NO_LICENCE, "outbound", 403),
        # international inside a domestic-and-international plan: its international minutes
        ("0012125550123", INTL_PLAN, "outbound", ("plan", "domestic_international:international", False)),
        # no plan at all: everything payable goes to credits
        ("02079460000", NO_PLAN, "outbound", ("credits", "", False)),
        ("02079460000", NO_PLAN_NO_LICENCE, "outbound", 403),
        # premium rate: the organization pays, from credits
        ("09098790000", USER, "outbound", ("credits", "", False)),
        # conference dial-out: zone A included, elsewhere credits
        ("+12125550123", NO_PLAN_NO_LICENCE, "dialout", ("included", "", False)),
        ("+2348021234567", NO_PLAN, "dialout", ("credits", "", False)),
        # an unknown caller places nothing but emergency calls
        ("02079460000", UNKNOWN, "outbound", 403),
        # bad numbers
        ("02079", USER, "outbound", 484),
        ("+999999", USER, "outbound", 404),
        # inbound toll-free is billed to the owning organization, no licence needed
        ("+448000000000", UNKNOWN, "inbound_tollfree", ("credits", "", False)),
    ],
)
def test_decide(dialed: str, user: dict, direction: str, expected) -> None:
    from dialplans import DialplanError

    try:
        destination = dest(dialed)
    except DialplanError as exc:
        assert exc.status_hint == expected
        return
    verdict = decide(destination=destination, rate=rate(), org_currency="GBP", direction=direction, **user)
    if isinstance(expected, int):
        assert isinstance(verdict, Refusal)
        assert verdict.status == expected
    else:
        assert isinstance(verdict, Decision)
        assert (verdict.pays, verdict.bucket, verdict.emergency) == expected


def test_plan_call_may_continue_on_credits_only_with_licence_and_a_rate() -> None:
    d = dest("02079460000")
    with_licence = decide(destination=d, rate=rate(), org_currency="GBP", direction="outbound", **USER)
    without = decide(destination=d, rate=rate(), org_currency="GBP", direction="outbound", **NO_LICENCE)
    unrated = decide(destination=d, rate=None, org_currency="GBP", direction="outbound", **USER)
    assert isinstance(with_licence, Decision) and with_licence.licence is True
    assert isinstance(without, Decision) and without.licence is False
    assert isinstance(unrated, Decision) and unrated.licence is False


@pytest.mark.parametrize(
    "kwargs,code,status",
    [
        ({"rate": None}, "not_rated", 403),
        ({"rate": rate("USD")}, "currency", 403),
        ({"blocked_classes": ("international",)}, "blocked", 403),
        ({"blocked_prefixes": ("1212",)}, "blocked", 403),
    ],
)
def test_refusals_carry_code_and_status(kwargs: dict, code: str, status: int) -> None:
    args = {"destination": dest("0012125550123"), "rate": rate(), "org_currency": "GBP", "direction": "outbound",
            **USER}
    args.update(kwargs)
    verdict = decide(**args)
    assert isinstance(verdict, Refusal)
    assert (verdict.code, verdict.status) == (code, status)
    assert verdict.reason


def test_blocks_never_stop_an_emergency_call() -> None:
    verdict = decide(destination=dest("999"), rate=None, org_currency="GBP", direction="outbound",
                     blocked_classes=("emergency", "domestic_fixed"), blocked_prefixes=("",), **UNKNOWN)
    assert isinstance(verdict, Decision) and verdict.emergency
