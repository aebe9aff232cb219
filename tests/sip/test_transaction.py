"""Transactions without sockets: feed messages and time, check what the layer sends and reports."""

from __future__ import annotations

import pytest

from gateway.sip.message import Request, Response, make_response
from gateway.sip.parser import parse_message
from gateway.sip.transaction import (
    INVITE_CLIENT,
    INVITE_SERVER,
    NON_INVITE_CLIENT,
    NON_INVITE_SERVER,
    AckReceived,
    CancelReceived,
    Input,
    ProtocolViolation,
    RequestReceived,
    ResponseReceived,
    State,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    Transmit,
)

PEER = ("127.0.0.1", 5070)


def request(method: str = "INVITE", *, branch: str = "z9hG4bKbr1", cseq: int = 1, call_id: str = "call-1",
            to_tag: str = "") -> Request:
    to = "<sip:bob@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    text = (f"{method} sip:bob@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:alice@127.0.0.1>;tag=a1\r\n"
            f"To: {to}\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            "Content-Length: 0\r\n\r\n")
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def respond_to(req: Request, status: int, tag: str = "b1") -> Response:
    return make_response(req, status, to_tag=tag if status > 100 else None)


def sent(out: list) -> list[bytes]:
    return [o.data for o in out if isinstance(o, Transmit)]


def first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode()


def retransmission_times(layer: TransactionLayer, until: float) -> list[float]:
    """Walk the clock from deadline to deadline, noting when something was (re)sent."""
    times = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        out = layer.expire(deadline)
        if sent(out):
            times.append(round(deadline, 3))
    return times


# -- INVITE client -------------------------------------------------------------------------


def test_invite_client_retransmits_doubling_then_times_out_with_timer_b() -> None:
    layer = TransactionLayer()
    txn, out = layer.send_request(request(), PEER, "udp", now=0.0)
    assert [first_line(d) for d in sent(out)] == ["INVITE sip:bob@127.0.0.1 SIP/2.0"]
    times = []
    timed_out = []
    while (deadline := layer.next_deadline()) is not None:
        out = layer.expire(deadline)
        if sent(out):
            times.append(deadline)
        timed_out += [o for o in out if isinstance(o, TransactionTimedOut)]
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]  # Timer A: T1, 2T1, 4T1, ...
    assert len(timed_out) == 1 and txn.state is State.TERMINATED  # Timer B = 64*T1 = 32 s
    assert layer.pending == 0


def test_invite_client_failure_is_acked_by_the_transaction_and_retransmissions_re_acked() -> None:
    layer = TransactionLayer()
    inv = request()
    txn, _ = layer.send_request(inv, PEER, "udp", now=0.0)
    out = layer.receive_response(respond_to(inv, 180), PEER, "udp", now=0.2)
    assert [type(o) for o in out] == [ResponseReceived] and txn.state is State.PROCEEDING
    assert layer.expire(5.0) == []  # no retransmissions once a provisional response came
    out = layer.receive_response(respond_to(inv, 486), PEER, "udp", now=6.0)
    acks = sent(out)
    assert [first_line(a) for a in acks] == ["ACK sip:bob@127.0.0.1 SIP/2.0"]
    ack = parse_message(acks[0])
    assert (ack.cseq.seq, ack.cseq.method, ack.to_tag, ack.top_via.branch) == (1, "ACK", "b1", "z9hG4bKbr1")
    assert any(isinstance(o, ResponseReceived) and o.response.status == 486 for o in out)
    again = layer.receive_response(respond_to(inv, 486), PEER, "udp", now=7.0)
    assert sent(again) == acks and not any(isinstance(o, ResponseReceived) for o in again)
    out = layer.expire(6.0 + 32.0)  # Timer D
    assert any(isinstance(o, TransactionTerminated) for o in out)


def test_invite_client_2xx_goes_up_each_time_until_timer_m() -> None:
    layer = TransactionLayer()
    inv = request()
    txn, _ = layer.send_request(inv, PEER, "udp", now=0.0)
    ok = respond_to(inv, 200)
    assert [type(o) for o in layer.receive_response(ok, PEER, "udp", now=1.0)] == [ResponseReceived]
    assert txn.state is State.ACCEPTED
    # a retransmitted 2xx goes up again: the TU re-sends its ACK; the transaction sends none
    out = layer.receive_response(ok, PEER, "udp", now=2.0)
    assert [type(o) for o in out] == [ResponseReceived] and not sent(out)
    out = layer.expire(1.0 + 32.0)
    assert [type(o) for o in out] == [TransactionTerminated]


