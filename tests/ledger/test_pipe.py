"""The pipelined ledger: one batch script per event-loop turn gives each caller its own script's answer."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator

import pytest

from gateway.ledger._pipe import MAX_BATCH
from gateway.ledger.client import (
    _SCRIPTS,
    SCRIPT_NAMES,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    RateTerms,
)
from gateway.ledger.keys import OrgKeys
from gateway.ledger.reconcile import reconcile
from gateway.services import redis_client

MONTH = "202611"
TERMS = RateTerms(connection_fee=10_000, rate_per_min=100_000, initial_increment_s=30, subsequent_increment_s=6)
UNIT = 1_000_000


def _defined(script: str) -> set[str]:
    return set(re.findall(r"^local function (\w+)", script, re.MULTILINE))


def test_each_script_carries_only_the_helpers_it_uses() -> None:
    # settle needs no lease time and no grant search; fund touches no call.
    assert {"now_ms", "seg_max"}.isdisjoint(_defined(_SCRIPTS["settle"]))
    assert {"unpack_call", "debit", "seg_charge"}.isdisjoint(_defined(_SCRIPTS["fund"]))
    # ... but keeps what its helpers need in turn (debit -> audit, billed_total -> billed -> ceil_div).
    assert {"debit", "audit", "billed_total", "billed", "ceil_div", "floor_div"} <= _defined(_SCRIPTS["settle"])
    # The batch runs every script's body.
    for name in SCRIPT_NAMES:
        assert f"OPS.{name} = function(ARGV)" in _SCRIPTS["batch"]


@pytest.fixture
async def piped(redis_url: str) -> AsyncIterator[tuple[Ledger, object]]:
    client = redis_client(redis_url, timeout_s=5.0)
    ledger = Ledger(client, pipeline=True)
    assert ledger._pipe is not None
    try:
        yield ledger, client
    finally:
        await ledger.close()
        await client.aclose()


async def _reserve(ledger: Ledger, org: str, call: str):
    return await ledger.reserve(org, call, pays="credits", terms=TERMS, chunk_s=60, lease_ms=60_000, month=MONTH)


async def test_more_calls_than_one_batch_each_get_their_own_answer(piped) -> None:
    ledger, _ = piped
    n = 3 * MAX_BATCH + 5
    await ledger.fund("acme", n * UNIT)
    await ledger.fund("beta", 110_000)  # one chunk: the second call of beta is refused
    grants = await asyncio.gather(*(_reserve(ledger, "acme", f"c{i}") for i in range(n)),
                                  _reserve(ledger, "beta", "b1"), _reserve(ledger, "beta", "b2"))
    assert all(g.ok and g.held == 110_000 for g in grants[:n])
    # each reply is the one of its own call: the running reservation grows by one chunk per call
    assert sorted(g.reserved for g in grants[:n]) == [110_000 * (i + 1) for i in range(n)]
    assert (grants[n].ok, grants[n + 1].ok, grants[n + 1].reason) == (True, False, "no_credit")
    settled = await asyncio.gather(*(ledger.settle("acme", f"c{i}", 1, month=MONTH, answered=True, duration_ms=31_000,
                                                   end_reason="normal") for i in range(n)))
    assert all(s.ok and s.charge == 70_000 for s in settled)  # fee + 36 s at 0.10/min
    assert (await ledger.balance("acme")).balance == n * UNIT - n * 70_000
    for org in ("acme", "beta"):
        assert (await reconcile(ledger, org)).ok


async def test_a_failing_operation_fails_alone_in_its_batch(piped) -> None:
    ledger, client = piped
    await ledger.fund("acme", UNIT)
    await client.set(OrgKeys("acme").call("bad"), "not a hash")  # WRONGTYPE for the script's HGET
    results = await asyncio.gather(_reserve(ledger, "acme", "c1"), _reserve(ledger, "acme", "bad"),
                                   _reserve(ledger, "acme", "c2"), return_exceptions=True)
    assert results[0].ok and results[2].ok
    assert isinstance(results[1], LedgerError) and "WRONGTYPE" in str(results[1])
    bal = await ledger.balance("acme")
    assert (bal.reserved, bal.live) == (220_000, 2)


async def test_replays_after_a_script_flush_return_the_first_results(piped) -> None:
    ledger, client = piped
    n = 2 * MAX_BATCH
    await ledger.fund("acme", n * UNIT)
    first = await asyncio.gather(*(_reserve(ledger, "acme", f"c{i}") for i in range(n)))
    ext = await asyncio.gather(*(ledger.extend("acme", f"c{i}", 1, month=MONTH, lease_ms=60_000) for i in range(n)))
    before = await ledger.balance("acme")
    await client.script_flush()
    again = await asyncio.gather(*(_reserve(ledger, "acme", f"c{i}") for i in range(n)))
    await client.script_flush()
    ext_again = await asyncio.gather(*(ledger.extend("acme", f"c{i}", 1, month=MONTH, lease_ms=60_000)
                                       for i in range(n)))
    assert again == first and ext_again == ext
    assert await ledger.balance("acme") == before
    assert len(await ledger.audit_entries("acme")) == 1 + n  # the funding, one commit per call
    assert (await reconcile(ledger, "acme")).ok


async def test_a_batch_the_server_refuses_fails_every_caller_in_it(piped) -> None:
    ledger, client = piped
    await ledger.fund("acme", UNIT)
    # A script cache flushed between the reload and the resend: the second NOSCRIPT is not retried forever.
    real_load = ledger._pipe._load_script

    async def load_then_flush(script: str):
        await real_load(script)
        await client.script_flush()

    ledger._pipe._load_script = load_then_flush
    await client.script_flush()
    results = await asyncio.gather(_reserve(ledger, "acme", "c1"), _reserve(ledger, "acme", "c2"),
                                   return_exceptions=True)
    assert all(isinstance(r, LedgerError) and "NOSCRIPT" in str(r) for r in results)
    ledger._pipe._load_script = real_load
    with contextlib.suppress(Exception):
        await client.script_flush()
    assert (await _reserve(ledger, "acme", "c1")).ok
    assert (await ledger.balance("acme")).live == 1


def _uvloop_run(coro_fn):
    """Run on uvloop, as ``creditgate run`` does (its order of timers and socket reads is the one that counts)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())


