"""Hostile SIP at a running gateway, over raw loopback sockets (issue 8, part 5).

No open relay: whatever a stranger or a trunk puts in the Request-URI, Route or From, the B leg only
ever goes to the configured carrier or toll-free target, and a listening "victim" socket receives
nothing. A spoofed caller identity bills nobody else. Failed digest attempts are limited per source;
nonces expire and are single use. Loops are stopped (Max-Forwards, our own Via, a target that is the
gateway itself). Header and body bombs, truncated messages and slow or idle TCP connections are
answered or dropped, the gateway's memory stays bounded, and a normal call still works afterwards.
Every test checks that no money moved that should not have and that the ledger reconciles.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _world import ALICE, TOLLFREE, UNIT, World

from gateway.directory import DIGEST_REALM
from gateway.sip import Request, Response, SipUri, StreamFramer, make_response, parse_message
from gateway.sip.dialog import Dialog
from gateway.sip.digest import authorization_header, parse_challenge

try:
    from _procs import rss_kb
    from sipp import Sipp, SippScenario, free_port
except ImportError:  # pragma: no cover
    from tests._procs import rss_kb
    from tests.e2e.sipp import Sipp, SippScenario, free_port

pytestmark = pytest.mark.e2e

LONDON = "+442079460000"
BOB = "+12125550100"  # a user of the other organization, beta
SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


# -- building and reading messages ------------------------------------------------------------------


def _request(method: str, ruri: str, local: tuple[str, int], *, transport: str = "UDP", call_id: str | None = None,
             cseq: int = 1, from_: str | None = None, extra: list[str] | None = None, body: str = "",
             branch: str | None = None) -> bytes:
    host, port = local
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {host}:{port};branch={branch or 'z9hG4bK' + secrets.token_hex(6)}",
        f"From: {from_ or f'<sip:{ALICE}@pbx.example>'};tag={secrets.token_hex(4)}",
        f"To: <{ruri}>",
        f"Call-ID: {call_id or secrets.token_hex(8)}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:pbx@{host}:{port}>",
        "Max-Forwards: 70",
        *(extra or []),
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    return ("\r\n".join(lines) + f"\r\nContent-Length: {len(body.encode())}\r\n\r\n{body}").encode()


def _udp(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    return s


def _responses(sock: socket.socket, wait: float = 5.0) -> Iterator[Response]:
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(70000)
        except TimeoutError:
            return
        msg = parse_message(data)
        if isinstance(msg, Response):
            yield msg


def _final(sock: socket.socket, wait: float = 5.0) -> Response:
    for msg in _responses(sock, wait):
        if msg.status >= 200:
            return msg
    raise AssertionError("no final response")


def _ack(sock: socket.socket, invite: bytes, response: Response, dest: tuple[str, int]) -> None:
    """The ACK of a non-2xx final response (same branch, RFC 3261 §17.1.1.3): stops its retransmission."""
    req = parse_message(invite)
    assert isinstance(req, Request)
    lines = [f"ACK {req.uri} SIP/2.0", f"Via: {req.headers.get('Via')}", f"From: {req.headers.get('From')}",
             f"To: {response.headers.get('To')}", f"Call-ID: {req.call_id}", f"CSeq: {req.cseq.seq} ACK",
             "Max-Forwards: 70", "Content-Length: 0"]
    sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(), dest)


def _received_request(sock: socket.socket, wait: float = 5.0) -> tuple[Request, bytes, tuple[str, int]]:
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        data, source = sock.recvfrom(70000)
        msg = parse_message(data)
        if isinstance(msg, Request) and msg.method == "INVITE":
            return msg, data, source
    raise AssertionError("no INVITE arrived")


def _refuse_b_leg(sock: socket.socket, invite: Request, source: tuple[str, int]) -> None:
    """Answer the gateway's B-leg INVITE 486 Busy Here, as a far end would."""
    sock.sendto(make_response(invite, 486, to_tag="far").to_bytes(), source)


@contextlib.contextmanager
def _victim() -> Iterator[Callable[[], list[bytes]]]:
    """A UDP socket and a TCP listener on one port; yields a function telling what reached them."""
    port = free_port()
    udp = _udp(port=port)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", port))
    tcp.listen(8)
    udp.setblocking(False)
    tcp.setblocking(False)

    def reached() -> list[bytes]:
        got = []
        with contextlib.suppress(BlockingIOError):
            while True:
                got.append(udp.recv(70000))
        with contextlib.suppress(BlockingIOError):
            while True:
                conn, _ = tcp.accept()
                got.append(b"TCP connection")
                conn.close()
        return got

    reached.port = port  # type: ignore[attr-defined]
    try:
        yield reached
    finally:
        udp.close()
        tcp.close()


