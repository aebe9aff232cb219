"""Send the ledger's script calls over one Redis connection, batched by event-loop turn.

Every ledger operation asked for during one turn of the event loop joins a batch: one EVALSHA of
``batch.lua`` that runs each operation's own script body in order and answers with an array of
their replies (an operation's error in its own place). The batches of a turn are written at once;
their replies are parsed by a hiredis reader as bytes arrive and handed to the waiting callers in
order. Inside Redis this saves a script set-up, a KEYS/ARGV table pair, the helpers' closures and a
reply per operation, which cost more than most of what the scripts do; in Python it saves packing
and parsing a command per operation. Any connection failure or a reply overdue by the socket
timeout fails every pending call with ``redis.exceptions.ConnectionError`` / ``TimeoutError``
(the ledger turns those into ``LedgerUnavailable``); the next call reconnects. A batch answered
NOSCRIPT (Redis restarted, or its script cache was flushed) ran nothing: the script is loaded and
the same batch is sent again.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Awaitable, Callable, Sequence

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["ScriptPipe", "MAX_BATCH"]

# Operations per EVALSHA. A batch holds Redis for its whole run (~50 us per operation on a busy
# machine): 64 keeps that to a few milliseconds while the fixed cost per batch is well amortized.
MAX_BATCH = 64


class _Batch:
    """Operations sent as one EVALSHA, and the futures of their callers."""

    __slots__ = ("keys", "argv", "futs", "packed", "answered", "reloaded")

    def __init__(self) -> None:
        self.keys: list[Any] = []
        self.argv: list[Any] = []
        self.futs: list[asyncio.Future[Any]] = []
        self.packed = b""
        self.answered = False
        self.reloaded = False


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
            waiter = pending.popleft()
            if type(waiter) is _Batch:
                self.pipe._deliver(waiter, reply)
            elif not waiter.done():
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._lost(self, exc)


class ScriptPipe:
    """One pipelined connection for batched ledger operations (and the AUTH/SELECT it needs on connect)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 1.0,
        batch_sha: str,
        batch_script: str,
        load_script: Callable[[str], Awaitable[Any]],
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._host, self._port, self._db = host, port, db
        self._auth = ([username] if username else []) + ([password] if password else [])
        self._timeout = timeout_s
        self._sha, self._script = batch_sha, batch_script
        self._load_script = load_script
        self._max_batch = max_batch
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._pending: collections.deque[Any] = collections.deque()  # _Batch or setup futures
        self._filling: _Batch | None = None
        self._out: list[_Batch] = []  # sealed, not yet written
        self._scheduled = False

    @classmethod
    def for_client(
        cls, client: Any, *, batch_sha: str, batch_script: str, load_script: Callable[[str], Awaitable[Any]]
    ) -> "ScriptPipe | None":
        """A pipe to the same server as a redis-py client, or None (unix socket, TLS: not handled)."""
        kw = client.connection_pool.connection_kwargs
        if "host" not in kw or kw.get("ssl"):
            return None
        return cls(host=kw["host"], port=int(kw.get("port", 6379)), db=int(kw.get("db", 0) or 0),
                   username=kw.get("username"), password=kw.get("password"),
                   timeout_s=float(kw.get("socket_timeout") or 5.0), batch_sha=batch_sha,
                   batch_script=batch_script, load_script=load_script)

    def run(self, name: str, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one operation (script ``name`` with its nine keys); the future gets its reply.

        The reply is what the script returned, or a ``ResponseError`` instance if the operation
        failed (returned, not raised: the caller decides).
        """
        batch = self._filling
        if batch is None:
            batch = self._filling = _Batch()
            if not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        batch.keys += keys
        argv = batch.argv
        argv.append(name)
        argv.append(len(args))
        argv += args
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batch.futs.append(fut)
        if len(batch.futs) >= self._max_batch:
            self._seal()
        return fut

    def _seal(self) -> None:
        batch, self._filling = self._filling, None
        if batch is not None:
            batch.packed = hiredis.pack_command(("EVALSHA", self._sha, len(batch.keys), *batch.keys, *batch.argv))
            batch.keys = batch.argv = []  # type: ignore[assignment]
            self._out.append(batch)

    def _flush(self) -> None:
        self._scheduled = False
        self._seal()
        if not self._out:
            return
        proto = self._proto
        if proto is None or proto.transport is None or proto.transport.is_closing():
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            return  # sent once connected
        out, self._out = self._out, []
        self._pending.extend(out)
        proto.transport.write(b"".join([b.packed for b in out]))
        # One deadline per flush: if its last reply is overdue, the connection is presumed dead.
        asyncio.get_running_loop().call_later(self._timeout, self._check, proto, out[-1])

    def _deliver(self, batch: _Batch, reply: Any) -> None:
        batch.answered = True
        futs = batch.futs
        if type(reply) is list and len(reply) == len(futs):
            for fut, r in zip(futs, reply):
                if not fut.done():
                    fut.set_result(r)
            return
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT") and not batch.reloaded:
            # Nothing of the batch ran: load the script and send the same batch again.
            batch.reloaded, batch.answered = True, False
            asyncio.ensure_future(self._reload(batch))
            return
        err = reply if isinstance(reply, Exception) else RedisConnectionError(f"unexpected reply from Redis: {reply!r}")
        for fut in futs:
            if not fut.done():
                fut.set_exception(err)

    async def _reload(self, batch: _Batch) -> None:
        try:
            await self._load_script(self._script)
        except Exception as exc:  # noqa: BLE001 - handed to the callers, who map it
            for fut in batch.futs:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self._out.append(batch)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _check(self, proto: _Protocol, batch: _Batch) -> None:
        if not batch.answered and proto is self._proto and batch in self._pending:
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
        waiters = list(self._pending) + self._out
        if self._filling is not None:
            waiters.append(self._filling)
        self._pending.clear()
        self._out, self._filling = [], None
        for w in waiters:
            for fut in (w.futs if type(w) is _Batch else (w,)):
                if not fut.done():
                    fut.set_exception(exc)

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is self._proto:
            self._fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    async def close(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None
