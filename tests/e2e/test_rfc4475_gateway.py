"""RFC 4475 torture messages sent to a running gateway, from a trusted trunk, over UDP and over TCP.

The parser's verdict for each message is proven against the RFC's table in tests/sip/test_rfc4475.py.
Here the live gateway must act on it: answer the status the verdict carries (to the sender), drop what
must be dropped, never relay a broken message to the carrier, and stay up (OPTIONS still answered).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from _world import UNIT, World

from gateway.b2bua.stack import SERVED_METHODS
from gateway.sip import DropMessage, Request, SipError, StreamFramer, check_request, parse_message

pytestmark = pytest.mark.e2e

VECTORS = Path(__file__).resolve().parents[1] / "sip" / "rfc4475"
NAMES = sorted(p.name for p in VECTORS.glob("*.dat"))
OPTIONS = (
    "OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{t} 127.0.0.2:{port};branch=z9hG4bKping{n}\r\n"
    "From: <sip:ping@127.0.0.2>;tag=p{n}\r\nTo: <sip:gw@127.0.0.1>\r\nCall-ID: ping{n}\r\nCSeq: 1 OPTIONS\r\n"
    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def _verdict(data: bytes) -> int | None | str:
    """What the gateway must do with one datagram: a status to answer, None (drop) or 'process'."""
    try:
        msg = parse_message(data)
    except DropMessage:
        return None
    except SipError as exc:
        has_via = exc.headers is not None and "Via" in exc.headers
        return exc.status_hint if has_via and exc.method != "ACK" else None
    if not isinstance(msg, Request):
        return None  # a response for no transaction of ours
    try:
        check_request(msg, allowed_methods=SERVED_METHODS)
    except SipError as exc:
        return exc.status_hint if exc.method != "ACK" else None
    return "process"


def _status(data: bytes) -> int | None:
    if data.startswith(b"SIP/2.0 "):
        return int(data[8:11])
    return None


def _final_statuses(sock: socket.socket, wait: float) -> list[int]:
    """Response statuses received within ``wait`` seconds (100 Trying and retransmissions left out:
    an INVITE's failure is resent over UDP until it is acknowledged, RFC 3261 Timer G)."""
    out = []
    seen: set[bytes] = set()
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        sock.settimeout(left)
        try:
            data = sock.recv(70000)
        except (TimeoutError, socket.timeout, ConnectionResetError):
            return out  # nothing more, or the gateway closed a connection whose framing was lost
        if not data:
            return out
        status = _status(data)
        if data in seen:
            continue
        seen.add(data)
        if status is not None and status != 100:
            out.append(status)
            deadline = min(deadline, time.monotonic() + 0.05)  # a final answer came: gather only what follows it at once


def _carrier_socket(world: World) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", world.carrier_port))
    s.setblocking(False)
    return s


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


def _add_host_trunk(world: World) -> None:
    async def body(svc) -> None:  # type: ignore[no-untyped-def]
        await svc.directory.add_trunk(await svc.directory.get_org("acme"), "127.0.0.2")

    world.services(body)


def _check_relayed(carrier: socket.socket) -> None:
    for data in _drain(carrier):
        msg = parse_message(data)  # whatever reached the carrier is well formed ...
        assert isinstance(msg, Request)
        check_request(msg, allowed_methods=SERVED_METHODS)  # ... and acceptable to a strict element
        assert msg.headers.get("Via", "").startswith("SIP/2.0/")


def _alive(world: World, transport: str, n: int) -> None:
    kind = socket.SOCK_DGRAM if transport == "UDP" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.2", 0))
        s.settimeout(5)
        s.connect(world.sip)
        s.sendall(OPTIONS.format(t=transport, port=s.getsockname()[1], n=n).encode())
        assert _status(s.recv(70000)) == 200


def test_every_torture_message_over_udp(world: World) -> None:
    world.fund("acme", 100 * UNIT)
    _add_host_trunk(world)
    carrier = _carrier_socket(world)
    problems = []
    try:
        for i, name in enumerate(NAMES):
            data = (VECTORS / name).read_bytes()
            expected = _verdict(data)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.2", 0))
                s.sendto(data, world.sip)
                got = _final_statuses(s, {None: 0.5, "process": 1.0}.get(expected, 3.0))  # type: ignore[arg-type]
            if expected == "process":
                if len(got) > 1:
                    problems.append(f"{name}: several final answers {got}")
            elif expected is None:
                if got:
                    problems.append(f"{name}: must be dropped, got {got}")
            elif got[:1] != [expected]:
                problems.append(f"{name}: expected {expected}, got {got}")
            if expected != "process":
                leaked = _drain(carrier)
                if leaked:
                    problems.append(f"{name}: {len(leaked)} message(s) reached the carrier")
            _check_relayed(carrier)
            _alive(world, "UDP", i)
    finally:
        carrier.close()
    assert not problems, "\n".join(problems)
    assert world.gw.running()


def _stream_verdicts(data: bytes) -> list[int | None | str]:
    """What the gateway must do with ``data`` arriving on a TCP connection, message by message."""
    out: list[int | None | str] = []
    for item in StreamFramer().feed(data):
        if isinstance(item, SipError):
            has_via = item.headers is not None and "Via" in item.headers
            out.append(item.status_hint if has_via and item.method != "ACK" and
                       not isinstance(item, DropMessage) else None)
        elif isinstance(item, Request):
            try:
                check_request(item, allowed_methods=SERVED_METHODS)
            except SipError as exc:
                out.append(exc.status_hint if exc.method != "ACK" else None)
            else:
                out.append("process")
        else:
            out.append(None)
    return out


def test_every_torture_message_fed_byte_by_byte_over_tcp(world: World) -> None:
    world.fund("acme", 100 * UNIT)
    _add_host_trunk(world)
    problems = []
    for i, name in enumerate(NAMES):
        data = (VECTORS / name).read_bytes()
        expected = [v for v in _stream_verdicts(data) if v is not None]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            s.connect(world.sip)
            for k in range(len(data)):
                try:
                    s.send(data[k:k + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break  # the gateway answered a framing error and closed the stream, as it must
            answered_expected = [v for v in expected if v != "process"]
            got = _final_statuses(s, 3.0 if answered_expected else 1.0 if expected else 0.5)
        answered = answered_expected
        if "process" in expected:
            if len(got) < len(answered) or len(got) > len(expected):
                problems.append(f"{name}: expected {expected}, got {got}")
        elif got != answered:
            problems.append(f"{name}: expected {answered}, got {got}")
        _alive(world, "TCP", i)
    assert not problems, "\n".join(problems)
    _alive(world, "UDP", 0)
    assert world.gw.running()