def _seed(world: World, body: Callable[[Any], Any]) -> Any:
    return world.services(body)


async def _add_beta(svc: Any) -> None:
    beta, _ = await svc.directory.create_org("Beta", country="US", currency="USD")
    await svc.directory.add_user(beta, "bob", number=BOB, licence=True, plan="none")


# -- no open relay ----------------------------------------------------------------------------------


def test_strangers_get_403_and_nothing_reaches_the_victim_or_the_carrier(world: World) -> None:
    world.fund("acme", 10 * UNIT)
    with _victim() as reached, _udp(port=world.carrier_port) as carrier:
        carrier.setblocking(False)
        victim = f"127.0.0.1:{reached.port}"  # type: ignore[attr-defined]
        with _udp("127.0.0.3") as s:
            local = s.getsockname()
            cases = [
                _request("INVITE", f"sip:{LONDON}@{victim}", local, body=SDP),
                _request("INVITE", f"sip:{LONDON}@{victim}", local, body=SDP, extra=[f"Route: <sip:{victim};lr>"]),
                _request("INVITE", f"sip:victim@{victim};transport=tcp", local, body=SDP),
                _request("REGISTER", f"sip:127.0.0.1:{world.gw.sip_port}", local,
                         extra=[f"Contact: <sip:alice@{victim}>"]),
            ]
            for data in cases:
                s.sendto(data, world.sip)
                final = _final(s)
                assert final.status == 403, final
                assert "unknown source" in (final.headers.get("Warning") or "")
        time.sleep(0.3)  # anything relayed would have gone out with the answer
        assert reached() == []
        with contextlib.suppress(BlockingIOError):
            assert carrier.recv(70000) == b"", "a stranger's INVITE reached the carrier"
    bal = world.balance()
    assert (bal.balance, bal.reserved) == (10 * UNIT, 0) and world.cdrs() == []
    assert world.reconciles()


def test_a_trunk_cannot_steer_the_b_leg_with_route_or_request_uri(world: World) -> None:
    """The caller picks the number, never the host: Route, the Request-URI's host, port, maddr and
    transport are all ignored, the B leg goes to the configured carrier and carries no Route."""
    world.fund("acme", 10 * UNIT)
    with _victim() as reached, _udp(port=world.carrier_port) as carrier, _udp(port=world.pbx_port) as pbx:
        victim = f"127.0.0.1:{reached.port}"  # type: ignore[attr-defined]
        local = pbx.getsockname()
        steering = [
            (f"sip:{LONDON}@{victim}", [f"Route: <sip:{victim};lr>", f"Route: <sip:evil@{victim};lr>"]),
            (f"sip:{LONDON}@evil.example:{reached.port};maddr=127.0.0.1;transport=tcp",  # type: ignore[attr-defined]
             [f"Record-Route: <sip:{victim};lr>"]),
        ]
        for n, (ruri, extra) in enumerate(steering):
            data = _request("INVITE", ruri, local, body=SDP, extra=extra, call_id=f"steer-{n}")
            pbx.sendto(data, world.sip)
            b_invite, raw, source = _received_request(carrier)
            uri = b_invite.uri
            assert isinstance(uri, SipUri) and (uri.host, uri.port) == ("127.0.0.1", world.carrier_port)
            assert uri.user == LONDON and uri.param("maddr") is None and uri.param("transport") is None
            for name in ("Route", "Record-Route"):
                assert b_invite.headers.get_all(name) == [], raw
            assert f":{reached.port}".encode() not in raw  # type: ignore[attr-defined]
            assert f"sip:{ALICE}@" in (b_invite.headers.get("From") or "")  # the trunk's own user
            _refuse_b_leg(carrier, b_invite, source)
            final = _final(pbx)
            assert final.status == 486
            _ack(pbx, data, final, world.sip)
        time.sleep(0.3)
        assert reached() == []
    cdrs = world.wait_settled(2)
    assert {c["end_reason"] for c in cdrs} == {"busy"} and all(int(c["charge"]) == 0 for c in cdrs)
    assert world.balance().balance == 10 * UNIT and world.reconciles()


