"""Dialogs without sockets: creation on both sides, in-dialog requests, CSeq order, target refresh."""

from __future__ import annotations

import pytest

from gateway.sip.dialog import Dialog, DialogState
from gateway.sip.errors import SipError
from gateway.sip.message import Request, Response, make_response
from gateway.sip.parser import parse_message

INVITE = (b"INVITE sip:bob@127.0.0.1:5080 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa1\r\n"
          b"Max-Forwards: 70\r\n"
          b"Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
          b'From: "Alice" <sip:alice@127.0.0.1>;tag=al1\r\n'
          b"To: <sip:bob@127.0.0.1:5080>\r\n"
          b"Call-ID: dlg-1\r\n"
          b"CSeq: 10 INVITE\r\n"
          b"Contact: <sip:alice@127.0.0.1:5070>\r\n"
          b"Content-Length: 0\r\n\r\n")


def invite() -> Request:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    return msg


def answer(req: Request, status: int, contact: str = "<sip:bob@127.0.0.1:5081>") -> Response:
    resp = make_response(req, status, to_tag="bo1", headers=[("Contact", contact)])
    assert resp.headers.get_all("Record-Route") == req.headers.get_all("Record-Route")  # §12.1.1
    return resp


def test_uas_dialog_uses_the_route_set_in_order_and_the_callers_contact() -> None:
    d = Dialog.as_uas(invite(), "bo1")
    assert (d.call_id, d.local_tag, d.remote_tag, d.remote_seq) == ("dlg-1", "bo1", "al1", 10)
    assert d.route_set == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
    bye = d.new_request("BYE", via="SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx")
    text = bye.to_bytes().decode()
    assert text.startswith("BYE sip:alice@127.0.0.1:5070 SIP/2.0\r\n")
    assert bye.headers.get_all("Route") == d.route_set
    assert (bye.from_tag, bye.to_tag, bye.cseq.seq, bye.cseq.method) == ("bo1", "al1", 1, "BYE")
    assert d.destination() == ("p1.example.com", 5060)


def test_uac_dialog_reverses_record_route_and_confirms_on_2xx() -> None:
    req = invite()
    early = Dialog.as_uac(req, answer(req, 183))
    assert early.state is DialogState.EARLY
    assert early.route_set == ["<sip:p2.example.com;lr>", "<sip:p1.example.com;lr>"]
    early.confirm(answer(req, 200, contact="<sip:bob@127.0.0.1:5099>"))
    assert early.state is DialogState.CONFIRMED and str(early.remote_target) == "sip:bob@127.0.0.1:5099"
    ack = early.new_request("ACK", via="SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKy", cseq=10)
    assert (ack.cseq.seq, ack.cseq.method, early.local_seq) == (10, "ACK", 10)
    reinvite = early.new_request("INVITE", via="SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKz",
                                 contact="<sip:gw@127.0.0.1:5060>", body=b"v=0\r\n", content_type="application/sdp")
    assert reinvite.cseq.seq == 11 and reinvite.headers.get("Content-Type") == "application/sdp"
    assert reinvite.headers.get("Contact") == "<sip:gw@127.0.0.1:5060>"


def test_a_dialog_needs_a_to_tag() -> None:
    req = invite()
    with pytest.raises(SipError):
        Dialog.as_uac(req, make_response(req, 180))


@pytest.mark.parametrize("seqs,expected", [((11, 12), [True, True]), ((11, 11), [True, False]), ((9,), [False])])
def test_remote_cseq_must_grow(seqs: tuple[int, ...], expected: list[bool]) -> None:
    d = Dialog.as_uas(invite(), "bo1")
    results = []
    for seq in seqs:
        req = d.new_request("INFO", via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKq", cseq=seq)
        results.append(d.check_remote_cseq(req))
    assert results == expected


def test_reinvite_refreshes_the_remote_target() -> None:
    d = Dialog.as_uas(invite(), "bo1")
    other = Dialog.as_uas(invite(), "bo1")
    re_inv = other.new_request("INVITE", via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKr",
                               contact="<sip:alice@127.0.0.1:6000>")
    d.refresh_target(re_inv)
    assert str(d.remote_target) == "sip:alice@127.0.0.1:6000"