def test_invite_client_over_tcp_never_retransmits() -> None:
    layer = TransactionLayer()
    layer.send_request(request(), PEER, "tcp", now=0.0)
    assert retransmission_times(layer, until=40.0) == []


# -- non-INVITE client ---------------------------------------------------------------------


def test_non_invite_client_retransmits_up_to_t2_then_times_out_with_timer_f() -> None:
    layer = TransactionLayer()
    layer.send_request(request("BYE", cseq=2), PEER, "udp", now=0.0)
    times = retransmission_times(layer, until=40.0)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]  # 0.5, 1, 2, 4, then T2 = 4 s
    assert layer.pending == 0


def test_non_invite_client_provisional_slows_retransmits_to_t2_and_final_completes() -> None:
    layer = TransactionLayer()
    bye = request("BYE", cseq=2)
    txn, _ = layer.send_request(bye, PEER, "udp", now=0.0)
    layer.receive_response(respond_to(bye, 100), PEER, "udp", now=0.1)
    assert retransmission_times(layer, until=8.0) == [0.5, 4.5]
    out = layer.receive_response(respond_to(bye, 200), PEER, "udp", now=5.0)
    assert [type(o) for o in out] == [ResponseReceived] and txn.state is State.COMPLETED
    assert layer.receive_response(respond_to(bye, 200), PEER, "udp", now=6.0) == []  # absorbed
    out = layer.expire(5.0 + 5.0)  # Timer K = T4
    assert [type(o) for o in out] == [TransactionTerminated]


def test_unmatched_response_is_dropped() -> None:
    layer = TransactionLayer()
    assert layer.receive_response(respond_to(request(branch="z9hG4bKnobody"), 200), PEER, "udp", now=0) == []


# -- INVITE server -------------------------------------------------------------------------


def test_invite_server_sends_100_at_once_and_absorbs_retransmissions() -> None:
    layer = TransactionLayer()
    inv = request()
    out = layer.receive_request(inv, PEER, "udp", now=0.0)
    assert [first_line(d) for d in sent(out)] == ["SIP/2.0 100 Trying"]
    received = [o for o in out if isinstance(o, RequestReceived)]
    assert len(received) == 1
    txn = received[0].transaction
    again = layer.receive_request(inv, PEER, "udp", now=0.3)
    assert [first_line(d) for d in sent(again)] == ["SIP/2.0 100 Trying"]
    assert not any(isinstance(o, RequestReceived) for o in again)  # one call, however many INVITEs
    layer.respond(txn, respond_to(inv, 180), now=0.4)
    assert [first_line(d) for d in sent(layer.receive_request(inv, PEER, "udp", now=0.5))] == ["SIP/2.0 180 Ringing"]


def test_invite_server_failure_retransmitted_until_ack_then_confirmed() -> None:
    layer = TransactionLayer()
    inv = request()
    txn = layer.receive_request(inv, PEER, "udp", now=0.0)[-1].transaction
    out = layer.respond(txn, respond_to(inv, 486), now=1.0)
    assert [first_line(d) for d in sent(out)] == ["SIP/2.0 486 Busy Here"]
    assert retransmission_times(layer, until=4.9) == [1.5, 2.5, 4.5]  # Timer G: T1, 2T1, 4T1
    ack = request("ACK", to_tag="b1")
    out = layer.receive_request(ack, PEER, "udp", now=5.0)
    assert out == [] and txn.state is State.CONFIRMED  # the ACK for a failure stays in the transaction
    assert retransmission_times(layer, until=10.0) == []
    assert txn.state is State.TERMINATED  # Timer I = T4 after the ACK


def test_invite_server_without_ack_times_out_with_timer_h() -> None:
    layer = TransactionLayer()
    inv = request()
    txn = layer.receive_request(inv, PEER, "udp", now=0.0)[-1].transaction
    layer.respond(txn, respond_to(inv, 503), now=0.0)
    timed_out = []
    while (d := layer.next_deadline()) is not None:
        timed_out += [o for o in layer.expire(d) if isinstance(o, TransactionTimedOut)]
    assert len(timed_out) == 1 and txn.state is State.TERMINATED