def test_a_registered_contact_is_reached_over_its_flow_not_at_the_address_it_names(world: World) -> None:
    """A trunk registers the toll-free target's user with a Contact naming the victim: the call to it
    goes back along the registering flow (to the trunk itself), never to the address in the Contact."""
    world.fund("acme", 10 * UNIT)
    with _victim() as reached, _udp(port=world.pbx_port) as pbx, _udp(port=world.carrier_port) as carrier:
        victim = f"127.0.0.1:{reached.port}"  # type: ignore[attr-defined]
        host, port = pbx.getsockname()
        register = "\r\n".join([
            f"REGISTER sip:127.0.0.1:{world.gw.sip_port} SIP/2.0",
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{secrets.token_hex(6)}",
            f"From: <sip:bridge@127.0.0.1>;tag={secrets.token_hex(4)}", "To: <sip:bridge@127.0.0.1>",
            f"Call-ID: {secrets.token_hex(8)}", "CSeq: 1 REGISTER", f"Contact: <sip:bridge@{victim}>",
            "Expires: 600", "Max-Forwards: 70", "Content-Length: 0", "", ""]).encode()
        pbx.sendto(register, world.sip)
        assert _final(pbx).status == 200
        data = _request("INVITE", f"sip:{TOLLFREE}@127.0.0.1:{world.gw.sip_port}", carrier.getsockname(), body=SDP,
                        from_="<sip:+442079469999@carrier.example>", call_id="to-binding")
        carrier.sendto(data, world.sip)
        b_invite, _, source = _received_request(pbx)  # the flow the REGISTER came from
        assert str(b_invite.uri) == f"sip:bridge@{victim}"  # addressed to the contact, sent to the flow
        _refuse_b_leg(pbx, b_invite, source)
        final = _final(carrier)
        assert final.status == 486
        _ack(carrier, data, final, world.sip)
        time.sleep(0.3)
        assert reached() == []
    (cdr,) = world.wait_settled(1)
    assert int(cdr["charge"]) == 0 and world.balance().balance == 10 * UNIT and world.reconciles()


def _recv_until(sock: socket.socket, want: Callable[[Request | Response], bool], wait: float = 5.0
                ) -> tuple[Request | Response, tuple[str, int]]:
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        data, source = sock.recvfrom(70000)
        msg = parse_message(data)
        if want(msg):
            return msg, source
    raise AssertionError("nothing wanted arrived")


def test_an_answered_call_cannot_be_redirected_by_its_callers_target_refresh(world: World) -> None:
    """In an answered call the caller re-INVITEs with a Contact and a Record-Route naming the victim:
    the far end never sees them, and the far end's BYE still reaches the caller along its flow."""
    world.fund("acme", 10 * UNIT)
    with _victim() as reached, _udp(port=world.pbx_port) as pbx, _udp(port=world.carrier_port) as carrier:
        victim = f"127.0.0.1:{reached.port}"  # type: ignore[attr-defined]
        local = pbx.getsockname()
        far_contact = [("Contact", f"<sip:far@127.0.0.1:{world.carrier_port}>"), ("Content-Type", "application/sdp")]

        def via(sock: socket.socket) -> str:
            return f"SIP/2.0/UDP {sock.getsockname()[0]}:{sock.getsockname()[1]};branch=z9hG4bK{secrets.token_hex(6)}"

        def answer(sock: socket.socket, request: Request, source: tuple[str, int]) -> None:
            ok = make_response(request, 200, to_tag="far", headers=far_contact)
            ok.body = SDP.encode()
            sock.sendto(ok.to_bytes(), source)

        raw = _request("INVITE", f"sip:{LONDON}@127.0.0.1:{world.gw.sip_port}", local, body=SDP, call_id="hijack")
        pbx.sendto(raw, world.sip)
        b_invite, _, gw = _received_request(carrier)
        answer(carrier, b_invite, gw)
        ok = _final(pbx)
        assert ok.status == 200
        a_dialog = Dialog.as_uac(parse_message(raw), ok)  # type: ignore[arg-type]
        pbx.sendto(a_dialog.new_request("ACK", via=via(pbx), cseq=1).to_bytes(), world.sip)
        # The target refresh that tries to steer the call elsewhere.
        reinvite = a_dialog.new_request("INVITE", via=via(pbx), contact=f"<sip:evil@{victim}>", body=SDP.encode(),
                                        content_type="application/sdp",
                                        headers=[("Record-Route", f"<sip:{victim};lr>")])
        pbx.sendto(reinvite.to_bytes(), world.sip)
        relayed, gw = _recv_until(carrier, lambda m: isinstance(m, Request) and m.method == "INVITE")
        assert isinstance(relayed, Request)
        assert str(reached.port) not in (relayed.headers.get("Contact") or "")  # type: ignore[attr-defined]
        assert relayed.headers.get_all("Record-Route") == []
        answer(carrier, relayed, gw)
        _recv_until(pbx, lambda m: isinstance(m, Response) and m.cseq.method == "INVITE" and m.status == 200
                             and m.cseq.seq == reinvite.cseq.seq)
        pbx.sendto(a_dialog.new_request("ACK", via=via(pbx), cseq=reinvite.cseq.seq).to_bytes(), world.sip)
        # The far end hangs up: the caller's BYE goes to the caller, not to the Contact it last gave.
        b_dialog = Dialog.as_uas(b_invite, "far")
        carrier.sendto(b_dialog.new_request("BYE", via=via(carrier)).to_bytes(), world.sip)
        bye, gw = _recv_until(pbx, lambda m: isinstance(m, Request) and m.method == "BYE")
        assert isinstance(bye, Request)
        pbx.sendto(make_response(bye, 200).to_bytes(), gw)
        _recv_until(carrier, lambda m: isinstance(m, Response) and m.cseq.method == "BYE" and m.status == 200)
        time.sleep(0.3)
        assert reached() == []
    (cdr,) = world.wait_settled(1)
    assert cdr["end_reason"] == "normal" and int(cdr["charge"]) > 0
    assert world.balance().balance == 10 * UNIT - int(cdr["charge"]) and world.reconciles()


