"""Admission under load, without sockets: the look at a datagram's header lines, the stateless 503, the
limits, the memory of refused INVITEs, and the stack's screening (what is refused, what never is)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from gateway.b2bua.overload import (
    SHED_TAG_PREFIX,
    Admission,
    RecentlyRefused,
    RateCeiling,
    Refusal,
    SetupMeter,
    invite_key,
    is_refusal_ack,
    peek_request,
    refusal_bytes,
)
from gateway.b2bua.stack import SipStack
from gateway.config import SipConfig
from gateway.errors import ConfigError
from gateway.sip import parse_message
from gateway.sip.message import Request, Response
from gateway.sip.transaction import ServerTransaction

SDP = b"v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


def invite(*, to: bytes = b"<sip:+442079460000@127.0.0.1:5060>", call_id: bytes = b"1-77@127.0.0.1",
           cseq: bytes = b"1 INVITE", branch: bytes = b"z9hG4bK-77-1-0", extra: bytes = b"",
           method: bytes = b"INVITE") -> bytes:
    return (method + b" sip:+442079460000@127.0.0.1:5060 SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=" + branch + b";rport\r\n"
            b"From: <sip:+442079460123@127.0.0.1:5070>;tag=77SIPpTag001\r\n"
            b"To: " + to + b"\r\n"
            b"Call-ID: " + call_id + b"\r\n"
            b"CSeq: " + cseq + b"\r\n"
            b"Contact: <sip:+442079460123@127.0.0.1:5070>\r\nMax-Forwards: 70\r\n" + extra +
            b"Content-Type: application/sdp\r\nContent-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP)


REFUSAL = Refusal(status=503, reason="overloaded: requests queued too long", retry_after=5, cause="queue_age")


# -- the look at the header lines ---------------------------------------------------------------


def test_peek_reads_what_a_stateless_answer_copies() -> None:
    head = peek_request(invite(extra=b"Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKx\r\n"))
    assert head is not None
    assert head.method == "INVITE"
    assert head.vias == [b"SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-77-1-0;rport",
                         b"SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKx"]
    assert head.call_id == b"1-77@127.0.0.1" and head.cseq_number == 1
    assert head.from_tag == "77SIPpTag001" and head.to_tag == ""
    # The same values the full parser finds: the two paths key an INVITE alike.
    full = parse_message(invite())
    assert isinstance(full, Request)
    assert head.key == invite_key(full.call_id, full.from_tag or "", full.cseq.seq)


def test_peek_understands_compact_names_and_case_and_finds_the_to_tag() -> None:
    data = invite().replace(b"Call-ID:", b"i:").replace(b"From:", b"f :").replace(b"To:", b"TO:")
    data = data.replace(b"<sip:+442079460000@127.0.0.1:5060>\r\n", b"<sip:+442079460000@127.0.0.1:5060>;tag=abc\r\n")
    head = peek_request(data)
    assert head is not None and head.to_tag == "abc" and head.call_id == b"1-77@127.0.0.1"


def test_a_tag_inside_the_uri_brackets_is_not_the_headers() -> None:
    head = peek_request(invite(to=b"<sip:+442079460000@127.0.0.1;tag=uri>"))
    assert head is not None and head.to_tag == ""
    head = peek_request(invite(to=b"sip:+442079460000@127.0.0.1;tag=hdr"))
    assert head is not None and head.to_tag == "hdr"


@pytest.mark.parametrize(
    "data",
    [
        invite(method=b"BYE", cseq=b"1 BYE"),  # only INVITE and ACK are looked at
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1\r\n\r\n",
        invite().replace(b"\r\n\r\n", b"\r\n"),  # no end of the header section
        invite().replace(b"Max-Forwards: 70", b"Max-Forwards:\r\n 70"),  # folded
        invite().replace(b"Call-ID: 1-77@127.0.0.1\r\n", b""),  # missing
        invite(extra=b"Call-ID: other\r\n"),  # repeated
        invite(cseq=b"1 BYE"),  # CSeq of another method
        invite(cseq=b"x INVITE"),
        invite().replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1),
        invite().replace(b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-77-1-0;rport\r\n", b""),  # no Via
        invite().replace(b"Call-ID: 1-77@127.0.0.1", b"Call-ID: "),  # empty
    ],
    ids=["bye", "response", "unterminated", "folded", "no-call-id", "two-call-ids", "cseq-method", "cseq-number",
         "version", "no-via", "empty-call-id"],
)
def test_anything_unusual_is_left_to_the_full_parser(data: bytes) -> None:
    assert peek_request(data) is None


# -- the stateless 503 --------------------------------------------------------------------------


def test_the_refusal_is_a_well_formed_503_that_a_retransmission_gets_again() -> None:
    data = invite(extra=b"Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKx\r\n")
    head = peek_request(data)
    assert head is not None
    wire = refusal_bytes(head, REFUSAL, host="127.0.0.1")
    assert wire == refusal_bytes(peek_request(data), REFUSAL, host="127.0.0.1")  # type: ignore[arg-type]
    resp = parse_message(wire)
    assert isinstance(resp, Response) and resp.status == 503
    req = parse_message(data)
    assert [v.branch for v in resp.vias] == [v.branch for v in req.vias]
    assert resp.call_id == req.call_id and resp.cseq == req.cseq and resp.from_tag == req.from_tag
    assert resp.to_tag is not None and resp.to_tag.startswith(SHED_TAG_PREFIX)
    assert resp.headers.get("Retry-After") == "5"
    assert resp.headers.get("Warning") == '399 127.0.0.1 "overloaded: requests queued too long"'
    assert resp.body == b""
    # Another INVITE (another CSeq) gets another tag.
    other = refusal_bytes(peek_request(invite(cseq=b"2 INVITE")), REFUSAL, host="127.0.0.1")  # type: ignore[arg-type]
    other_resp = parse_message(other)
    assert isinstance(other_resp, Response) and other_resp.to_tag != resp.to_tag


def test_only_the_ack_of_a_refusal_is_recognized_as_one() -> None:
    head = peek_request(invite())
    assert head is not None
    refused = parse_message(refusal_bytes(head, REFUSAL, host="127.0.0.1"))
    assert isinstance(refused, Response)
    to = refused.headers.get("To") or ""
    ack = invite(method=b"ACK", cseq=b"1 ACK", to=to.encode())
    assert is_refusal_ack(ack)
    # A live call's ACK (our tags are hex digits), or the marker in another header: not one.
    assert not is_refusal_ack(invite(method=b"ACK", cseq=b"1 ACK", to=b"<sip:x@127.0.0.1>;tag=0a1b2c3d4e5f"))
    assert not is_refusal_ack(invite(method=b"ACK", cseq=b"1 ACK", to=b"<sip:x@127.0.0.1>;tag=0a1b2c3d4e5f",
                                     extra=b"Subject: ;tag=" + SHED_TAG_PREFIX.encode() + b"1\r\n"))
    assert not is_refusal_ack(invite(to=to.encode()))  # an INVITE, not an ACK


# -- the limits ---------------------------------------------------------------------------------


def admission(**limits: int) -> Admission:
    values = {"max_live_calls": 0, "max_setups_per_s": 0, "max_loop_lag_ms": 0, "max_queue_age_ms": 0,
              "retry_after_s": 5}
    values.update(limits)
    return Admission(**values)


@pytest.mark.parametrize(
    ("limits", "load", "cause"),
    [
        ({"max_live_calls": 20}, {"live_calls": 19}, None),
        ({"max_live_calls": 20}, {"live_calls": 20}, "live_calls"),
        ({"max_queue_age_ms": 200}, {"queue_age_s": 0.2}, None),
        ({"max_queue_age_ms": 200}, {"queue_age_s": 0.201}, "queue_age"),
        ({"max_loop_lag_ms": 150}, {"loop_lag_s": 0.15}, None),
        ({"max_loop_lag_ms": 150}, {"loop_lag_s": 0.2}, "loop_lag"),
        ({}, {"live_calls": 10**6, "queue_age_s": 60.0, "loop_lag_s": 60.0}, None),  # 0: no limit
    ],
)
def test_each_limit_refuses_past_its_value(limits: dict[str, int], load: dict[str, float], cause: str | None) -> None:
    values = {"live_calls": 0, "queue_age_s": 0.0, "loop_lag_s": 0.0}
    values.update(load)
    got = admission(**limits).decide(100.0, **values)  # type: ignore[arg-type]
    if cause is None:
        assert got is None
    else:
        assert got is not None and got.status == 503 and got.retry_after == 5 and got.cause == cause


def test_setups_per_second_count_admissions_only_and_start_again_each_second() -> None:
    adm = admission(max_setups_per_s=3, max_live_calls=5)
    verdicts = [adm.decide(10.1, live_calls=0, loop_lag_s=0, queue_age_s=0) for _ in range(5)]
    assert [v.cause if v else None for v in verdicts] == [None, None, None, "setups", "setups"]
    # Refused for another reason: not counted as a setup of the next second.
    assert adm.decide(11.0, live_calls=5, loop_lag_s=0, queue_age_s=0) is not None
    assert [adm.decide(11.5, live_calls=0, loop_lag_s=0, queue_age_s=0) for _ in range(4)][:3] == [None] * 3
    meter = SetupMeter()
    assert all(meter.admit(7.0, 0) for _ in range(1000))  # 0: no limit


def test_sip_limits_are_checked_when_the_configuration_is_read() -> None:
    assert SipConfig().max_queue_age_ms > 0 and SipConfig().overload_retry_after_s >= 1
    with pytest.raises(ConfigError):
        SipConfig(max_queue_age_ms=-1)
    with pytest.raises(ConfigError):
        SipConfig(overload_retry_after_s=0)


# -- the memory of refusals ---------------------------------------------------------------------


def test_refused_invites_are_remembered_for_a_while_and_never_beyond_capacity() -> None:
    memory = RecentlyRefused(capacity=3, remember_s=32.0)
    memory.add(1, REFUSAL, now=0.0)
    assert memory.get(1) is REFUSAL and memory.get(2) is None
    memory.add(1, REFUSAL, now=1.0)  # a retransmission refused again: still one entry
    assert len(memory) == 1
    for key in (2, 3, 4):
        memory.add(key, REFUSAL, now=2.0)
    assert len(memory) == 3 and memory.get(1) is None  # the oldest went first
    memory.expire(33.9)
    assert len(memory) == 3
    memory.expire(34.0)
    assert len(memory) == 0


# -- the stack: what is refused before the parse, and what never is ------------------------------


class _User:
    """A transaction user that refuses every new call, and records what reached it."""

    def __init__(self) -> None:
        self.screened: list[tuple[str, str, float]] = []
        self.requests: list[Request] = []
        self.acks: list[Request] = []

    def screen_invite(self, call_id: str, from_tag: str, queue_age_s: float) -> Refusal | None:
        self.screened.append((call_id, from_tag, queue_age_s))
        return REFUSAL

    def on_request(self, txn: ServerTransaction, request: Request) -> None:
        self.requests.append(request)

    def on_ack(self, request: Request, source: tuple[str, int], transport: str) -> None:
        self.acks.append(request)

    def on_response(self, *args: object) -> None: ...
    def on_cancel(self, *args: object) -> None: ...
    def on_timeout(self, *args: object) -> None: ...
    def on_terminated(self, *args: object) -> None: ...


@pytest.fixture
def stack() -> Iterator[tuple[SipStack, _User, list[tuple[bytes, tuple[str, int], str]]]]:
    loop = asyncio.new_event_loop()
    s = SipStack()
    s._loop = loop  # time only: nothing here listens or waits
    user = _User()
    s.tu = user  # type: ignore[assignment]
    sent: list[tuple[bytes, tuple[str, int], str]] = []
    s.send = lambda data, dest, transport: sent.append((data, dest, transport))  # type: ignore[method-assign]
    try:
        yield s, user, sent
    finally:
        loop.close()


PEER = ("127.0.0.1", 5070)


def test_a_refused_invite_costs_no_transaction_and_its_retransmission_gets_the_same_503(stack) -> None:  # type: ignore[no-untyped-def]
    s, user, sent = stack
    s._on_datagram(invite(), PEER, 0.25)
    assert user.screened == [("1-77@127.0.0.1", "77SIPpTag001", 0.25)]
    assert s.layer.pending == 0 and user.requests == []
    ((first, dest, transport),) = sent
    assert dest == PEER and transport == "udp" and first.startswith(b"SIP/2.0 503 ")
    s._on_datagram(invite(), PEER, 0.0)  # retransmitted, read once the load is gone: refused alike
    assert len(user.screened) == 1 and sent[1][0] == first
    resp = parse_message(first)
    assert isinstance(resp, Response)
    s._on_datagram(invite(method=b"ACK", cseq=b"1 ACK", to=(resp.headers.get("To") or "").encode()), PEER, 0.0)
    assert user.acks == [] and len(sent) == 2 and s.layer.pending == 0  # its ACK: dropped


def test_requests_inside_dialogs_are_never_screened(stack) -> None:  # type: ignore[no-untyped-def]
    s, user, sent = stack
    to = b"<sip:+442079460000@127.0.0.1:5060>;tag=0a1b2c3d4e5f"
    s._on_datagram(invite(method=b"BYE", cseq=b"2 BYE", to=to), PEER, 5.0)
    s._on_datagram(invite(to=to, cseq=b"3 INVITE", branch=b"z9hG4bK-reinvite"), PEER, 5.0)  # a re-INVITE
    s._on_datagram(invite(method=b"ACK", cseq=b"3 ACK", to=to, branch=b"z9hG4bK-ack"), PEER, 5.0)
    assert user.screened == []
    assert [r.method for r in user.requests] == ["BYE", "INVITE"] and len(user.acks) == 1


def test_an_invite_the_look_cannot_read_is_screened_after_the_full_parse(stack) -> None:  # type: ignore[no-untyped-def]
    s, user, sent = stack
    folded = invite().replace(b"Max-Forwards: 70", b"Max-Forwards:\r\n 70")
    assert peek_request(folded) is None
    s._on_datagram(folded, PEER, 0.3)
    assert user.screened == [("1-77@127.0.0.1", "77SIPpTag001", 0.3)] and s.layer.pending == 0
    resp = parse_message(sent[0][0])
    assert isinstance(resp, Response) and resp.status == 503 and resp.headers.get("Retry-After") == "5"
    s._on_datagram(folded, PEER, 0.0)
    assert len(user.screened) == 1 and sent[1][0] == sent[0][0]


# -- the learnt ceiling ---------------------------------------------------------------------------


def _offer(ceiling: RateCeiling, start: float, seconds: float, rate: float) -> int:
    """Offer ``rate`` calls a second for ``seconds`` from ``start``: how many were admitted."""
    n = int(seconds * rate)
    return sum(ceiling.admit(start + i / rate) for i in range(n))


def test_the_ceiling_is_cut_by_overload_and_grows_back_while_quiet() -> None:
    ceiling = RateCeiling()
    assert _offer(ceiling, 0.0, 1.0, 400) == 400  # no ceiling until a signal
    ceiling.overloaded(1.0, arrived=0.7)
    assert ceiling.rate == pytest.approx(300, rel=0.05)  # 3/4 of the rate admitted lately
    ceiling.overloaded(1.2, arrived=0.95)  # queued before the cut: the cut has yet to show
    assert ceiling.rate == pytest.approx(300, rel=0.05)
    ceiling.overloaded(1.25, arrived=1.01)  # arrived after it and still queued too long: cut again
    assert ceiling.rate == pytest.approx(225, rel=0.05)
    # Offered far more than the ceiling for one quiet second: about the ceiling, growing 10 % a step.
    admitted = _offer(ceiling, 1.25, 1.0, 3000)
    assert 225 <= admitted <= 225 * 1.1**4 + 0.1 * 330, admitted
    assert ceiling.rate == pytest.approx(225 * 1.1**3, rel=0.01)  # three whole steps since the cut
    # Ten quiet seconds after the last cut, no ceiling at all.
    ceiling.admit(5.0)
    assert ceiling.rate is not None  # still within ten seconds of the cut
    assert ceiling.admit(11.3) and ceiling.rate is None
    assert _offer(ceiling, 12.0, 0.5, 3000) == 1500


def test_the_ceiling_never_drops_below_its_floor_and_is_not_cut_for_a_backlog_of_before() -> None:
    ceiling = RateCeiling(floor=2.0)
    for i in range(1, 40):  # overload signals with nothing admitted: the floor holds
        ceiling.overloaded(i * 0.25, arrived=i * 0.25 - 0.01)
    assert ceiling.rate == 2.0
    ceiling = RateCeiling()
    _offer(ceiling, 0.0, 1.0, 100)
    ceiling.overloaded(1.0, arrived=0.5)
    assert ceiling.rate == pytest.approx(75, rel=0.05)
    for i in range(1, 6):  # a backlog queued before the cut drains: no further cut
        ceiling.overloaded(1.0 + i * 0.1, arrived=0.5 + i * 0.1)
    assert ceiling.rate == pytest.approx(75, rel=0.01)


def test_a_ceiling_that_grew_above_the_load_is_cut_from_the_load() -> None:
    # Overload signals every 5 s while 200 calls/s arrive: between signals the ceiling grows 10 % a
    # quarter second, far above the load; each cut must start from the load, or cut, grow and cut
    # again would compound without bound.
    ceiling = RateCeiling()
    t = 0.0
    for _ in range(12):
        _offer(ceiling, t, 5.0, 200)
        t += 5.0
        ceiling.overloaded(t, arrived=t - 0.01)
        assert ceiling.rate is not None and ceiling.rate <= 200 * 0.75 + 1, ceiling.rate
    assert ceiling.rate == pytest.approx(150, rel=0.05)


def test_admission_learns_the_ceiling_from_queued_invites() -> None:
    adm = admission(max_queue_age_ms=200)
    for i in range(300):  # 300/s admitted, fresh
        assert adm.decide(i / 300, live_calls=0, loop_lag_s=0, queue_age_s=0.01) is None
    got = adm.decide(1.0, live_calls=0, loop_lag_s=0, queue_age_s=0.5)
    assert got is not None and got.cause == "queue_age"
    assert adm.ceiling.rate is None  # one stale INVITE (a pause of the process): no ceiling yet
    assert adm.decide(1.05, live_calls=0, loop_lag_s=0, queue_age_s=0.01) is None  # a fresh one between
    for at in (1.1, 1.15, 1.19):
        assert adm.decide(at, live_calls=0, loop_lag_s=0, queue_age_s=0.5) is not None
    assert adm.ceiling.rate is None
    # Still queued too long 100 ms after the first of a row: a standing queue, the ceiling is cut.
    assert adm.decide(1.21, live_calls=0, loop_lag_s=0, queue_age_s=0.5) is not None
    assert adm.ceiling.rate is not None
    # Fresh INVITEs offered at 3000/s next: refused at once beyond the ceiling, not after queueing.
    verdicts = [adm.decide(1.2 + i / 3000, live_calls=0, loop_lag_s=0, queue_age_s=0.0) for i in range(1500)]
    admitted = sum(v is None for v in verdicts)
    assert 10 <= admitted <= 150, admitted  # about what was admitted lately, not the 1500 offered
    assert {v.cause for v in verdicts if v is not None} == {"ceiling"}


def test_a_standing_queue_after_a_busy_second_starts_the_ceiling_from_that_second() -> None:
    adm = admission(max_queue_age_ms=200)
    for i in range(300):  # a second carrying 300 calls
        assert adm.decide(i / 300, live_calls=0, loop_lag_s=0, queue_age_s=0.0) is None
    for i in range(40):  # then 400 ms of nothing but stale INVITEs: a standing queue
        assert adm.decide(1.0 + i * 0.01, live_calls=0, loop_lag_s=0, queue_age_s=0.4) is not None
    # The ceiling starts from the busy second (3/4 of it), not from the empty last 400 ms.
    assert adm.ceiling.rate == pytest.approx(225, rel=0.01)
    admitted = sum(adm.decide(1.5 + i / 3000, live_calls=0, loop_lag_s=0, queue_age_s=0.0) is None
                   for i in range(1500))
    assert 100 <= admitted <= 200, admitted  # about the ceiling (growing), far below the 1500 offered


def test_a_standing_queue_after_the_process_stood_still_starts_the_ceiling_from_the_load_before() -> None:
    # 200 calls a second for ten seconds, then the process stands still for 2.5 s (a full collection
    # of a large heap): what queued meanwhile is stale. The ceiling must start from the 200/s carried
    # before the pause, not from the empty seconds of the pause (which gave 1 call/s).
    adm = admission(max_queue_age_ms=200)
    for i in range(2000):
        assert adm.decide(i / 200, live_calls=0, loop_lag_s=0, queue_age_s=0.0) is None
    for i in range(30):
        assert adm.decide(12.5 + i * 0.01, live_calls=0, loop_lag_s=0, queue_age_s=2.5) is not None
    assert adm.ceiling.rate == pytest.approx(150, rel=0.01)
    admitted = sum(adm.decide(13.0 + i / 400, live_calls=0, loop_lag_s=0, queue_age_s=0.0) is None
                   for i in range(400))
    assert admitted >= 150, admitted  # about the ceiling, growing: the door stays open
    # Memory of the load is bounded: eleven idle seconds later only this second's calls count.
    assert adm.ceiling.admitted_rate(40.0) == 0.0
