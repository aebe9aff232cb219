"""Calls through a real gateway: SIPp as the PBX and as the carrier, money checked in the real ledger.

Each test seeds a fresh organization (``world``), places calls with SIPp over loopback and then reads
the balance, the CDRs and the reconciliation from Redis. The rates (``DECK`` in conftest): London
0.06/min per second plus a 0.01 fee, UK mobile 6.00/min per second (0.10 a second), toll-free inbound
0.60/min per second.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
from _world import ALICE, TOLLFREE, UNIT, World, wait_answered

from gateway.b2bua.core import CREDIT_EXHAUSTED_REASON

try:
    from sipp import Sipp, SippScenario, expect_status_scenario
except ImportError:  # pragma: no cover
    from tests.e2e.sipp import Sipp, SippScenario, expect_status_scenario

pytestmark = pytest.mark.e2e

Factory = Callable[..., Sipp]
LONDON = "+442079460000"
MOBILE = "+447911123456"


def _carrier(world: World, sipp_factory: Factory, scenario=SippScenario.UAS_ANSWER, **kw: object) -> Sipp:
    kw.setdefault("timeout_s", 30)
    return sipp_factory(scenario, local_port=world.carrier_port, **kw).start()


def _pbx(world: World, sipp_factory: Factory, scenario, dialed: str, *, caller: str = ALICE,
         **kw: object) -> Sipp:
    kw.setdefault("calls", 1)
    kw.setdefault("timeout_s", 30)
    return sipp_factory(scenario, remote=world.sip, local_port=world.pbx_port, injection=[(caller, dialed)], **kw)


def _london_charge(duration_ms: int) -> int:
    """London by the deck's rule: the 0.01 fee, then whole seconds rounded up at 0.06/min."""
    seconds = max(math.ceil(duration_ms / 1000), 1)
    return 10_000 + math.ceil(60_000 * seconds / 60)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_funded_call_connects_ends_normally_and_is_charged_exactly(world: World, sipp_factory: Factory,
                                                                   transport: str) -> None:
    world.fund("acme", 100 * UNIT)
    carrier = _carrier(world, sipp_factory, calls=1, transport=transport)
    pbx = _pbx(world, sipp_factory, SippScenario.UAC_CALL, LONDON, duration_ms=1500, transport=transport)
    assert pbx.run() == 0, pbx.diagnostics()
    (cdr,) = world.wait_settled(1)
    assert carrier.wait(10) == 0, carrier.diagnostics()
    duration = int(cdr["duration_ms"])
    assert 1400 <= duration <= 2500
    assert int(cdr["charge"]) == _london_charge(duration)
    assert (cdr["end_reason"], cdr["answered"], cdr["paid"]) == ("normal", "1", "credits")
    assert cdr["meta"]["callee"] == LONDON and cdr["meta"]["user"] == "alice"
    bal = world.balance()
    assert bal.balance == 100 * UNIT - int(cdr["charge"]) and bal.reserved == 0
    assert world.reconciles()
    # The carrier saw a B leg of our own: not the PBX's Call-ID, and the PBX's SDP passed through.
    (invite,) = [m for m in carrier.messages() if m.method == "INVITE"]
    (pbx_invite,) = [m for m in pbx.messages() if m.method == "INVITE" and m.direction == "sent"]
    assert invite.call_id != pbx_invite.call_id
    assert invite.body.strip() == pbx_invite.body.strip() and "m=audio" in invite.body


def test_unfunded_call_is_refused_402_with_a_warning_and_reaches_nobody(world: World, sipp_factory: Factory,
                                                                        tmp_path) -> None:
    carrier = _carrier(world, sipp_factory)
    pbx = _pbx(world, sipp_factory, expect_status_scenario(402, require_warning=True, directory=tmp_path), LONDON)
    assert pbx.run() == 0, pbx.diagnostics()
    (final,) = [m for m in pbx.messages() if m.status == 402]
    assert final.header("Warning") is not None and "399" in final.header("Warning")
    assert not [m for m in carrier.messages() if m.method == "INVITE"]
    assert world.wait_settled(0) == []  # a refusal holds nothing and writes no call record
    assert world.balance().balance == 0


def test_unknown_source_is_refused_403_and_nothing_reaches_the_carrier(world: World, sipp_factory: Factory,
                                                                       tmp_path) -> None:
    world.fund("acme", 100 * UNIT)
    carrier = _carrier(world, sipp_factory)
    stranger = sipp_factory(expect_status_scenario(403, require_warning=True, directory=tmp_path), remote=world.sip,
                            calls=1, timeout_s=20, injection=[(ALICE, LONDON)])  # a port that is no trunk
    assert stranger.run() == 0, stranger.diagnostics()
    assert not [m for m in carrier.messages() if m.method == "INVITE"]
    assert world.balance().balance == 100 * UNIT and world.cdrs() == []


