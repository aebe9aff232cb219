"""SIPp offering more calls than the gateway can carry: what it completes, what it refuses, how fast.

A SIPp UAC (the PBX) offers new calls at 1x, 2x and 10x the capacity the setups benchmark measured
on this machine (``CREDITGATE_BENCH_CAPACITY`` calls/s, default 300), each step for a few seconds,
through a running ``creditgate run`` with no configured limit in the way (``max_setups_per_s`` and
``max_live_calls`` far above the offered load): only the gateway's own overload control decides.
Each call either completes (INVITE..BYE, reserved, settled, with a CDR) or is refused 503, and
``uac_call_or_503.xml`` logs which and when, so the figures are per step:

* completed calls/s (answered and hung up normally), the 503s, and the failed calls (timeouts:
  what overload control exists to prevent);
* the time from INVITE to 503 (median and 99th percentile) and from INVITE to answer.

Before the admission rework (one full parse per INVITE, nothing watching the socket's backlog) 2x
collapsed to a fraction of 1x; the point of the figure is that past capacity the gateway keeps
completing about its capacity and refuses the rest at once. Every run is bounded (SIPp ``-m`` and
``-timeout``, our waits); every process is stopped. CREDITGATE_BENCH_SMOKE=1: one short low step.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.conftest import SMOKE
from tests.e2e._world import ALICE, UNIT, World, make_world
from tests.e2e.sipp import SCENARIO_DIR, Sipp, SippScenario, stop_all

CAPACITY = int(os.environ.get("CREDITGATE_BENCH_CAPACITY", "300"))
FACTORS = [1] if SMOKE else [1, 2, 10]
SECONDS_PER_STEP = 2 if SMOKE else 5
SMOKE_RATE = 50
LONDON = "+442079460000"
CALL_OR_503 = SCENARIO_DIR / "uac_call_or_503.xml"


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _step(world: World, tmp: Path, rate: int) -> dict[str, float]:
    calls = rate * SECONDS_PER_STEP
    carrier = Sipp(SippScenario.UAS_ANSWER, local_port=world.carrier_port, calls=calls, timeout_s=90,
                   trace_messages=False, workdir=tmp / f"uas{rate}")
    pbx = Sipp(CALL_OR_503, remote=world.sip, local_port=world.pbx_port, calls=calls, rate=rate,
               concurrent=calls, duration_ms=0, timeout_s=80, trace_messages=False, workdir=tmp / f"uac{rate}",
               injection=[(ALICE, LONDON)])
    try:
        carrier.start()
        pbx.run(timeout=90)
        stats = pbx.stats()
    finally:
        stop_all([pbx, carrier])
    sent: dict[str, int] = {}
    to_503: list[float] = []
    to_answer: list[float] = []
    for rec in pbx.log_records():
        at = int(rec.get("clock_ms", "0"))
        if rec["kind"] == "invite":
            sent[rec["call_id"]] = at
        elif rec["kind"] == "shed" and rec["call_id"] in sent:
            to_503.append(at - sent[rec["call_id"]])
        elif rec["kind"] == "answered" and rec["call_id"] in sent:
            to_answer.append(at - sent[rec["call_id"]])
    completed = stats.successful - len(to_503)
    elapsed = stats.elapsed_s or SECONDS_PER_STEP
    return {
        "rate": rate, "offered": calls, "completed": completed, "completed_per_s": completed / elapsed,
        "refused_503": len(to_503), "failed": stats.failed, "p50_503_ms": _percentile(to_503, 0.5),
        "p99_503_ms": _percentile(to_503, 0.99), "p50_answer_ms": _percentile(to_answer, 0.5),
        "p99_answer_ms": _percentile(to_answer, 0.99), "elapsed_s": elapsed,
    }  # fmt: skip


@pytest.mark.e2e
def test_offered_load_past_capacity(benchmark, tmp_path: Path, redis_url: str, capsys) -> None:
    settings = {"credit": {"debit_interval_s": 60}, "sip": {"max_setups_per_s": 1_000_000}}
    rows: list[dict[str, float]] = []
    with make_world(tmp_path, redis_url, settings) as world:
        world.fund("acme", 10**9 * UNIT // 1000)

        def run() -> None:
            for factor in FACTORS:
                rate = SMOKE_RATE if SMOKE else CAPACITY * factor
                rows.append(_step(world, tmp_path, rate))

        benchmark.pedantic(run, rounds=1, iterations=1)
        with capsys.disabled():
            print(f"\noffered load past capacity (capacity taken as {CAPACITY}/s; other processes may share "
                  "the machine: the figures are noisy):")
            for r in rows:
                print(f"  offered {r['rate']:>5.0f}/s x {SECONDS_PER_STEP} s: {r['completed_per_s']:7.1f} "
                      f"completed/s ({r['completed']:.0f}), {r['refused_503']:.0f} x 503 (to 503: p50 "
                      f"{r['p50_503_ms']:.0f} ms, p99 {r['p99_503_ms']:.0f} ms), {r['failed']:.0f} failed; "
                      f"to answer: p50 {r['p50_answer_ms']:.0f} ms, p99 {r['p99_answer_ms']:.0f} ms")
        completed = sum(int(r["completed"]) for r in rows)
        # Calls the caller gave up on may still be settling (a 2xx never acknowledged ends after 64*T1).
        cdrs = world.wait_settled(completed, timeout=90)
        assert world.reconciles()
    by_reason: dict[str, int] = {}
    for cdr in cdrs:
        by_reason[cdr["end_reason"]] = by_reason.get(cdr["end_reason"], 0) + 1
    with capsys.disabled():
        print(f"  {len(cdrs):,} CDRs written, by end reason: {by_reason}")
    # Every completed call was billed once; every offered call got an answer of one kind or the other,
    # and no call the caller never acknowledged was billed (end reason no_ack).
    assert by_reason.get("normal", 0) == completed
    assert all(r["completed"] + r["refused_503"] + r["failed"] == r["offered"] for r in rows)
    assert completed > 0
