"""FailureThrottle: failures per source in a fixed window, refused past the budget, in a bounded table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip import FailureThrottle, SipError


def test_a_source_is_refused_after_its_budget_until_the_window_ends() -> None:
    t = FailureThrottle(3, 60.0)
    assert [t.failed("10.0.0.1", 100.0 + i) for i in range(3)] == [False, False, True]
    assert t.retry_after("10.0.0.1", 103.0) == pytest.approx(57.0)
    assert t.retry_after("10.0.0.2", 103.0) == 0.0  # another source is not touched
    assert t.retry_after("10.0.0.1", 159.9) > 0
    assert t.retry_after("10.0.0.1", 160.0) == 0.0  # the window opened at 100 s is over
    assert not t.failed("10.0.0.1", 160.0)  # a new window, a new budget


def test_below_the_budget_nothing_is_refused() -> None:
    t = FailureThrottle(5, 10.0)
    for i in range(4):
        t.failed("h", float(i))
        assert t.retry_after("h", float(i)) == 0.0


def test_a_flood_of_sources_never_grows_the_table_past_its_bound() -> None:
    t = FailureThrottle(2, 60.0, max_sources=100)
    for i in range(10_000):
        t.failed(f"spoofed-{i}", 1.0 + i / 1000)
        assert len(t) <= 100
    # Expired entries are dropped first: after the window only the new source is kept.
    t.failed("late", 1000.0)
    assert len(t) == 1


def test_bad_bounds_are_refused() -> None:
    for args in ((0, 1.0), (1, 0.0)):
        with pytest.raises(SipError):
            FailureThrottle(*args)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.floats(0, 5, allow_nan=False)), max_size=60),
       st.integers(1, 4))
def test_never_more_failures_per_window_than_the_budget(events: list[tuple[str, float]], budget: int) -> None:
    """A source that retries whenever it is not refused gets at most ``budget`` failures counted in any
    span of one window after its first (fixed windows: at most twice that in a span straddling two)."""
    t = FailureThrottle(budget, 2.0, max_sources=16)
    now = 0.0
    counted: dict[str, list[float]] = {}
    for source, step in events:
        now += step
        if t.retry_after(source, now) > 0:
            continue
        t.failed(source, now)
        counted.setdefault(source, []).append(now)
    for times in counted.values():
        assert sum(1 for x in times if x < times[0] + 2.0) <= budget
        for start in times:
            assert sum(1 for x in times if start <= x < start + 2.0) <= 2 * budget
