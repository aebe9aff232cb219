"""Parse the dates and times admins type (``--from 2026-11-01``) into UTC epoch seconds."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from gateway.errors import InvalidInput

__all__ = ["parse_when", "iso", "stream_id"]


def parse_when(text: str, *, end: bool = False, field: str = "date") -> float:
    """ISO date or datetime (naive = UTC). A bare date used as an end bound means the whole day."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            d = date.fromisoformat(raw)
            if end:
                d = d + timedelta(days=1)
            return datetime.combine(d, time(0), timezone.utc).timestamp()
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{text!r} is not an ISO 8601 date or time", field) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stream_id(ts: float | None, *, end: bool = False) -> str:
    """A Redis stream id bound for a time: '-'/'+' when open; an end bound is exclusive."""
    if ts is None:
        return "+" if end else "-"
    ms = int(ts * 1000)
    return f"({ms}-0" if end else f"{ms}-0"
