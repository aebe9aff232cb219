"""The Lua twin of the charging rule gives the answers of rating_core, exactly, for any rate."""

from __future__ import annotations

import contextlib

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rating_core
from gateway.ledger.client import _SCRIPTS
from rating_core import Rate

# The helpers of _lib.lua, exercised directly: charge, billed seconds and max seconds.
_LIB = _SCRIPTS["reserve"].split("local call_id = ARGV[1]")[0]
HARNESS = _LIB + """
local c = {fee = tonumber(ARGV[1]), rate = tonumber(ARGV[2]), inc1 = tonumber(ARGV[3]), inc2 = tonumber(ARGV[4])}
local secs, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
return {fmt(seg_charge(c, secs, true)), fmt(billed(c, secs)), fmt(seg_max(c, budget, true)), fmt(seg_charge(c, secs, false))}
"""


@pytest.fixture
def lua(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    script = client.register_script(HARNESS)
    with contextlib.closing(client):
        yield lambda *args: [int(x) for x in script(keys=[], args=list(args))]


def _rate(fee: int, per_min: int, inc1: int, inc2: int) -> Rate:
    return Rate(prefix="44", destination="x", rate_per_min=per_min, currency="GBP", initial_increment_s=inc1,
                subsequent_increment_s=inc2, connection_fee=fee, effective_from=0)


@pytest.mark.parametrize(
    "fee,per_min,inc1,inc2,secs,expected_charge,expected_billed",
    [
        (0, 100_000, 30, 6, 31, 60_000, 36),  # 0.10/min, 30/6, 31 s -> 36 s -> 0.06
        (10_000, 100_000, 60, 60, 0, 110_000, 60),  # zero-second answered call: fee + one increment
        (0, 1, 1, 1, 1, 1, 1),  # a fraction of a micro-unit rounds up
        (0, 60, 1, 1, 59, 59, 59),
        (0, 1_000_000_000, 60, 60, 86_400, 1_440_000_000_000, 86_400),
    ],
)
def test_lua_charge_examples(lua, fee, per_min, inc1, inc2, secs, expected_charge, expected_billed) -> None:
    charged, billed, _, _ = lua(fee, per_min, inc1, inc2, secs, 0)
    assert (charged, billed) == (expected_charge, expected_billed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fee=st.integers(0, 10**8),
    per_min=st.integers(0, 10**9),
    inc1=st.integers(1, 3600),
    inc2=st.integers(1, 3600),
    secs=st.integers(0, 86_400),
    budget=st.integers(0, 10**13),
)
def test_lua_twin_matches_rating_core(lua, fee, per_min, inc1, inc2, secs, budget) -> None:
    rate = _rate(fee, per_min, inc1, inc2)
    charged, billed, longest, without_fee = lua(fee, per_min, inc1, inc2, secs, budget)
    assert charged == rating_core.charge(rate, secs)
    assert billed == rating_core.billed_seconds(rate, secs)
    assert without_fee == charged - fee
    assert longest == rating_core.max_seconds(rate, budget)
