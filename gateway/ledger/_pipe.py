"""Send the ledger's script calls over one Redis connection, pipelined by event-loop turn.

Every EVALSHA made during one turn of the event loop is packed (hiredis) and written at once;
replies are parsed by a hiredis reader as bytes arrive and handed to the waiting callers in order.
This skips a coroutine, a timer and redis-py's pipeline bookkeeping per reply, which cost more in
Python than the ledger scripts cost inside Redis. Any connection failure or a reply overdue by
the socket timeout fails every pending call with ``redis.exceptions.ConnectionError`` /
``TimeoutError`` (the ledger turns those into ``LedgerUnavailable``); the next call reconnects.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Awaitable, Callable

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["ScriptPipe"]


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: "ScriptPipe") -> None:
        self.pipe = pipe
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pipe._pending
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not pending:  # a reply nobody asked for: the stream is out of step
                self.pipe._fail(RedisConnectionError("unexpected reply from Redis"))
                return
            fut = pending.popleft()
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._lost(self, exc)


class ScriptPipe:
    """One pipelined connection for EVALSHA calls (and the AUTH/SELECT it needs on connect)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 1.0,
        load_script: Callable[[str], Awaitable[Any]],
    ) -> None:
        self._host, self._port, self._db = host, port, db
        self._auth = ([username] if username else []) + ([password] if password else [])
        self._timeout = timeout_s
        self._load_script = load_script
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._out: list[bytes] = []
        self._waiting: list[asyncio.Future[Any]] = []
        self._scheduled = False

    @classmethod
    def for_client(cls, client: Any, load_script: Callable[[str], Awaitable[Any]]) -> "ScriptPipe | None":
        """A pipe to the same server as a redis-py client, or None (unix socket, TLS: not handled)."""
        kw = client.connection_pool.connection_kwargs
        if "host" not in kw or kw.get("ssl"):
            return None
        return cls(host=kw["host"], port=int(kw.get("port", 6379)), db=int(kw.get("db", 0) or 0),
                   username=kw.get("username"), password=kw.get("password"),
                   timeout_s=float(kw.get("socket_timeout") or 5.0), load_script=load_script)

    async def evalsha(self, sha: str, script: str, args: list[Any]) -> Any:
        reply = await self._submit(("EVALSHA", sha, *args))
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
            # Redis restarted or its script cache was flushed: load the script and send again.
            await self._load_script(script)
            reply = await self._submit(("EVALSHA", sha, *args))
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _submit(self, command: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._out.append(hiredis.pack_command(command))
        self._waiting.append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        if not self._out:
            return
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # sent once connected
        data, self._out = b"".join(self._out), []
        self._pending.extend(self._waiting)
        last = self._waiting[-1]
        self._waiting = []
        proto.transport.write(data)
        # One deadline per batch: if its last reply is overdue, the connection is presumed dead.
        asyncio.get_running_loop().call_later(self._timeout, self._check, proto, last)

    def _check(self, proto: _Protocol, fut: asyncio.Future[Any]) -> None:
        if not fut.done() and proto is self._proto:
            self._fail(RedisTimeoutError(f"no reply from Redis within {self._timeout} s"))

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self._host, self._port), self._timeout)
            self._proto = proto
            setup = []
            if self._auth:
                setup.append(hiredis.pack_command(("AUTH", *self._auth)))
            if self._db:
                setup.append(hiredis.pack_command(("SELECT", self._db)))
            if setup:
                # Replies to these come first: give them futures of their own ahead of the callers'.
                futs = [loop.create_future() for _ in setup]
                self._pending.extend(futs)
                proto.transport.write(b"".join(setup))
                for f in futs:
                    reply = await asyncio.wait_for(f, self._timeout)
                    if isinstance(reply, Exception):
                        raise RedisConnectionError(f"Redis refused the connection setup: {reply}")
        except (OSError, asyncio.TimeoutError, RedisConnectionError) as exc:
            self._connecting = None
            err = exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(f"cannot reach Redis: {exc}")
            self._fail(err)
            return
        self._connecting = None
        self._flush()

    def _fail(self, exc: Exception) -> None:
        """Fail every call in flight or waiting, and drop the connection."""
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abort()
        waiting = list(self._pending) + self._waiting
        self._pending.clear()
        self._waiting, self._out = [], []
        for fut in waiting:
            if not fut.done():
                fut.set_exception(exc)

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is self._proto:
            self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
