"""Real user agents: two pyVoIP phones register with the gateway, one calls the other through it, and
the gateway hangs both up when the caller's organization runs out of credit.

pyVoIP (GPL-3.0) is a test-only extra: imported here, never by the product. Its 1.6.8 quirks that the
gateway tolerates without bending RFC 3261 for others: a fresh To tag in its ACK for a 2xx (the ACK is
matched by Call-ID and CSeq), Vias copied from the INVITE into its BYE (answers go to the packet's
source), answering about a second after ringing, and registration without qop (so the phones are
trunks trusted by address rather than digest users).
"""

from __future__ import annotations

import threading
import time

import pytest
from _world import ALICE, World

# pyVoIP wants its VoIP module imported before anything else of it: this is the first pyVoIP import.
from pyVoIP.VoIP import CallState, PhoneStatus, VoIPPhone

pytestmark = pytest.mark.e2e

MOBILE = "+447911123456"  # 0.10 a second, whole seconds


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_pyvoip_phones_register_call_and_are_cut_when_the_credit_ends(world: World) -> None:
    # The called phone stands where the carrier is, and registers as a trunk of a second organization.
    async def seed(svc) -> None:  # type: ignore[no-untyped-def]
        beta, _ = await svc.directory.create_org("Beta", country="GB", currency="GBP")
        await svc.directory.add_trunk(beta, f"127.0.0.1:{world.carrier_port}")

    world.services(seed)
    world.fund("acme", 550_000)  # 5 s of calling at 0.10 a second, 0.05 left over
    answered = threading.Event()
    callee_calls: list[object] = []

    def on_call(call) -> None:  # type: ignore[no-untyped-def]
        callee_calls.append(call)
        call.answer()
        answered.set()

    host, port = world.sip
    callee = VoIPPhone(host, port, "callee", "unused", myIP="127.0.0.1", sipPort=world.carrier_port,
                       callCallback=on_call, rtpPortLow=30000, rtpPortHigh=30100)
    caller = VoIPPhone(host, port, ALICE, "unused", myIP="127.0.0.1", sipPort=world.pbx_port,
                       rtpPortLow=30200, rtpPortHigh=30300)
    callee.start()
    try:
        caller.start()
        try:
            assert callee.get_status() == PhoneStatus.REGISTERED
            assert caller.get_status() == PhoneStatus.REGISTERED
            call = caller.call(MOBILE)
            assert answered.wait(15), world.gw.log_tail()
            _wait(lambda: call.state == CallState.ANSWERED, 10, "the caller to see the answer")
            started = time.monotonic()
            _wait(lambda: call.state == CallState.ENDED, 15, "the gateway to end the caller's call")
            _wait(lambda: callee_calls[0].state == CallState.ENDED, 5, "the callee's call to end")  # type: ignore[attr-defined]
            assert time.monotonic() - started < 7  # 5 s paid from the answer (pyVoIP polls its states)
        finally:
            caller.stop()
    finally:
        callee.stop()
    (cdr,) = world.wait_settled(1)
    assert (cdr["end_reason"], cdr["charge"], cdr["billed_s"]) == ("credit_exhausted", "500000", "5")
    bal = world.balance()
    assert bal.balance == 50_000 and bal.reserved == 0 and world.reconciles()
