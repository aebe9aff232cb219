"""Calling plans and included conference zones: what pays for a destination, as data.

The rules of ``coverage`` (SPEC section 2), first match wins:

=====================================  ============================================
destination                            pays
=====================================  ============================================
emergency                              included, always (never charged)
extension                              included (never leaves the PBX)
premium rate                           credits, always
toll-free in the user's own country    included (free to the caller)
toll-free elsewhere (+800 UIFN too)    credits
conference dial-out                    included in zone A, else credits
domestic (region == user country)      plan "domestic" bucket if covered, else credits
international                          plan "international" bucket if covered, else credits
=====================================  ============================================

"Domestic" is decided against the user's country, not the dial plan's, so a user abroad on a
plan of his own country is charged as he would be at home.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final, Literal

import phonenumbers

from ._data import check_country, load_toml
from .classify import NumberClass
from .errors import DialplanError, InvalidDialPlan, InvalidNumber, UnknownPlan
from .normalize import Destination

__all__ = [
    "BUCKETS",
    "Bucket",
    "CallingPlan",
    "Coverage",
    "CoverageKind",
    "coverage",
    "get_plan",
    "is_included",
    "monthly_minutes",
    "plan_ids",
    "zone_a",
]

Bucket = Literal["domestic", "international"]
CoverageKind = Literal["included", "plan", "credits"]
BUCKETS: Final[tuple[Bucket, ...]] = ("domestic", "international")
_KINDS: Final = frozenset({"included", "plan", "credits"})
_PLAN_KEYS: Final = frozenset(
    {
        "name",
        "covers",
        "domestic_minutes_default",
        "domestic_minutes_by_country",
        "international_minutes",
    }
)
_GEOGRAPHIC_CLASSES: Final = frozenset(
    {NumberClass.DOMESTIC_FIXED, NumberClass.DOMESTIC_MOBILE, NumberClass.INTERNATIONAL}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallingPlan:
    """A calling plan: monthly minutes per user, by bucket, and which buckets it covers."""

    id: str
    name: str
    covers: frozenset[Bucket]
    domestic_minutes_default: int
    # Read-only view; excluded from the hash because mappings are unhashable.
    domestic_minutes_by_country: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    international_minutes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Coverage:
    """What pays for a destination: ``included``, the plan's minutes (``bucket``), or ``credits``."""

    kind: CoverageKind
    bucket: Bucket | None = None
    reason: str

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise DialplanError(f"coverage kind must be one of {sorted(_KINDS)}, got {self.kind!r}")
        if (self.kind == "plan") != (self.bucket in BUCKETS):
            raise DialplanError(f"a bucket goes with kind 'plan' only: {self.kind!r}, {self.bucket!r}")


def get_plan(plan_id: str) -> CallingPlan:
    """The calling plan ``plan_id``; ``UnknownPlan`` when ``data/plans.toml`` has none."""
    plan = _plans().get(plan_id) if isinstance(plan_id, str) else None
    if plan is None:
        raise UnknownPlan(f"unknown calling plan {plan_id!r}; known: {', '.join(plan_ids())}")
    return plan


def plan_ids() -> tuple[str, ...]:
    """Ids of every calling plan, in the order of the data file."""
    return tuple(_plans())


def zone_a() -> frozenset[str]:
    """Regions whose conference dial-out the audio-conferencing subscription includes."""
    return _zone_a()


def monthly_minutes(plan: CallingPlan | str, bucket: Bucket, user_country: str) -> int:
    """Minutes per user per month that ``plan`` grants in ``bucket`` to a user in ``user_country``."""
    plan = _as_plan(plan)
    country = check_country(user_country)
    if bucket not in BUCKETS:
        raise DialplanError(f"bucket must be one of {BUCKETS}, got {bucket!r}")
    if bucket not in plan.covers:
        return 0
    if bucket == "international":
        return plan.international_minutes
    return plan.domestic_minutes_by_country.get(country, plan.domestic_minutes_default)