def test_a_spoofed_caller_bills_nobody_else(world: World) -> None:
    """A trunk of acme presenting beta's user (in From or P-Asserted-Identity) is not beta's user:
    acme does not know the caller, so the call is refused, and beta's money and CDRs are untouched."""
    _seed(world, _add_beta)
    world.fund("acme", 10 * UNIT)
    world.fund("beta", 10 * UNIT)
    with _udp(port=world.carrier_port) as carrier, _udp(port=world.pbx_port) as pbx:
        carrier.setblocking(False)
        local = pbx.getsockname()
        ruri = f"sip:{LONDON}@127.0.0.1:{world.gw.sip_port}"
        for n, (from_, extra) in enumerate([
            (f"<sip:{BOB}@beta.example>", []),
            (f"<sip:{ALICE}@pbx.example>", [f"P-Asserted-Identity: <sip:{BOB}@beta.example>"]),
            ("<sip:bob@beta.example>", []),
        ]):
            data = _request("INVITE", ruri, local, body=SDP, from_=from_, extra=extra, call_id=f"spoof-{n}")
            pbx.sendto(data, world.sip)
            final = _final(pbx)
            assert final.status == 403, final
            _ack(pbx, data, final, world.sip)
        time.sleep(0.3)
        with contextlib.suppress(BlockingIOError):
            assert carrier.recv(70000) == b"", "a spoofed caller's call reached the carrier"
    for org in ("acme", "beta"):
        bal = world.balance(org)
        assert (bal.balance, bal.reserved) == (10 * UNIT, 0)
        assert world.cdrs(org) == [] and world.reconciles(org)


def test_the_callers_text_never_adds_a_header_or_host_to_the_b_leg(world: World) -> None:
    """A carrier's caller id is passed on (toll-free), escaped: an escaped CRLF, '>' or '@' in it
    stays inside the From's user part of the INVITE to the toll-free target."""
    world.fund("acme", 10 * UNIT)
    evil = "%0D%0AX-Evil%3A%20yes%3E%40127.0.0.9"
    with _udp(port=world.carrier_port) as carrier, _udp(port=world.bridge_port) as bridge:
        data = _request("INVITE", f"sip:{TOLLFREE}@127.0.0.1:{world.gw.sip_port}", carrier.getsockname(), body=SDP,
                        from_=f"<sip:{evil}@carrier.example>", call_id="evil-from")
        carrier.sendto(data, world.sip)
        b_invite, raw, source = _received_request(bridge)
        head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
        assert not [line for line in head if line.lower().startswith(b"x-evil")], raw
        assert b_invite.headers.get("X-Evil") is None
        from_uri = b_invite.from_.uri
        assert isinstance(from_uri, SipUri) and from_uri.host == "127.0.0.1"
        assert from_uri.user_unescaped == "\r\nX-Evil: yes>@127.0.0.9"
        _refuse_b_leg(bridge, b_invite, source)
        final = _final(carrier)
        assert final.status == 486
        _ack(carrier, data, final, world.sip)
    (cdr,) = world.wait_settled(1)
    assert int(cdr["charge"]) == 0 and world.balance().balance == 10 * UNIT and world.reconciles()


