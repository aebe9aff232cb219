"""Bounds of the rating core and the errors raised when an input crosses them (shared by both twins).

Both twins check the same bounds in the same order and raise through these helpers, so a refused input
gives the same exception and message whichever twin is live. The bounds keep every intermediate
product inside a signed 64-bit integer: rate (<= 1e10 micro/min) x billed seconds (<= 3e8: a call of
at most 1e8 s plus two increments of at most 1e8 s) <= 3e18 < 2**63 - 1 ~ 9.22e18, and 60 x an amount
(<= 1e17) = 6e18 < 2**63 - 1.
"""

from __future__ import annotations

from .errors import RatingError

__all__ = [
    "MAX_CALL_SECONDS",
    "MAX_RATE_MICROS",
    "MAX_AMOUNT_MICROS",
    "MAX_INCREMENT_S",
    "UNLIMITED_SECONDS",
    "MAX_PREFIX_DIGITS",
    "MAX_EPOCH",
    "MAX_DESTINATION_CHARS",
    "MICROS",
]

MICROS = 1_000_000
"""Micro-units in one unit of currency."""

MAX_CALL_SECONDS = 10**8
"""Longest duration the core rates (about 3.2 years)."""

MAX_RATE_MICROS = 10**10
"""Highest rate per minute: 10,000.00 per minute."""

MAX_AMOUNT_MICROS = 10**17
"""Highest amount (balance, fee): 100,000,000,000.00."""

MAX_INCREMENT_S = MAX_CALL_SECONDS
"""Longest billing increment (initial or subsequent)."""

UNLIMITED_SECONDS = MAX_CALL_SECONDS
"""What max_seconds answers when the amount covers a call of the longest rated duration (or the rate is
free and the fee covered). It equals MAX_CALL_SECONDS, so ``charge(rate, UNLIMITED_SECONDS)`` stays valid
and a deadline computed from it never overflows."""

MAX_PREFIX_DIGITS = 18
"""Longest prefix a deck accepts (E.164 numbers have at most 15 digits; the compiled lookup key holds 18)."""

MAX_DESTINATION_CHARS = 255
"""Longest destination name."""

MAX_EPOCH = 253_402_300_799
"""9999-12-31T23:59:59Z, the last effective date a deck accepts."""


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, int) else str(value)


def bad_seconds(value: object) -> RatingError:
    return RatingError(f"seconds must be an int in 0..{MAX_CALL_SECONDS}, got {_describe(value)}")


def bad_amount(value: object) -> RatingError:
    return RatingError(f"available_micros must be an int in 0..{MAX_AMOUNT_MICROS}, got {_describe(value)}")


def bad_rate_field(name: str, value: object) -> RatingError:
    low, high = RATE_FIELD_BOUNDS[name]
    return RatingError(f"rate.{name} must be an int in {low}..{high}, got {_describe(value)}")


RATE_FIELD_BOUNDS = {
    "rate_per_min": (0, MAX_RATE_MICROS),
    "initial_increment_s": (1, MAX_INCREMENT_S),
    "subsequent_increment_s": (1, MAX_INCREMENT_S),
    "connection_fee": (0, MAX_AMOUNT_MICROS),
}
"""The numeric fields the charging rule reads, in the order both twins check them."""


def not_a_number(value: object) -> RatingError:
    return RatingError(f"a number to rate must be a str, got {type(value).__name__}")
