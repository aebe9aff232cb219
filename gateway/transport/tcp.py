"""SIP over TCP: connections framed by Content-Length, kept per peer, closed when idle or broken.

A message received on a connection is handed up with the peer's address; anything we send to that
address goes back on the same connection (RFC 3261 §18.2.2), or on a new one we open. Framing is
the sans-IO ``StreamFramer``: a malformed message is answered and the stream goes on; lost framing
(a negative or conflicting Content-Length, an oversized message) closes the connection after the
answer. A connection silent for ``idle_timeout_s``, or holding an incomplete message that long (a
slow or stalled sender, RFC 4475 clerr), is closed: memory per connection stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from gateway.sip.errors import FramingError, SipError
from gateway.sip.message import Request, Response
from gateway.sip.parser import StreamFramer

__all__ = ["TcpTransport"]

log = logging.getLogger("creditgate.transport")

Address = tuple[str, int]
OnMessage = Callable[[Request | Response | SipError, Address, str], None]


class _Connection(asyncio.Protocol):
    def __init__(self, owner: "TcpTransport", max_size: int) -> None:
        self.owner = owner
        self.framer = StreamFramer(max_size=max_size)
        self.transport: asyncio.Transport | None = None
        self.peer: Address | None = None
        self.last_activity = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self.owner._connections[self.peer] = self

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        assert self.peer is not None
        for item in self.framer.feed(data):
            try:
                self.owner._on_message(item, self.peer, "tcp")
            except Exception:  # noqa: BLE001 - one bad message must not kill the connection handler
                log.exception("message from %s:%s could not be handled", *self.peer)
            if isinstance(item, FramingError):
                # Framing is lost (RFC 4475 ncl, mcl01): whatever was answered went out; close.
                self.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.owner._connections.get(self.peer) is self:
            del self.owner._connections[self.peer]

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.last_activity = time.monotonic()
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpTransport:
    def __init__(self, on_message: OnMessage, *, max_size: int = 65535, idle_timeout_s: float = 300.0,
                 max_connections: int = 10_000) -> None:
        self._on_message = on_message
        self._max_size = max_size
        self._idle_timeout = idle_timeout_s
        self._max_connections = max_connections
        self._connections: dict[Address, _Connection] = {}
        self._server: asyncio.AbstractServer | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.address: Address | None = None

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port, reuse_address=True,
                                                reuse_port=reuse_port or None, backlog=1024)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        self._reaper = asyncio.ensure_future(self._reap())

    def _accept(self) -> _Connection:
        conn = _Connection(self, self._max_size)
        if len(self._connections) >= self._max_connections:
            # Over the bound: accept and close at once rather than let memory grow.
            asyncio.get_running_loop().call_soon(conn.close)
        return conn

    @property
    def connections(self) -> int:
        return len(self._connections)

    def send(self, data: bytes, dest: Address) -> None:
        conn = self._connections.get(dest)
        if conn is not None:
            conn.send(data)
            return
        asyncio.ensure_future(self._connect_and_send(data, dest))

    async def _connect_and_send(self, data: bytes, dest: Address) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, self._max_size), dest[0], dest[1]), 5.0)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot connect to %s:%s over TCP: %s", dest[0], dest[1], exc)
            return
        # The connection registers under the peer address it reports, which is ``dest``.
        conn.send(data)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(min(self._idle_timeout / 4, 5.0))
            cutoff = time.monotonic() - self._idle_timeout
            for conn in list(self._connections.values()):
                if conn.last_activity < cutoff:
                    log.info("closing idle TCP connection from %s:%s (%d bytes pending)",
                             *(conn.peer or ("?", 0)), conn.framer.buffered)
                    conn.close()

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            conn.close()