@pytest.mark.parametrize(("dialed", "status"), [("+999123", 404), ("0207946", 484), ("+4420794600001234567", 404)])
def test_invalid_and_incomplete_numbers(world: World, sipp_factory: Factory, tmp_path, dialed: str,
                                        status: int) -> None:
    world.fund("acme", 100 * UNIT)
    carrier = _carrier(world, sipp_factory)
    pbx = _pbx(world, sipp_factory, expect_status_scenario(status, require_warning=True, directory=tmp_path), dialed)
    assert pbx.run() == 0, pbx.diagnostics()
    assert not [m for m in carrier.messages() if m.method == "INVITE"]


def test_emergency_call_passes_uncharged_with_no_money_and_no_licence(world: World, sipp_factory: Factory) -> None:
    carrier = _carrier(world, sipp_factory, calls=1)
    # dave has no credits licence and the balance is zero: 999 still goes through, free.
    pbx = _pbx(world, sipp_factory, SippScenario.UAC_CALL, "999", caller="+442079460124", duration_ms=500)
    assert pbx.run() == 0, pbx.diagnostics()
    (cdr,) = world.wait_settled(1)
    assert (cdr["charge"], cdr["paid"], cdr["meta"]["class"]) == ("0", "included", "emergency")
    (invite,) = [m for m in carrier.messages() if m.method == "INVITE"]
    assert invite.start_line.split()[1].startswith("sip:999@")
    assert world.balance().balance == 0 and world.reconciles()


def test_long_call_on_a_small_balance_is_cut_on_both_legs_at_the_paid_end(world: World,
                                                                          sipp_factory: Factory) -> None:
    # 0.55 at 0.10 a second (whole seconds): 5 s paid, 0.05 left (less than one increment).
    world.fund("acme", 550_000)
    carrier = _carrier(world, sipp_factory, calls=1)
    pbx = _pbx(world, sipp_factory, SippScenario.UAC_LONG_CALL_EXPECT_BYE, MOBILE, timeout_s=20)
    assert pbx.run() == 0, pbx.diagnostics()
    (answered,) = pbx.log_records("answered")
    (bye,) = pbx.log_records("bye")
    paid_ms = int(bye["clock_ms"]) - int(answered["clock_ms"])
    assert abs(paid_ms - 5000) <= 100, paid_ms
    assert bye["reason"] == CREDIT_EXHAUSTED_REASON
    assert carrier.wait(10) == 0, carrier.diagnostics()
    (carrier_bye,) = [m for m in carrier.messages() if m.method == "BYE"]
    assert carrier_bye.header("Reason") == CREDIT_EXHAUSTED_REASON
    (cdr,) = world.wait_settled(1)
    assert (cdr["end_reason"], cdr["charge"], cdr["billed_s"]) == ("credit_exhausted", "500000", "5")
    bal = world.balance()
    assert bal.balance == 50_000 and bal.reserved == 0
    assert world.reconciles()


def test_cancel_before_answer_releases_everything(world: World, sipp_factory: Factory) -> None:
    world.fund("acme", 100 * UNIT)
    carrier = _carrier(world, sipp_factory, SippScenario.UAS_RING_THEN_CANCEL, calls=1)
    pbx = _pbx(world, sipp_factory, SippScenario.UAC_CANCEL, LONDON, duration_ms=500)
    assert pbx.run() == 0, pbx.diagnostics()
    assert carrier.wait(10) == 0, carrier.diagnostics()
    (cdr,) = world.wait_settled(1)
    assert (cdr["end_reason"], cdr["answered"], cdr["charge"]) == ("cancelled", "0", "0")
    bal = world.balance()
    assert (bal.balance, bal.reserved, bal.live) == (100 * UNIT, 0, 0)
    assert world.reconciles()


def test_reinvite_passes_through_the_call(world: World, sipp_factory: Factory) -> None:
    world.fund("acme", 100 * UNIT)
    carrier = _carrier(world, sipp_factory, calls=1)
    pbx = _pbx(world, sipp_factory, SippScenario.UAC_REINVITE, LONDON, duration_ms=300)
    assert pbx.run() == 0, pbx.diagnostics()
    assert carrier.wait(10) == 0, carrier.diagnostics()
    invites = [m for m in carrier.messages() if m.method == "INVITE"]
    assert len(invites) == 2 and invites[1].header("To") and "tag=" in invites[1].header("To")
    (cdr,) = world.wait_settled(1)
    assert cdr["end_reason"] == "normal" and world.reconciles()


