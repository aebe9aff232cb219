"""Where a benchmark step's CPU went: the gateway, redis-server and the SIPp pair, per call.

The gateway and redis-server run for the whole benchmark, so their share of a step is the change of
their user and kernel times in ``/proc/<pid>/stat``. The two SIPp processes of a step are children of
the test process that exit within the step: their times come from ``getrusage(RUSAGE_CHILDREN)``,
which grows by a child's times when it is reaped. With the CPU each part needs per call, the cores
a target rate takes follow by multiplication: the budget that says whether a rate fits the machine.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

__all__ = ["CpuSplit", "ProcessTimes", "StepCpu", "children_times", "process_times"]

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcessTimes:
    user_s: float
    kernel_s: float

    def __sub__(self, other: ProcessTimes) -> ProcessTimes:
        return ProcessTimes(self.user_s - other.user_s, self.kernel_s - other.kernel_s)

    @property
    def total_s(self) -> float:
        return self.user_s + self.kernel_s


def process_times(pid: int) -> ProcessTimes:
    """User and kernel CPU seconds a live process has used (fields 14 and 15 of its stat line)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) is in parentheses and may hold spaces: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcessTimes(int(fields[11]) * _TICK_S, int(fields[12]) * _TICK_S)


def children_times() -> ProcessTimes:
    """User and kernel CPU seconds of every child process reaped so far (and of their reaped children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ProcessTimes(usage.ru_utime, usage.ru_stime)


@dataclass(frozen=True, slots=True)
class CpuSplit:
    """CPU seconds per completed call of each part of one step."""

    calls: int
    gateway: ProcessTimes
    redis: ProcessTimes
    sipp: ProcessTimes

    def per_call_ms(self, part: ProcessTimes) -> float:
        return part.total_s * 1000 / self.calls if self.calls else 0.0

    @property
    def gateway_user(self) -> ProcessTimes:
        return ProcessTimes(self.gateway.user_s, 0.0)

    @property
    def gateway_kernel(self) -> ProcessTimes:
        return ProcessTimes(0.0, self.gateway.kernel_s)

    def cores_at(self, rate: float, *, sipp_ms: float | None = None) -> dict[str, float]:
        """Cores each part would take at ``rate`` calls/s, at this step's CPU per call (the SIPp pair's
        at ``sipp_ms`` per call when given: SIPp's own cost per call falls as its rate rises)."""
        parts = {"gateway user": self.gateway_user, "gateway kernel": self.gateway_kernel,
                 "redis-server": self.redis, "SIPp pair": self.sipp}
        cores = {name: rate * self.per_call_ms(t) / 1000 for name, t in parts.items()}
        if sipp_ms is not None:
            cores["SIPp pair"] = rate * sipp_ms / 1000
        return cores

    def __str__(self) -> str:
        ms = self.per_call_ms
        return (f"CPU per call: gateway {ms(self.gateway):.2f} ms ({ms(self.gateway_user):.2f} user + "
                f"{ms(self.gateway_kernel):.2f} kernel), redis-server {ms(self.redis):.2f} ms, "
                f"SIPp pair {ms(self.sipp):.2f} ms")


class StepCpu:
    """Measures one step: ``start()`` before the SIPp pair starts, ``stop(calls)`` after both are reaped."""

    def __init__(self, gateway_pid: int, redis_pid: int) -> None:
        self.gateway_pid = gateway_pid
        self.redis_pid = redis_pid
        self._start: tuple[ProcessTimes, ProcessTimes, ProcessTimes] | None = None

    def start(self) -> None:
        self._start = (process_times(self.gateway_pid), process_times(self.redis_pid), children_times())

    def stop(self, calls: int) -> CpuSplit:
        if self._start is None:
            raise RuntimeError("stop() before start()")
        gateway0, redis0, children0 = self._start
        self._start = None
        return CpuSplit(calls=calls, gateway=process_times(self.gateway_pid) - gateway0,
                        redis=process_times(self.redis_pid) - redis0, sipp=children_times() - children0)
