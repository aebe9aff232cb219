"""Baseline call setups/s: a SIPp UAC calling a SIPp UAS directly on loopback, no gateway between.

Whatever the gateway reaches is bounded by what the two SIPp processes themselves sustain on the
same machine; the gateway benchmark prints this figure next to its own so the two read together.
Each call is a full uac_call / uas_answer exchange (INVITE, 100, 180, 200, ACK, BYE, 200: seven
messages) with no pause, so a "call setup" here is a whole call. Message tracing is off; the
statistics and error traces stay on.

    python -m bench.sipp.direct --calls 4000 --rate 2000 --concurrent 200 --transport udp
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.sipp.cpu import children_times
from tests.e2e.sipp import Sipp, SippScenario, stop_all

__all__ = ["MAX_RUN_S", "DirectResult", "sipp_direct_cps"]

# Every run ends within this bound: SIPp's own -timeout on both sides, and our wait.
MAX_RUN_S = 20.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectResult:
    """One run: ``cps`` is completed calls per second of the UAC's run time (SIPp's clock)."""

    transport: str
    calls: int
    rate: float
    concurrent: int
    successful: int
    failed: int
    elapsed_s: float
    cps: float
    sipp_call_rate: float  # SIPp's own cumulative CallRate: calls created per second
    failures: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_call: float = 0.0  # user + kernel CPU of both SIPp processes per completed call

    def __str__(self) -> str:
        return (
            f"SIPp->SIPp direct ({self.transport}): {self.cps:,.0f} calls/s "
            f"({self.successful:,}/{self.calls:,} calls ok, {self.failed} failed, {self.elapsed_s:.2f} s; "
            f"target rate {self.rate:g}/s, at most {self.concurrent} concurrent; "
            f"SIPp pair CPU {self.cpu_ms_per_call:.2f} ms per call)"
        )


def sipp_direct_cps(
    calls: int,
    rate: float,
    concurrent: int,
    transport: str = "udp",
    *,
    max_run_s: float = MAX_RUN_S,
    workdir: Path | str | None = None,
) -> DirectResult:
    """Run ``calls`` calls at up to ``rate`` calls/s, at most ``concurrent`` at once, SIPp UAC to
    SIPp UAS over ``transport`` ("udp" or "tcp") on 127.0.0.1; bounded by ``max_run_s`` seconds
    (at most 20). Returns the measured rate and the failed calls."""
    if calls <= 0 or rate <= 0 or concurrent <= 0:
        raise ValueError("calls, rate and concurrent must be positive")
    max_run_s = min(max_run_s, MAX_RUN_S)
    if calls / rate > max_run_s - 2:
        raise ValueError(f"{calls} calls at {rate:g}/s cannot finish within {max_run_s:g} s")
    with tempfile.TemporaryDirectory(prefix="sipp-direct-") as tmp:
        base = Path(workdir) if workdir else Path(tmp)
        common = {"transport": transport, "calls": calls, "timeout_s": max_run_s, "trace_messages": False}
        uas = Sipp(SippScenario.UAS_ANSWER, workdir=base / "uas", concurrent=concurrent * 2, **common)
        uac = Sipp(
            SippScenario.UAC_CALL,
            remote=uas.address,
            rate=rate,
            concurrent=concurrent,
            injection=[(f"+4410000{i:05d}", f"+4420000{i:05d}") for i in range(100)],
            workdir=base / "uac",
            **common,
        )
        children = children_times()
        try:
            uas.start()
            deadline = time.monotonic() + max_run_s + 5
            uac.start()
            uac.wait(max(0.1, deadline - time.monotonic()))
            uas.wait(max(0.1, deadline - time.monotonic()))
        finally:
            stop_all((uac, uas))
        sipp_cpu = children_times() - children
        stats = uac.stats()
    elapsed = stats.elapsed_s or 1e-9
    return DirectResult(
        transport=transport,
        calls=calls,
        rate=rate,
        concurrent=concurrent,
        successful=stats.successful,
        failed=stats.failed,
        elapsed_s=stats.elapsed_s,
        cps=stats.successful / elapsed,
        sipp_call_rate=stats.call_rate,
        failures=dict(stats.failures),
        cpu_ms_per_call=sipp_cpu.total_s * 1000 / stats.successful if stats.successful else 0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--transport", choices=["udp", "tcp"], default="udp")
    args = parser.parse_args()
    print(sipp_direct_cps(args.calls, args.rate, args.concurrent, args.transport))


if __name__ == "__main__":
    main()
