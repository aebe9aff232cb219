"""One row of a rate deck: the price of calls to numbers that start with a prefix (shared by both twins)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from typing import Any

from ._limits import MAX_AMOUNT_MICROS, MAX_DESTINATION_CHARS, MAX_EPOCH, MAX_INCREMENT_S, MAX_PREFIX_DIGITS, MAX_RATE_MICROS
from .errors import MoneyError, RatingError
from ._time import EPOCH, parse_iso
from .money import check_currency, format_money, parse_money

__all__ = ["Rate"]

_FIELDS = (
    "prefix",
    "destination",
    "rate_per_min",
    "currency",
    "initial_increment_s",
    "subsequent_increment_s",
    "connection_fee",
    "effective_from",
)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if type(value) is not int or not low <= value <= high:
        raise RatingError(f"{name} must be an int in {low}..{high}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rate:
    """The price of calls to numbers starting with ``prefix``, from ``effective_from`` on.

    Money fields are integer micro-units (``rate_per_min`` per minute, ``connection_fee`` once per
    answered call); increments are whole seconds; ``effective_from`` is a UTC epoch (0: always).
    The constructor validates every field (RatingError), so a Rate in hand is always chargeable.
    """

    prefix: str
    destination: str
    rate_per_min: int
    currency: str
    initial_increment_s: int
    subsequent_increment_s: int
    connection_fee: int
    effective_from: int = 0

    def __post_init__(self) -> None:
        prefix = self.prefix
        if (
            type(prefix) is not str
            or not 0 < len(prefix) <= MAX_PREFIX_DIGITS
            or not (prefix.isascii() and prefix.isdigit())
        ):
            raise RatingError(f"prefix must be 1 to {MAX_PREFIX_DIGITS} digits, got {prefix!r}")
        destination = self.destination
        if (
            type(destination) is not str
            or not 0 < len(destination) <= MAX_DESTINATION_CHARS
            or destination.strip() != destination
        ):
            raise RatingError(
                f"destination must be 1 to {MAX_DESTINATION_CHARS} characters without surrounding "
                f"whitespace, got {destination!r}"
            )
        _check_int("rate_per_min", self.rate_per_min, 0, MAX_RATE_MICROS)
        try:
            check_currency(self.currency)
        except MoneyError as exc:
            raise RatingError(str(exc)) from None
        _check_int("initial_increment_s", self.initial_increment_s, 1, MAX_INCREMENT_S)
        _check_int("subsequent_increment_s", self.subsequent_increment_s, 1, MAX_INCREMENT_S)
        _check_int("connection_fee", self.connection_fee, 0, MAX_AMOUNT_MICROS)
        _check_int("effective_from", self.effective_from, 0, MAX_EPOCH)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: money as decimal strings, ``effective_from`` as ISO 8601 UTC (None: always)."""
        return {
            "prefix": self.prefix,
            "destination": self.destination,
            "rate_per_min": format_money(self.rate_per_min),
            "currency": self.currency,
            "initial_increment_s": self.initial_increment_s,
            "subsequent_increment_s": self.subsequent_increment_s,
            "connection_fee": format_money(self.connection_fee),
            "effective_from": _iso(self.effective_from) if self.effective_from else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rate:
        """Inverse of to_dict; also accepts an int epoch for ``effective_from`` and a leading '+'."""
        if not isinstance(data, dict):
            raise RatingError(f"a rate must be a JSON object, got {type(data).__name__}")
        missing = [name for name in _FIELDS[:-1] if name not in data]
        if missing:
            raise RatingError(f"rate is missing {', '.join(missing)}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise RatingError(f"rate has unknown fields {', '.join(unknown)}")
        prefix = data["prefix"]
        if isinstance(prefix, str) and prefix.startswith("+"):
            prefix = prefix[1:]
        effective = data.get("effective_from")
        if effective is None:
            effective = 0
        elif isinstance(effective, str):
            effective = parse_iso(effective)
        return cls(
            prefix=prefix,
            destination=data["destination"],
            rate_per_min=parse_money(data["rate_per_min"]),
            currency=data["currency"],
            initial_increment_s=data["initial_increment_s"],
            subsequent_increment_s=data["subsequent_increment_s"],
            connection_fee=parse_money(data["connection_fee"]),
            effective_from=effective,
        )


def _iso(epoch: int) -> str:
    return (EPOCH + _dt.timedelta(seconds=epoch)).strftime("%Y-%m-%dT%H:%M:%SZ")