# -- loops ------------------------------------------------------------------------------------------


def test_loops_are_stopped_and_cost_nothing(world: World) -> None:
    world.fund("acme", 10 * UNIT)
    loop_number = "+18005550199"

    async def loop_target(svc: Any) -> None:
        acme = await svc.directory.get_org("acme")
        await svc.directory.add_tollfree(acme, loop_number, target=f"sip:loop@127.0.0.1:{world.gw.sip_port}")

    _seed(world, loop_target)
    with _udp(port=world.pbx_port) as pbx, _udp(port=world.carrier_port) as carrier:
        ruri = f"sip:{LONDON}@127.0.0.1:{world.gw.sip_port}"
        local = pbx.getsockname()
        # Max-Forwards exhausted: 483 (RFC 3261 §16.3 step 3).
        data = _request("INVITE", ruri, local, body=SDP, call_id="mf0").replace(b"Max-Forwards: 70",
                                                                                b"Max-Forwards: 0")
        pbx.sendto(data, world.sip)
        assert _final(pbx).status == 483
        # A request that already went through us (our Via, our branch prefix): 482 Loop Detected.
        ours = f"Via: SIP/2.0/UDP 127.0.0.1:{world.gw.sip_port};branch=z9hG4bKcg{secrets.token_hex(8)}"
        data = _request("INVITE", ruri, local, body=SDP, call_id="own-via", extra=[ours])
        pbx.sendto(data, world.sip)
        final = _final(pbx)
        assert final.status == 482
        _ack(pbx, data, final, world.sip)
        # A real loop: a toll-free target that is the gateway itself. Its own B leg comes back to it
        # and is refused 482; the caller gets the failure; nothing is charged.
        data = _request("INVITE", f"sip:{loop_number}@127.0.0.1:{world.gw.sip_port}", carrier.getsockname(),
                        body=SDP, call_id="real-loop", from_="<sip:+442079469999@carrier.example>")
        carrier.sendto(data, world.sip)
        final = _final(carrier, 10.0)
        assert final.status == 482, final
        _ack(carrier, data, final, world.sip)
    (cdr,) = world.wait_settled(1)
    assert (int(cdr["charge"]), cdr["answered"]) == (0, "0")
    assert world.balance().balance == 10 * UNIT and world.reconciles()
    assert world.gw.running()


# -- digest: per-source failure limit, nonce expiry, single use -------------------------------------


def _digest_trunk(world: World, address: str, username: str, password: str) -> None:
    async def body(svc: Any) -> None:
        await svc.directory.add_trunk(await svc.directory.get_org("acme"), address, username=username,
                                      password=password)

    world.services(body)


def _answer(challenge: Response, *, password: str, username: str, uri: str, header: str = "Proxy-Authenticate",
            method: str = "INVITE") -> str:
    c = parse_challenge(challenge.headers.get_all(header)[0])
    assert c.realm == DIGEST_REALM
    return authorization_header(username=username, password=password, realm=c.realm, nonce=c.nonce or "",
                                method=method, uri=uri, algorithm=c.algorithm, opaque=c.opaque)


