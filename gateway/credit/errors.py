"""Credit refusals: why a call may not be placed, with the SIP status and reason it maps to."""

from __future__ import annotations

from dataclasses import dataclass

from rating_core.errors import CreditgateError

__all__ = ["Refusal", "CreditRefused", "REFUSALS"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """A decision not to authorize: ``code`` is stable (API, metrics), ``reason`` is for people."""

    code: str
    status: int
    reason: str
    retry_after: int | None = None


# SPEC 3.6: 402 for no credit, 403 for what the organization is not allowed, 404/484 for bad
# numbers, 503 (with Retry-After) when the ledger is unreachable or the gateway is overloaded.
REFUSALS: dict[str, tuple[int, str]] = {
    "no_credit": (402, "insufficient credit"),
    "daily_limit": (403, "daily spend limit reached"),
    "concurrency": (403, "concurrent call limit reached"),
    "no_licence": (403, "no communications credits licence"),
    "no_minutes": (403, "calling plan minutes used up and no credits licence"),
    "blocked": (403, "destination blocked"),
    "not_rated": (403, "destination not rated"),
    "currency": (403, "no rate in the organization's currency"),
    "unknown_user": (403, "unknown calling user"),
    "unknown_source": (403, "unknown source"),
    "invalid_number": (404, "invalid number"),
    "incomplete_number": (484, "address incomplete"),
    "not_pstn": (404, "not a PSTN number"),
    "ledger_unavailable": (503, "ledger unavailable"),
    "overload": (503, "overloaded"),
}


def refusal(code: str, *, reason: str | None = None, retry_after: int | None = None) -> Refusal:
    status, text = REFUSALS[code]
    return Refusal(code=code, status=status, reason=reason or text, retry_after=retry_after)


class CreditRefused(CreditgateError):
    """Raised by the credit engine when a call is not authorized."""

    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal
        self.status_hint = refusal.status
        super().__init__(f"{refusal.status} {refusal.reason}")
