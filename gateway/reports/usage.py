"""The PSTN usage report (SPEC 6): one typed row per CDR, read from the CDR stream page by page, and totals.

Theory of operation. Every call leaves exactly one CDR in the organization's stream, written by
settle.lua, expire.lua (the gateway died: ``end_reason`` is ``interrupted``, no times in ``extra``)
or late_settle.lua (the call ran while the ledger was down: an ``uncollected`` field). A stream
entry's id is the Redis time in ms at which the call was *settled*, which is never before the call
started. So a report on calls that *started* in ``[start, end)`` reads the stream from
``start - CLOCK_SKEW_S`` (gateway and Redis clocks may differ a little) to ``end + settle_lag_s``
(a call that started inside the range may be settled long after it: a long call, or a call
recorded after a ledger outage), and keeps the rows whose start time falls in the range. Entries
are read with XRANGE in pages and turned into rows one page at a time, so nothing here holds more
than a page, however long the report.

A row's ``call_time`` is when the call started; a CDR that does not know it (``interrupted``) uses
the answer time, else the time it was settled. Rows come in stream (settlement) order.

``usage_rows`` validates its arguments when called (``InvalidInput``), so that an HTTP handler
can answer 422 before it starts a response; the stream is read while iterating.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Literal

from redis.exceptions import RedisError
from rating_core.money import format_money

from gateway.errors import InvalidInput
from gateway.ledger.client import Ledger, LedgerUnavailable
from gateway.ledger.keys import OrgKeys
from gateway.timeutil import iso, parse_when

__all__ = [
    "UsageRow",
    "UsageTotal",
    "UsageRows",
    "Totals",
    "GROUPINGS",
    "Grouping",
    "usage_rows",
    "parse_range",
    "check_grouping",
    "aggregate",
    "row_from_cdr",
    "CLOCK_SKEW_S",
    "SETTLE_LAG_S",
    "PAGE",
]

Grouping = Literal["user", "destination", "day"]
GROUPINGS: tuple[Grouping, ...] = ("user", "destination", "day")

# Stream entries read per XRANGE: large enough that the round trips do not dominate, small enough
# that one page (and the event-loop time spent turning it into rows) stays small.
PAGE = 1000
# How far a gateway's wall clock (the call's start time) may be ahead of Redis's (the entry id).
CLOCK_SKEW_S = 300
# How long after it started a call may be settled and still be found by a report on its start
# time: longer than any call the gateway lets run on one balance, plus the time a settlement may
# wait for the ledger to come back after an outage. A CDR settled later than this after its start
# falls outside an upper-bounded report (an open-ended report, ``end=None``, reads to the end).
SETTLE_LAG_S = 2 * 86400


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRow:
    """One call of the PSTN usage report. Money is int micro-units, times aware UTC datetimes."""

    id: str  # the CDR's stream entry id
    call_id: str
    organization: str
    user: str
    direction: str  # outbound | inbound_tollfree | dialout
    caller: str
    callee: str  # E.164
    dialed: str  # as the caller dialed it
    destination: str  # the rate deck's destination name
    prefix: str  # the rate deck prefix that matched
    number_class: str  # domestic_fixed | domestic_mobile | international | toll_free | premium_rate | ...
    start: datetime | None
    answer: datetime | None
    end: datetime | None
    settled: datetime
    answered: bool | None  # None: the gateway died, the ledger does not know (interrupted)
    duration_ms: int  # from answer to hang-up
    billed_s: int
    minutes_s: int  # plan minutes used
    rate: int  # per minute
    connection_fee: int
    charge: int
    uncollected: int  # charged by the deck but beyond the balance (a call recorded after an outage)
    currency: str
    paid: str  # credits | plan | plan+credits | included
    conference_id: str
    end_reason: str  # normal | credit_exhausted | ledger_outage | interrupted | cancelled | busy | ...
    coverage: str  # why this payer (the policy's reason)
    sip_call_id: str
    sip_status: int | None
    increments: tuple[int, int]  # initial, subsequent (s)

    @property
    def call_time(self) -> datetime:
        """When the call started, as far as the CDR knows."""
        return self.start or self.answer or self.settled

    @property
    def duration_s(self) -> int:
        """Connected seconds, rounded up."""
        return -(-self.duration_ms // 1000)

    @property
    def fee_charged(self) -> int:
        """The connection fee inside ``charge``: only a call that began on credits pays it."""
        return min(self.connection_fee, self.charge) if self.paid == "credits" else 0

    def to_dict(self) -> dict[str, Any]:
        """The row as the JSON interfaces show it: money as decimal strings, times ISO 8601 UTC."""
        return {
            "id": self.id,
            "call_id": self.call_id,
            "organization": self.organization,
            "user": self.user,
            "direction": self.direction,
            "caller": self.caller,
            "callee": self.callee,
            "dialed": self.dialed,
            "destination": self.destination,
            "prefix": self.prefix,
            "class": self.number_class,
            "start": _iso(self.start),
            "answer": _iso(self.answer),
            "end": _iso(self.end),
            "settled": _iso(self.settled),
            "answered": self.answered,
            "duration_s": self.duration_s,
            "billed_s": self.billed_s,
            "minutes_s": self.minutes_s,
            "rate": format_money(self.rate),
            "connection_fee": format_money(self.connection_fee),
            "charge": format_money(self.charge),
            "uncollected": format_money(self.uncollected),
            "currency": self.currency,
            "paid": self.paid,
            "conference_id": self.conference_id,
            "end_reason": self.end_reason,
            "coverage": self.coverage,
            "sip_call_id": self.sip_call_id,
            "sip_status": self.sip_status,
        }


def _iso(t: datetime | None) -> str | None:
    return None if t is None else iso(t.timestamp())


# -- from a stream entry ------------------------------------------------------------------------


def _text(v: Any) -> str:
    if v is None:
        return ""
    return v.decode() if isinstance(v, bytes) else str(v)


def _int(v: Any) -> int:
    try:
        return int(v) if v not in (None, b"", "") else 0
    except (TypeError, ValueError):
        return 0


def _when(v: Any) -> datetime | None:
    text = _text(v)
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def _json(v: Any) -> dict[str, Any]:
    if not v:
        return {}
    try:
        d = json.loads(v)
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def _entry_time(entry_id: str) -> datetime:
    return datetime.fromtimestamp(int(entry_id.split("-", 1)[0]) / 1000, timezone.utc)


def row_from_cdr(entry_id: str, f: dict[Any, Any], *, org: str = "") -> UsageRow:
    """A report row from one CDR stream entry (fields as bytes or str keys, as redis-py gives them)."""
    g = f.get
    if b"call" not in f and "call" in f:  # str keys: a decoded entry (Ledger.cdr_entries)
        f = {k.encode(): v for k, v in f.items()}
        g = f.get
    meta = _json(g(b"meta"))
    extra = _json(g(b"extra"))
    answered_raw = _text(g(b"answered"))
    status = extra.get("sip_status")
    return UsageRow(
        id=entry_id,
        call_id=_text(g(b"call")),
        organization=str(meta.get("org") or org),
        user=str(meta.get("user") or ""),
        direction=str(meta.get("direction") or ""),
        caller=str(meta.get("caller") or ""),
        callee=str(meta.get("callee") or ""),
        dialed=str(meta.get("dialed") or ""),
        destination=str(meta.get("destination") or ""),
        prefix=str(meta.get("prefix") or ""),
        number_class=str(meta.get("class") or ""),
        start=_when(extra.get("start") or meta.get("start")),  # meta: known even when interrupted
        answer=_when(extra.get("answer")),
        end=_when(extra.get("end")),
        settled=_when(g(b"ts")) or _entry_time(entry_id),
        answered=True if answered_raw == "1" else False if answered_raw == "0" else None,
        duration_ms=_int(g(b"duration_ms")),
        billed_s=_int(g(b"billed_s")),
        minutes_s=_int(g(b"minutes_s")),
        rate=_int(g(b"rate")),
        connection_fee=_int(g(b"fee")),
        charge=_int(g(b"charge")),
        uncollected=_int(g(b"uncollected")),
        currency=str(meta.get("currency") or ""),
        paid=_text(g(b"paid")),
        conference_id=str(meta.get("conference_id") or ""),
        end_reason=_text(g(b"end_reason")),
        coverage=str(meta.get("coverage") or ""),
        sip_call_id=str(extra.get("sip_call_id") or ""),
        sip_status=int(status) if isinstance(status, int) and status > 0 else None,
        increments=(_int(g(b"inc1")), _int(g(b"inc2"))),
    )


# -- arguments ----------------------------------------------------------------------------------

When = str | datetime | date | float | int | None


def _bound(value: When, *, end: bool, name: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{value!r} is not a date or time", name)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidInput(f"{value!r} is not a date or time", name)
        return float(value)
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, date):
        return parse_when(value.isoformat(), end=end, field=name)
    if isinstance(value, str):
        return parse_when(value, end=end, field=name)
    raise InvalidInput(f"{value!r} is not a date or time", name)


def parse_range(start: When = None, end: When = None) -> tuple[float | None, float | None]:
    """``[start, end)`` in epoch seconds from what an admin typed.

    An ISO date as ``end`` means the whole of that day (``--to 2026-11-30`` takes in the 30th); an ISO
    time as ``end`` is exclusive; naive times are UTC. ``InvalidInput`` (field ``from``/``to``)
    for anything unreadable or an empty range (the end at or before the start).
    """
    lo = _bound(start, end=False, name="from")
    hi = _bound(end, end=True, name="to")
    if lo is not None and hi is not None and hi <= lo:
        raise InvalidInput("the range ends before it starts", "to")
    return lo, hi


def check_grouping(by: str | None) -> Grouping | None:
    """``None`` or one of ``GROUPINGS``; ``InvalidInput`` (field ``by``) otherwise."""
    if by is None or by == "":
        return None
    if by not in GROUPINGS:
        raise InvalidInput(f"{by!r} is not one of {', '.join(GROUPINGS)}", "by")
    return by  # type: ignore[return-value]


# -- reading ------------------------------------------------------------------------------------


class UsageRows:
    """The rows of one report, read from the stream page by page while iterating (``usage_rows``)."""

    def __init__(
        self,
        ledger: Ledger,
        org: str,
        *,
        start: When = None,
        end: When = None,
        user: str | None = None,
        page: int = PAGE,
        settle_lag_s: float = SETTLE_LAG_S,
    ) -> None:
        self.key = OrgKeys(org).cdrs  # validates the organization id (InvalidInput)
        self.org = org
        self.ledger = ledger
        self.start, self.end = parse_range(start, end)
        self.user = user or None
        self.page = max(int(page), 1)
        self.settle_lag_s = settle_lag_s
        self.scanned = 0  # stream entries read so far (rows kept or not)

    def stream_bounds(self) -> tuple[str, str]:
        """The XRANGE ids that hold every CDR of a call started in the range (module docstring)."""
        lo = "-" if self.start is None else str(max(int((self.start - CLOCK_SKEW_S) * 1000), 0))
        hi = "+" if self.end is None else str(int((self.end + self.settle_lag_s) * 1000))
        return lo, hi

    def keep(self, row: UsageRow) -> bool:
        if self.user is not None and row.user != self.user:
            return False
        t = row.call_time.timestamp()
        if self.start is not None and t < self.start:
            return False
        return self.end is None or t < self.end

    async def pages(self) -> AsyncIterator[list[UsageRow]]:
        """The kept rows, one XRANGE page at a time (a page may be empty)."""
        lo, hi = self.stream_bounds()
        client = self.ledger.client
        cursor = lo
        while True:
            try:
                chunk = await client.xrange(self.key, min=cursor, max=hi, count=self.page)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc
            if not chunk:
                return
            self.scanned += len(chunk)
            rows = []
            for entry_id, fields in chunk:
                row = row_from_cdr(_text(entry_id), fields, org=self.org)
                if self.keep(row):
                    rows.append(row)
            yield rows
            if len(chunk) < self.page:
                return
            cursor = "(" + _text(chunk[-1][0])

    async def __aiter__(self) -> AsyncIterator[UsageRow]:
        async for rows in self.pages():
            for row in rows:
                yield row


def usage_rows(
    ledger: Ledger,
    org: str,
    *,
    start: When = None,
    end: When = None,
    user: str | None = None,
    page: int = PAGE,
    settle_lag_s: float = SETTLE_LAG_S,
) -> UsageRows:
    """The usage rows of ``org`` (an organization id) for calls started in ``[start, end)`` by ``user``.

    ``start``/``end``: ISO date or time strings as admins type them (see ``parse_range``), aware or
    naive-UTC datetimes, dates, or epoch seconds; ``None`` leaves that side open. Validates now
    (``InvalidInput``); iterate with ``async for`` to read (``LedgerUnavailable`` if Redis fails).
    """
    return UsageRows(ledger, org, start=start, end=end, user=user, page=page, settle_lag_s=settle_lag_s)


# -- totals -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageTotal:
    """Calls of one user, destination or day in one currency."""

    by: Grouping
    key: str  # user id, destination name (else the number class), or day 'YYYY-MM-DD'
    currency: str
    calls: int
    answered: int
    billed_s: int
    minutes_s: int
    charge: int
    uncollected: int

    def to_dict(self) -> dict[str, Any]:
        return {
            self.by: self.key,
            "currency": self.currency,
            "calls": self.calls,
            "answered": self.answered,
            "billed_s": self.billed_s,
            "minutes_s": self.minutes_s,
            "charge": format_money(self.charge),
            "uncollected": format_money(self.uncollected),
        }


def _group_key(row: UsageRow, by: Grouping) -> str:
    if by == "user":
        return row.user
    if by == "destination":
        return row.destination or row.number_class
    return row.call_time.date().isoformat()


@dataclass(slots=True)
class Totals:
    """Running totals by several groupings at once, fed row by row (memory: one entry per group)."""

    groupings: tuple[Grouping, ...] = GROUPINGS
    _acc: dict[tuple[Grouping, str, str], list[int]] = field(default_factory=dict)

    def add(self, row: UsageRow) -> None:
        answered = 1 if row.answered else 0
        for by in self.groupings:
            k = (by, _group_key(row, by), row.currency)
            a = self._acc.get(k)
            if a is None:
                self._acc[k] = [1, answered, row.billed_s, row.minutes_s, row.charge, row.uncollected]
            else:
                a[0] += 1
                a[1] += answered
                a[2] += row.billed_s
                a[3] += row.minutes_s
                a[4] += row.charge
                a[5] += row.uncollected

    def result(self, by: Grouping) -> list[UsageTotal]:
        """The totals of one grouping, sorted by key then currency."""
        out = [
            UsageTotal(by=b, key=key, currency=cur, calls=a[0], answered=a[1], billed_s=a[2], minutes_s=a[3],
                       charge=a[4], uncollected=a[5])
            for (b, key, cur), a in self._acc.items() if b == by
        ]
        out.sort(key=lambda t: (t.key, t.currency))
        return out


async def aggregate(rows: AsyncIterable[UsageRow] | Iterable[UsageRow], by: str) -> list[UsageTotal]:
    """Totals of ``rows`` by ``user``, ``destination`` or ``day`` (of the call's start, UTC), per currency."""
    grouping = check_grouping(by)
    if grouping is None:
        raise InvalidInput("a grouping is needed", "by")
    totals = Totals((grouping,))
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            totals.add(row)
    else:
        for row in rows:
            totals.add(row)
    return totals.result(grouping)
