"""A finished call is freed by reference counting alone, with the cyclic collector switched off.

The gateway keeps tens of thousands of calls live at once. If a call's objects formed reference
cycles, every ended call would wait for a full collection to be freed, and a full collection over a
heap of ~50,000 live calls (~4 million tracked objects on this machine) stops the event loop for
seconds: INVITEs queue past their retransmission timers and chunk renewals run late. The gateway
instead breaks a call's cycles when it forgets the call and runs no automatic full collections
(``gateway.gcpolicy``). This test runs the real SIP process in-process
(``gateway.app.serve``) against a real redis-server, places calls over real UDP sockets as a PBX
and a carrier, and checks that nothing of a call outlives its end.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from pathlib import Path
from typing import Any

import pytest

from gateway import app, gcpolicy
from gateway.app import serve
from gateway.config import Config
from gateway.services import open_services
from tests.e2e._world import ALICE, UNIT, _seed
from tests.e2e.sipp import free_port

LONDON = "+442079460000"


class Peer:
    """A scripted UDP SIP peer on loopback."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.setblocking(False)

    async def recv(self, timeout: float = 5.0) -> tuple[str, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
                return data.decode(), addr
            except BlockingIOError:
                if loop.time() > deadline:
                    raise AssertionError(f"nothing received on {self.port}") from None
                await asyncio.sleep(0.002)

    async def expect(self, first_line: str) -> tuple[str, tuple[str, int]]:
        while True:
            text, addr = await self.recv()
            if text.startswith(first_line):
                return text, addr

    def send(self, text: str, addr: tuple[str, int]) -> None:
        self.sock.sendto(text.replace("\n", "\r\n").encode(), addr)

    def close(self) -> None:
        self.sock.close()


def _header(text: str, name: str) -> str:
    for line in text.split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {text!r}")


def _reply(request: str, status: str, to_tag: str, contact: str) -> str:
    vias = [line for line in request.split("\r\n") if line.lower().startswith("via:")]
    lines = [f"SIP/2.0 {status}", *vias, f"From: {_header(request, 'From')}",
             f"To: {_header(request, 'To')};tag={to_tag}", f"Call-ID: {_header(request, 'Call-ID')}",
             f"CSeq: {_header(request, 'CSeq')}", f"Contact: {contact}", "Content-Length: 0", "", ""]
    return "\n".join(lines)


def _request(method: str, n: int, pbx: Peer, gw: tuple[str, int], dialed: str, *, cseq: int = 1,
             branch: str = "", to: str | None = None) -> str:
    """The PBX's request of call ``n``: INVITE, or (same From and Call-ID) ACK, BYE, CANCEL; ``branch``
    is appended to the INVITE's branch (none: the INVITE's transaction), ``to`` replaces its To."""
    local = f"127.0.0.1:{pbx.port}"
    contact = f"Contact: <sip:{ALICE}@{local}>\n" if method == "INVITE" else ""
    return f"""{method} sip:{dialed}@{gw[0]}:{gw[1]} SIP/2.0
Via: SIP/2.0/UDP {local};branch=z9hG4bK-mem-{n}{branch};rport
From: <sip:{ALICE}@{local}>;tag=pbx-{n}
To: {to or f"<sip:{dialed}@{gw[0]}:{gw[1]}>"}
Call-ID: mem-{n}@127.0.0.1
CSeq: {cseq} {method}
{contact}Max-Forwards: 70
Content-Length: 0

"""


def _carrier_says(carrier: Peer, request: str, addr: tuple[str, int], status: str, n: int) -> None:
    carrier.send(_reply(request, status, f"car-{n}", f"<sip:c@127.0.0.1:{carrier.port}>"), addr)


async def _one_call(n: int, pbx: Peer, carrier: Peer, gw: tuple[str, int]) -> None:
    pbx.send(_request("INVITE", n, pbx, gw, LONDON), gw)
    b_invite, b_addr = await carrier.expect("INVITE ")
    _carrier_says(carrier, b_invite, b_addr, "200 OK", n)
    ok, _ = await pbx.expect("SIP/2.0 200")
    await carrier.expect("ACK ")
    to = _header(ok, "To")  # with the gateway's tag
    pbx.send(_request("ACK", n, pbx, gw, LONDON, branch="-ack", to=to), gw)
    pbx.send(_request("BYE", n, pbx, gw, LONDON, cseq=2, branch="-bye", to=to), gw)
    b_bye, b_addr = await carrier.expect("BYE ")
    _carrier_says(carrier, b_bye, b_addr, "200 OK", n)
    await pbx.expect("SIP/2.0 200")


def _ack_failure(n: int, pbx: Peer, gw: tuple[str, int], final: str, dialed: str) -> None:
    """The ACK of a non-2xx final response: the INVITE's branch, the response's To (§17.1.1.3)."""
    pbx.send(_request("ACK", n, pbx, gw, dialed, to=_header(final, "To")), gw)


async def _refused_call(n: int, pbx: Peer, carrier: Peer, gw: tuple[str, int]) -> None:
    pbx.send(_request("INVITE", n, pbx, gw, "+44"), gw)  # not a number: refused before any B leg
    final, _ = await pbx.expect("SIP/2.0 4")
    _ack_failure(n, pbx, gw, final, "+44")


async def _rejected_call(n: int, pbx: Peer, carrier: Peer, gw: tuple[str, int]) -> None:
    pbx.send(_request("INVITE", n, pbx, gw, LONDON), gw)
    b_invite, b_addr = await carrier.expect("INVITE ")
    _carrier_says(carrier, b_invite, b_addr, "486 Busy Here", n)
    await carrier.expect("ACK ")
    final, _ = await pbx.expect("SIP/2.0 486")
    _ack_failure(n, pbx, gw, final, LONDON)


async def _cancelled_call(n: int, pbx: Peer, carrier: Peer, gw: tuple[str, int]) -> None:
    pbx.send(_request("INVITE", n, pbx, gw, LONDON), gw)
    b_invite, b_addr = await carrier.expect("INVITE ")
    _carrier_says(carrier, b_invite, b_addr, "180 Ringing", n)
    await pbx.expect("SIP/2.0 180")
    pbx.send(_request("CANCEL", n, pbx, gw, LONDON), gw)
    b_cancel, b_addr = await carrier.expect("CANCEL ")
    _carrier_says(carrier, b_cancel, b_addr, "200 OK", n)
    _carrier_says(carrier, b_invite, b_addr, "487 Request Terminated", n)
    await carrier.expect("ACK ")
    final, _ = await pbx.expect("SIP/2.0 487")
    _ack_failure(n, pbx, gw, final, LONDON)


KINDS = {"answered": _one_call, "refused": _refused_call, "rejected": _rejected_call, "cancelled": _cancelled_call}


@pytest.mark.timeout(120)
def test_an_ended_call_is_freed_without_the_cyclic_collector(tmp_path: Path, redis_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sip_port, pbx_port, carrier_port = free_port(), free_port(), free_port()
    config = Config.from_dict({
        "data_dir": str(tmp_path / "data"),
        "redis": {"url": redis_url},
        "sip": {"listen": f"127.0.0.1:{sip_port}", "drain_timeout_s": 2.0},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "credit": {"debit_interval_s": 60},
    })
    found: dict[str, Any] = {}
    started: list[Any] = []

    real_start_sip = app.start_sip

    async def start_sip(svc: Any, **kwargs: Any) -> Any:  # serve() as it is, keeping hold of its B2BUA
        started.append(await real_start_sip(svc, **kwargs))
        return started[-1]

    monkeypatch.setattr(app, "start_sip", start_sip)
    # And no young collections on the process's clock either (gcpolicy.run): they would free cycles.
    monkeypatch.setattr(gcpolicy, "YOUNG_EVERY_S", 3600.0)

    async def main() -> None:
        async with open_services(config, pipeline=True) as svc:
            await _seed(svc, pbx_port, carrier_port, free_port())
            await svc.ledger.fund("acme", 100 * UNIT)
        stop = asyncio.Event()
        pbx, carrier = Peer(pbx_port), Peer(carrier_port)
        try:
            async with open_services(config, pipeline=True) as svc:
                server = asyncio.ensure_future(serve(svc, stop))
                for _ in range(250):
                    if started:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)
                b2bua = started[0]
                # Short protocol timers, so that every transaction and lingering index of a call is
                # gone within a second of its end instead of 32 s (the timers' lengths are not the
                # subject here; what is left behind once they ran is).
                layer = b2bua.stack.layer
                layer.t1, layer.t4, layer.timer_d = 0.005, 0.05, 0.05
                b2bua.linger_s = 0.2
                await _one_call(0, pbx, carrier, ("127.0.0.1", sip_port))  # warm every cache
                await asyncio.sleep(0.2)
                gc.collect()
                gc.disable()
                try:
                    refs = []
                    original = b2bua._finish

                    def spy(call: Any, *args: Any, **kwargs: Any) -> Any:
                        refs.append(weakref.ref(call))
                        return original(call, *args, **kwargs)

                    b2bua._finish = spy
                    for n in range(1, 21):  # answered, refused, rejected by the far end, cancelled
                        await list(KINDS.values())[n % 4](n, pbx, carrier, ("127.0.0.1", sip_port))
                    for _ in range(100):  # settles, CDRs, transaction timers, the linger
                        await asyncio.sleep(0.05)
                        if all(r() is None for r in refs):
                            break
                    b2bua._finish = original
                    found["finished"] = len(refs)
                    found["alive"] = sum(1 for r in refs if r() is not None)
                    found["which"] = [i for i, r in enumerate(refs) if r() is not None]
                    gc.set_debug(gc.DEBUG_SAVEALL)
                    gc.collect()
                    found["garbage"] = [type(o).__qualname__ for o in gc.garbage]
                    gc.garbage.clear()
                    gc.set_debug(0)
                finally:
                    gc.enable()
                stop.set()
                await asyncio.wait_for(server, 10)
        finally:
            pbx.close()
            carrier.close()

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()  # serve() froze the test process's objects, as it does the gateway's
    assert found["finished"] == 20
    assert found["alive"] == 0, found  # every call freed, with the cyclic collector off
    assert found["garbage"] == [], found  # and twenty calls left no cyclic garbage behind at all

