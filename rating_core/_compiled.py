"""The compiled twin's full public surface; importing it raises ImportError when ``_rating`` is not built.

Same names as ``rating_core.pure``; only the core (``_rating``, built from ``_rating.pyx``) differs.
"""

from __future__ import annotations

from . import _rating as _core
from ._limits import MAX_AMOUNT_MICROS, MAX_CALL_SECONDS, MAX_RATE_MICROS, UNLIMITED_SECONDS
from ._rating import billed_seconds, charge, max_seconds
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

COMPILED = True


class RateDeck(RateDeckMixin, _core.DeckBase):
    """A versioned rate deck (compiled twin): longest-prefix lookup in a static interval index, in C."""

    __slots__ = ()
    _core = _core
