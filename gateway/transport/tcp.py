"""SIP over TCP: connections framed by Content-Length, kept per peer, closed when idle or broken.

A message received on a connection is handed up with the peer's address; anything we send to that
address goes back on the same connection (RFC 3261 §18.2.2), or on a new one we open. Framing is
the sans-IO ``StreamFramer``: a malformed message is answered and the stream goes on; lost framing
(a negative or conflicting Content-Length, an oversized message) closes the connection after the
answer.

Bounds (hostile peers): a connection silent for ``idle_timeout_s`` is closed, and so is one that began
a message (or opened and sent nothing yet) and has not completed it within ``message_timeout_s``,
however steadily it trickles octets (a slow or stalled sender, RFC 4475 clerr, slowloris): the framer
holds at most one message's octets, so memory per connection is bounded, and so is how long it is
held. Connections are bounded in all (``max_connections``) and per source address
(``max_per_source``), so one host cannot take every slot; connections we open ourselves (to a carrier,
a registered contact) do not count against the per-source bound. A peer that does not read what we
send cannot make us buffer without end either: while our write buffer is above its high-water mark we
stop reading that peer (it gets no more answers to ask for), and past ``max_write_buffer`` octets the
connection is dropped.
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
    def __init__(self, owner: "TcpTransport", max_size: int, *, outbound: bool = False) -> None:
        self.owner = owner
        self.framer = StreamFramer(max_size=max_size)
        self.transport: asyncio.Transport | None = None
        self.peer: Address | None = None
        self.outbound = outbound
        self.registered = False
        self.last_activity = time.monotonic()
        # When the message now being received began; an accepted connection counts as having begun
        # one when it opens (a connection that never sends is as stalled as one that stops halfway).
        self.pending_since: float | None = None if outbound else self.last_activity

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        refusal = None if self.outbound else self.owner._admit(self.peer)
        if refusal is not None:
            log.warning("TCP connection from %s:%s refused: %s", self.peer[0], self.peer[1], refusal)
            self.owner.refused += 1
            transport.abort()
            return
        transport.set_write_buffer_limits(high=self.owner._write_high)  # type: ignore[attr-defined]
        self.owner._register(self)

    def pause_writing(self) -> None:
        # The peer does not read what we send: stop reading what it asks until it catches up.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.last_activity = now
        assert self.peer is not None
        items = self.framer.feed(data)
        if self.framer.buffered:
            if self.pending_since is None or items:
                self.pending_since = now  # a new message began (a complete one came before it)
        else:
            self.pending_since = None
        for item in items:
            try:
                self.owner._on_message(item, self.peer, "tcp")
            except Exception:  # noqa: BLE001 - one bad message must not kill the connection handler
                log.exception("message from %s:%s could not be handled", *self.peer)
            if isinstance(item, FramingError):
                # Framing is lost (RFC 4475 ncl, mcl01): whatever was answered went out; close.
                self.close()
                return

    def connection_lost(self, exc: Exception | None) -> None:
        if self.registered:
            self.owner._unregister(self)

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size() + len(data) > self.owner._max_write_buffer:
                assert self.peer is not None
                log.warning("TCP peer %s:%s does not read what it is sent: connection dropped", *self.peer)
                transport.abort()
                return
            self.last_activity = time.monotonic()
            transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping whatever is still to be sent (close() would wait for a peer that may
        never read it)."""
        if self.transport is not None:
            self.transport.abort()


