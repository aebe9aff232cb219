"""Consume one stream of every organization through a Redis consumer group, from any number of processes.

Theory of operation. Each organization has its own stream (``OrgKeys(org).purchases``,
``OrgKeys(org).outbox``): every key of an organization shares its hash slot, so streams of
different organizations cannot be read by one command on a Redis Cluster. A consumer therefore
polls: every ``poll_interval_s`` it lists the organizations, makes sure each stream has the
group (``XGROUP CREATE ... 0 MKSTREAM``: entries written before the group existed are handled
too), and reads new entries with ``XREADGROUP ... >`` (no BLOCK: a blocked read would hold one
of the connections the call path shares). The group hands each entry to exactly one consumer;
every process uses a consumer name of its own.

An entry is acknowledged (``XACK``) only once its handler says it is done. A handler that says
"not yet" (SMTP down, provider unreachable) gets the entry again after a backoff that doubles up
to a cap; before each retry the entry is claimed again with ``XCLAIM ... JUSTID`` (which resets
its idle time) if this consumer still owns it. The entries of a consumer that died stay pending
in the group: every ``claim_idle_s / 2`` each consumer takes over those idle for longer than
``claim_idle_s`` with ``XAUTOCLAIM``. A handler may therefore see an entry twice (a process
presumed dead that was only slow); handlers must be idempotent, and are (idempotency keys,
per-entry markers).

These streams are work queues, not records (the books are the audit and CDR streams, never
trimmed): every ``trim_interval_s`` a consumer drops the entries older than ``retention_s`` that
every group reading the stream has been handed and acknowledged (``XTRIM MINID`` below the oldest
entry still pending or not yet delivered to any group), so they do not grow for ever.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import Any, Awaitable, Callable

from redis.exceptions import RedisError, ResponseError

from gateway.aio import reraise_cancel
from gateway.ledger.keys import GLOBAL

log = logging.getLogger("creditgate.notify.streams")

__all__ = ["Handler", "OrgStreamConsumer", "consumer_name"]

# handler(org, entry_id, fields) -> True when done (acknowledge), False to try again later.
Handler = Callable[[str, str, dict[str, str]], Awaitable[bool]]


def consumer_name() -> str:
    """A name no other live process uses: host, pid and a random suffix (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _stream_id(v: Any) -> tuple[int, int]:
    ms, _, seq = _s(v).partition("-")
    return int(ms), int(seq or 0)


class OrgStreamConsumer:
    """Hands every entry of ``stream_of(org)``, for every organization, to ``handler`` once."""

    def __init__(
        self,
        client: Any,
        *,
        stream_of: Callable[[str], str],
        group: str,
        handler: Handler,
        poll_interval_s: float = 1.0,
        claim_idle_s: float = 120.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        concurrency: int = 16,
        batch: int = 50,
        consumer: str | None = None,
        retention_s: float = 7 * 86400.0,
        trim_interval_s: float = 3600.0,
    ) -> None:
        self.client = client
        self.stream_of = stream_of
        self.group = group
        self.handler = handler
        self.poll_interval_s = poll_interval_s
        self.claim_idle_ms = max(int(claim_idle_s * 1000), 1)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.batch = batch
        self.consumer = consumer or consumer_name()
        self._sem = asyncio.Semaphore(concurrency)
        self._max_in_flight = concurrency * 4
        self._groups: set[str] = set()
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        # (org, entry id) -> (monotonic time due, failures so far, fields)
        self._retry: dict[tuple[str, str], tuple[float, int, dict[str, str]]] = {}
        self._next_claim = 0.0
        self.retention_s = retention_s
        self.trim_interval_s = trim_interval_s
        self._next_trim = time.monotonic() + trim_interval_s
        self._org_locks: dict[str, asyncio.Lock] = {}

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled; Redis outages are logged and waited out."""
        try:
            while True:
                try:
                    await self.poll()
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    reraise_cancel()
                    log.warning("%s: Redis unavailable (%s); retrying", self.group, exc)
                await asyncio.sleep(self.poll_interval_s)
                reraise_cancel()
        finally:
            tasks = list(self._in_flight.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no handler runs (tests and orderly shutdown)."""
        while self._in_flight:
            await asyncio.gather(*list(self._in_flight.values()), return_exceptions=True)

    async def poll(self) -> int:
        """One round: retries that are due, entries of dead consumers, new entries. Returns how many started."""
        orgs = [_s(o) for o in await self.client.hkeys(GLOBAL.orgs)]
        for org in orgs:
            if org not in self._groups:
                await self._ensure_group(org)
        started = await self._start_due_retries()
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.claim_idle_ms / 2000
            for org in orgs:
                started += await self._claim_abandoned(org)
        for org in orgs:
            if len(self._in_flight) >= self._max_in_flight:
                break
            started += await self._read_new(org)
        if now >= self._next_trim:
            self._next_trim = now + self.trim_interval_s
            for org in orgs:
                await self.trim(org)
        return started

    async def trim(self, org: str, *, now: float | None = None) -> int:
        """Drop the entries of ``org``'s stream older than ``retention_s`` that no group still needs.

        The bound is the oldest of: the retention cut-off, and for each group reading the stream
        its oldest pending entry and the entry after its last delivered one (so an entry is never
        dropped before every group has been handed it and acknowledged it). Returns how many
        entries went.
        """
        stream = self.stream_of(org)
        cutoff_ms = int(((time.time() if now is None else now) - self.retention_s) * 1000)
        bound = (max(cutoff_ms, 0), 0)
        try:
            groups = await self.client.xinfo_groups(stream)
        except ResponseError:  # no such stream yet
            return 0
        for g in groups:
            last = _stream_id(g["last-delivered-id"])
            bound = min(bound, (last[0], last[1] + 1))
            if int(g["pending"]):
                summary = await self.client.xpending(stream, _s(g["name"]))
                if summary.get("min"):
                    bound = min(bound, _stream_id(summary["min"]))
        if bound <= (0, 0):
            return 0
        dropped = int(await self.client.xtrim(stream, minid=f"{bound[0]}-{bound[1]}", approximate=False))
        if dropped:
            log.info("%s: trimmed %d handled entries of %s", self.group, dropped, org)
        return dropped

    # -- reading --------------------------------------------------------------------------

    async def _ensure_group(self, org: str) -> None:
        try:
            await self.client.xgroup_create(self.stream_of(org), self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(org)

    async def _read_new(self, org: str) -> int:
        stream = self.stream_of(org)
        try:
            reply = await self.client.xreadgroup(self.group, self.consumer, {stream: ">"}, count=self.batch)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted: make the group again next round
                self._groups.discard(org)
                return 0
            raise
        n = 0
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                n += self._start(org, _s(entry_id), fields)
        return n

    async def _claim_abandoned(self, org: str) -> int:
        stream = self.stream_of(org)
        start, n = "0-0", 0
        while True:
            try:
                reply = await self.client.xautoclaim(stream, self.group, self.consumer, self.claim_idle_ms,
                                                     start_id=start, count=self.batch)
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    self._groups.discard(org)
                    return n
                raise
            cursor, entries = reply[0], reply[1]
            for entry_id, fields in entries:
                if entry_id is None:  # Redis 6.2: an entry deleted while pending, already released
                    continue
                eid = _s(entry_id)
                if fields is None:  # trimmed away while pending: nothing left to do
                    await self.client.xack(stream, self.group, eid)
                    continue
                log.info("%s: took over entry %s of %s from a consumer that went quiet", self.group, eid, org)
                self._retry.pop((org, eid), None)
                n += self._start(org, eid, fields)
            start = _s(cursor)
            if start == "0-0" or not entries:
                return n

    async def _start_due_retries(self) -> int:
        now, n = time.monotonic(), 0
        for (org, eid), (due, failures, fields) in list(self._retry.items()):
            if due > now or (org, eid) in self._in_flight:
                continue
            stream = self.stream_of(org)
            # Still ours? Another process may have taken it over (and finished it) meanwhile.
            pending = await self.client.xpending_range(stream, self.group, min=eid, max=eid, count=1)
            if not pending or _s(pending[0]["consumer"]) != self.consumer:
                del self._retry[(org, eid)]
                continue
            await self.client.xclaim(stream, self.group, self.consumer, 0, [eid], justid=True)
            n += self._start(org, eid, fields)
        return n

    def _start(self, org: str, eid: str, raw: dict[Any, Any] | dict[str, str]) -> int:
        if (org, eid) in self._in_flight:
            return 0
        fields = {_s(k): _s(v) for k, v in raw.items()}
        task = asyncio.ensure_future(self._handle(org, eid, fields))
        self._in_flight[(org, eid)] = task
        task.add_done_callback(lambda _t, key=(org, eid): self._in_flight.pop(key, None))
        return 1

    async def _handle(self, org: str, eid: str, fields: dict[str, str]) -> None:
        # One entry of an organization at a time, in the order started (asyncio.Lock is FIFO):
        # its admins read "recharge failed" before "balance reached zero". Organizations run in
        # parallel, up to ``concurrency``.
        lock = self._org_locks.setdefault(org, asyncio.Lock())
        async with lock, self._sem:
            try:
                done = await self.handler(org, eid, fields)
            except asyncio.CancelledError:
                raise
            except Exception:
                reraise_cancel()
                log.exception("%s: handling entry %s of %s failed; will retry", self.group, eid, org)
                done = False
            if done:
                try:
                    await self.client.xack(self.stream_of(org), self.group, eid)
                except (RedisError, OSError, asyncio.TimeoutError) as exc:
                    # Stays pending: handled again (idempotently) once claimed back.
                    log.warning("%s: could not acknowledge %s of %s: %s", self.group, eid, org, exc)
                self._retry.pop((org, eid), None)
                return
            _due, failures, _f = self._retry.get((org, eid), (0.0, 0, fields))
            delay = min(self.backoff_s * 2 ** failures, self.max_backoff_s)
            self._retry[(org, eid)] = (time.monotonic() + delay, failures + 1, fields)
