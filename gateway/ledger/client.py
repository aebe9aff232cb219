"""Call the ledger's Lua scripts: every change to a balance, reservation, CDR or audit entry.

Python never reads a balance and writes it back; it only asks a script to do so atomically. Each
script is registered once and called by SHA (reloaded on NOSCRIPT, e.g. after a Redis restart or
SCRIPT FLUSH). Each script is sent with only the helpers of _lib.lua it uses (Redis runs a
script's whole text on every call). Concurrent calls from one process can be sent together, once
per event-loop turn, as batches that ``batch.lua`` runs in one script call each
(``pipeline=True``, see ``_pipe.py``): that is what lets one process reach tens of thousands of
ledger operations a second. Redis errors and timeouts become ``LedgerUnavailable`` (the caller applies the outage
policy); nothing else leaks out.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any, NamedTuple, Sequence

from redis.exceptions import RedisError, ResponseError

from rating_core.errors import CreditgateError

from gateway.ledger._pipe import ScriptPipe
from gateway.ledger.keys import OrgKeys, call_key, month_of

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


@functools.lru_cache(maxsize=1024)
def _second_text(sec: int) -> str:
    """The date-time part of a second: a call's start, answer and end (and every log line) fall in a
    handful of distinct seconds, and strftime costs tens of µs on a slow machine."""
    return datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def utc_now_iso(ts: float | None = None) -> str:
    """ISO 8601 UTC with milliseconds; the date-time part of a second is formatted once."""
    t = time.time() if ts is None else ts
    sec = int(t // 1)
    return f"{_second_text(sec)}.{int((t - sec) * 1000):03d}Z"


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


# Script results are NamedTuples: immutable like the house's frozen dataclasses, and built in C
# (a frozen dataclass's __init__ costs more than the decoding on this hot path).
class Grant(NamedTuple):
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


class Settlement(NamedTuple):
    """Result of settle/expire/late_settle. ``extra`` is minutes_s, or uncollected for late_settle."""

    ok: bool
    reason: str
    charge: int
    billed_s: int
    extra: int
    balance: int
    reserved: int
    debit: int


class Funding(NamedTuple):
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
           "bad_seq", "not_due", "gone", "too_large", "bad_amount", "fail_open", "declined")
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


_DEFINES = re.compile(r"^local function (\w+)|^local ([\w, ]+?) =", re.M)


def _lib_chunks(lib: str) -> list[tuple[frozenset[str], str]]:
    """_lib.lua cut at blank lines: each chunk with the top-level names it defines."""
    out = []
    for chunk in lib.split("\n\n"):
        names = frozenset(n.strip() for m in _DEFINES.findall(chunk) for n in ",".join(m).split(",") if n.strip())
        out.append((names, chunk))
    return out


_COMMENT = re.compile(r"--[^\n]*")


def _uses(code: str, name: str) -> bool:
    """Whether comment-free Lua ``code`` reads ``name`` (a field ``x.name`` or ``{name = ...}`` is not it)."""
    return re.search(r"(?<![\w.])" + re.escape(name) + r"(?!\w)(?!\s*=[^=])", code) is not None


def _helpers_for(body: str, lib: str) -> str:
    """The chunks of ``lib`` that ``body`` needs, directly or through other helpers, in lib order.

    Redis runs a script's whole text on every call: each helper defined is a closure made, each
    table built is garbage to collect, even when the script never uses them. Chunks that define
    nothing (the effects-replication switch, comments) are always kept.
    """
    chunks = _lib_chunks(lib)
    keep = [not names for names, _ in chunks]
    needed_by = _COMMENT.sub("", body)
    changed = True
    while changed:
        changed = False
        for i, (names, chunk) in enumerate(chunks):
            if not keep[i] and any(_uses(needed_by, n) for n in names):
                keep[i] = True
                needed_by += "\n" + _COMMENT.sub("", chunk)
                changed = True
    return "\n\n".join(chunk for k, (_, chunk) in zip(keep, chunks) if k)


SCRIPT_NAMES = ("reserve", "extend", "settle", "expire", "fund", "late_settle")


def _load_scripts() -> dict[str, str]:
    """Every script as Redis runs it: its contract, the helpers it uses, its body; and ``batch``."""
    lua = resources.files("gateway.ledger").joinpath("lua")
    lib = lua.joinpath("_lib.lua").read_text(encoding="utf-8")
    out = {}
    bodies = {}
    for name in SCRIPT_NAMES:
        body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        # The contract stays at the top of what Redis sees; the helpers it uses follow it.
        contract, _, rest = body.partition("\n\n")
        out[name] = contract + "\n\n" + _helpers_for(rest, lib) + "\n" + rest
        bodies[name] = rest
    # batch: every script's body as a function of its ARGV (K re-bound per operation), then the
    # loop that runs them; a top-level 'return' of a body returns from its function.
    contract, _, loop = lua.joinpath("batch.lua").read_text(encoding="utf-8").partition("\n\n")
    ops = "".join(f"OPS.{name} = function(ARGV)\n{body}\nend\n\n" for name, body in bodies.items())
    out["batch"] = (contract + "\n\n" + _helpers_for(ops + loop, lib) + "\n\nlocal OPS = {}\n\n" + ops
                    + loop)
    return out


_SCRIPTS = _load_scripts()


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
        # Pipelining needs one server (a cluster client routes each call itself).
        self._pipe = ScriptPipe.for_client(
            client, batch_sha=self._scripts["batch"].sha, batch_script=_SCRIPTS["batch"],
            load_script=client.script_load) if pipeline and hasattr(client, "connection_pool") else None
        # Without pipelining each request holds a connection: bound them, so that a burst of calls
        # waits for a connection instead of opening hundreds at once (or failing).
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._key_cache: dict[tuple[str, str], list[str]] = {}
        self.requests = 0
        self.seconds = 0.0
        self.errors = 0

    async def close(self) -> None:
        if self._pipe is not None:
            await self._pipe.close()

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        started = time.perf_counter()
        try:
            if self._pipe is not None:
                reply = await self._pipe.run(name, keys, args)
                if isinstance(reply, ResponseError):
                    raise reply
                return reply
            async with self._in_flight:
                return await self._scripts[name](keys=keys, args=list(args))
        except ResponseError as exc:
            self.errors += 1
            raise LedgerError(f"ledger script {name} failed: {exc}") from exc
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.errors += 1
            raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc
        finally:
            # Read by the metrics endpoint: script calls, their total latency, failures.
            self.requests += 1
            self.seconds += time.perf_counter() - started

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

    def _keys(self, org: str, call_or_fundings: str | None, month: str) -> list[str]:
        """``call_keys`` with the organization's fixed keys built once (a hot path)."""
        cached = self._key_cache.get((org, month))
        if cached is None:
            k = OrgKeys(org)
            cached = self.call_keys(k, k.fundings, month)
            if len(self._key_cache) > 10_000:
                self._key_cache.clear()
            self._key_cache[(org, month)] = cached
        keys = list(cached)
        if call_or_fundings is not None:
            keys[1] = call_or_fundings
        return keys

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
        now = time.time() if ts is None else ts
        keys = self._keys(org, None, month_of(now))
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
        keys = self._keys(org, OrgKeys(org).call(call_id), month or month_of(time.time()))
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
                json.dumps(meta, separators=(",", ":"), sort_keys=True) if meta else "{}",
                self.refusal_retention_s,
            ],
        )
        return _grant(raw)

    async def extend(
        self, org: str, call_id: str, seq: int, *, month: str, lease_ms: int, daily_limit: int = 0
    ) -> Grant:
        keys = self._keys(org, call_key(org, call_id), month)
        raw = await self._run("extend", keys, [call_id, seq, lease_ms, daily_limit, utc_now_iso()])
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
        now = time.time()
        keys = self._keys(org, call_key(org, call_id), month)
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
                json.dumps(extra, separators=(",", ":"), sort_keys=True) if extra else "{}",
                int(now * 1000),
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

    async def call_month(self, org: str, call_id: str) -> str | None:
        """The UTC month ('YYYYMM') whose minutes a call draws on, as its reservation recorded it."""
        try:
            mk = await self.client.hget(OrgKeys(org).call(call_id), "mk")
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise LedgerUnavailable(f"ledger unreachable: {exc}") from exc
        if mk is None:
            return None
        return _s(mk).rsplit(":", 1)[-1]

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