def test_a_stalled_loop_is_not_taken_for_a_silent_redis(redis_url: str) -> None:
    # The loop is blocked longer than the reply timeout while Redis answers into the socket. When it
    # runs again, the reply deadline is overdue, but the reply is in the socket: it must be taken (the
    # call succeeds) and no outage declared. Were the overdue deadline handled before the socket is
    # read (a loop that runs due timers first), every call in flight would fail as if Redis were down.
    async def scenario():
        client = redis_client(redis_url, timeout_s=0.3)
        ledger = Ledger(client, pipeline=True)
        try:
            await ledger.fund("acme", UNIT)
            pending = asyncio.ensure_future(_reserve(ledger, "acme", "c1"))
            for _ in range(3):  # the caller queues it, the flush writes it
                await asyncio.sleep(0)
            assert len(ledger._pipe._pending) == 1  # written, its reply awaited: the stall comes now
            time.sleep(0.8)  # noqa: ASYNC251 - the stall under test (a long GC pause, a CPU hog)
            grant = await pending
            balance = await ledger.balance("acme")
            return grant, balance
        finally:
            await ledger.close()
            await client.aclose()

    grant, balance = _uvloop_run(scenario)
    assert grant.ok and grant.held == 110_000
    assert (balance.reserved, balance.live) == (110_000, 1)


def test_a_silent_redis_is_still_found_out_while_the_loop_is_late(redis_url: str) -> None:
    # Redis stopped (SIGSTOP): the pipe gives up within a bounded time even if every check runs late.
    import os
    import signal

    async def scenario():
        client = redis_client(redis_url, timeout_s=0.3)
        ledger = Ledger(client, pipeline=True)
        info = await client.info("server")
        pid = int(info["process_id"])
        try:
            await ledger.fund("acme", UNIT)
            os.kill(pid, signal.SIGSTOP)
            try:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                pending = asyncio.ensure_future(_reserve(ledger, "acme", "c1"))
                while not pending.done() and loop.time() - t0 < 10:
                    time.sleep(0.2)  # noqa: ASYNC251 - a loop that is always 200 ms late
                    await asyncio.sleep(0)
                elapsed = loop.time() - t0
                exc = pending.exception() if pending.done() else None
            finally:
                os.kill(pid, signal.SIGCONT)
            return elapsed, exc
        finally:
            await ledger.close()
            await client.aclose()

    elapsed, exc = _uvloop_run(scenario)
    assert isinstance(exc, LedgerUnavailable), exc
    assert elapsed < 3.0
