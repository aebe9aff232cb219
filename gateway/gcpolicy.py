"""Keep CPython's cyclic garbage collector from stopping the event loop for seconds under load.

A full (generation 2) collection walks every tracked object of the process. With tens of thousands of
live calls (~80 tracked objects each) that is millions of objects, and on the reference machine a
full collection over 1.4 million took 2.4 s: INVITEs queue past their retransmission timers and get
503, chunk renewals and the BYE at the paid end run late. CPython runs one whenever the old
generation grew by a quarter, so a process ramping up to 50,000 calls stops again and again, longer
each time.

What the gateway does instead:

* Call state is freed by reference counting: a call breaks its own reference cycles once it is
  forgotten (``B2BUA._forget``), so ended calls never wait for the collector
  (tests/b2bua/test_call_memory.py runs calls with the collector off and checks nothing is left).
* The young generations are collected as usual (cheap: they hold only what was allocated lately, and
  that is where short-lived cycles such as exception tracebacks die), and on a clock as well: CPython
  counts the young generation as allocations minus deallocations of objects of *any* generation, so
  while live calls renew (old objects freed, as many new ones kept) the count stays near zero and the
  young generation grows unseen. Measured with 50,000 held calls: 245,874 objects in generation 1
  and single young collections of 100-250 ms. Every ``YOUNG_EVERY_S`` the process collects
  generation 0, and every ``GEN1_EVERY``-th time generation 1, whatever the count says.
* Automatic full collections are off; the process runs one itself when it is quiet (at most
  ``gc_full_max_live_calls`` live calls) and at least ``gc_full_interval_s`` after the last, and in
  any case once ``FORCE_AFTER`` intervals went by without a quiet moment, so that cyclic garbage that
  reached the old generation is bounded in time.
* Every collection is timed (``gc.callbacks``): pauses per generation are metrics, and a pause longer
  than ``SLOW_PAUSE_S`` is logged.

``full_collection_due`` is the policy, free of I/O and clocks; ``GcPolicy`` applies it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FORCE_AFTER", "GEN1_EVERY", "SLOW_PAUSE_S", "YOUNG_EVERY_S", "GcPolicy", "full_collection_due"]

log = logging.getLogger("creditgate.gc")

# A full collection skipped for want of a quiet moment runs anyway after this many intervals.
FORCE_AFTER = 24
SLOW_PAUSE_S = 0.1
YOUNG_EVERY_S = 0.1
GEN1_EVERY = 10
# Generation 2's threshold counts generation-1 collections; this many never happens in practice.
_NEVER = 2**31 - 1


def full_collection_due(now: float, last: float, live_calls: int, *, interval_s: float, max_live_calls: int) -> bool:
    """Whether the process should run a full collection now (``interval_s`` 0: never)."""
    if interval_s <= 0:
        return False
    since = now - last
    if since >= interval_s * FORCE_AFTER:
        return True
    return since >= interval_s and live_calls <= max_live_calls


class GcPolicy:
    """Installs the thresholds and the pause timer; ``run`` schedules the full collections."""

    def __init__(self, *, interval_s: float, max_live_calls: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.max_live_calls = max_live_calls
        self.clock = clock
        self.collections = [0, 0, 0]
        self.pause_s = [0.0, 0.0, 0.0]
        self.max_pause_s = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self.last_full = clock()
        self._started = 0.0
        self._started_cpu = 0.0
        self._ticks = 0
        self._saved: tuple[int, int, int] | None = None

    def install(self) -> None:
        t0, t1, _ = gc.get_threshold()
        self._saved = gc.get_threshold()
        gc.set_threshold(t0, t1, _NEVER)
        gc.callbacks.append(self._timed)

    def uninstall(self) -> None:
        if self._timed in gc.callbacks:
            gc.callbacks.remove(self._timed)
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            self._saved = None

    def _timed(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._started_cpu = time.process_time()
            return
        gen = info["generation"]
        pause = time.perf_counter() - self._started
        self.collections[gen] += 1
        self.pause_s[gen] += pause
        self.collected[gen] += info["collected"]
        self.max_pause_s[gen] = max(self.max_pause_s[gen], pause)
        if pause > SLOW_PAUSE_S:
            # The CPU time tells a long collection from a process the machine took the CPU from.
            log.warning("garbage collection of generation %d stopped the process for %.0f ms (%.0f ms of CPU; "
                        "%d objects freed)", gen, pause * 1000, (time.process_time() - self._started_cpu) * 1000,
                        info["collected"])

    def collect_if_due(self, live_calls: int) -> bool:
        now = self.clock()
        if not full_collection_due(now, self.last_full, live_calls, interval_s=self.interval_s,
                                   max_live_calls=self.max_live_calls):
            return False
        self.last_full = now
        started = time.perf_counter()
        freed = gc.collect()
        log.info("full garbage collection with %d live calls: %d objects freed in %.0f ms", live_calls, freed,
                 (time.perf_counter() - started) * 1000)
        return True

    def tick(self) -> int:
        """The clock's young collection: generation 0, or every GEN1_EVERY-th tick generation 1."""
        self._ticks += 1
        generation = 1 if self._ticks % GEN1_EVERY == 0 else 0
        gc.collect(generation)
        return generation

    async def run(self, live_calls: Callable[[], int], check_every_s: float = 10.0) -> None:
        checked = self.clock()
        while True:
            await asyncio.sleep(YOUNG_EVERY_S)
            self.tick()
            if self.clock() - checked >= check_every_s:
                checked = self.clock()
                self.collect_if_due(live_calls())
