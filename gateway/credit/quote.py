"""Answer "what does a call to +X cost for N minutes?": normalize, classify, rate, charge (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import phonenumbers

from dialplans import DialPlan, DialplanError, IncompleteNumber, normalize

from rating_core import RateDeck
from rating_core.money import format_money

from gateway.credit.errors import CreditRefused, refusal

__all__ = ["Quote", "quote"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    number: str
    number_class: str
    prefix: str
    destination: str
    rate_per_min: int
    currency: str
    initial_increment_s: int
    subsequent_increment_s: int
    connection_fee: int
    minutes: int
    charge: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "class": self.number_class,
            "prefix": "+" + self.prefix if self.prefix else "",
            "destination": self.destination,
            "rate": format_money(self.rate_per_min),
            "currency": self.currency,
            "increments": f"{self.initial_increment_s}/{self.subsequent_increment_s}",
            "connection_fee": format_money(self.connection_fee),
            "minutes": self.minutes,
            "charge": format_money(self.charge),
        }


def quote(deck: RateDeck, number: str, *, minutes: int = 1, country: str | None = None, at: Any = None) -> Quote:
    """Raise ``CreditRefused`` (404/484 for a bad number, 403 'not rated' for no rate)."""
    if minutes < 0 or minutes > 100_000:
        raise CreditRefused(refusal("invalid_number", reason="minutes must be between 0 and 100000"))
    text = number.strip()
    try:
        if country:
            dest = normalize(text, DialPlan.for_country(country.upper()))
            e164, cls = dest.number, dest.number_class.value
        else:
            if not text.startswith("+"):
                raise CreditRefused(refusal("invalid_number",
                                            reason=f"{number!r} is not in E.164 form; give --country for national numbers"))
            dest = normalize(text, DialPlan.for_country(_region_of(text)))
            e164, cls = dest.number, dest.number_class.value
    except IncompleteNumber:
        raise CreditRefused(refusal("incomplete_number")) from None
    except DialplanError as exc:
        raise CreditRefused(refusal("invalid_number", reason=f"invalid number {number!r}: {exc}")) from None
    if dest.emergency:
        # Emergency calls are never charged: say so instead of "no rate".
        return Quote(number=e164, number_class=cls, prefix="", destination="emergency services",
                     rate_per_min=0, currency="", initial_increment_s=0, subsequent_increment_s=0,
                     connection_fee=0, minutes=minutes, charge=0)
    rate = deck.lookup(e164, at) if e164.startswith("+") else None
    if rate is None:
        raise CreditRefused(refusal("not_rated", reason=f"no rate for {e164}: unknown destination"))
    return Quote(
        number=e164,
        number_class=cls,
        prefix=rate.prefix,
        destination=rate.destination,
        rate_per_min=rate.rate_per_min,
        currency=rate.currency,
        initial_increment_s=rate.initial_increment_s,
        subsequent_increment_s=rate.subsequent_increment_s,
        connection_fee=rate.connection_fee,
        minutes=minutes,
        charge=deck.charge(rate, minutes * 60),
    )


def _region_of(e164: str) -> str:
    """The number's own region, so that an E.164 number is classified as seen from its country."""
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        raise DialplanError(f"{e164!r} is not a phone number") from None
    return region if region and region != "001" else "US"
