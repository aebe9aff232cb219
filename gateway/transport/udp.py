"""SIP over UDP: one socket, read in bounded batches, each datagram handed up with how long it queued.

Each datagram is one message (RFC 3261 §18.3), handed up with its source and its queue age: the
time between the kernel receiving it (``SO_TIMESTAMPNS``, read with ``recvmsg``) and our reading
it. That age is the backlog the event loop's own lateness cannot show: a process past its capacity
can keep its loop on time while thousands of INVITEs wait in the socket's receive buffer, already
retransmitted by their callers (the admission layer refuses new calls whose INVITE waited too long).

The socket is read directly (``loop.add_reader``), at most ``batch`` datagrams per turn of the loop,
so timers (call deadlines, transaction retransmissions) and Redis replies get their turn even while
the socket is never empty. The buffers are enlarged (``receive_buffer``, 4 MiB by default) so a
burst is not dropped by the kernel. Sends go straight to the socket; when the kernel's send buffer
is full they wait in a bounded queue (beyond it they are dropped, as the network may drop them:
transactions retransmit). ``reuse_port`` lets several worker processes share the port (SO_REUSEPORT:
the kernel spreads the peers).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from collections import deque
from typing import Callable

__all__ = ["UdpTransport", "SOCKET_BUFFER", "READ_BATCH"]

log = logging.getLogger("creditgate.transport")

SOCKET_BUFFER = 4 * 1024 * 1024
MAX_DATAGRAM = 65535
READ_BATCH = 64  # datagrams read per turn of the event loop
MAX_SEND_QUEUE = 20_000  # datagrams waiting for room in the kernel's send buffer

# Linux: SO_TIMESTAMPNS (the control message type is the same number, SCM_TIMESTAMPNS) gives the
# kernel's receive time of each datagram as a struct timespec on the realtime clock.
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)

OnDatagram = Callable[[bytes, tuple[str, int], float], None]


class UdpTransport:
    def __init__(self, sock: socket.socket, on_datagram: OnDatagram, *, batch: int = READ_BATCH,
                 timestamps: bool = True) -> None:
        self._sock = sock
        self._on_datagram = on_datagram
        self.batch = batch
        self.timestamps = timestamps
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._closed = False
        name = sock.getsockname()
        self.address: tuple[str, int] = (name[0], name[1])
        self.full_batches = 0  # turns that found more datagrams waiting than one batch
        self.send_dropped = 0

    @classmethod
    async def listen(cls, host: str, port: int, on_datagram: OnDatagram, *, reuse_port: bool = False,
                     receive_buffer: int = SOCKET_BUFFER, batch: int = READ_BATCH) -> "UdpTransport":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            for opt, size in ((socket.SO_RCVBUF, receive_buffer), (socket.SO_SNDBUF, SOCKET_BUFFER)):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)
                except OSError:  # the kernel caps it (net.core.rmem_max); take what it gives
                    pass
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                timestamps = True
            except OSError:
                log.warning("no kernel receive timestamps on this system: UDP queue age is not measured")
                timestamps = False
            sock.bind((host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        transport = cls(sock, on_datagram, batch=batch, timestamps=timestamps)
        transport._loop = asyncio.get_running_loop()
        transport._loop.add_reader(sock.fileno(), transport._read_ready)
        return transport

    # -- input ----------------------------------------------------------------------------

    def _read_ready(self) -> None:
        sock = self._sock
        on_datagram = self._on_datagram
        for _ in range(self.batch):
            try:
                data, ancillary, _flags, addr = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error queued on the socket: nothing to read now
                log.debug("UDP receive error: %s", exc)
                return
            age = 0.0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    # Both clocks are the realtime clock; a step of it can make one reading odd,
                    # never negative.
                    age = max(time.time() - (sec + nsec * 1e-9), 0.0)
            try:
                on_datagram(data, (addr[0], addr[1]), age)
            except Exception:  # noqa: BLE001 - one bad datagram must never stop the socket
                log.exception("datagram from %s:%s could not be handled", addr[0], addr[1])
        # A whole batch read and maybe more waiting: the loop runs its timers and other sockets
        # first, then calls us again (the socket is still readable).
        self.full_batches += 1

    # -- output ---------------------------------------------------------------------------

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        if self._closed:
            return
        if self._pending:
            self._queue(data, dest)
            return
        try:
            self._sock.sendto(data, dest)
        except (BlockingIOError, InterruptedError):
            self._queue(data, dest)
            assert self._loop is not None
            self._loop.add_writer(self._sock.fileno(), self._write_ready)
        except OSError as exc:  # unreachable destination and the like: UDP may lose it anyway
            log.debug("UDP send to %s:%s failed: %s", dest[0], dest[1], exc)

    def _queue(self, data: bytes, dest: tuple[str, int]) -> None:
        if len(self._pending) >= MAX_SEND_QUEUE:
            self.send_dropped += 1
            return
        self._pending.append((data, dest))

    def _write_ready(self) -> None:
        pending = self._pending
        while pending:
            data, dest = pending[0]
            try:
                self._sock.sendto(data, dest)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("UDP send to %s:%s failed: %s", dest[0], dest[1], exc)
            pending.popleft()
        assert self._loop is not None
        self._loop.remove_writer(self._sock.fileno())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
        self._pending.clear()
        self._sock.close()
