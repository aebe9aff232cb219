"""`creditgate run` as an operator runs it: SIGTERM drains, --workers N share the port and the books."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from _world import ALICE, UNIT, World, make_world, wait_answered

from gateway.b2bua.core import SHUTDOWN_REASON

try:
    from sipp import Sipp, SippScenario, expect_status_scenario
except ImportError:  # pragma: no cover
    from tests.e2e.sipp import Sipp, SippScenario, expect_status_scenario

pytestmark = pytest.mark.e2e

LONDON = "+442079460000"


def test_sigterm_refuses_new_calls_then_ends_and_settles_the_live_ones(world: World, sipp_factory: Callable[..., Sipp],
                                                                       tmp_path: Path) -> None:
    world.fund("acme", 100 * UNIT)
    carrier = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=1, timeout_s=30).start()
    live = sipp_factory(SippScenario.UAC_LONG_CALL_EXPECT_BYE, remote=world.sip, local_port=world.pbx_port,
                        calls=1, timeout_s=30, injection=[(ALICE, LONDON)]).start()
    wait_answered(live)
    assert world.gw.proc is not None
    world.gw.proc.send_signal(signal.SIGTERM)
    world.gw.wait_log("stopping: no new calls")
    refused = sipp_factory(expect_status_scenario(503, directory=tmp_path), remote=world.sip, calls=1, timeout_s=10,
                           injection=[(ALICE, LONDON)])
    assert refused.run() == 0, refused.diagnostics()
    assert live.wait(15) == 0, live.diagnostics()  # the drain period (2 s) over: BYE
    (bye,) = live.log_records("bye")
    assert bye["reason"] == SHUTDOWN_REASON
    assert carrier.wait(10) == 0, carrier.diagnostics()
    assert world.gw.proc.wait(20) == 0
    (cdr,) = world.wait_settled(1)
    assert cdr["end_reason"] == "shutdown" and int(cdr["charge"]) > 0
    assert world.reconciles()


def test_two_workers_share_the_sip_port_and_every_call_is_billed_once(tmp_path: Path, redis_url: str,
                                                                      sipp_factory: Callable[..., Sipp]) -> None:
    calls = 40
    with make_world(tmp_path, redis_url, workers=2) as world:
        world.fund("acme", 100 * UNIT)

        async def any_port(svc) -> None:  # type: ignore[no-untyped-def]
            await svc.directory.add_trunk(await svc.directory.get_org("acme"), "127.0.0.1")

        world.services(any_port)
        carrier = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=calls,
                               transport="tcp", timeout_s=60, trace_messages=False).start()
        # The kernel spreads a shared port by source: a connection per call (from its own port, which
        # the host-only trunk accepts) lets both workers take calls.
        pbx = sipp_factory(SippScenario.UAC_CALL, remote=world.sip, transport="tcp-per-call", calls=calls, rate=20,
                           duration_ms=200, timeout_s=60, injection=[(ALICE, LONDON)], trace_messages=False)
        assert pbx.run() == 0, pbx.diagnostics()
        assert carrier.wait(20) == 0, carrier.diagnostics()
        cdrs = world.wait_settled(calls)
        assert len({c["call"] for c in cdrs}) == calls
        bal = world.balance()
        assert bal.balance == 100 * UNIT - sum(int(c["charge"]) for c in cdrs)
        assert world.reconciles()
        ended_by = {json.loads(line)["pid"] for line in world.gw.log_text().splitlines() if '"ended (' in line}
        assert len(ended_by) == 2  # both workers carried calls
