"""gateway/reports/usage.py: rows from real CDRs (the ledger's own scripts), date and user filters,
seeking the stream by entry id, and totals, on a real redis-server."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from gateway.errors import InvalidInput
from gateway.ledger.client import Ledger, RateTerms
from gateway.ledger.keys import OrgKeys
from gateway.reports import GROUPINGS, aggregate, parse_range, usage_rows
from gateway.reports.usage import CLOCK_SKEW_S, SETTLE_LAG_S, UsageRow

from _cdrs import MONTH, ORG, TERMS, UNIT, call, meta, utc, xadd_cdrs


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


async def collect(rows) -> list[UsageRow]:
    return [r async for r in rows]


async def test_a_credit_call_has_every_field_of_the_report(ledger: Ledger) -> None:
    await ledger.fund(ORG, 10 * UNIT)
    start = now() - timedelta(minutes=10)
    s = await call(ledger, "c1", start=start, ring_s=2.5, duration_s=75.2)
    [row] = await collect(usage_rows(ledger, ORG))
    # 76 s on 30/6 increments bill 30 + 8x6 = 78 s: 0.13 at 0.10/min, plus the 0.01 fee
    assert (s.charge, s.billed_s) == (140_000, 78)
    assert row.call_id == "c1"
    assert (row.organization, row.user, row.direction) == (ORG, "alice", "outbound")
    assert (row.caller, row.callee, row.dialed) == ("+442071234567", "+33142685300", "0033142685300")
    assert (row.destination, row.prefix, row.number_class) == ("France", "33", "international")
    assert row.start == start
    assert row.answer == start + timedelta(seconds=2.5)
    assert row.end == start + timedelta(seconds=77.7)
    assert row.settled.tzinfo is not None and row.settled >= start
    assert row.call_time == start
    assert (row.answered, row.duration_ms, row.duration_s, row.billed_s, row.minutes_s) == (True, 75_200, 76, 78, 0)
    assert (row.rate, row.connection_fee, row.charge, row.uncollected) == (100_000, 10_000, 140_000, 0)
    assert (row.fee_charged, row.increments) == (10_000, (30, 6))
    assert (row.currency, row.paid, row.coverage, row.conference_id) == ("GBP", "credits", "credits", "")
    assert (row.end_reason, row.sip_call_id, row.sip_status) == ("normal", "c1@pbx.example", 200)
    ms = int(row.id.split("-")[0])
    assert abs(ms / 1000 - row.settled.timestamp()) < 5  # the entry id is the settlement's Redis time
    d = row.to_dict()
    assert d["charge"] == "0.14" and d["rate"] == "0.10" and d["connection_fee"] == "0.01"
    assert d["start"] == start.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert d["class"] == "international" and d["answered"] is True and d["uncollected"] == "0.00"


async def test_what_paid_and_why_the_call_ended(ledger: Ledger, ledger_client) -> None:
    """Plan minutes, an included conference dial-out, a cancelled call, an interrupted call (the
    gateway died), credit exhaustion and a call recorded after a ledger outage: each as the ledger
    wrote it."""
    await ledger.fund(ORG, 10 * UNIT)
    await ledger_client.hset(OrgKeys(ORG).allotments, "domestic:domestic", 600)
    t0 = now() - timedelta(minutes=30)
    plan = await call(ledger, "plan1", start=t0, duration_s=50, pays="plan", bucket="domestic:domestic",
                      callee="+442079460000", number_class="domestic_fixed", destination="United Kingdom",
                      prefix="44", coverage="plan_minutes")
    inc = await call(ledger, "inc1", start=t0 + timedelta(minutes=1), duration_s=60, pays="included",
                     terms=RateTerms(), user="bob", direction="dialout", conference_id="conf-42",
                     number_class="domestic_mobile", destination="United Kingdom - Mobile", coverage="included_zone")
    await call(ledger, "cancel1", start=t0 + timedelta(minutes=2), answered=False, end_reason="cancelled")
    # The gateway died: its lease runs out and any process settles the call from the ledger alone.
    g = await ledger.reserve(ORG, "lost1", pays="credits", terms=TERMS, chunk_s=60, lease_ms=1,
                             meta=meta(user="carol"), month=MONTH)
    assert g.ok
    while not (await ledger.expire(ORG, "lost1")).ok:
        await asyncio.sleep(0.01)
    # The same, for a call whose reservation recorded its start (as the credit engine's does).
    started = (t0 + timedelta(minutes=3)).replace(microsecond=0)
    g2 = await ledger.reserve(ORG, "lost2", pays="credits", terms=TERMS, chunk_s=60, lease_ms=1,
                              meta={**meta(user="carol"), "start": started.strftime("%Y-%m-%dT%H:%M:%S.000Z")},
                              month=MONTH)
    assert g2.ok
    while not (await ledger.expire(ORG, "lost2")).ok:
        await asyncio.sleep(0.01)
    # Another organization spends its last credit, then a call from the outage is recorded.
    await ledger.fund("beta", 80_000)
    exhausted = await call(ledger, "ex1", start=t0, org="beta", duration_s=42, end_reason="credit_exhausted",
                           currency="EUR")
    late = await ledger.late_settle("beta", "late1", terms=TERMS, answered=True, duration_ms=60_000,
                                    end_reason="normal",
                                    meta={"org": "beta", "user": "dave", "callee": "+4930123456", "class": "international",
                                          "destination": "Germany", "currency": "EUR", "direction": "outbound",
                                          "conference_id": ""},
                                    extra={"start": "2026-11-30T10:00:00.000Z", "answer": "2026-11-30T10:00:04.000Z",
                                           "end": "2026-11-30T10:01:04.000Z", "sip_call_id": "late1@pbx",
                                           "sip_status": 200, "fail_open": True})

    rows = {r.call_id: r for r in await collect(usage_rows(ledger, ORG))}
    assert set(rows) == {"plan1", "inc1", "cancel1", "lost1", "lost2"}
    p = rows["plan1"]
    assert (p.paid, p.charge, p.minutes_s, p.billed_s) == ("plan", 0, plan.extra, plan.billed_s)
    assert p.minutes_s == 60 and p.coverage == "plan_minutes" and p.fee_charged == 0
    i = rows["inc1"]
    assert (i.paid, i.charge, i.billed_s, i.rate) == ("included", 0, inc.billed_s, 0)
    assert (i.user, i.direction, i.conference_id, i.number_class) == ("bob", "dialout", "conf-42", "domestic_mobile")
    c = rows["cancel1"]
    assert (c.answered, c.answer, c.duration_ms, c.billed_s, c.charge) == (False, None, 0, 0, 0)
    assert (c.end_reason, c.sip_status) == ("cancelled", 487)
    lost = rows["lost1"]
    assert (lost.end_reason, lost.answered, lost.start, lost.answer, lost.end) == ("interrupted", None, None, None, None)
    assert lost.call_time == lost.settled  # no start time known: the settlement time stands in
    assert lost.charge == g.held == 110_000 and lost.user == "carol" and lost.billed_s == 60
    lost2 = rows["lost2"]
    assert (lost2.end_reason, lost2.answered, lost2.start, lost2.call_time) == ("interrupted", None, started, started)

    beta = {r.call_id: r for r in await collect(usage_rows(ledger, "beta"))}
    ex, lt = beta["ex1"], beta["late1"]
    assert (ex.end_reason, ex.charge, ex.billed_s, ex.currency) == ("credit_exhausted", exhausted.charge, 42, "EUR")
    assert ex.charge == 80_000
    # Nothing left to collect: the whole deck price of the late call is recorded as uncollected.
    assert (lt.charge, lt.uncollected, late.extra) == (0, 110_000, 110_000)
    assert (lt.user, lt.destination, lt.caller, lt.prefix, lt.coverage) == ("dave", "Germany", "", "", "")
    assert lt.start == utc(2026, 11, 30, 10, 0) and lt.paid == "credits"


async def test_rows_are_filtered_by_the_day_the_call_started_inclusive(ledger: Ledger, ledger_client) -> None:
    # A call every 2 hours from Nov 28 00:00 to Dec 2 22:00: 12 a day, each lasting 61 s.
    await xadd_cdrs(ledger_client, 60, first=utc(2026, 11, 28), step_s=7200)
    rows = await collect(usage_rows(ledger, ORG, start="2026-11-29", end="2026-11-30"))
    assert len(rows) == 24
    assert {r.call_time.date().isoformat() for r in rows} == {"2026-11-29", "2026-11-30"}
    # ISO times: the start is inclusive, the end exclusive.
    rows = await collect(usage_rows(ledger, ORG, start="2026-11-29T02:00:00Z", end="2026-11-29T06:00:00Z"))
    assert [r.start for r in rows] == [utc(2026, 11, 29, 2), utc(2026, 11, 29, 4)]
    # Open-ended on either side; datetimes and epoch seconds too.
    assert len(await collect(usage_rows(ledger, ORG, start="2026-12-02"))) == 12
    assert len(await collect(usage_rows(ledger, ORG, end="2026-11-28"))) == 12
    assert len(await collect(usage_rows(ledger, ORG, start=utc(2026, 12, 1), end=utc(2026, 12, 1, 12).timestamp()))) == 6


async def test_a_call_belongs_to_the_day_it_started_not_the_day_it_was_settled(ledger: Ledger, ledger_client) -> None:
    # Started 23:59:30 on the 30th, settled 00:00:34 on the 1st (entry id on the 1st).
    await xadd_cdrs(ledger_client, 1, first=utc(2026, 11, 30, 23, 59, 30), step_s=60)
    [row] = await collect(usage_rows(ledger, ORG, start="2026-11-30", end="2026-11-30"))
    assert row.settled.date().isoformat() == "2026-12-01"
    assert await collect(usage_rows(ledger, ORG, start="2026-12-01", end="2026-12-01")) == []
    [total] = await aggregate(usage_rows(ledger, ORG), "day")
    assert total.key == "2026-11-30"


async def test_a_cdr_without_a_start_time_is_filtered_by_its_settlement(ledger: Ledger, ledger_client) -> None:
    await xadd_cdrs(ledger_client, 3, first=utc(2026, 11, 29, 12), step_s=86400, with_times=False)
    rows = await collect(usage_rows(ledger, ORG, start="2026-11-30", end="2026-11-30"))
    assert [(r.call_id, r.start) for r in rows] == [("v1", None)]
    assert rows[0].call_time == utc(2026, 11, 30, 12, 1, 4)


async def test_the_range_seeks_the_stream_by_entry_id_instead_of_reading_it_all(ledger: Ledger,
                                                                                ledger_client) -> None:
    # 90 days of calls, one an hour; a one-day report reads that day, plus the settlement lag after it
    # and the clock skew before it, and nothing else.
    await xadd_cdrs(ledger_client, 90 * 24, first=utc(2026, 9, 1), step_s=3600)
    rows = usage_rows(ledger, ORG, start="2026-10-15", end="2026-10-15", page=50)
    got = await collect(rows)
    assert len(got) == 24
    hours = 24 + SETTLE_LAG_S / 3600 + CLOCK_SKEW_S / 3600
    assert 24 <= rows.scanned <= hours + 1
    lo, hi = rows.stream_bounds()
    assert int(lo) == (utc(2026, 10, 15).timestamp() - CLOCK_SKEW_S) * 1000
    assert int(hi) == (utc(2026, 10, 16).timestamp() + SETTLE_LAG_S) * 1000


async def test_a_call_settled_long_after_it_started_is_found_within_the_settlement_lag(ledger: Ledger,
                                                                                     ledger_client) -> None:
    key = OrgKeys(ORG).cdrs

    async def settled(call: str, start: str, when: datetime) -> None:
        await ledger_client.xadd(key, {"call": call, "answered": "1", "extra": f'{{"start":"{start}"}}',
                                       "meta": '{"user":"zed"}', "ts": when.isoformat()},
                                 id=f"{int(when.timestamp() * 1000)}-0")

    await settled("long", "2026-10-15T23:00:00.000Z", utc(2026, 10, 16, 23))  # a day later: within the lag
    await settled("next-day", "2026-10-16T00:00:00.000Z", utc(2026, 10, 16, 23, 30))
    # Recorded more than SETTLE_LAG_S after the end of the range: out of an upper-bounded report.
    await settled("very-late", "2026-10-15T22:00:00.000Z", utc(2026, 10, 16) + timedelta(seconds=SETTLE_LAG_S + 60))
    day = await collect(usage_rows(ledger, ORG, start="2026-10-15", end="2026-10-15"))
    assert [r.call_id for r in day] == ["long"]
    assert [r.call_id for r in await collect(usage_rows(ledger, ORG, start="2026-10-15"))] == [
        "long", "next-day", "very-late"]
    longer = usage_rows(ledger, ORG, start="2026-10-15", end="2026-10-15", settle_lag_s=SETTLE_LAG_S + 3600)
    assert [r.call_id for r in await collect(longer)] == ["long", "very-late"]


async def test_rows_are_filtered_by_user(ledger: Ledger, ledger_client) -> None:
    await xadd_cdrs(ledger_client, 30, first=utc(2026, 11, 1), step_s=600, users=("alice", "bob", "carol"))
    bob = await collect(usage_rows(ledger, ORG, user="bob"))
    assert len(bob) == 10 and {r.user for r in bob} == {"bob"}
    assert await collect(usage_rows(ledger, ORG, user="nobody")) == []
    assert len(await collect(usage_rows(ledger, ORG, user=""))) == 30  # empty: everyone


async def test_totals_by_user_destination_and_day_per_currency(ledger: Ledger, ledger_client) -> None:
    await xadd_cdrs(ledger_client, 6, first=utc(2026, 11, 1, 10), step_s=3600, users=("alice", "bob"))
    await xadd_cdrs(ledger_client, 2, first=utc(2026, 11, 2, 10), step_s=3600, users=("alice",), currency="EUR",
                    destination="Germany", charge=1_000_000, duration_s=100)
    rows = [r async for r in usage_rows(ledger, ORG)]
    by_user = [t.to_dict() for t in await aggregate(rows, "user")]
    assert by_user == [
        {"user": "alice", "currency": "EUR", "calls": 2, "answered": 2, "billed_s": 210, "minutes_s": 0,
         "charge": "2.00", "uncollected": "0.00"},
        {"user": "alice", "currency": "GBP", "calls": 3, "answered": 3, "billed_s": 198, "minutes_s": 0,
         "charge": "0.45", "uncollected": "0.00"},
        {"user": "bob", "currency": "GBP", "calls": 3, "answered": 3, "billed_s": 198, "minutes_s": 0,
         "charge": "0.45", "uncollected": "0.00"},
    ]
    by_dest = {(t.key, t.currency): (t.calls, t.charge) for t in await aggregate(usage_rows(ledger, ORG), "destination")}
    assert by_dest == {("France", "GBP"): (6, 900_000), ("Germany", "EUR"): (2, 2_000_000)}
    by_day = [(t.key, t.currency, t.calls) for t in await aggregate(usage_rows(ledger, ORG), "day")]
    assert by_day == [("2026-11-01", "GBP", 6), ("2026-11-02", "EUR", 2)]
    assert GROUPINGS == ("user", "destination", "day")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"start": "yesterday"}, "from"),
    ({"end": "2026-13-01"}, "to"),
    ({"start": "2026-11-02", "end": "2026-11-01"}, "to"),
    ({"start": float("nan")}, "from"),
])  # fmt: skip
def test_bad_ranges_are_refused_before_anything_is_read(kwargs, field) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_range(**kwargs)
    assert exc.value.field == field


async def test_bad_arguments_are_refused_when_the_report_is_made(ledger: Ledger) -> None:
    with pytest.raises(InvalidInput) as exc:
        usage_rows(ledger, "Not An Org")
    assert exc.value.field == "org"
    with pytest.raises(InvalidInput) as exc:
        usage_rows(ledger, ORG, start="2026-11-31")
    assert exc.value.field == "from"
    with pytest.raises(InvalidInput) as exc:
        await aggregate([], "month")
    assert exc.value.field == "by"
