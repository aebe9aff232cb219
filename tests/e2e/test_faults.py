"""Faults during live calls (issue 8): Redis dies, a gateway worker dies; no money lost or invented.

Every scenario runs real processes (redis-server with an append-only file fsynced on every write,
the gateway, SIPp as PBX and carrier), injects its fault with SIGKILL, lets the system recover, and
then asserts the shared books invariants (tests/_invariants.py): one CDR per call, balance =
funding - CDR charges, every audit entry >= 0, nothing left reserved or leased. Each prints the
figures the issue asks for (calls live at the fault, time to recover, 503s, micro-units lost);
run with ``-s`` to read them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _world import ALICE, UNIT, World, make_world, wait_answered

from gateway.b2bua.core import OUTAGE_REASON

try:
    from _invariants import assert_books, cdr_sip_call_id
    from _procs import RedisProcess
    from sipp import Sipp, SippScenario, expect_status_scenario
except ImportError:  # pragma: no cover
    from tests._invariants import assert_books, cdr_sip_call_id
    from tests._procs import RedisProcess
    from tests.e2e.sipp import Sipp, SippScenario, expect_status_scenario

pytestmark = pytest.mark.e2e

LONDON = "+442079460000"  # 0.06 a minute, 1/1 increments, 0.01 connection fee


def london(seconds: int) -> int:
    return 10_000 + 1_000 * seconds


def _durable_redis(directory: Path) -> RedisProcess:
    # SIGKILL must lose nothing the ledger was told was written: fsync every write.
    return RedisProcess(directory, appendonly=True, args=["--appendfsync", "always"]).start()


def _trunk_on_any_port(world: World) -> None:
    """Acme's PBX also from any port of 127.0.0.1 (SIPp runs that are not the main PBX, per-call sockets)."""

    async def body(svc: Any) -> None:
        await svc.directory.add_trunk(await svc.directory.get_org("acme"), "127.0.0.1")

    world.services(body)


