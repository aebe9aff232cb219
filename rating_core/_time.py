"""UTC epoch seconds from the forms a caller may give (int, float, datetime, date, ISO 8601 text)."""

from __future__ import annotations

import datetime as _dt
import math

from ._limits import MAX_EPOCH
from .errors import RatingError

__all__ = ["to_epoch", "parse_iso", "format_iso", "EPOCH"]

EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_SECOND = _dt.timedelta(seconds=1)
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)


def to_epoch(value: object) -> int:
    """Whole UTC epoch seconds (floor) of an int/float epoch, a datetime (naive = UTC), a date (its
    midnight UTC) or an ISO 8601 date/datetime string. A float infinity clamps to the int64 range;
    NaN and other types are a RatingError."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value:
            raise RatingError("a time must not be NaN")
        if math.isinf(value):
            return _INT64_MAX if value > 0 else _INT64_MIN
        return math.floor(value)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return (value - EPOCH) // _SECOND
    if isinstance(value, _dt.date):
        return (value - EPOCH.date()).days * 86400
    if isinstance(value, str):
        return parse_iso(value)
    raise RatingError(f"a time must be an epoch, a datetime, a date or ISO 8601 text, got {type(value).__name__}")


def parse_iso(text: str) -> int:
    """Epoch seconds of ``2026-01-01`` (midnight UTC) or ``2026-01-01T10:00:00Z`` / ``...+02:00``
    (a datetime without an offset is UTC)."""
    stripped = text.strip()
    try:
        if len(stripped) == 10:
            return to_epoch(_dt.date.fromisoformat(stripped))
        if len(stripped) < 16 or stripped[10] not in "Tt ":
            raise ValueError
        return to_epoch(_dt.datetime.fromisoformat(stripped))
    except ValueError:
        raise RatingError(
            f"bad date {text!r}: expected an ISO 8601 date (2026-01-01) or UTC datetime (2026-01-01T00:00:00Z)"
        ) from None


def check_effective(epoch: int) -> int:
    if not 0 <= epoch <= MAX_EPOCH:
        raise RatingError(f"effective date {epoch} is outside 1970-01-01..9999-12-31")
    return epoch


def format_iso(epoch: int) -> str:
    """``2026-01-01`` for a midnight, else ``2026-01-01T10:00:00Z``."""
    moment = EPOCH + _dt.timedelta(seconds=epoch)
    if epoch % 86400 == 0:
        return moment.date().isoformat()
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
