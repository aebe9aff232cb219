"""SIP over UDP: one socket, datagrams in and out, with buffers sized for load.

Each datagram is one message (RFC 3261 §18.3), handed up with its source and arrival time. The
socket's buffers are enlarged (4 MiB asked for) so a burst does not drop packets in the kernel;
with the stdlib event loop each read would otherwise fill a 256 KiB buffer (``max_size``), which
alone caps throughput, so it is set to the largest datagram SIP allows. ``reuse_port`` lets
several worker processes share the port (SO_REUSEPORT: the kernel spreads the peers).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

__all__ = ["UdpTransport", "SOCKET_BUFFER"]

log = logging.getLogger("creditgate.transport")

SOCKET_BUFFER = 4 * 1024 * 1024
MAX_DATAGRAM = 65535


class UdpTransport(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self._on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] | None = None

    @classmethod
    async def listen(cls, host: str, port: int, on_datagram: Callable[[bytes, tuple[str, int]], None],
                     *, reuse_port: bool = False) -> "UdpTransport":
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:  # the kernel caps it (net.core.rmem_max); take what it gives
                pass
        sock.bind((host, port))
        sock.setblocking(False)
        proto = cls(on_datagram)
        await loop.create_datagram_endpoint(lambda: proto, sock=sock)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # The stdlib selector transport reads into a buffer of max_size bytes per datagram.
        if hasattr(transport, "max_size"):
            transport.max_size = MAX_DATAGRAM  # type: ignore[attr-defined]
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        try:
            self._on_datagram(data, (addr[0], addr[1]))
        except Exception:  # noqa: BLE001 - one bad datagram must never stop the socket
            log.exception("datagram from %s:%s could not be handled", addr[0], addr[1])

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: nothing to do but note it.
        log.debug("UDP error: %s", exc)

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, dest)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
