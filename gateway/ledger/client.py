"""Call the ledger's Lua scripts: every change to a balance, reservation, CDR or audit entry.

Python never reads a balance and writes it back; it only asks a script to do so atomically. Each
script is registered once and called by SHA (reloaded on NOSCRIPT, e.g. after a Redis restart or
SCRIPT FLUSH). Concurrent calls from one process can be sent in one pipeline per event-loop turn
(``pipeline=True``): that is what lets one process reach tens of thousands of ledger operations a
second. Redis errors and timeouts become ``LedgerUnavailable`` (the caller applies the outage
policy); nothing else leaks out.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Iterable, Sequence

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from rating_core.errors import CreditgateError

from gateway.ledger.keys import OrgKeys, month_of

__all__ = [
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "Grant",
    "Settlement",
    "Funding",
    "Balance",
    "RateTerms",
    "MAX_BALANCE_MICROS",
    "utc_now_iso",
]

CALL_FIELDS = ("st", "seq", "pays", "lic", "fee", "rate", "inc1", "inc2", "chunk", "g", "pg", "mg", "cf", "held",
               "com", "fin", "emergency")
ACCT_FIELDS = ("balance", "reserved", "live", "funded", "spent", "sday", "sdayamt", "rc_pending")

# Requests in flight at once without pipelining; the client's connection pools allow as many.
MAX_IN_FLIGHT = 64

# Lua numbers are doubles: every amount stays below 2^53 to stay exact (see _lib.lua).
MAX_BALANCE_MICROS = 2**53 - 1


class LedgerError(CreditgateError):
    """A ledger request that the scripts refused as malformed (a bug, not a business refusal)."""


class LedgerUnavailable(LedgerError):
    """Redis did not answer in time or the connection failed."""

    status_hint = 503


def utc_now_iso(ts: float | None = None) -> str:
    t = datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class RateTerms:
    """The four numbers of a rate the ledger needs; a live call keeps the terms it started with."""

    connection_fee: int = 0
    rate_per_min: int = 0
    initial_increment_s: int = 60
    subsequent_increment_s: int = 60

    @classmethod
    def of(cls, rate: Any) -> "RateTerms":
        return cls(
            connection_fee=rate.connection_fee,
            rate_per_min=rate.rate_per_min,
            initial_increment_s=rate.initial_increment_s,
            subsequent_increment_s=rate.subsequent_increment_s,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """Result of reserve/extend: the call is paid through ``granted_s`` seconds after answer."""

    ok: bool
    reason: str
    granted_s: int
    held: int
    final: bool
    max_s: int
    balance: int
    reserved: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Settlement:
    """Result of settle/expire/late_settle. ``extra`` is minutes_s, or uncollected for late_settle."""

    ok: bool
    reason: str
    charge: int
    billed_s: int
    extra: int
    balance: int
    reserved: int
    debit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Funding:
    ok: bool
    reason: str
    balance: int
    amount: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Balance:
    balance: int
    reserved: int
    live: int
    funded: int
    spent: int

    @property
    def available(self) -> int:
        return self.balance - self.reserved


# Twins of R, CALL_FIELDS and ACCT_FIELDS in _lib.lua: results and states are packed integers.
REASONS = ("ok", "final", "no_credit", "no_minutes", "concurrency", "daily_limit", "unknown_call", "settled",
           "bad_seq", "not_due", "gone", "too_large", "bad_amount", "fail_open")
_RESULT = struct.Struct("<9q")
_CALL = struct.Struct("<%dq" % len(CALL_FIELDS))
_ACCT = struct.Struct("<%dq" % len(ACCT_FIELDS))
CALL_STATES = ("refused", "held", "live", "done")
PAYERS = ("", "credits", "plan", "included")


def _result(raw: bytes) -> tuple[int, ...]:
    return _RESULT.unpack(raw)


def _grant(raw: bytes) -> Grant:
    ok, reason, g, held, final, max_s, bal, reserved, seq = _RESULT.unpack(raw)
    return Grant(ok=ok == 1, reason=REASONS[reason], granted_s=g, held=held, final=final == 1, max_s=max_s,
                 balance=bal, reserved=reserved, seq=seq)


def _settlement(raw: bytes) -> Settlement:
    ok, reason, charge, billed, extra, bal, reserved, debit, _ = _RESULT.unpack(raw)
    return Settlement(ok=ok == 1, reason=REASONS[reason], charge=charge, billed_s=billed, extra=extra,
                      balance=bal, reserved=reserved, debit=debit)


def _funding(raw: bytes) -> Funding:
    ok, reason, bal, amount, *_ = _RESULT.unpack(raw)
    return Funding(ok=ok == 1, reason=REASONS[reason], balance=bal, amount=amount)


def decode_call_state(raw: bytes) -> dict[str, Any]:
    """A call's packed state as a dict; ``st`` and ``pays`` as names."""
    rec: dict[str, Any] = dict(zip(CALL_FIELDS, _CALL.unpack(raw)))
    rec["st"] = CALL_STATES[rec["st"]]
    rec["pays"] = PAYERS[rec["pays"]]
    return rec


