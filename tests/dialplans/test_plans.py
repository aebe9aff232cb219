"""Calling plans and conference zones: the coverage table, minutes, and the plan data file."""

from __future__ import annotations

import pytest

from dialplans import (
    CallingPlan,
    Coverage,
    Destination,
    DialPlan,
    DialplanError,
    InvalidNumber,
    NumberClass,
    UnknownCountry,
    UnknownPlan,
    coverage,
    get_plan,
    is_included,
    monthly_minutes,
    normalize,
    plan_ids,
    zone_a,
)

US = DialPlan.for_country("US", extension_lengths=(4,))
GB = DialPlan.for_country("GB")

EMERGENCY = normalize("911", US)
EXTENSION = normalize("2001", US)
US_FIXED = normalize("201 555 0123", US)
US_TOLL_FREE = normalize("1 800 234 5678", US)
US_PREMIUM = normalize("1 900 234 5678", US)
GB_FIXED = normalize("011 44 20 7946 0000", US)
GB_MOBILE = normalize("011 44 7400 123456", US)
GB_TOLL_FREE = normalize("011 44 800 123 4567", US)
GB_PREMIUM = normalize("011 44 901 234 5678", US)
UIFN = normalize("+800 1234 5678", US)
NIGERIA = normalize("+234 802 123 4567", US)  # not in zone A
CANADA = normalize("+1 506 234 5678", US)

NONE, DOMESTIC, BOTH = "none", "domestic", "domestic_international"
INCLUDED = ("included", None)
CREDITS = ("credits", None)
PLAN_DOMESTIC = ("plan", "domestic")
PLAN_INTERNATIONAL = ("plan", "international")


def test_destinations_are_what_the_table_assumes() -> None:
    assert EMERGENCY.number_class is NumberClass.EMERGENCY
    assert EXTENSION.number_class is NumberClass.EXTENSION
    assert US_FIXED.number_class is NumberClass.DOMESTIC_FIXED
    assert US_TOLL_FREE.number_class is NumberClass.TOLL_FREE
    assert US_PREMIUM.number_class is NumberClass.PREMIUM_RATE
    assert GB_FIXED.number_class is NumberClass.INTERNATIONAL
    assert GB_TOLL_FREE.number_class is NumberClass.TOLL_FREE
    assert GB_PREMIUM.number_class is NumberClass.PREMIUM_RATE
    assert UIFN.number_class is NumberClass.TOLL_FREE
    assert NIGERIA.region == "NG"
    assert CANADA.region == "CA"


# (plan, destination, user country, conference dial-out) -> (kind, bucket)
COVERAGE_TABLE = [
    # Emergency: included whatever the plan, even from a conference.
    (NONE, EMERGENCY, "US", False, INCLUDED),
    (BOTH, EMERGENCY, "US", False, INCLUDED),
    (NONE, EMERGENCY, "US", True, INCLUDED),
    # Extensions never reach the PSTN.
    (NONE, EXTENSION, "US", False, INCLUDED),
    (DOMESTIC, EXTENSION, "US", True, INCLUDED),
    # Premium rate: credits always, even domestic, on every plan and from a conference.
    (NONE, US_PREMIUM, "US", False, CREDITS),
    (DOMESTIC, US_PREMIUM, "US", False, CREDITS),
    (BOTH, US_PREMIUM, "US", False, CREDITS),
    (BOTH, US_PREMIUM, "US", True, CREDITS),
    (BOTH, GB_PREMIUM, "US", False, CREDITS),
    (BOTH, GB_PREMIUM, "GB", False, CREDITS),
    # Toll-free: free in the user's own country, credits elsewhere (UIFN has no country).
    (NONE, US_TOLL_FREE, "US", False, INCLUDED),
    (NONE, US_TOLL_FREE, "CA", False, INCLUDED),  # NANP toll-free is Canadian too
    (BOTH, US_TOLL_FREE, "GB", False, CREDITS),
    (NONE, GB_TOLL_FREE, "US", False, CREDITS),
    (NONE, GB_TOLL_FREE, "GB", False, INCLUDED),
    (BOTH, UIFN, "US", False, CREDITS),
    (NONE, US_TOLL_FREE, "US", True, INCLUDED),
    # Conference dial-out: included in zone A, credits outside, whatever the calling plan.
    (NONE, US_FIXED, "US", True, INCLUDED),
    (NONE, GB_FIXED, "US", True, INCLUDED),
    (NONE, GB_MOBILE, "DE", True, INCLUDED),
    (BOTH, NIGERIA, "US", True, CREDITS),
    (NONE, NIGERIA, "NG", True, CREDITS),
    # Domestic: the plan's domestic minutes when it has them.
    (NONE, US_FIXED, "US", False, CREDITS),
    (DOMESTIC, US_FIXED, "US", False, PLAN_DOMESTIC),
    (BOTH, US_FIXED, "US", False, PLAN_DOMESTIC),
    (DOMESTIC, GB_MOBILE, "GB", False, PLAN_DOMESTIC),  # a GB user dialing through a US plan
    # International: the plan's international minutes when it has them.
    (NONE, GB_FIXED, "US", False, CREDITS),
    (DOMESTIC, GB_FIXED, "US", False, CREDITS),
    (BOTH, GB_FIXED, "US", False, PLAN_INTERNATIONAL),
    (BOTH, GB_MOBILE, "US", False, PLAN_INTERNATIONAL),
    (DOMESTIC, CANADA, "US", False, CREDITS),  # US to Canada is international
    (BOTH, CANADA, "US", False, PLAN_INTERNATIONAL),
    (DOMESTIC, CANADA, "CA", False, PLAN_DOMESTIC),
    (DOMESTIC, US_FIXED, "GB", False, CREDITS),  # a GB user calling the US
]