def _wait(predicate: Callable[[], bool], timeout: float, what: str, diagnostics: Callable[[], str]) -> float:
    """Poll until ``predicate()``; the seconds it took. Fails with ``diagnostics()`` after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not after {timeout} s\n{diagnostics()}")
        time.sleep(0.1)
    return time.monotonic() - started


def _figures(name: str, **figures: Any) -> None:
    print(f"\nFIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# -- 1. Redis dies mid-call --------------------------------------------------------------------

LIVE_CALLS = 500
CHUNK_S = 30
GRACE_S = 3


def test_redis_dies_under_500_live_calls_fail_closed_and_every_call_is_settled_once(
        tmp_path: Path, sipp_factory: Callable[..., Sipp]) -> None:
    redis = _durable_redis(tmp_path / "redis")
    funded = 100 * UNIT
    try:
        settings = {"credit": {"debit_interval_s": CHUNK_S, "outage_grace_s": GRACE_S, "sweep_interval_s": 0.5},
                    "redis": {"timeout_s": 0.3},
                    # This test is about the ledger, not overload: a busy CI machine must not refuse calls.
                    "sip": {"max_loop_lag_ms": 5000}}
        with make_world(tmp_path, redis.url, settings) as world:
            world.fund("acme", funded)
            _trunk_on_any_port(world)
            carrier = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=LIVE_CALLS,
                                   timeout_s=120, trace_messages=False).start()
            pbx = sipp_factory(SippScenario.UAC_LONG_CALL_EXPECT_BYE, remote=world.sip, local_port=world.pbx_port,
                               calls=LIVE_CALLS, rate=50, concurrent=LIVE_CALLS, timeout_s=120,
                               trace_messages=False, injection=[(ALICE, LONDON)]).start()
            _wait(lambda: len(pbx.log_records("answered")) == LIVE_CALLS, 60, f"{LIVE_CALLS} calls answered",
                  pbx.diagnostics)
            before = world.balance()
            assert before.live == LIVE_CALLS and before.reserved > 0

            redis.kill()
            killed_at = time.monotonic()
            live_at_fault = len(pbx.log_records("answered")) - len(pbx.log_records("bye"))

            # New calls while the ledger is down: 503 with Retry-After, at once (fail closed).
            probe = sipp_factory(expect_status_scenario(503, require_warning=True, directory=tmp_path),
                                 remote=world.sip, calls=20, rate=20, timeout_s=30, injection=[(ALICE, LONDON)])
            assert probe.run() == 0, probe.diagnostics()
            refused = probe.messages(status=503)
            assert len(refused) == 20 and all(m.header("Retry-After") == str(GRACE_S) for m in refused)

            # The live calls run on the time they hold plus the grace, then both legs get BYE.
            assert pbx.wait(100) == 0, pbx.diagnostics()
            assert carrier.wait(30) == 0, carrier.diagnostics()
            down_s = time.monotonic() - killed_at
            assert down_s > GRACE_S
            answered = {r["call_id"]: int(r["clock_ms"]) for r in pbx.log_records("answered")}
            byes = {r["call_id"]: r for r in pbx.log_records("bye")}
            assert set(byes) == set(answered) and len(answered) == LIVE_CALLS
            assert {b["reason"] for b in byes.values()} == {OUTAGE_REASON}

            redis.restart()
            restarted_at = time.monotonic()
            cdrs = world.wait_settled(LIVE_CALLS, timeout=60)
            recover_s = time.monotonic() - restarted_at

            books = assert_books(redis.url, "acme", funded=funded, calls=set(answered))
            for cdr in cdrs:
                paid_ms = int(byes[cdr_sip_call_id(cdr)]["clock_ms"]) - answered[cdr_sip_call_id(cdr)]
                billed_s = int(cdr["billed_s"])
                # Charged for what it held (one chunk, two if its renewal ran before the fault) and
                # not for the grace; the call was not cut before it had that time and its grace.
                assert cdr["end_reason"] == "ledger_outage", cdr
                assert billed_s in (CHUNK_S, 2 * CHUNK_S) and int(cdr["charge"]) == london(billed_s), cdr
                assert (billed_s + GRACE_S) * 1000 - 300 <= paid_ms <= (billed_s + GRACE_S) * 1000 + 3000, (
                    paid_ms, cdr)
            cli = world.gw.cli("reconcile", "acme")
            assert cli.returncode == 0, cli.stdout + cli.stderr
            _figures("redis-dies", calls_live_at_fault=live_at_fault, redis_down_s=round(down_s, 1),
                     cdrs_written_s_after_restart=round(recover_s, 2), refused_503=len(refused),
                     micro_units_lost=books.lost, charged=books.charged)
    finally:
        redis.stop()


def test_redis_dies_fail_open_admits_a_call_within_the_bound_and_settles_it_on_recovery(
        tmp_path: Path, sipp_factory: Callable[..., Sipp]) -> None:
    redis = _durable_redis(tmp_path / "redis")
    funded = 10 * UNIT
    fail_open_s = 4
    try:
        settings = {"credit": {"debit_interval_s": 6, "outage_grace_s": 2, "sweep_interval_s": 0.5,
                               "on_ledger_outage": "fail_open", "fail_open_max_s": fail_open_s,
                               "fail_open_max_amount": "1.00"},
                    "redis": {"timeout_s": 0.3}}
        with make_world(tmp_path, redis.url, settings) as world:
            world.fund("acme", funded)
            carrier = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=2,
                                   timeout_s=60).start()
            # A call before the fault: the gateway knows the PBX trunk, acme and alice from it.
            first = sipp_factory(SippScenario.UAC_CALL, remote=world.sip, local_port=world.pbx_port, calls=1,
                                 duration_ms=200, timeout_s=20, injection=[(ALICE, LONDON)])
            assert first.run() == 0, first.diagnostics()
            world.wait_settled(1)

            redis.kill()
            live = sipp_factory(SippScenario.UAC_LONG_CALL_EXPECT_BYE, remote=world.sip, local_port=world.pbx_port,
                                calls=1, timeout_s=40, injection=[(ALICE, LONDON)]).start()
            wait_answered(live)
            assert live.wait(20) == 0, live.diagnostics()  # ended by the gateway at the fail-open bound
            (answered,) = live.log_records("answered")
            (bye,) = live.log_records("bye")
            paid_ms = int(bye["clock_ms"]) - int(answered["clock_ms"])
            assert fail_open_s * 1000 - 150 <= paid_ms <= fail_open_s * 1000 + 1500, paid_ms
            assert bye["reason"] == OUTAGE_REASON
            assert carrier.wait(10) == 0, carrier.diagnostics()
            # The bound is per outage too: past fail_open_max_s, new calls fail closed.
            late = sipp_factory(expect_status_scenario(503, directory=tmp_path), remote=world.sip,
                                local_port=world.pbx_port, calls=1, timeout_s=20, injection=[(ALICE, LONDON)])
            assert late.run() == 0, late.diagnostics()

            redis.restart()
            restarted_at = time.monotonic()
            cdrs = world.wait_settled(2, timeout=30)
            recover_s = time.monotonic() - restarted_at
            (cdr,) = [c for c in cdrs if cdr_sip_call_id(c) == answered["call_id"]]
            assert cdr["extra"]["fail_open"] is True and cdr["end_reason"] == "ledger_outage"
            secs = -(-int(cdr["duration_ms"]) // 1000)
            assert int(cdr["charge"]) == london(secs) and cdr["uncollected"] == "0", cdr
            books = assert_books(redis.url, "acme", funded=funded,
                                 calls={answered["call_id"], *_sip_call_ids(first)})
            _figures("redis-dies-fail-open", admitted_while_down=1, fail_open_paid_ms=paid_ms,
                     cdrs_written_s_after_restart=round(recover_s, 2), refused_503_after_bound=1,
                     micro_units_lost=books.lost)
    finally:
        redis.stop()


def _sip_call_ids(uac: Sipp) -> list[str]:
    """The Call-IDs of a SIPp UAC's calls, from every message it logged (over TCP, SIPp may log a
    request it had to buffer without the usual header line, but never every answer to it)."""
    return sorted({m.call_id for m in uac.messages() if m.call_id})


# -- 2. A gateway worker dies mid-call -------------------------------------------------------------

WORKER_CALLS = 20


def _worker_pids(world: World) -> dict[int, int]:
    """Worker index -> pid of its latest start, from the supervisor's JSON log."""
    pids: dict[int, int] = {}
    for line in world.gw.log_text().splitlines():
        m = re.search(r"worker (\d+) started \(pid (\d+)\)", line)
        if m:
            pids[int(m.group(1))] = int(m.group(2))
    return pids


