"""SIPp calling SIPp directly on loopback, no gateway: the call rate the gateway's figure sits beside.

Runs past the rate this machine sustains (the UAC's target rate is above it) so the figure is the
ceiling of the two SIPp processes, not the target. Each run is bounded by ``direct.MAX_RUN_S``.
"""

from __future__ import annotations

import pytest

from bench.conftest import SMOKE
from bench.sipp.direct import sipp_direct_cps

CALLS = 200 if SMOKE else 40_000
RATE = 200 if SMOKE else 10_000
CONCURRENT = 50 if SMOKE else 500


@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_direct_calls_per_second(benchmark, transport: str, capsys) -> None:
    result = benchmark.pedantic(
        lambda: sipp_direct_cps(CALLS, RATE, CONCURRENT, transport), rounds=1, iterations=1
    )
    assert result.failed == 0 and result.successful == CALLS, result.failures
    with capsys.disabled():
        print(f"\n{result}")
