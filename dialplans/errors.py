"""Errors of the dial-plan package, each carrying the SIP status it maps to."""

from __future__ import annotations

from rating_core.errors import CreditgateError

__all__ = [
    "DialplanError",
    "InvalidNumber",
    "IncompleteNumber",
    "InvalidDialPlan",
    "UnknownCountry",
    "UnknownPlan",
]


class DialplanError(CreditgateError):
    """Root of every error the ``dialplans`` package raises.

    ``status_hint`` is the SIP status a refusal should carry and ``reason`` the short phrase for
    its ``Warning: 399`` header (SPEC section 3.6); the message of the instance says what exactly
    was wrong, for logs.
    """

    status_hint: int = 500
    reason: str = "dial plan error"


class InvalidNumber(DialplanError):
    """A dialed string that is not, and cannot become, a routable number."""

    status_hint = 404
    reason = "invalid number"


class IncompleteNumber(DialplanError):
    """A dialed string that could still become a valid number with more digits (RFC 3261 484)."""

    status_hint = 484
    reason = "address incomplete"


class InvalidDialPlan(DialplanError):
    """A dial plan, data file or calling plan that is misconfigured: our fault, hence 500."""

    status_hint = 500
    reason = "dial plan misconfigured"


class UnknownCountry(InvalidDialPlan):
    """A country that libphonenumber has no metadata for (not an ISO 3166 alpha-2 region it knows)."""

    reason = "unknown country"


class UnknownPlan(InvalidDialPlan):
    """A calling-plan id that ``data/plans.toml`` does not define."""

    reason = "unknown calling plan"