def coverage(
    plan: CallingPlan | str,
    destination: Destination,
    *,
    user_country: str,
    conference_dialout: bool = False,
) -> Coverage:
    """What pays for a call to ``destination`` by a user in ``user_country`` on ``plan``."""
    plan = _as_plan(plan)
    country = check_country(user_country)
    number_class = destination.number_class
    if number_class is NumberClass.EMERGENCY:
        return Coverage(kind="included", reason="emergency call")
    if number_class is NumberClass.EXTENSION:
        return Coverage(kind="included", reason="internal extension")
    if number_class is NumberClass.PREMIUM_RATE:
        return Coverage(kind="credits", reason="premium-rate number")
    if number_class is NumberClass.TOLL_FREE:
        if _in_country(destination, country):
            return Coverage(kind="included", reason="domestic toll-free number")
        return Coverage(kind="credits", reason="toll-free number outside the user's country")
    if number_class not in _GEOGRAPHIC_CLASSES:
        raise InvalidNumber(f"no coverage for a destination of class {number_class.value}")
    if conference_dialout:
        if destination.region in _zone_a():
            return Coverage(kind="included", reason="conference dial-out to zone A")
        return Coverage(kind="credits", reason="conference dial-out outside zone A")
    bucket: Bucket = "domestic" if _in_country(destination, country) else "international"
    if bucket in plan.covers:
        return Coverage(kind="plan", bucket=bucket, reason=f"{bucket} minutes of {plan.name}")
    return Coverage(kind="credits", reason=f"{bucket} call not covered by {plan.name}")


def is_included(
    plan: CallingPlan | str,
    destination: Destination,
    *,
    user_country: str,
    conference_dialout: bool = False,
) -> bool:
    """True when the call uses neither credits nor plan minutes."""
    found = coverage(
        plan, destination, user_country=user_country, conference_dialout=conference_dialout
    )
    return found.kind == "included"


def _in_country(destination: Destination, country: str) -> bool:
    """True when ``destination`` is a number of ``country``.

    Asked again rather than read off ``destination.region``: the destination was classified for
    the dial plan's country, and the user may be elsewhere; shared ranges (NANP 8xx) belong to
    every region of their country code.
    """
    if destination.region == country:
        return True
    if not destination.number.startswith("+"):
        return False
    try:
        number = phonenumbers.parse(destination.number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number_for_region(number, country)


def _as_plan(plan: CallingPlan | str) -> CallingPlan:
    return plan if isinstance(plan, CallingPlan) else get_plan(plan)


@lru_cache(maxsize=1)
def _zone_a() -> frozenset[str]:
    zones = load_toml("plans.toml").get("zones")
    regions = zones.get("zone_a") if isinstance(zones, dict) else None
    if not isinstance(regions, list) or not regions:
        raise InvalidDialPlan("data/plans.toml: [zones] zone_a must be a non-empty list")
    return frozenset(check_country(region) for region in regions)


@lru_cache(maxsize=1)
def _plans() -> Mapping[str, CallingPlan]:
    raw = load_toml("plans.toml").get("plans")
    if not isinstance(raw, dict) or not raw:
        raise InvalidDialPlan("data/plans.toml: no [plans.<id>] tables")
    return MappingProxyType({plan_id: _plan_from_toml(plan_id, body) for plan_id, body in raw.items()})


def _plan_from_toml(plan_id: str, body: Any) -> CallingPlan:
    where = f"data/plans.toml [plans.{plan_id}]"
    if not isinstance(body, dict) or set(body) != _PLAN_KEYS:
        raise InvalidDialPlan(f"{where}: keys must be {sorted(_PLAN_KEYS)}")
    covers = body["covers"]
    if not isinstance(covers, list) or not set(covers) <= set(BUCKETS):
        raise InvalidDialPlan(f"{where}: covers must list buckets among {BUCKETS}")
    by_country = body["domestic_minutes_by_country"]
    if not isinstance(by_country, dict):
        raise InvalidDialPlan(f"{where}: domestic_minutes_by_country must be a table")
    minutes = [body["domestic_minutes_default"], body["international_minutes"], *by_country.values()]
    if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in minutes):
        raise InvalidDialPlan(f"{where}: minutes must be non-negative integers")
    # A covered bucket without minutes (or minutes in an uncovered one) is a data-entry slip.
    if ("international" in covers) != (body["international_minutes"] > 0):
        raise InvalidDialPlan(f"{where}: international minutes and covers disagree")
    if ("domestic" in covers) != (body["domestic_minutes_default"] > 0):
        raise InvalidDialPlan(f"{where}: domestic minutes and covers disagree")
    return CallingPlan(
        id=plan_id,
        name=str(body["name"]),
        covers=frozenset(covers),
        domestic_minutes_default=body["domestic_minutes_default"],
        domestic_minutes_by_country=MappingProxyType(
            {check_country(country): value for country, value in by_country.items()}
        ),
        international_minutes=body["international_minutes"],
    )