@pytest.mark.parametrize(("far", "near"), [(486, 486), (603, 603), (500, 502)])
def test_far_end_failures_are_passed_or_mapped_and_release_the_reservation(
        world: World, sipp_factory: Factory, tmp_path, far: int, near: int) -> None:
    from sipp import reject_scenario

    world.fund("acme", 100 * UNIT)
    carrier = _carrier(world, sipp_factory, reject_scenario(far, directory=tmp_path), calls=1)
    pbx = _pbx(world, sipp_factory, expect_status_scenario(near, directory=tmp_path), LONDON)
    assert pbx.run() == 0, pbx.diagnostics()
    assert carrier.wait(10) == 0, carrier.diagnostics()
    (cdr,) = world.wait_settled(1)
    assert cdr["answered"] == "0" and cdr["charge"] == "0"
    assert world.balance().balance == 100 * UNIT and world.reconciles()


def test_tollfree_call_from_the_carrier_reaches_its_target_and_is_billed_to_the_owner(
        world: World, sipp_factory: Factory) -> None:
    world.fund("acme", 100 * UNIT)
    bridge = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.bridge_port, calls=1, timeout_s=30).start()
    caller = sipp_factory(SippScenario.UAC_CALL, remote=world.sip, local_port=world.carrier_port, calls=1,
                          timeout_s=30, duration_ms=1200, injection=[("+12125550123", TOLLFREE)])
    assert caller.run() == 0, caller.diagnostics()
    assert bridge.wait(10) == 0, bridge.diagnostics()
    (invite,) = [m for m in bridge.messages() if m.method == "INVITE"]
    assert invite.start_line.split()[1].startswith("sip:bridge@127.0.0.1")
    (cdr,) = world.wait_settled(1)
    seconds = math.ceil(int(cdr["duration_ms"]) / 1000)
    assert int(cdr["charge"]) == 10_000 * seconds  # 0.60/min per second
    assert cdr["meta"]["direction"] == "inbound_tollfree" and cdr["meta"]["org"] == "acme"
    assert world.balance().balance == 100 * UNIT - int(cdr["charge"]) and world.reconciles()


def test_tollfree_is_refused_402_at_zero_and_cut_when_the_balance_runs_out(world: World, sipp_factory: Factory,
                                                                          tmp_path) -> None:
    refused = sipp_factory(expect_status_scenario(402, directory=tmp_path), remote=world.sip,
                           local_port=world.carrier_port, calls=1, timeout_s=20,
                           injection=[("+12125550123", TOLLFREE)])
    assert refused.run() == 0, refused.diagnostics()
    world.fund("acme", 30_000)  # 3 s at 0.01 a second
    bridge = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.bridge_port, calls=1, timeout_s=30).start()
    caller = sipp_factory(SippScenario.UAC_LONG_CALL_EXPECT_BYE, remote=world.sip, local_port=world.carrier_port,
                          calls=1, timeout_s=20, injection=[("+12125550123", TOLLFREE)])
    assert caller.run() == 0, caller.diagnostics()
    (bye,) = caller.log_records("bye")
    assert bye["reason"] == CREDIT_EXHAUSTED_REASON
    assert bridge.wait(10) == 0, bridge.diagnostics()
    (cdr,) = world.wait_settled(1)
    assert (cdr["end_reason"], cdr["charge"]) == ("credit_exhausted", "30000")
    assert world.balance().balance == 0 and world.reconciles()


def test_200_simultaneous_calls_share_one_small_balance_and_never_overdraw_it(world: World,
                                                                              sipp_factory: Factory) -> None:
    calls = 200
    # 60.00 at 0.10 a second: 600 paid seconds for 200 calls that never hang up by themselves. Every
    # call gets its first 2 s chunk (40.00), then they compete for the rest chunk by chunk.
    world.fund("acme", 60 * UNIT)
    carrier = _carrier(world, sipp_factory, calls=calls, timeout_s=90, trace_messages=False)
    pbx = _pbx(world, sipp_factory, SippScenario.UAC_LONG_CALL_EXPECT_BYE, MOBILE, calls=calls, rate=100,
               concurrent=calls, timeout_s=90, trace_messages=False)
    assert pbx.run() == 0, pbx.diagnostics()
    stats = pbx.stats()
    assert (stats.successful, stats.failed) == (calls, 0)
    byes = pbx.log_records("bye")
    assert len(byes) == calls and {b["reason"] for b in byes} == {CREDIT_EXHAUSTED_REASON}
    assert carrier.wait(30) == 0, carrier.diagnostics()
    cdrs = world.wait_settled(calls, timeout=30)
    assert len(cdrs) == calls and len({c["call"] for c in cdrs}) == calls  # one CDR per call
    assert {c["end_reason"] for c in cdrs} == {"credit_exhausted"}
    bal = world.balance()
    assert bal.balance == 60 * UNIT - sum(int(c["charge"]) for c in cdrs)
    assert 0 <= bal.balance < 100_000  # spent down to less than one increment, never below zero
    assert bal.reserved == 0
    assert world.reconciles()
    rc = world.gw.cli("reconcile", "acme")
    assert rc.returncode == 0, rc.stdout + rc.stderr


