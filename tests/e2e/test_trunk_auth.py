"""Trunks with digest credentials (407 challenge on INVITE, single-use responses, no user enumeration) and
the gateway on IPv6 loopback, over raw sockets to a running gateway."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest
from _world import UNIT, World, make_world

from gateway.directory import DIGEST_REALM
from gateway.sip import Response, parse_message
from gateway.sip.digest import authorization_header, parse_challenge

try:
    from sipp import free_port
except ImportError:  # pragma: no cover
    from tests.e2e.sipp import free_port

pytestmark = pytest.mark.e2e

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def _invite(world: World, port: int, n: int, *, auth: str | None = None, call_id: str = "auth-1") -> bytes:
    lines = [
        f"INVITE sip:+447911123456@127.0.0.1:{world.gw.sip_port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKauth{n}{call_id}",
        "From: <sip:+442079460123@pbx.example>;tag=a1",
        "To: <sip:+447911123456@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {n} INVITE",
        f"Contact: <sip:pbx@127.0.0.1:{port}>",
        "Max-Forwards: 70",
        "Content-Type: application/sdp",
    ]
    if auth:
        lines.append(f"Proxy-Authorization: {auth}")
    return ("\r\n".join(lines) + f"\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}").encode()


def _final(sock: socket.socket) -> Response:
    sock.settimeout(5)
    while True:
        msg = parse_message(sock.recv(65535))
        assert isinstance(msg, Response)
        if msg.status >= 200:
            return msg


def _trunk(world: World, port: int, username: str, password: str) -> None:
    async def body(svc: Any) -> None:
        await svc.directory.add_trunk(await svc.directory.get_org("acme"), f"127.0.0.1:{port}",
                                      username=username, password=password)

    world.services(body)


def test_invite_from_a_trunk_with_credentials_is_challenged_then_authorized_once(world: World) -> None:
    port = free_port()
    _trunk(world, port, "pbx1", "s3cret")
    uri = f"sip:+447911123456@127.0.0.1:{world.gw.sip_port}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        s.sendto(_invite(world, port, 1), world.sip)
        challenge = _final(s)
        assert challenge.status == 407
        offered = [parse_challenge(v) for v in challenge.headers.get_all("Proxy-Authenticate")]
        assert [c.algorithm for c in offered] == ["SHA-256", "MD5"] and offered[0].realm == DIGEST_REALM

        def answer(password: str, username: str = "pbx1") -> str:
            c = offered[0]
            return authorization_header(username=username, password=password, realm=c.realm, nonce=c.nonce,
                                        method="INVITE", uri=uri, algorithm=c.algorithm, opaque=c.opaque)

        # A wrong password and an unknown user get the very same answer: a fresh challenge.
        s.sendto(_invite(world, port, 2, auth=answer("guess")), world.sip)
        wrong = _final(s)
        s.sendto(_invite(world, port, 3, auth=answer("s3cret", "nobody")), world.sip)
        unknown = _final(s)
        assert wrong.status == unknown.status == 407
        assert wrong.reason == unknown.reason
        good = answer("s3cret")
        s.sendto(_invite(world, port, 4, auth=good), world.sip)
        assert _final(s).status == 402  # through the door; the balance is empty
        s.sendto(_invite(world, port, 5, auth=good, call_id="auth-2"), world.sip)
        assert _final(s).status == 407  # the same response again: a replay


def test_gateway_answers_on_ipv6_loopback_over_udp_and_tcp(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    with make_world(tmp_path, redis_url, {"sip": {"listen": f"[::1]:{port}"}}) as world:
        world.fund("acme", UNIT)
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET6, kind) as s:
                s.settimeout(5)
                s.connect(("::1", port))
                local = s.getsockname()[1]
                t = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
                s.sendall((f"OPTIONS sip:gw@[::1]:{port} SIP/2.0\r\nVia: SIP/2.0/{t} [::1]:{local};branch=z9hG4bK6{t}\r\n"
                           f"From: <sip:ping@[::1]>;tag=6\r\nTo: <sip:gw@[::1]>\r\nCall-ID: v6{t}{time.time()}\r\n"
                           "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
                resp = parse_message(s.recv(65535), datagram=kind == socket.SOCK_DGRAM)
                assert isinstance(resp, Response) and resp.status == 200
                assert "INVITE" in (resp.headers.get("Allow") or "")
