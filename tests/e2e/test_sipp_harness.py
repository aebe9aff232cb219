"""The SIPp harness works on its own: SIPp calls SIPp on loopback, no gateway in between.

Each scenario pair runs a few calls end to end; the assertions cover what the gateway tests will
lean on: exit codes, parsed statistics and failure reasons, captured messages and <log> lines.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

try:
    from sipp import (
        SCENARIO_DIR,
        Sipp,
        SippError,
        SippExit,
        SippScenario,
        expect_status_scenario,
        free_port,
        parse_screen,
        reject_scenario,
    )
    from sipp_fixtures import sipp_factory  # noqa: F401  (fixture)
except ImportError:  # pragma: no cover
    from tests.e2e.sipp import (
        SCENARIO_DIR,
        Sipp,
        SippError,
        SippExit,
        SippScenario,
        expect_status_scenario,
        free_port,
        parse_screen,
        reject_scenario,
    )
    from tests.e2e.sipp_fixtures import sipp_factory  # noqa: F401

pytestmark = pytest.mark.e2e

Factory = Callable[..., Sipp]
CALLERS = [(f"+4410000000{i:02d}", f"+4420794600{i:02d}") for i in range(4)]
RUN_TIMEOUT = 20.0


def _pair(
    sipp_factory: Factory,
    uas_scenario: Path | str,
    uac_scenario: Path | str,
    *,
    calls: int,
    transport: str = "udp",
    uas_args: dict[str, object] | None = None,
    **uac_args: object,
) -> tuple[Sipp, Sipp, int, int]:
    """Run ``calls`` calls from a SIPp UAC to a SIPp UAS; both exit codes (the UAS's after the UAC's)."""
    uas = sipp_factory(uas_scenario, calls=calls, transport=transport, timeout_s=RUN_TIMEOUT, **(uas_args or {}))
    uas.start()
    uac_args.setdefault("injection", CALLERS)
    uac_args.setdefault("rate", 100)
    uac = sipp_factory(
        uac_scenario, remote=uas.address, calls=calls, transport=transport, timeout_s=RUN_TIMEOUT, **uac_args
    )
    uac_rc = uac.run(timeout=RUN_TIMEOUT + 5)
    uas_rc = uas.wait(RUN_TIMEOUT + 5)
    return uac, uas, uac_rc, uas_rc


@pytest.mark.parametrize("transport", ["udp", "tcp", "tcp-per-call"])
def test_twenty_calls_succeed_and_stats_count_them(sipp_factory: Factory, transport: str) -> None:
    uac, uas, uac_rc, uas_rc = _pair(
        sipp_factory, SippScenario.UAS_ANSWER, SippScenario.UAC_CALL, calls=20, transport=transport,
        concurrent=10, duration_ms=20,
    )  # fmt: skip
    assert uac_rc == SippExit.OK, uac.diagnostics()
    assert uas_rc == SippExit.OK, uas.diagnostics()
    for side in (uac, uas):
        stats = side.stats()
        assert (stats.successful, stats.failed, dict(stats.failures)) == (20, 0, {}), side.diagnostics()
        assert stats.created == 20 and stats.current == 0
        assert stats.elapsed_s > 0
    assert uac.stats().call_length_ms >= 20  # the -d pause is inside every call
    screen = parse_screen(uac.screen_file)  # the fallback reading agrees with the CSV
    assert (screen.successful, screen.failed, screen.created) == (20, 0, 20)
    invites = uas.messages(method="INVITE", direction="received")
    assert len(invites) == 20
    assert {m.transport for m in invites} == {"UDP" if transport == "udp" else "TCP"}
    sent_by = {(m.header("Via") or "").split(";")[0].rsplit(":", 1)[1] for m in invites}
    # udp and tcp (one connection) send from the -p port, as a trunk matched by port needs;
    # tcp-per-call opens a connection per call, each from its own ephemeral port.
    if transport == "tcp-per-call":
        assert len(sent_by) == 20
    else:
        assert sent_by == {str(uac.port)}


def test_messages_capture_invite_and_bye_with_injected_numbers(sipp_factory: Factory) -> None:
    uac, uas, uac_rc, uas_rc = _pair(
        sipp_factory, SippScenario.UAS_ANSWER, SippScenario.UAC_CALL, calls=6, injection=CALLERS[:2]
    )
    assert (uac_rc, uas_rc) == (0, 0), uac.diagnostics() + "\n" + uas.diagnostics()
    invites = uas.messages(method="INVITE", direction="received")
    byes = uas.messages(method="BYE", direction="received")
    assert len(invites) == len(byes) == 6
    # Rows are used in order and wrap around: caller in From, dialed number in Request-URI and To.
    for i, invite in enumerate(invites):
        caller, dialed = CALLERS[i % 2]
        assert invite.start_line == f"INVITE sip:{dialed}@127.0.0.1:{uas.port} SIP/2.0"
        assert f"<sip:{caller}@127.0.0.1:{uac.port}>" in (invite.header("From") or "")
        assert (invite.header("To") or "").startswith(f"<sip:{dialed}@")
        assert invite.header("content-type") == "application/sdp" and "m=audio" in invite.body
    # The BYE is inside the dialog: both tags, the callee's Contact as Request-URI, next CSeq.
    bye = byes[0]
    assert bye.call_id == invites[0].call_id
    assert bye.start_line.startswith(f"BYE sip:callee@127.0.0.1:{uas.port}")
    assert ";tag=" in (bye.header("To") or "") and bye.header("CSeq") == "2 BYE"
    ok = [m for m in uac.messages(status=200, direction="received") if m.cseq_method == "BYE"]
    assert len(ok) == 6 and all(m.time >= byes[0].time - 1 for m in ok)


def test_refusal_is_recognised_and_acked_in_the_invite_transaction(sipp_factory: Factory) -> None:
    uac, uas, uac_rc, uas_rc = _pair(
        sipp_factory, SippScenario.UAS_REJECT_486, expect_status_scenario(486), calls=4
    )
    assert (uac_rc, uas_rc) == (0, 0), uac.diagnostics() + "\n" + uas.diagnostics()
    assert (uac.stats().successful, uac.stats().failed) == (4, 0)
    refused = uac.log_records("refused")
    assert [r["status"] for r in refused] == ["486"] * 4
    assert all(r["warning"] == "" for r in refused)
    # RFC 3261 17.1.1.3: the ACK of a non-2xx reuses the INVITE's branch and CSeq number.
    invite = uac.messages(method="INVITE", direction="sent")[0]
    ack = next(m for m in uac.messages(method="ACK", direction="sent") if m.call_id == invite.call_id)
    assert ack.header("Via") == invite.header("Via")
    assert ack.header("CSeq") == "1 ACK"
    assert ack.start_line.split()[1] == invite.start_line.split()[1]
    busy = uac.messages(status=486)[0]
    assert ack.header("To") == busy.header("To") and ";tag=" in (ack.header("To") or "")


def test_mismatched_status_is_a_failed_call_in_the_stats(sipp_factory: Factory) -> None:
    uas = sipp_factory(SippScenario.UAS_REJECT_486, timeout_s=RUN_TIMEOUT).start()
    uac = sipp_factory(
        SippScenario.UAC_EXPECT_STATUS,  # expects 402
        remote=uas.address, calls=3, rate=100, injection=CALLERS, timeout_s=RUN_TIMEOUT,
    )  # fmt: skip
    rc = uac.run(timeout=RUN_TIMEOUT + 5)
    assert rc == SippExit.FAILED
    stats = uac.stats()
    assert (stats.successful, stats.failed) == (0, 3)
    assert dict(stats.failures) == {"unexpected_message": 3}
    assert "486 Busy Here" in uac.errors()
    uas.stop()


def test_warning_is_captured_and_can_be_required(sipp_factory: Factory) -> None:
    warning = '399 127.0.0.1 "no credit"'
    carrier = reject_scenario(402, headers={"Warning": warning})
    uac, _uas, uac_rc, _ = _pair(sipp_factory, carrier, expect_status_scenario(402, require_warning=True), calls=2)
    assert uac_rc == 0, uac.diagnostics()
    assert [r["warning"] for r in uac.log_records("refused")] == [warning, warning]
    assert uac.messages(status=402)[0].header("Warning") == warning

    uac, uas, uac_rc, _ = _pair(
        sipp_factory, SippScenario.UAS_REJECT_486, expect_status_scenario(486, require_warning=True), calls=2
    )
    assert uac_rc == SippExit.FAILED
    assert dict(uac.stats().failures) == {"regexp_hdr_not_found": 2}, uac.diagnostics()


def test_cancel_while_ringing(sipp_factory: Factory) -> None:
    uac, uas, uac_rc, uas_rc = _pair(
        sipp_factory, SippScenario.UAS_RING_THEN_CANCEL, SippScenario.UAC_CANCEL, calls=4, duration_ms=50
    )
    assert (uac_rc, uas_rc) == (0, 0), uac.diagnostics() + "\n" + uas.diagnostics()
    assert uac.stats().successful == uas.stats().successful == 4
    invite = uas.messages(method="INVITE", direction="received")[0]
    cancel = uas.messages(method="CANCEL", direction="received")[0]
    assert cancel.call_id == invite.call_id
    assert cancel.header("Via") == invite.header("Via")  # same branch: matches the INVITE
    assert cancel.header("CSeq") == "1 CANCEL" and ";tag=" not in (cancel.header("To") or "")
    assert cancel.time - invite.time >= 0.045  # it rang for the -d 50 ms first
    terminated = uas.messages(status=487, direction="sent")[0]
    assert terminated.header("CSeq") == "1 INVITE"


def test_reinvite_inside_the_dialog(sipp_factory: Factory) -> None:
    uac, uas, uac_rc, uas_rc = _pair(sipp_factory, SippScenario.UAS_ANSWER, SippScenario.UAC_REINVITE, calls=3)
    assert (uac_rc, uas_rc) == (0, 0), uac.diagnostics() + "\n" + uas.diagnostics()
    assert uas.stats().successful == 3
    first, second = uas.messages(method="INVITE", direction="received")[:2]
    assert first.call_id == second.call_id
    assert second.header("CSeq") == "2 INVITE" and ";tag=" in (second.header("To") or "")
    assert second.start_line.startswith(f"INVITE sip:callee@127.0.0.1:{uas.port}")
    assert len(uas.messages(method="ACK", direction="received")) == 6


def test_far_end_bye_is_answered_and_its_reason_logged(sipp_factory: Factory) -> None:
    uac, uas, uac_rc, uas_rc = _pair(
        sipp_factory, SippScenario.UAS_ANSWER_THEN_BYE, SippScenario.UAC_LONG_CALL_EXPECT_BYE,
        calls=2, uas_args={"duration_ms": 300},
    )  # fmt: skip
    assert (uac_rc, uas_rc) == (0, 0), uac.diagnostics() + "\n" + uas.diagnostics()
    answered = {r["call_id"]: int(r["clock_ms"]) for r in uac.log_records("answered")}
    byes = uac.log_records("bye")
    assert len(byes) == 2 and len(uac.log_records("info")) == 2
    for bye in byes:
        assert bye["reason"] == 'Q.850;cause=16;text="Normal call clearing"'
        assert int(bye["clock_ms"]) - answered[bye["call_id"]] >= 290
    received = uac.messages(method="BYE", direction="received")[0]
    assert received.header("Reason") == 'Q.850;cause=16;text="Normal call clearing"'


def test_uas_tolerates_bye_before_ack(sipp_factory: Factory, tmp_path: Path) -> None:
    # A caller that hangs up without ever sending the ACK: the UAS must still close the call.
    text = SippScenario.UAC_CALL.read_text(encoding="iso-8859-1")
    start = text.index("  <send>\n    <![CDATA[\n\n      ACK")
    end = text.index("  <pause/>")
    no_ack = tmp_path / "uac_bye_without_ack.xml"
    no_ack.write_text(text[:start] + text[end:], encoding="iso-8859-1")
    uac, uas, uac_rc, uas_rc = _pair(sipp_factory, SippScenario.UAS_ANSWER, no_ack, calls=2)
    assert (uac_rc, uas_rc) == (0, 0), uac.diagnostics() + "\n" + uas.diagnostics()
    assert uas.messages(method="ACK") == []
    assert uas.stats().successful == 2


def test_stop_ends_a_uas_that_never_got_a_call(sipp_factory: Factory) -> None:
    uas = sipp_factory(SippScenario.UAS_ANSWER, transport="tcp", timeout_s=RUN_TIMEOUT).start()
    with socket.create_connection(uas.address, timeout=2):
        pass  # it listens on its port once start() returns
    pid = uas.pid
    assert pid is not None and uas.is_running()
    began = time.monotonic()
    uas.stop()
    assert time.monotonic() - began < 5
    assert not uas.is_running()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
    assert uas.stats().successful == 0  # SIGTERM still lets it write its final statistics


def test_wait_bounds_the_run(sipp_factory: Factory) -> None:
    uas = sipp_factory(SippScenario.UAS_ANSWER, timeout_s=RUN_TIMEOUT).start()
    with pytest.raises(TimeoutError, match="still running"):
        uas.wait(0.3)
    assert not uas.is_running()


def test_global_timeout_is_an_error_exit(sipp_factory: Factory) -> None:
    uas = sipp_factory(SippScenario.UAS_ANSWER, calls=1, timeout_s=1)
    assert uas.run(timeout=10) == SippExit.FATAL


def test_taken_fixed_port_is_reported(sipp_factory: Factory) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port))
        uas = sipp_factory(SippScenario.UAS_ANSWER, local_port=port, timeout_s=RUN_TIMEOUT)
        with pytest.raises(SippError, match="could not bind"):
            uas.start()
    assert not uas.is_running()


def test_command_line_carries_every_option(tmp_path: Path) -> None:
    runner = Sipp(
        SippScenario.UAC_CALL, remote=("127.0.0.1", 5060), local_port=5999, transport="tcp",
        calls=7, rate=2.5, rate_period_ms=2000, concurrent=3, duration_ms=1500, service="svc",
        injection=[("+441", "+442")], variables={"limit": 5}, keys={"reason": "credit"},
        recv_timeout_ms=4000, timeout_s=12, workdir=tmp_path,
    )  # fmt: skip
    cmd = " ".join(runner.command())
    for part in (
        "-sf " + str(SippScenario.UAC_CALL), " 127.0.0.1:5060 ", "-t t1", "-p 5999", "-i 127.0.0.1",
        "-bind_local", "-nostdin", "-buff_size 4194304", "-max_socket ", "-timeout 12s", "-timeout_error",
        "-trace_stat", "-trace_screen", "-trace_err", "-trace_msg -message_file", "-trace_logs",
        "-m 7", "-r 2.5", "-rp 2000", "-l 3", "-d 1500", "-s svc", "-recv_timeout 4000",
        "-inf " + str(runner.injection_file), "-set limit 5", "-key reason credit",
    ):
        assert part in cmd, part


def test_scenarios_needing_numbers_refuse_to_run_without_them() -> None:
    with pytest.raises(ValueError, match="injection"):
        Sipp(SippScenario.UAC_CALL, remote=("127.0.0.1", 5060))


@pytest.mark.parametrize("status", [480, 603])
def test_checked_in_reject_files_are_the_generator_output(status: int, tmp_path: Path) -> None:
    generated = reject_scenario(status, directory=tmp_path)
    assert generated.read_text() == (SCENARIO_DIR / f"uas_reject_{status}.xml").read_text()
    assert expect_status_scenario(402, directory=tmp_path).read_text() == SippScenario.UAC_EXPECT_STATUS.read_text()