@pytest.mark.gateway_settings({"credit": {"warning_before_s": 2}})
def test_caller_is_warned_by_info_before_the_credit_runs_out(world: World, sipp_factory: Factory) -> None:
    world.fund("acme", 550_000)  # 5 s paid, as above
    carrier = _carrier(world, sipp_factory, calls=1)
    pbx = _pbx(world, sipp_factory, SippScenario.UAC_LONG_CALL_EXPECT_BYE, MOBILE, timeout_s=20)
    assert pbx.run() == 0, pbx.diagnostics()
    (info,) = pbx.log_records("info")
    (bye,) = pbx.log_records("bye")
    ahead_ms = int(bye["clock_ms"]) - int(info["clock_ms"])
    # warning_before_s ahead of the BYE, or as soon as the grant turned final when that came later
    assert 1300 <= ahead_ms <= 2200, ahead_ms
    (msg,) = pbx.messages(method="INFO", direction="received")
    assert msg.header("Content-Type") == "application/vnd.creditgate.warning+json"
    assert '"event": "credit_low"' in msg.body
    assert carrier.wait(10) == 0, carrier.diagnostics()
    (cdr,) = world.wait_settled(1)
    assert cdr["end_reason"] == "credit_exhausted" and world.reconciles()


def test_metrics_count_calls_refusals_and_sip_traffic(world: World, sipp_factory: Factory, tmp_path) -> None:
    import urllib.request

    carrier = _carrier(world, sipp_factory, calls=1)
    refused = _pbx(world, sipp_factory, expect_status_scenario(402, directory=tmp_path), LONDON)
    assert refused.run() == 0, refused.diagnostics()
    world.fund("acme", 100 * UNIT)
    ok = _pbx(world, sipp_factory, SippScenario.UAC_CALL, LONDON, duration_ms=200)
    assert ok.run() == 0, ok.diagnostics()
    assert carrier.wait(10) == 0
    world.wait_settled(1)
    with urllib.request.urlopen(f"http://127.0.0.1:{world.gw.http_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in ('creditgate_authorizations_refused_total{reason="no_credit"} 1.0',
                 'creditgate_calls_answered_total{class="domestic_fixed",paid_by="credits"} 1.0',
                 'creditgate_calls_ended_total{reason="normal"} 1.0',
                 'creditgate_sip_requests_received_total{method="INVITE"} 2.0',
                 'creditgate_sip_responses_received_total{status="200"} 2.0'):
        assert line in text, line
    (cdr,) = world.cdrs()
    assert f'creditgate_debited_micros_total {float(int(cdr["charge"]))}' in text
    # The process's collections are timed; the young generations run, automatic full ones do not.
    gc_runs = dict(re.findall(r'creditgate_gc_collections_total\{generation="(\d)"\} ([0-9.]+)', text))
    assert float(gc_runs["0"]) > 0 and float(gc_runs["2"]) == 0, gc_runs
    assert 'creditgate_gc_longest_pause_seconds{generation="0"}' in text


def test_a_stranger_who_knows_the_dialog_cannot_hang_up_the_call(world: World, sipp_factory: Factory) -> None:
    import socket

    world.fund("acme", 550_000)  # 5 s paid: the call ends by itself, on credit, not by the stranger
    carrier = _carrier(world, sipp_factory, calls=1)
    pbx = _pbx(world, sipp_factory, SippScenario.UAC_LONG_CALL_EXPECT_BYE, MOBILE, timeout_s=20).start()
    wait_answered(pbx)
    (invite,) = pbx.messages(method="INVITE", direction="sent")
    (ok,) = [m for m in pbx.messages(status=200, direction="received") if m.cseq_method == "INVITE"][:1]
    bye = (f"BYE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5999;branch=z9hG4bKevil\r\n"
           f"From: {invite.header('From')}\r\nTo: {ok.header('To')}\r\nCall-ID: {invite.call_id}\r\n"
           "CSeq: 99 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        s.sendto(bye, world.sip)
        assert s.recv(65535).startswith(b"SIP/2.0 403 ")
    assert pbx.wait(20) == 0, pbx.diagnostics()
    (cdr,) = world.wait_settled(1)
    assert (cdr["end_reason"], cdr["billed_s"]) == ("credit_exhausted", "5")  # the call ran its paid time
    assert carrier.wait(10) == 0