def test_invite_server_2xx_is_retransmitted_until_the_ack_even_with_a_different_to_tag() -> None:
    layer = TransactionLayer()
    inv = request()
    txn = layer.receive_request(inv, PEER, "udp", now=0.0)[-1].transaction
    layer.respond(txn, respond_to(inv, 200), now=0.0)
    assert retransmission_times(layer, until=3.6) == [0.5, 1.5, 3.5]
    # pyVoIP's ACK for a 2xx carries a fresh To tag: matched by Call-ID and CSeq
    ack = request("ACK", branch="z9hG4bKnewbranch", to_tag="not-ours")
    out = layer.receive_request(ack, PEER, "udp", now=3.6)
    assert [type(o) for o in out] == [AckReceived]
    assert retransmission_times(layer, until=30.0) == []
    assert layer.expire(40.0) and txn.state is State.TERMINATED  # Timer L


def test_cancel_of_a_pending_invite_is_answered_and_reported() -> None:
    layer = TransactionLayer()
    inv = request()
    inv_txn = layer.receive_request(inv, PEER, "udp", now=0.0)[-1].transaction
    layer.respond(inv_txn, respond_to(inv, 180, tag="b9"), now=0.1)
    out = layer.receive_request(request("CANCEL"), PEER, "udp", now=0.2)
    answers = [parse_message(d) for d in sent(out)]
    assert [(a.status, a.cseq.method, a.to_tag) for a in answers] == [(200, "CANCEL", "b9")]
    cancels = [o for o in out if isinstance(o, CancelReceived)]
    assert len(cancels) == 1 and cancels[0].invite is inv_txn


def test_cancel_of_nothing_gets_481() -> None:
    layer = TransactionLayer()
    out = layer.receive_request(request("CANCEL"), PEER, "udp", now=0.0)
    assert [parse_message(d).status for d in sent(out)] == [481]
    assert not any(isinstance(o, CancelReceived) for o in out)


# -- non-INVITE server ---------------------------------------------------------------------


@pytest.mark.parametrize("transport,timer_j", [("udp", 32.0), ("tcp", 0.0)])
def test_non_invite_server_resends_its_final_until_timer_j(transport: str, timer_j: float) -> None:
    layer = TransactionLayer()
    bye = request("BYE", cseq=2)
    out = layer.receive_request(bye, PEER, transport, now=0.0)
    assert sent(out) == []  # no 100 for non-INVITE
    txn = out[-1].transaction
    assert layer.receive_request(bye, PEER, transport, now=0.1) == []  # absorbed while Trying
    layer.respond(txn, respond_to(bye, 200), now=0.2)
    assert [first_line(d) for d in sent(layer.receive_request(bye, PEER, transport, now=0.3))] == ["SIP/2.0 200 OK"]
    out = layer.expire(0.2 + timer_j)
    assert [type(o) for o in out] == [TransactionTerminated]


def test_a_second_final_response_is_a_protocol_violation_not_a_silent_ignore() -> None:
    layer = TransactionLayer()
    bye = request("BYE", cseq=2)
    txn = layer.receive_request(bye, PEER, "udp", now=0.0)[-1].transaction
    layer.respond(txn, respond_to(bye, 200), now=0.0)
    out = layer.respond(txn, respond_to(bye, 500), now=0.1)
    assert [type(o) for o in out] == [ProtocolViolation]
    assert (out[0].state, out[0].input) == (State.COMPLETED, Input.SEND_FAILURE)


def test_rfc2543_requests_without_branch_match_on_call_id_from_tag_and_cseq() -> None:
    layer = TransactionLayer()
    inv = request(branch="oldstyle")
    out = layer.receive_request(inv, PEER, "udp", now=0.0)
    txn = out[-1].transaction
    assert not any(isinstance(o, RequestReceived) for o in layer.receive_request(inv, PEER, "udp", now=0.2))
    layer.respond(txn, respond_to(inv, 404), now=0.3)
    assert layer.receive_request(request("ACK", branch="oldstyle", to_tag="b1"), PEER, "udp", now=0.4) == []
    assert txn.state is State.CONFIRMED


@pytest.mark.parametrize("table", [INVITE_CLIENT, NON_INVITE_CLIENT, INVITE_SERVER, NON_INVITE_SERVER])
def test_every_live_state_handles_a_transport_error_or_ends(table) -> None:
    """No state can be left hanging by a dead transport: each has an entry or a timer that ends it."""
    states = {s for s, _ in table}
    for state in states:
        has_error = (state, Input.TRANSPORT_ERROR) in table
        has_end_timer = any(new is State.TERMINATED for (s, i), (_, new) in table.items()
                            if s is state and i.value in "ABDFHIJKLM")
        assert has_error or has_end_timer, state