@pytest.mark.gateway_settings({"sip": {"digest_max_failures": 3, "digest_failure_window_s": 10.0}})
def test_failed_digest_attempts_are_limited_per_source(world: World) -> None:
    _digest_trunk(world, "127.0.0.4", "pbx4", "right")
    _digest_trunk(world, "127.0.0.5", "pbx5", "right5")
    ruri = f"sip:{LONDON}@127.0.0.1:{world.gw.sip_port}"
    with _udp("127.0.0.4") as s, _udp("127.0.0.5") as other:

        def attempt(sock: socket.socket, auth: str | None, n: int, *, method: str = "INVITE") -> Response:
            header = "Proxy-Authorization" if method == "INVITE" else "Authorization"
            extra = [f"{header}: {auth}"] if auth else []
            target = ruri if method == "INVITE" else f"sip:127.0.0.1:{world.gw.sip_port}"
            data = _request(method, target, sock.getsockname(), body=SDP if method == "INVITE" else "",
                            extra=extra, call_id=f"dg-{sock.getsockname()[0]}-{n}", cseq=n)
            sock.sendto(data, world.sip)
            final = _final(sock)
            if method == "INVITE":
                _ack(sock, data, final, world.sip)
            return final

        challenge = attempt(s, None, 1)
        assert challenge.status == 407  # a challenge is not a failure
        # Three guesses (a wrong password, an unknown user, a wrong password): each a fresh challenge.
        guesses = [("pbx4", "guess1"), ("nobody", "right"), ("pbx4", "guess2")]
        for n, (user, password) in enumerate(guesses, start=2):
            final = attempt(s, _answer(challenge, password=password, username=user, uri=ruri), n)
            assert final.status == 407, final
            challenge = final
        # Over the budget: refused before any digest work, even with the right password, and the
        # REGISTER path shares the budget. The answer says when to come back.
        limited = attempt(s, _answer(challenge, password="right", username="pbx4", uri=ruri), 5)
        assert limited.status == 503 and "authentication" in (limited.headers.get("Warning") or "")
        wait = int(limited.headers.get("Retry-After") or "0")
        assert 1 <= wait <= 11
        register = attempt(s, None, 6, method="REGISTER")
        assert register.status == 503 and register.headers.get("Retry-After")
        # Another source is not affected.
        c5 = attempt(other, None, 1)
        assert c5.status == 407
        assert attempt(other, _answer(c5, password="right5", username="pbx5", uri=ruri), 2).status == 402
        # Once the window is over the source may try again, and the right password gets through
        # (402: authenticated; acme has no money).
        time.sleep(wait + 0.5)
        challenge = attempt(s, None, 7)
        assert challenge.status == 407
        assert attempt(s, _answer(challenge, password="right", username="pbx4", uri=ruri), 8).status == 402
    assert world.cdrs() == [] and world.balance().balance == 0 and world.reconciles()


@pytest.mark.gateway_settings({"sip": {"digest_nonce_ttl_s": 3}})
def test_nonces_expire_and_each_answer_is_used_once(world: World) -> None:
    _digest_trunk(world, "127.0.0.4", "pbx4", "right")
    ruri = f"sip:{LONDON}@127.0.0.1:{world.gw.sip_port}"
    with _udp("127.0.0.4") as s:
        local = s.getsockname()

        def invite(n: int, auth: str | None, call_id: str = "nonce") -> Response:
            data = _request("INVITE", ruri, local, body=SDP, call_id=f"{call_id}-{n}", cseq=n,
                            extra=[f"Proxy-Authorization: {auth}"] if auth else [])
            s.sendto(data, world.sip)
            final = _final(s)
            _ack(s, data, final, world.sip)
            return final

        old = invite(1, None)
        assert old.status == 407
        time.sleep(5.0)  # the nonce (3 s, issued on a whole second) is now stale
        stale = invite(2, _answer(old, password="right", username="pbx4", uri=ruri))
        assert stale.status == 407
        assert parse_challenge(stale.headers.get_all("Proxy-Authenticate")[0]).stale  # right password, old nonce
        good = _answer(stale, password="right", username="pbx4", uri=ruri)
        assert invite(3, good).status == 402  # authenticated (no money)
        again = invite(4, good, call_id="replay")
        assert again.status == 407 and not parse_challenge(again.headers.get_all("Proxy-Authenticate")[0]).stale
    assert world.balance().balance == 0 and world.reconciles()


# -- bombs, truncation, slow and idle senders -------------------------------------------------------