def decode_account(raw: bytes | None) -> dict[str, int]:
    if raw is None:
        return dict.fromkeys(ACCT_FIELDS, 0)
    return dict(zip(ACCT_FIELDS, _ACCT.unpack(raw)))


def _load_scripts() -> dict[str, str]:
    lua = resources.files("gateway.ledger").joinpath("lua")
    lib = lua.joinpath("_lib.lua").read_text(encoding="utf-8")
    out = {}
    for name in ("reserve", "extend", "settle", "expire", "fund", "late_settle"):
        body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        # The contract stays at the top of what Redis sees; the helpers follow it.
        contract, _, rest = body.partition("\n\n")
        out[name] = contract + "\n\n" + lib + "\n" + rest
    return out


_SCRIPTS = _load_scripts()


class _Pipeliner:
    """Sends the script calls made during one event-loop turn as one pipeline round trip."""

    def __init__(self, client: aioredis.Redis, max_batch: int = 512) -> None:
        self._client = client
        self._queue: list[tuple[str, str, Sequence[Any], asyncio.Future[Any]]] = []
        self._max_batch = max_batch
        self._scheduled = False
        self._inflight = 0

    def call(self, sha: str, script: str, args: Sequence[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((sha, script, args, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        while self._queue:
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            asyncio.ensure_future(self._send(batch))

    async def _send(self, batch: list[tuple[str, str, Sequence[Any], asyncio.Future[Any]]]) -> None:
        try:
            results = await self._execute(batch)
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn of the failure
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, _, _, fut), res in zip(batch, results):
            if fut.done():
                continue
            if isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)

    async def _execute(self, batch: list[tuple[str, str, Sequence[Any], asyncio.Future[Any]]]) -> list[Any]:
        results = await self._round_trip([(sha, args) for sha, _, args, _ in batch])
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            # Redis restarted or its script cache was flushed: load what is missing, resend those.
            for script in {batch[i][1] for i in missing}:
                await self._client.script_load(script)
            retried = await self._round_trip([(batch[i][0], batch[i][2]) for i in missing])
            for i, r in zip(missing, retried):
                results[i] = r
        return results

    async def _round_trip(self, calls: list[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Write every EVALSHA at once on one connection, then read the replies in order.

        Packing with hiredis and reading replies straight off the connection skips redis-py's
        pipeline machinery, which costs more per command than the ledger scripts themselves.
        """
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(
                b"".join([hiredis.pack_command(("EVALSHA", sha, *args)) for sha, args in calls]),
                check_health=False,
            )
            results: list[Any] = []
            for _ in calls:
                try:
                    results.append(await conn.read_response())
                except ResponseError as exc:  # one script's error is that caller's, not the batch's
                    results.append(exc)
            return results
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)


class Ledger:
    """The organization ledgers in one Redis (or Redis Cluster)."""

    def __init__(
        self,
        client: Any,
        *,
        pipeline: bool = False,
        retention_s: int = 7 * 86400,
        refusal_retention_s: int = 3600,
        max_balance: int = MAX_BALANCE_MICROS,
    ) -> None:
        self.client = client
        self.retention_s = retention_s
        self.refusal_retention_s = refusal_retention_s
        self.max_balance = min(max_balance, MAX_BALANCE_MICROS)
        self._scripts = {name: client.register_script(text) for name, text in _SCRIPTS.items()}
        self._pipeliner = _Pipeliner(client) if pipeline else None
        # Without pipelining each request holds a connection: bound them, so that a burst of calls
        # waits for a connection instead of opening hundreds at once (or failing).
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, name: str, keys: Sequence[str], args: Iterable[Any]) -> Any:
        script = self._scripts[name]
        args = list(args)
        try:
            if self._pipeliner is not None:
                return await self._pipeliner.call(script.sha, _SCRIPTS[name], [len(keys), *keys, *args])
            async with self._in_flight:
                return await script(keys=keys, args=args)
        except ResponseError as exc:
            raise LedgerError(f"ledger script {name} failed: {exc}") from exc
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc

    @staticmethod
    def call_keys(k: OrgKeys, call_or_fundings: str, month: str) -> list[str]:
        """The nine KEYS of every script, in the order of ``K`` in _lib.lua."""
        return [
            k.account,
            call_or_fundings,
            k.leases,
            k.allotments,
            k.minutes(month),
            k.audit,
            k.cdrs,
            k.outbox,
            k.purchases,
        ]

    # -- money in -------------------------------------------------------------------------

    async def fund(
        self,
        org: str,
        amount: int,
        *,
        kind: str = "fund",
        idempotency_key: str = "",
        note: str = "",
        ts: float | None = None,
    ) -> Funding:
        k = OrgKeys(org)
        now = time.time() if ts is None else ts
        keys = self.call_keys(k, k.fundings, month_of(now))
        raw = await self._run(
            "fund", keys, [amount, kind, idempotency_key, utc_now_iso(now), note, self.max_balance]
        )
        return _funding(raw)

    # -- calls ----------------------------------------------------------------------------

    async def reserve(
        self,
        org: str,
        call_id: str,
        *,
        pays: str,
        terms: RateTerms,
        chunk_s: int,
        lease_ms: int,
        bucket: str = "",
        licence: bool = False,
        max_live: int = 0,
        daily_limit: int = 0,
        emergency: bool = False,
        meta: dict[str, Any] | None = None,
        month: str | None = None,
    ) -> Grant:
        if pays not in ("credits", "plan", "included"):
            raise LedgerError(f"unknown payer {pays!r}")
        k = OrgKeys(org)
        now = time.time()
        keys = self.call_keys(k, k.call(call_id), month or month_of(now))
        raw = await self._run(
            "reserve",
            keys,
            [
                call_id,
                pays,
                bucket,
                1 if licence else 0,
                terms.connection_fee,
                terms.rate_per_min,
                terms.initial_increment_s,
                terms.subsequent_increment_s,
                chunk_s,
                lease_ms,
                max_live,
                daily_limit,
                1 if emergency else 0,
                json.dumps(meta or {}, separators=(",", ":"), sort_keys=True),
                self.refusal_retention_s,
            ],
        )
        return _grant(raw)

    async def extend(
        self, org: str, call_id: str, seq: int, *, month: str, lease_ms: int, daily_limit: int = 0
    ) -> Grant:
        k = OrgKeys(org)
        now = time.time()
        keys = self.call_keys(k, k.call(call_id), month)
        raw = await self._run("extend", keys, [call_id, seq, lease_ms, daily_limit, utc_now_iso(now)])
        return _grant(raw)

    async def settle(
        self,
        org: str,
        call_id: str,
        seq: int,
        *,
        month: str,
        answered: bool,
        duration_ms: int,
        end_reason: str,
        extra: dict[str, Any] | None = None,
    ) -> Settlement:
        k = OrgKeys(org)
        now = time.time()
        keys = self.call_keys(k, k.call(call_id), month)
        raw = await self._run(
            "settle",
            keys,
            [
                call_id,
                seq,
                1 if answered else 0,
                max(int(duration_ms), 0),
                end_reason,
                utc_now_iso(now),
                self.retention_s,
                json.dumps(extra or {}, separators=(",", ":"), sort_keys=True),
            ],
        )
        return _settlement(raw)

    async def expire(self, org: str, call_id: str) -> Settlement:
        """Settle one call whose lease has run out (no-op result when it is alive or gone)."""
        k = OrgKeys(org)
        now = time.time()
        try:
            minutes_key = await self.client.hget(k.call(call_id), "mk")
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc
        keys = self.call_keys(k, k.call(call_id), month_of(now))
        if minutes_key:
            keys[4] = minutes_key.decode() if isinstance(minutes_key, bytes) else minutes_key
        raw = await self._run("expire", keys, [call_id, utc_now_iso(now), self.retention_s])
        return _settlement(raw)

    async def expire_due(self, org: str, *, limit: int = 200) -> list[tuple[str, Settlement]]:
        """Settle every call of ``org`` whose lease is past (by Redis time)."""
        k = OrgKeys(org)
        try:
            sec, usec = await self.client.time()
            now_ms = int(sec) * 1000 + int(usec) // 1000
            due = await self.client.zrangebyscore(k.leases, "-inf", now_ms, start=0, num=limit)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc
        out = []
        for raw_id in due:
            call_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            res = await self.expire(org, call_id)
            if res.ok:
                out.append((call_id, res))
        return out

    async def late_settle(
        self,
        org: str,
        call_id: str,
        *,
        terms: RateTerms,
        answered: bool,
        duration_ms: int,
        end_reason: str,
        meta: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Settlement:
        k = OrgKeys(org)
        now = time.time()
        keys = self.call_keys(k, k.call(call_id), month_of(now))
        raw = await self._run(
            "late_settle",
            keys,
            [
                call_id,
                terms.connection_fee,
                terms.rate_per_min,
                terms.initial_increment_s,
                terms.subsequent_increment_s,
                1 if answered else 0,
                max(int(duration_ms), 0),
                end_reason,
                utc_now_iso(now),
                self.retention_s,
                json.dumps(meta or {}, separators=(",", ":"), sort_keys=True),
                json.dumps(extra or {}, separators=(",", ":"), sort_keys=True),
            ],
        )
        return _settlement(raw)

    # -- reading --------------------------------------------------------------------------

    async def balance(self, org: str) -> Balance:
        k = OrgKeys(org)
        try:
            raw = await self.client.hget(k.account, "v")
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc
        a = decode_account(raw)
        return Balance(balance=a["balance"], reserved=a["reserved"], live=a["live"], funded=a["funded"],
                       spent=a["spent"])

    async def stream(
        self, key: str, *, start: str = "-", end: str = "+", page: int = 1000
    ) -> list[tuple[str, dict[str, str]]]:
        """Every entry of a stream between two ids, read in pages."""
        out: list[tuple[str, dict[str, str]]] = []
        cursor = start
        try:
            while True:
                chunk = await self.client.xrange(key, min=cursor, max=end, count=page)
                for entry_id, fields in chunk:
                    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    out.append((eid, {_s(a): _s(b) for a, b in fields.items()}))
                if len(chunk) < page:
                    return out
                cursor = "(" + out[-1][0]
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc

    async def audit_entries(self, org: str, *, start: str = "-", end: str = "+") -> list[tuple[str, dict[str, str]]]:
        return await self.stream(OrgKeys(org).audit, start=start, end=end)

    async def cdr_entries(self, org: str, *, start: str = "-", end: str = "+") -> list[tuple[str, dict[str, str]]]:
        return await self.stream(OrgKeys(org).cdrs, start=start, end=end)

    async def live_call_ids(self, org: str) -> list[str]:
        try:
            ids = await self.client.zrange(OrgKeys(org).leases, 0, -1)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc
        return [_s(i) for i in ids]

    async def call_record(self, org: str, call_id: str) -> dict[str, Any]:
        """A call's state as the scripts keep it (``CALL_FIELDS``), its ``bucket`` and ``meta``; {} if unknown."""
        try:
            state, bucket, meta = await self.client.hmget(OrgKeys(org).call(call_id), "s", "b", "meta")
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc
        if state is None:
            return {}
        rec = decode_call_state(state)
        rec["bucket"] = _s(bucket) if bucket is not None else ""
        rec["meta"] = _s(meta) if meta is not None else "{}"
        return rec


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
