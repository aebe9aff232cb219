"""Rating core of creditgate: rate decks, longest-prefix lookup and the charging rule, in integer micro-units.

Two twins implement it (aiohttp's pattern): the compiled one (``_rating.pyx``, via ``_compiled``) is live
when it is built and ``CREDITGATE_NO_EXTENSIONS`` is not ``1``, else the pure-Python one (``pure``).
``COMPILED`` tells which is live; ``pure`` is always the pure twin and ``compiled`` the compiled surface
(None when it is not built or is disabled). The core does no I/O beyond reading a CSV it is handed.
"""

from __future__ import annotations

import os as _os
from types import ModuleType as _ModuleType

from . import pure
from .errors import CreditgateError, DeckError, MoneyError, RatingError
from .money import CURRENCIES, check_currency, format_money, parse_money
from .rate import Rate

compiled: _ModuleType | None = None
if _os.environ.get("CREDITGATE_NO_EXTENSIONS") != "1":
    try:
        from . import _compiled as compiled
    except ImportError:
        compiled = None

_live = compiled if compiled is not None else pure

COMPILED: bool = _live.COMPILED
RateDeck = _live.RateDeck
charge = _live.charge
billed_seconds = _live.billed_seconds
max_seconds = _live.max_seconds
UNLIMITED_SECONDS: int = pure.UNLIMITED_SECONDS
MAX_RATE_MICROS: int = pure.MAX_RATE_MICROS
MAX_AMOUNT_MICROS: int = pure.MAX_AMOUNT_MICROS
MAX_CALL_SECONDS: int = pure.MAX_CALL_SECONDS

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
    "pure",
    "compiled",
]
