"""The cached time formats of the call path give exactly what datetime gives, across second, day,
month and year boundaries and when the caches are full."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ledger import client, keys
from gateway.ledger.client import utc_now_iso
from gateway.ledger.keys import month_of

# 1970 .. 2100, with sub-millisecond fractions.
TIMES = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False, allow_infinity=False)


def _iso(ts: float) -> str:
    sec = int(ts // 1)
    return datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{int((ts - sec) * 1000):03d}Z"


@settings(max_examples=2000)
@given(TIMES)
def test_utc_now_iso_matches_datetime(ts: float) -> None:
    assert utc_now_iso(ts) == _iso(ts)
    assert utc_now_iso(ts) == _iso(ts)  # and again, from the cache


@settings(max_examples=2000)
@given(TIMES)
def test_month_of_matches_datetime(ts: float) -> None:
    expected = datetime.fromtimestamp(ts, UTC).strftime("%Y%m")
    assert month_of(ts) == expected
    assert month_of(ts) == expected


def test_month_and_second_boundaries() -> None:
    end_of_nov = datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC).timestamp()
    assert month_of(end_of_nov) == "202611" and month_of(end_of_nov + 0.001) == "202612"
    assert month_of(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() + 1) == "202701"
    assert utc_now_iso(end_of_nov) == "2026-11-30T23:59:59.999Z"
    assert utc_now_iso(end_of_nov + 0.001) == "2026-12-01T00:00:00.000Z"


def test_the_caches_are_bounded() -> None:
    for day in range(3000):
        month_of(day * 86400.0)
        utc_now_iso(day * 1.0)
    assert keys._month_of_day.cache_info().currsize <= 1024 and client._second_text.cache_info().currsize <= 1024
    assert month_of(0.0) == "197001" and utc_now_iso(2999.5) == "1970-01-01T00:49:59.500Z"
