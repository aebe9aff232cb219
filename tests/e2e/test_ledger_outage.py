"""The ledger (redis-server) dies during a live call: SPEC 4's outage policy, end to end.

Fail closed: while Redis is down a new call gets 503 with Retry-After; the live call keeps the time
already reserved plus the configured grace, then both legs get a BYE; when Redis is back the kept
settlement is written once and the books reconcile.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _world import ALICE, UNIT, make_world, wait_answered

try:
    from _procs import RedisProcess
    from sipp import Sipp, SippScenario, expect_status_scenario
except ImportError:  # pragma: no cover
    from tests._procs import RedisProcess
    from tests.e2e.sipp import Sipp, SippScenario, expect_status_scenario

pytestmark = pytest.mark.e2e

MOBILE = "+447911123456"  # 0.10 a second, whole seconds


def test_live_call_survives_the_grace_then_ends_and_is_settled_once_redis_is_back(
        tmp_path: Path, sipp_factory: Callable[..., Sipp]) -> None:
    redis = RedisProcess(tmp_path / "redis", appendonly=True, args=["--appendfsync", "always"]).start()
    try:
        settings = {"credit": {"debit_interval_s": 6, "outage_grace_s": 2, "sweep_interval_s": 0.5},
                    "redis": {"timeout_s": 0.3}}
        with make_world(tmp_path, redis.url, settings) as world:
            world.fund("acme", 100 * UNIT)
            carrier = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=1,
                                   timeout_s=40).start()
            pbx = sipp_factory(SippScenario.UAC_LONG_CALL_EXPECT_BYE, remote=world.sip, local_port=world.pbx_port,
                               calls=1, timeout_s=40, injection=[(ALICE, MOBILE)]).start()
            wait_answered(pbx)
            redis.kill()  # before the first renewal (a lead of 1.5 to 3 s before the 6 s chunk ends)
            # A new call while the ledger is down: fail closed, at once, with Retry-After. It comes
            # from a port the last known trunks do not name: that too is 503 (it may be a trunk
            # added since), never 403 while the directory cannot be read.
            refused = sipp_factory(expect_status_scenario(503, require_warning=True, directory=tmp_path),
                                   remote=world.sip, calls=1, timeout_s=20, injection=[(ALICE, MOBILE)])
            started = time.monotonic()
            assert refused.run() == 0, refused.diagnostics()
            assert time.monotonic() - started < 5
            (answer,) = refused.messages(status=503)
            assert answer.header("Retry-After") == "2"
            assert pbx.wait(20) == 0, pbx.diagnostics()
            (answered,) = pbx.log_records("answered")
            (bye,) = pbx.log_records("bye")
            paid_ms = int(bye["clock_ms"]) - int(answered["clock_ms"])
            assert abs(paid_ms - 8000) <= 150, paid_ms  # the 6 s reserved + 2 s grace
            assert bye["reason"] == 'SIP;cause=503;text="ledger unavailable"'
            assert carrier.wait(10) == 0, carrier.diagnostics()
            redis.restart()
            (cdr,) = world.wait_settled(1, timeout=15)
            assert cdr["end_reason"] == "ledger_outage"
            assert int(cdr["charge"]) == 600_000  # what the ledger had reserved: never more than was held
            assert world.balance().balance == 100 * UNIT - 600_000
            assert world.reconciles()
    finally:
        redis.stop()
