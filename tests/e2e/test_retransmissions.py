"""SIP retransmissions never make a second call or a second settlement (issue 8, item 3).

A caller on a raw loopback UDP socket (so that every byte and every repeat is the test's choice)
sends its INVITE twice before any answer, again after the 2xx, its ACK, and its BYE twice and once
more after the call was settled, all as retransmissions (same branch, same bytes). The carrier is
SIPp: it must see one INVITE transaction and one BYE; the ledger must hold one CDR, one settle,
and books that reconcile (tests/_invariants.py).
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from _world import ALICE, UNIT, World

try:
    from _invariants import assert_books
    from sipp import Sipp, SippScenario
except ImportError:  # pragma: no cover
    from tests._invariants import assert_books
    from tests.e2e.sipp import Sipp, SippScenario

pytestmark = pytest.mark.e2e

LONDON = "+442079460000"
SDP = ("v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names, first value
    text: str


def _parse(data: bytes) -> Reply | None:
    text = data.decode("utf-8", "replace")
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    if not head[0].startswith("SIP/2.0 "):
        return None  # a request (the gateway's own BYE would be one; none is expected here)
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return Reply(status=int(head[0].split()[1]), headers=headers, text=text)


class Caller:
    """A UDP caller bound to the PBX trunk's address, sending what it is told, byte for byte."""

    def __init__(self, port: int, gateway: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.port = port
        self.gateway = gateway
        self.replies: list[Reply] = []

    def send(self, message: str) -> None:
        self.sock.sendto(message.encode(), self.gateway)

    def collect(self, seconds: float) -> list[Reply]:
        """Every response received within ``seconds``."""
        got: list[Reply] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                break
            reply = _parse(data)
            if reply is not None:
                got.append(reply)
        self.replies += got
        return got

    def until(self, predicate: Callable[[Reply], bool], timeout: float = 10.0) -> Reply:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for reply in self.collect(0.1):
                if predicate(reply):
                    return reply
        raise AssertionError(f"no such reply within {timeout} s; got {[r.status for r in self.replies]}")

    def close(self) -> None:
        self.sock.close()


def test_retransmitted_invite_and_bye_make_one_call_one_settle_one_cdr(world: World,
                                                                       sipp_factory: Callable[..., Sipp]) -> None:
    funded = 10 * UNIT
    world.fund("acme", funded)
    carrier = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=1, timeout_s=30).start()
    gw_host, gw_port = world.sip
    caller = Caller(world.pbx_port, world.sip)
    call_id = f"retrans-{secrets.token_hex(6)}@127.0.0.1"
    from_tag = secrets.token_hex(4)
    me = f"127.0.0.1:{caller.port}"
    try:
        invite = (f"INVITE sip:{LONDON}@{gw_host}:{gw_port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP {me};branch=z9hG4bK-{secrets.token_hex(6)};rport\r\n"
                  "Max-Forwards: 70\r\n"
                  f"From: <sip:{ALICE}@{me}>;tag={from_tag}\r\n"
                  f"To: <sip:{LONDON}@{gw_host}:{gw_port}>\r\n"
                  f"Call-ID: {call_id}\r\n"
                  "CSeq: 1 INVITE\r\n"
                  f"Contact: <sip:{ALICE}@{me}>\r\n"
                  "Content-Type: application/sdp\r\n"
                  f"Content-Length: {len(SDP)}\r\n\r\n{SDP}")
        caller.send(invite)
        caller.send(invite)  # a retransmission before any answer (RFC 3261 17.1.1.2, Timer A)
        time.sleep(0.05)
        caller.send(invite)
        ok = caller.until(lambda r: r.status >= 200 and r.headers["cseq"].endswith("INVITE"))
        assert ok.status == 200, ok.text
        caller.send(invite)  # a retransmission crossing the 2xx (its answer was lost, as far as we know)
        after_2xx = caller.collect(1.0)
        # At most the same 2xx again (the dialog's, RFC 6026 'Accepted'), never a refusal or a new call.
        assert all(r.status == 200 and r.headers["to"] == ok.headers["to"] for r in after_2xx
                   if r.headers["cseq"].endswith("INVITE") and r.status >= 200), [r.text for r in after_2xx]

        contact = ok.headers["contact"].strip("<>").split(">")[0]
        to = ok.headers["to"]
        dialog = (f"From: <sip:{ALICE}@{me}>;tag={from_tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
                  "Max-Forwards: 70\r\n")
        caller.send(f"ACK {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{secrets.token_hex(6)};rport\r\n"
                    f"{dialog}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
        time.sleep(1.2)  # a call of about a second
        bye = (f"BYE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{secrets.token_hex(6)};rport\r\n"
               f"{dialog}CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")
        caller.send(bye)
        caller.send(bye)  # retransmitted: the first one's 200 had not come back yet
        caller.until(lambda r: r.headers["cseq"] == "2 BYE")
        assert carrier.wait(15) == 0, carrier.diagnostics()
        (cdr,) = world.wait_settled(1)
        caller.send(bye)  # once more, after the call was settled (Timer E: late, still the same request)
        late = caller.collect(1.0)
        assert all(r.status in (200, 481) for r in late), [r.text for r in late]

        bye_answers = [r for r in caller.replies if r.headers["cseq"] == "2 BYE"]
        assert bye_answers and {r.status for r in bye_answers} <= {200, 481}, [r.text for r in bye_answers]
        assert bye_answers[0].status == 200
        # The carrier saw one call: one INVITE transaction and one BYE (retransmissions by the
        # gateway itself, if any, repeat its branch).
        received = carrier.messages(direction="received")
        invites = {m.header("Via") for m in received if m.method == "INVITE"}
        byes = {m.header("Via") for m in received if m.method == "BYE"}
        assert len({m.call_id for m in received if m.method == "INVITE"}) == 1 and len(invites) == 1, invites
        assert len(byes) == 1, byes
        assert cdr["extra"]["sip_call_id"] == call_id and cdr["end_reason"] == "normal"
        assert int(cdr["answered"]) == 1 and 1 <= int(cdr["billed_s"]) <= 5, cdr
        books = assert_books(world.config.redis.url, "acme", funded=funded, calls={call_id})
        settles = [e for _, e in world.services(lambda svc: svc.ledger.audit_entries("acme"))
                   if e["call"] == cdr["call"] and e["note"] == "settle"]
        assert len(settles) == 1 and books.charged == int(cdr["charge"]) > 0
    finally:
        caller.close()