def test_a_worker_killed_mid_call_has_its_calls_settled_interrupted_by_the_others(
        tmp_path: Path, sipp_factory: Callable[..., Sipp]) -> None:
    redis = _durable_redis(tmp_path / "redis")
    funded = 100 * UNIT
    chunk_s = 2
    try:
        settings = {"credit": {"debit_interval_s": chunk_s, "lease_grace_s": 1, "sweep_interval_s": 0.5}}
        with make_world(tmp_path, redis.url, settings, workers=2) as world:
            world.fund("acme", funded)
            _trunk_on_any_port(world)
            pids = _worker_pids(world)
            assert len(pids) == 2
            carrier = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=WORKER_CALLS,
                                   transport="tcp", timeout_s=90, trace_messages=False).start()
            # One TCP connection per call: the kernel spreads them over both workers by source port,
            # and every request of a call then reaches the worker holding it (SIPp sends its BYE to
            # the shared port, not to the worker's Contact: over UDP a restarted worker would change
            # which worker the kernel picks and the BYE would reach one that does not know the call).
            pbx = sipp_factory(SippScenario.UAC_CALL, remote=world.sip, transport="tcp-per-call",
                               calls=WORKER_CALLS, rate=10, duration_ms=10_000, timeout_s=90,
                               injection=[(ALICE, LONDON)])
            pbx.start()

            def all_renewed() -> bool:
                # Every call answered and its first renewal made: from then on its lease is short.
                async def body(svc: Any) -> bool:
                    ids = await svc.ledger.live_call_ids("acme")
                    recs = [await svc.ledger.call_record("acme", i) for i in ids]
                    return len(ids) == WORKER_CALLS and all(r.get("seq", 0) >= 1 for r in recs)

                return bool(world.services(body))

            _wait(all_renewed, 30, f"{WORKER_CALLS} calls answered and renewed", world.gw.log_tail)
            victim = pids[0]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            world.gw.wait_log(f"worker 0 (pid {victim}) exited", timeout=10)

            # The survivor's calls end with the caller's BYE; the victim's are settled by a sweeper
            # once their lease runs out (their connections died with it: the callers' BYEs fail).
            cdrs = world.wait_settled(WORKER_CALLS, timeout=60)
            settled_s = time.monotonic() - killed_at
            pbx.wait(60)
            stats = pbx.stats()
            carrier.stop()
            by_reason: dict[str, list[dict[str, Any]]] = {}
            for c in cdrs:
                by_reason.setdefault(c["end_reason"], []).append(c)
            assert set(by_reason) == {"normal", "interrupted"}, {k: len(v) for k, v in by_reason.items()}
            interrupted, normal = by_reason["interrupted"], by_reason["normal"]
            assert (stats.successful, stats.failed) == (len(normal), len(interrupted)), pbx.diagnostics()
            sip_ids = set(_sip_call_ids(pbx))
            assert len(sip_ids) == WORKER_CALLS
            books = assert_books(redis.url, "acme", funded=funded, calls=sip_ids)
            # The supervisor started the dead worker again, and the survivor's calls ended on the survivor.
            assert world.gw.log_text().count("creditgate ready") == 3
            enders = {json.loads(line)["pid"] for line in world.gw.log_text().splitlines() if '"ended (' in line}
            assert enders == {pids[1]}, enders
            for c in interrupted:
                # Charged what it held: the time it was granted (the victim may have let it run that long).
                assert int(c["charge"]) == london(int(c["billed_s"])) and int(c["billed_s"]) >= chunk_s, c
            for c in normal:
                assert int(c["charge"]) == london(-(-int(c["duration_ms"]) // 1000)), c
            _figures("worker-dies", calls_live_at_fault=WORKER_CALLS, calls_of_the_dead_worker=len(interrupted),
                     all_settled_s_after_kill=round(settled_s, 2), micro_units_lost=books.lost)
    finally:
        redis.stop()


def test_a_gateway_killed_and_restarted_settles_the_calls_it_held_as_interrupted(
        tmp_path: Path, sipp_factory: Callable[..., Sipp]) -> None:
    redis = _durable_redis(tmp_path / "redis")
    funded = 100 * UNIT
    calls = 10
    try:
        settings = {"credit": {"debit_interval_s": 2, "lease_grace_s": 1, "sweep_interval_s": 0.5}}
        with make_world(tmp_path, redis.url, settings) as world:
            world.fund("acme", funded)
            carrier = sipp_factory(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=calls,
                                   timeout_s=60, trace_messages=False).start()
            pbx = sipp_factory(SippScenario.UAC_CALL, remote=world.sip, local_port=world.pbx_port, calls=calls,
                               rate=10, duration_ms=8_000, timeout_s=60, injection=[(ALICE, LONDON)]).start()

            def all_renewed() -> bool:
                async def body(svc: Any) -> bool:
                    ids = await svc.ledger.live_call_ids("acme")
                    recs = [await svc.ledger.call_record("acme", i) for i in ids]
                    return len(ids) == calls and all(r.get("seq", 0) >= 1 for r in recs)

                return bool(world.services(body))

            _wait(all_renewed, 30, f"{calls} calls answered and renewed", world.gw.log_tail)
            world.gw.kill()  # SIGKILL: nothing drained, nothing settled
            killed_at = time.monotonic()
            assert world.balance().live == calls
            world.gw.start()
            _wait(lambda: world.gw.log_text().count("creditgate ready") == 2, 30, "the gateway restarted",
                  world.gw.log_tail)

            # Nobody holds these calls any more: their leases run out and the restarted process's
            # sweeper settles each once, charging what it held, with an 'interrupted' CDR.
            cdrs = world.wait_settled(calls, timeout=30)
            settled_s = time.monotonic() - killed_at
            assert {c["end_reason"] for c in cdrs} == {"interrupted"}
            for c in cdrs:
                assert int(c["charge"]) == london(int(c["billed_s"])) and int(c["billed_s"]) >= 2, c
            pbx.wait(40)  # their BYEs reach a process that never knew them (481): failed calls
            assert pbx.stats().failed == calls, pbx.diagnostics()
            carrier.stop()
            books = assert_books(redis.url, "acme", funded=funded, calls=set(_sip_call_ids(pbx)))
            assert len(books.cdrs) == calls
            _figures("gateway-killed-and-restarted", calls_live_at_fault=calls,
                     all_settled_s_after_kill=round(settled_s, 2), micro_units_lost=books.lost)
    finally:
        redis.stop()
