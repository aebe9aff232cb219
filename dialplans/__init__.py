"""Dial plans: normalize dialed strings to E.164, classify them, and decide what plan pays."""

from __future__ import annotations

from .classify import NumberClass, classify
from .emergency import emergency_numbers
from .errors import (
    DialplanError,
    IncompleteNumber,
    InvalidDialPlan,
    InvalidNumber,
    UnknownCountry,
    UnknownPlan,
)
from .normalize import Destination, DialPlan, normalize
from .plans import (
    CallingPlan,
    Coverage,
    coverage,
    get_plan,
    is_included,
    monthly_minutes,
    plan_ids,
    zone_a,
)

__all__ = [
    "CallingPlan",
    "Coverage",
    "Destination",
    "DialPlan",
    "DialplanError",
    "IncompleteNumber",
    "InvalidDialPlan",
    "InvalidNumber",
    "NumberClass",
    "UnknownCountry",
    "UnknownPlan",
    "classify",
    "coverage",
    "emergency_numbers",
    "get_plan",
    "is_included",
    "monthly_minutes",
    "normalize",
    "plan_ids",
    "zone_a",
]