OPTIONS_TEMPLATE = ("OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{t} {host}:{port};branch=z9hG4bK{b}\r\n"
                    "From: <sip:ping@{host}>;tag=p\r\nTo: <sip:gw@127.0.0.1>\r\nCall-ID: {b}\r\nCSeq: 1 OPTIONS\r\n"
                    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


def _options(sock: socket.socket, transport: str = "UDP") -> bytes:
    host, port = sock.getsockname()
    return OPTIONS_TEMPLATE.format(t=transport, host=host, port=port, b=secrets.token_hex(8)).encode()


def call_id(data: bytes) -> str:
    return data.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()


def _bombs(local: tuple[str, int], transport: str) -> list[tuple[str, bytes, int | None]]:
    """(name, message, status the gateway answers or None when it must drop it) for max size 16384."""
    ruri = "sip:+442079460000@127.0.0.1"
    good = _request("INVITE", ruri, local, body=SDP, transport=transport)
    head, _, body = good.partition(b"\r\n\r\n")
    cut = head.index(b"\r\nContact")
    return [
        # Thousands of header fields: more than 256 lines (RFC 3261 gives no bound; ours is 256).
        ("header bomb", head + b"\r\n" + b"X-Bomb: a\r\n" * 1500 + b"\r\n" + body, 513),
        # One header line longer than 8192 octets.
        ("huge line", head + b"\r\nX-Long: " + b"a" * 12000 + b"\r\n\r\n" + body, 513),
        # A fold bomb: one header continued over thousands of lines.
        ("fold bomb", head + b"\r\nX-Fold: a" + b"\r\n b" * 1500 + b"\r\n\r\n" + body, 513),
        # A body bigger than the largest message.
        ("body bomb", head.replace(f"Content-Length: {len(body)}".encode(), b"Content-Length: 20000")
         + b"\r\n\r\n" + b"v" * 20000, 513),
        # Content-Length far beyond what came (UDP: 400; TCP: beyond the largest message, 513).
        ("huge content-length", head.replace(f"Content-Length: {len(body)}".encode(), b"Content-Length: 4294967296")
         + b"\r\n\r\n" + body, 400 if transport == "UDP" else 513),
        # Cut in the header section: nothing to answer with over UDP.
        ("truncated head", good[:cut], None),
    ]


def _sipp_call_works(world: World, sipp_factory: Callable[..., Sipp], transport: str = "udp") -> None:
    carrier = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=1, timeout_s=30,
                           transport=transport).start()
    pbx = sipp_factory(SippScenario.UAC_CALL, remote=world.sip, local_port=world.pbx_port,
                       injection=[(ALICE, LONDON)], calls=1, timeout_s=30, duration_ms=500, transport=transport)
    assert pbx.run() == 0, pbx.diagnostics()
    assert carrier.wait(10) == 0, carrier.diagnostics()