@pytest.mark.parametrize(
    ("plan_id", "destination", "user_country", "dialout", "expected"), COVERAGE_TABLE
)
def test_coverage_table(
    plan_id: str,
    destination: Destination,
    user_country: str,
    dialout: bool,
    expected: tuple[str, str | None],
) -> None:
    found = coverage(
        get_plan(plan_id), destination, user_country=user_country, conference_dialout=dialout
    )
    assert (found.kind, found.bucket) == expected
    assert found.reason
    included = is_included(
        plan_id, destination, user_country=user_country, conference_dialout=dialout
    )
    assert included is (expected == INCLUDED)


def test_coverage_reasons() -> None:
    assert coverage(BOTH, EMERGENCY, user_country="US").reason == "emergency call"
    assert coverage(BOTH, US_PREMIUM, user_country="US").reason == "premium-rate number"
    assert (
        coverage(DOMESTIC, US_FIXED, user_country="US").reason
        == "domestic minutes of Domestic Calling Plan"
    )
    assert (
        coverage(NONE, GB_FIXED, user_country="US", conference_dialout=True).reason
        == "conference dial-out to zone A"
    )


def test_invalid_destinations_have_no_coverage() -> None:
    invalid = Destination(
        dialed="x", number="x", number_class=NumberClass.INVALID, region=None, country_code=None
    )
    with pytest.raises(InvalidNumber):
        coverage(BOTH, invalid, user_country="US")


def test_coverage_validates_the_user_country_and_plan() -> None:
    with pytest.raises(UnknownCountry):
        coverage(BOTH, US_FIXED, user_country="XX")
    with pytest.raises(UnknownPlan):
        coverage("gold", US_FIXED, user_country="US")


@pytest.mark.parametrize(
    ("plan_id", "bucket", "country", "minutes"),
    [
        (DOMESTIC, "domestic", "US", 3000),
        (DOMESTIC, "domestic", "CA", 3000),
        (DOMESTIC, "domestic", "PR", 3000),
        (DOMESTIC, "domestic", "GB", 1200),
        (DOMESTIC, "domestic", "DE", 1200),
        (DOMESTIC, "domestic", "jp", 1200),
        (DOMESTIC, "international", "US", 0),
        (BOTH, "domestic", "US", 3000),
        (BOTH, "domestic", "FR", 1200),
        (BOTH, "international", "US", 600),
        (BOTH, "international", "GB", 600),
        (NONE, "domestic", "US", 0),
        (NONE, "international", "US", 0),
    ],
)
def test_monthly_minutes(plan_id: str, bucket: str, country: str, minutes: int) -> None:
    assert monthly_minutes(get_plan(plan_id), bucket, country) == minutes  # type: ignore[arg-type]
    assert monthly_minutes(plan_id, bucket, country) == minutes  # type: ignore[arg-type]


def test_monthly_minutes_refuses_unknown_buckets_and_countries() -> None:
    with pytest.raises(DialplanError):
        monthly_minutes(BOTH, "premium", "US")  # type: ignore[arg-type]
    with pytest.raises(UnknownCountry):
        monthly_minutes(BOTH, "domestic", "XX")


def test_plan_data() -> None:
    assert plan_ids() == ("none", "domestic", "domestic_international")
    both = get_plan(BOTH)
    assert isinstance(both, CallingPlan)
    assert both.id == BOTH
    assert both.name == "Domestic and International Calling Plan"
    assert both.covers == frozenset({"domestic", "international"})
    assert both.domestic_minutes_default == 1200
    assert dict(both.domestic_minutes_by_country) == {"US": 3000, "CA": 3000, "PR": 3000}
    assert both.international_minutes == 600
    assert get_plan(DOMESTIC).covers == frozenset({"domestic"})
    assert get_plan(NONE).covers == frozenset()
    assert hash(both) == hash(get_plan(BOTH))
    with pytest.raises(TypeError):
        both.domestic_minutes_by_country["US"] = 1  # type: ignore[index]


@pytest.mark.parametrize("plan_id", ["gold", "", "Domestic", None, 1])
def test_unknown_plans(plan_id: object) -> None:
    with pytest.raises(UnknownPlan) as info:
        get_plan(plan_id)  # type: ignore[arg-type]
    assert isinstance(info.value, DialplanError)


def test_zone_a() -> None:
    zone = zone_a()
    assert 30 <= len(zone) <= 60
    assert {"US", "CA", "GB", "IE", "DE", "FR", "ES", "IT", "NL", "BE", "AU", "JP", "PR"} <= zone
    assert not {"NG", "PK", "EG", "VE", "001"} & zone


@pytest.mark.parametrize(
    ("kind", "bucket"),
    [("plan", None), ("included", "domestic"), ("credits", "international"), ("free", None), ("plan", "roaming")],
)
def test_coverage_refuses_inconsistent_values(kind: str, bucket: str | None) -> None:
    with pytest.raises(DialplanError):
        Coverage(kind=kind, bucket=bucket, reason="x")  # type: ignore[arg-type]