class TcpTransport:
    def __init__(self, on_message: OnMessage, *, max_size: int = 65535, idle_timeout_s: float = 300.0,
                 max_connections: int = 10_000, max_per_source: int = 256, message_timeout_s: float = 10.0,
                 max_write_buffer: int = 1 << 20) -> None:
        self._on_message = on_message
        self._max_size = max_size
        self._idle_timeout = idle_timeout_s
        self._max_connections = max_connections
        self._max_per_source = max_per_source
        self._message_timeout = message_timeout_s
        self._max_write_buffer = max_write_buffer
        # Reading pauses above this; one read's worth of answers more still fits under the hard bound.
        self._write_high = max(max_write_buffer // 16, 16 * 1024)
        self._connections: dict[Address, _Connection] = {}
        self._per_host: dict[str, int] = {}  # accepted connections by source host
        self._server: asyncio.AbstractServer | None = None
        self._reaper: asyncio.Task[None] | None = None
        self.address: Address | None = None
        self.refused = 0  # connections refused by the bounds
        self.reaped = 0  # connections closed as idle or stalled

    def limit(self, *, max_connections: int | None = None, max_per_source: int | None = None,
              message_timeout_s: float | None = None) -> None:
        """Set the bounds (they apply to connections accepted from now on, and to the next reaping)."""
        if max_connections is not None:
            self._max_connections = max_connections
        if max_per_source is not None:
            self._max_per_source = max_per_source
        if message_timeout_s is not None:
            self._message_timeout = message_timeout_s

    def _admit(self, peer: Address) -> str | None:
        """Why a connection from ``peer`` is refused, or None to accept it."""
        if len(self._connections) >= self._max_connections:
            return f"{len(self._connections)} connections open (the bound)"
        if self._per_host.get(peer[0], 0) >= self._max_per_source:
            return f"{self._max_per_source} connections from this address already"
        return None

    def _register(self, conn: _Connection) -> None:
        assert conn.peer is not None
        old = self._connections.get(conn.peer)
        if old is not None and old is not conn and old.registered:
            self._unregister(old)  # the same address and port again: the old socket is gone
        self._connections[conn.peer] = conn
        conn.registered = True
        if not conn.outbound:
            self._per_host[conn.peer[0]] = self._per_host.get(conn.peer[0], 0) + 1

    def _unregister(self, conn: _Connection) -> None:
        assert conn.peer is not None
        conn.registered = False
        if self._connections.get(conn.peer) is conn:
            del self._connections[conn.peer]
        if not conn.outbound:
            left = self._per_host.get(conn.peer[0], 1) - 1
            if left > 0:
                self._per_host[conn.peer[0]] = left
            else:
                self._per_host.pop(conn.peer[0], None)

    async def listen(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port, reuse_address=True,
                                                reuse_port=reuse_port or None, backlog=1024)
        sockname = self._server.sockets[0].getsockname()
        self.address = (sockname[0], sockname[1])
        self._reaper = asyncio.ensure_future(self._reap())

    def _accept(self) -> _Connection:
        # The bounds are checked in connection_made, once the peer's address is known.
        return _Connection(self, self._max_size)

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
                loop.create_connection(lambda: _Connection(self, self._max_size, outbound=True), dest[0], dest[1]),
                5.0)
        except (OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot connect to %s:%s over TCP: %s", dest[0], dest[1], exc)
            return
        # The connection registers under the peer address it reports, which is ``dest``.
        conn.send(data)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(max(min(self._idle_timeout / 4, self._message_timeout / 4, 5.0), 0.05))
            self.reap(time.monotonic())

    def reap(self, now: float) -> int:
        """Close the connections idle for ``idle_timeout_s`` or stalled on a message for
        ``message_timeout_s``; how many were closed."""
        idle_cutoff = now - self._idle_timeout
        stall_cutoff = now - self._message_timeout
        closed = 0
        for conn in list(self._connections.values()):
            stalled = conn.pending_since is not None and conn.pending_since < stall_cutoff
            if stalled or conn.last_activity < idle_cutoff:
                log.info("closing %s TCP connection from %s:%s (%d bytes pending)", "stalled" if stalled else "idle",
                         *(conn.peer or ("?", 0)), conn.framer.buffered)
                conn.abort()
                closed += 1
        self.reaped += closed
        return closed

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections.values()):
            conn.close()