@pytest.mark.gateway_settings({"sip": {"max_message_bytes": 16384, "tcp_message_timeout_s": 3.0}})
def test_bombs_and_truncated_messages_over_udp_and_tcp_keep_memory_bounded(world: World, sipp_factory: Any) -> None:
    world.fund("acme", 10 * UNIT)
    pid = world.gw.proc.pid  # type: ignore[union-attr]

    def udp_round(s: socket.socket) -> list[str]:
        problems = []
        for name, data, status in _bombs(s.getsockname(), "UDP"):
            s.sendto(data, world.sip)
            if status is None:
                continue
            wanted = call_id(data)
            got = [next((r.status for r in _responses(s, 5.0) if r.status != 100 and r.call_id == wanted), None)]
            if got != [status]:
                problems.append(f"UDP {name}: expected {status}, got {got}")
        return problems

    def tcp_round() -> list[str]:
        problems = []
        for name, data, status in _bombs(("127.0.0.2", 5060), "TCP"):
            with socket.create_connection(world.sip, timeout=5) as c:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    c.sendall(data)
                answers: list[int] = []
                framer = StreamFramer(max_size=1 << 20)
                try:
                    while not answers:
                        chunk = c.recv(70000)
                        if not chunk:
                            break  # closed: framing lost after the answer, or a stalled message reaped
                        answers += [m.status for m in framer.feed(chunk) if isinstance(m, Response)]
                except (TimeoutError, ConnectionResetError):
                    pass
                expected = [status] if status is not None else []
                if answers[:1] != expected:
                    problems.append(f"TCP {name}: expected {expected}, got {answers}")
        return problems

    def lazy_peer() -> None:
        """A TCP peer that sends and never reads: the gateway stops reading it (so its sends block)
        rather than buffer answers without end, and never needs to drop it for its buffer's size."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as lazy:
            lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            lazy.bind(("127.0.0.8", 0))
            lazy.connect(world.sip)
            lazy.setblocking(False)
            sent, blocked_since, reset = 0, None, False
            deadline = time.monotonic() + 20.0
            while sent < 400_000 and time.monotonic() < deadline:
                try:
                    lazy.send(_options(lazy, "TCP"))
                    sent, blocked_since = sent + 1, None
                except BlockingIOError:
                    blocked_since = blocked_since or time.monotonic()
                    if time.monotonic() - blocked_since > 2.0:
                        break
                    time.sleep(0.01)
                except (BrokenPipeError, ConnectionResetError):
                    reset = True
                    break
            assert not reset, "the gateway had to drop a peer for the answers it would not read"
            assert blocked_since is not None, f"the gateway kept reading from a peer that never reads ({sent} sent)"
            with _udp("127.0.0.3") as other:  # the gateway still answers everyone else meanwhile
                other.sendto(_options(other), world.sip)
                assert _final(other).status == 200

    with _udp("127.0.0.2") as s:
        # Warm up: every path runs once, so the allocator's first high-water mark is in the baseline.
        assert udp_round(s) == [] and tcp_round() == []
        lazy_peer()
        before = rss_kb(pid)
        problems: list[str] = []
        for _ in range(60):
            problems += udp_round(s)
        # A flood that is not waited for: the gateway drops what its socket buffer cannot hold.
        for _ in range(20):
            for _, data, _ in _bombs(s.getsockname(), "UDP"):
                s.sendto(data, world.sip)
        problems += tcp_round()
        assert problems == [], "\n".join(problems)
        lazy_peer()
        lazy_peer()
        after = rss_kb(pid)
    print(f"gateway VmRSS {before} kB after warm-up, {after} kB after the bombs")
    # Each round above carries about 50 kB of bombs (3 MB in all) and each lazy peer makes the gateway
    # answer thousands of requests (about 10 MB of answers): kept, any of them would show here.
    assert after - before < 15_000, f"VmRSS grew from {before} kB to {after} kB"
    assert world.gw.running()
    _sipp_call_works(world, sipp_factory)
    world.wait_settled(1)
    assert world.reconciles()


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the gateway closed (or reset) this connection, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(70000) == b""
    except BlockingIOError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        sock.setblocking(True)


@pytest.mark.gateway_settings({"sip": {"tcp_message_timeout_s": 3.0, "tcp_max_connections_per_source": 20}})
def test_slow_and_idle_tcp_senders_are_bounded_and_cut_off(world: World, sipp_factory: Any) -> None:
    world.fund("acme", 10 * UNIT)
    pid = world.gw.proc.pid  # type: ignore[union-attr]
    before = rss_kb(pid)
    # Slowloris: a request sent one octet at a time, 5 a second, never completes (it would take a
    # minute); the gateway cuts it off once the message is 3 s old, however steadily it trickles.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as slow:
        slow.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slow.bind(("127.0.0.6", 0))
        slow.connect(world.sip)
        data = _options(slow, "TCP")
        started, cut_off = time.monotonic(), None
        for i in range(len(data) - 1):
            try:
                slow.send(data[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                cut_off = time.monotonic() - started
                break
            if _closed_by_peer(slow):
                cut_off = time.monotonic() - started
                break
            time.sleep(0.2)
        assert cut_off is not None, "a one-octet-at-a-time sender kept its connection for a whole minute"
        assert cut_off >= 2.5  # not before the message's deadline
    # Idle connections: one source gets at most 20 (the rest are refused at once); every one of them
    # that never sends a message is closed at its deadline. Another source is not locked out.
    idle = []
    try:
        for _ in range(60):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            idle.append(c)
            c.bind(("127.0.0.7", 0))
            c.settimeout(5)
            with contextlib.suppress(ConnectionResetError, ConnectionRefusedError):
                c.connect(world.sip)
        time.sleep(0.5)
        open_now = [c for c in idle if not _closed_by_peer(c)]
        assert len(open_now) <= 20, f"{len(open_now)} connections from one source stay open"
        with socket.create_connection(world.sip, timeout=5, source_address=("127.0.0.8", 0)) as other:
            other.sendall(_options(other, "TCP"))
            framer = StreamFramer()
            answers: list[Any] = []
            while not answers:
                chunk = other.recv(70000)
                assert chunk, "another source was refused"
                answers = framer.feed(chunk)
            assert isinstance(answers[0], Response) and answers[0].status == 200
        deadline = time.monotonic() + 15.0
        while open_now and time.monotonic() < deadline:
            open_now = [c for c in open_now if not _closed_by_peer(c)]
            time.sleep(0.2)
        assert open_now == [], f"{len(open_now)} idle connections outlived their deadline"
    finally:
        for c in idle:
            c.close()
    # Once they are gone the source may connect again.
    with socket.create_connection(world.sip, timeout=5, source_address=("127.0.0.7", 0)) as again:
        again.sendall(_options(again, "TCP"))
        assert again.recv(70000).startswith(b"SIP/2.0 200")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{world.gw.http_port}/metrics", timeout=10).read().decode()
    closed = dict(re.findall(r'creditgate_sip_tcp_closed_total\{why="(\w+)"\} ([0-9.]+)', metrics))
    assert float(closed["refused"]) >= 1 and float(closed["reaped"]) >= 21, closed  # the slow one and 20 idle
    after = rss_kb(pid)
    print(f"gateway VmRSS {before} kB before the slow and idle senders, {after} kB after")
    assert after - before < 15_000
    _sipp_call_works(world, sipp_factory, transport="tcp")
    world.wait_settled(1)
    assert world.reconciles()
