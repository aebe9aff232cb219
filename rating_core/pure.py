"""The pure-Python twin's full public surface; always importable, whatever is built.

``rating_core`` re-exports the compiled surface (``rating_core._compiled``) instead when it is built and
``CREDITGATE_NO_EXTENSIONS`` is not ``1``; tests and benchmarks use this module to compare the two.
"""

from __future__ import annotations

from . import _rating_py as _core
from ._limits import MAX_AMOUNT_MICROS, MAX_CALL_SECONDS, MAX_RATE_MICROS, UNLIMITED_SECONDS
from ._rating_py import billed_seconds, charge, max_seconds
from .deck import RateDeckMixin
from .errors import CreditgateError, DeckError, MoneyError, RatingError
from .money import CURRENCIES, check_currency, format_money, parse_money
from .rate import Rate

__all__ = [
    "COMPILED",
    "RateDeck",
    "Rate",
    "charge",
    "billed_seconds",
    "max_seconds",
    "parse_money",
    "format_money",
    "check_currency",
    "CURRENCIES",
    "UNLIMITED_SECONDS",
    "MAX_RATE_MICROS",
    "MAX_AMOUNT_MICROS",
    "MAX_CALL_SECONDS",
    "CreditgateError",
    "RatingError",
    "MoneyError",
    "DeckError",
]

COMPILED = False


class RateDeck(RateDeckMixin, _core.DeckBase):
    """A versioned rate deck (pure twin): longest-prefix lookup by a dict probe per prefix length."""

    __slots__ = ()
    _core = _core
