"""The gateway as registrar of its trunks (RFC 3261 §10), over real UDP to a running gateway.

A trunk without credentials registers by its address; one with credentials must answer a digest
challenge (401), each response is single use, and nobody else may register. A toll-free number whose
target user registered is delivered to the registered contact.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable

import pytest
from _world import TOLLFREE, UNIT, World

from gateway.directory import DIGEST_REALM
from gateway.sip import parse_message
from gateway.sip.digest import authorization_header, parse_challenge

try:
    from sipp import Sipp, SippScenario, free_port
except ImportError:  # pragma: no cover
    from tests.e2e.sipp import Sipp, SippScenario, free_port

pytestmark = pytest.mark.e2e


def _register(world: World, sock: socket.socket, user: str, *, n: int, expires: int = 600,
              contact_port: int | None = None, auth: str | None = None, call_id: str = "reg1") -> object:
    port = sock.getsockname()[1]
    lines = [
        f"REGISTER sip:127.0.0.1:{world.gw.sip_port} SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKreg{n}x{call_id}",
        f"From: <sip:{user}@creditgate>;tag=r{n}",
        f"To: <sip:{user}@creditgate>",
        f"Call-ID: {call_id}",
        f"CSeq: {n} REGISTER",
        f"Contact: <sip:{user}@127.0.0.1:{contact_port or port}>",
        f"Expires: {expires}",
        "Max-Forwards: 70",
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    sock.sendto(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode(), world.sip)
    sock.settimeout(5)
    while True:
        resp = parse_message(sock.recv(65535))
        if resp.status != 100:  # type: ignore[union-attr]
            return resp


def _udp(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    return s


def _bindings(world: World, user: str) -> list[object]:
    async def body(svc) -> list[object]:  # type: ignore[no-untyped-def]
        from gateway.b2bua.registrar import Registrar

        return await Registrar(svc.client).bindings("acme", user)

    return world.services(body)


def test_trusted_trunk_registers_refreshes_and_unregisters(world: World) -> None:
    with _udp(world.pbx_port) as s:
        resp = _register(world, s, "bob", n=1)
        assert resp.status == 200  # type: ignore[attr-defined]
        (contact,) = resp.headers.get_all("Contact")  # type: ignore[attr-defined]
        assert re.fullmatch(rf"<sip:bob@127\.0\.0\.1:{world.pbx_port}>;expires=(599|600)", contact)
        (b,) = _bindings(world, "bob")
        assert b.source == ("127.0.0.1", world.pbx_port)  # type: ignore[attr-defined]
        assert _register(world, s, "bob", n=2, expires=30).status == 423  # type: ignore[attr-defined]
        assert _register(world, s, "bob", n=3, expires=0).status == 200  # type: ignore[attr-defined]
        assert _bindings(world, "bob") == []


def test_unknown_source_may_not_register(world: World) -> None:
    with _udp() as s:
        resp = _register(world, s, "mallory", n=1)
        assert resp.status == 403  # type: ignore[attr-defined]
    assert _bindings(world, "mallory") == []


def test_trunk_with_credentials_is_challenged_and_each_response_is_single_use(world: World) -> None:
    port = free_port()

    async def add(svc) -> None:  # type: ignore[no-untyped-def]
        await svc.directory.add_trunk(await svc.directory.get_org("acme"), f"127.0.0.1:{port}",
                                      username="pbx1", password="s3cret")

    world.services(add)
    with _udp(port) as s:
        first = _register(world, s, "carol", n=1)
        assert first.status == 401  # type: ignore[attr-defined]
        challenges = first.headers.get_all("WWW-Authenticate")  # type: ignore[attr-defined]
        ch = parse_challenge(challenges[0])
        assert ch.realm == DIGEST_REALM and "auth" in ch.qop
        uri = f"sip:127.0.0.1:{world.gw.sip_port}"

        def answer(password: str) -> str:
            return authorization_header(username="pbx1", password=password, realm=ch.realm, nonce=ch.nonce,
                                        method="REGISTER", uri=uri, algorithm=ch.algorithm or "MD5",
                                        opaque=ch.opaque)

        wrong = _register(world, s, "carol", n=2, auth=answer("guess"))
        assert wrong.status == 401  # type: ignore[attr-defined]
        good = answer("s3cret")
        assert _register(world, s, "carol", n=3, auth=good).status == 200  # type: ignore[attr-defined]
        replayed = _register(world, s, "carol", n=4, auth=good, call_id="reg2")
        assert replayed.status == 401  # type: ignore[attr-defined]
    assert len(_bindings(world, "carol")) == 1


def test_tollfree_call_reaches_the_registered_contact_of_its_target(world: World,
                                                                    sipp_factory: Callable[..., Sipp]) -> None:
    world.fund("acme", 100 * UNIT)
    phone_port = free_port()

    async def retarget(svc) -> None:  # type: ignore[no-untyped-def]
        acme = await svc.directory.get_org("acme")
        await svc.directory.add_tollfree(acme, TOLLFREE, target="sip:bob@acme.invalid")

    world.services(retarget)
    with _udp(world.pbx_port) as s:  # bob's phone sits behind acme's PBX trunk
        assert _register(world, s, "bob", n=1, contact_port=phone_port).status == 200  # type: ignore[attr-defined]
    # The registered contact names the phone's port; the flow the REGISTER came on is the PBX's.
    phone = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.pbx_port, calls=1, timeout_s=30).start()
    caller = sipp_factory(SippScenario.UAC_CALL, remote=world.sip, local_port=world.carrier_port, calls=1,
                          timeout_s=30, duration_ms=300, injection=[("+12125550123", TOLLFREE)])
    assert caller.run() == 0, caller.diagnostics()
    assert phone.wait(10) == 0, phone.diagnostics()
    (invite,) = phone.messages(method="INVITE")
    assert invite.start_line.split()[1] == f"sip:bob@127.0.0.1:{phone_port}"
    (cdr,) = world.wait_settled(1)
    assert cdr["meta"]["direction"] == "inbound_tollfree"
