"""The one error root of creditgate and the errors of the rating core.

``CreditgateError`` lives here, in the lowest layer, so that ``dialplans`` and ``gateway`` can
derive from it without import cycles; ``gateway.errors`` re-exports it.
"""

from __future__ import annotations

__all__ = ["CreditgateError", "RatingError", "MoneyError", "DeckError"]


class CreditgateError(Exception):
    """Root of every error creditgate raises across a package boundary."""


class RatingError(CreditgateError):
    """A rating or charging request that cannot be answered (bad rate, out-of-range input)."""


class MoneyError(RatingError):
    """A money amount that is not a valid decimal string of at most 6 decimals."""


class DeckError(RatingError):
    """A rate deck that cannot be imported; ``line`` is the 1-based CSV line number (0: whole file)."""

    def __init__(self, message: str, line: int = 0) -> None:
        self.line = line
        self.reason = message
        super().__init__(f"line {line}: {message}" if line else message)
