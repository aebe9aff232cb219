"""The UDP edge on a real loopback socket: datagrams come up with how long they waited in the kernel's
queue, a turn of the loop reads a bounded batch, and sends leave from the listening socket."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from gateway.transport.udp import READ_BATCH, UdpTransport


async def _settle(until: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_each_datagram_comes_up_with_the_time_it_queued() -> None:
    got: list[tuple[bytes, tuple[str, int], float]] = []
    udp = await UdpTransport.listen("127.0.0.1", 0, lambda d, a, age: got.append((d, a, age)))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    try:
        assert udp.timestamps  # Linux: the kernel's receive time is on every datagram
        peer.sendto(b"fresh", udp.address)
        await _settle(lambda: len(got) == 1)
        # The loop blocked (a process busy elsewhere): what arrives meanwhile waits in the kernel.
        peer.sendto(b"queued", udp.address)
        time.sleep(0.3)
        await _settle(lambda: len(got) == 2)
        (d1, a1, age1), (d2, a2, age2) = got
        assert (d1, d2) == (b"fresh", b"queued") and a1 == a2 == peer.getsockname()
        assert age1 < 0.25 and 0.29 <= age2 < 5.0
        udp.send(b"answer", peer.getsockname())
        peer.settimeout(5)
        data, source = peer.recvfrom(100)
        assert (data, source) == (b"answer", udp.address)
    finally:
        udp.close()
        peer.close()


async def test_one_turn_of_the_loop_reads_one_bounded_batch() -> None:
    turns: list[int] = []
    got: list[bytes] = []
    udp = await UdpTransport.listen("127.0.0.1", 0, lambda d, a, age: got.append(d))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    loop = asyncio.get_running_loop()

    def count_turn() -> None:  # a callback each turn of the loop: reads between two of them
        turns.append(len(got))
        if len(got) < n:
            loop.call_soon(count_turn)

    n = READ_BATCH * 3 + 5
    try:
        for i in range(n):
            peer.sendto(b"%d" % i, udp.address)
        loop.call_soon(count_turn)
        await _settle(lambda: len(got) == n)
        assert got == [b"%d" % i for i in range(n)]
        steps = [b - a for a, b in zip(turns, turns[1:]) if b > a]
        assert max(steps) <= READ_BATCH and len(steps) >= 3  # timers and other sockets got turns between
        assert udp.full_batches >= 3
    finally:
        udp.close()
        peer.close()
