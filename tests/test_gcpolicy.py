"""gateway.gcpolicy: when the process runs its own full collections, and the timing of every collection."""

from __future__ import annotations

import gc

import pytest

from gateway.gcpolicy import FORCE_AFTER, GcPolicy, full_collection_due

HOUR = 3600.0


@pytest.mark.parametrize(
    ("since", "live", "interval", "max_live", "due"),
    [
        (HOUR - 1, 0, HOUR, 1000, False),  # not yet: the interval has not gone by
        (HOUR, 0, HOUR, 1000, True),  # due and quiet
        (HOUR, 1000, HOUR, 1000, True),  # quiet is "at most" max_live calls
        (HOUR, 1001, HOUR, 1000, False),  # due, but too many live calls: wait for a quiet moment
        (HOUR * FORCE_AFTER - 1, 50_000, HOUR, 1000, False),
        (HOUR * FORCE_AFTER, 50_000, HOUR, 1000, True),  # never quiet: forced after FORCE_AFTER intervals
        (10 * HOUR * FORCE_AFTER, 0, 0, 1000, False),  # interval 0: never
    ],
)
def test_full_collection_due(since: float, live: int, interval: float, max_live: int, due: bool) -> None:
    assert full_collection_due(1000.0 + since, 1000.0, live, interval_s=interval, max_live_calls=max_live) is due


def test_install_turns_automatic_full_collections_off_and_uninstall_restores() -> None:
    before = gc.get_threshold()
    policy = GcPolicy(interval_s=HOUR, max_live_calls=10)
    policy.install()
    try:
        t0, t1, t2 = gc.get_threshold()
        assert (t0, t1) == before[:2] and t2 > 10**9
        assert policy._timed in gc.callbacks
    finally:
        policy.uninstall()
    assert gc.get_threshold() == before and policy._timed not in gc.callbacks


def test_collections_are_counted_and_timed_and_the_due_one_runs_once() -> None:
    now = [0.0]
    policy = GcPolicy(interval_s=60.0, max_live_calls=5, clock=lambda: now[0])
    policy.install()
    try:
        gc.collect(0)
        assert policy.collections[0] >= 1 and policy.pause_s[0] > 0 and policy.max_pause_s[0] > 0

        class Node:
            def __init__(self) -> None:
                self.me = self  # a cycle only the collector can free

        for _ in range(100):
            Node()
        assert not policy.collect_if_due(live_calls=0)  # the interval has not gone by
        now[0] = 60.0
        assert not policy.collect_if_due(live_calls=6)  # busy
        full_before = policy.collections[2]
        assert policy.collect_if_due(live_calls=5)
        assert policy.collections[2] == full_before + 1 and policy.collected[2] >= 100
        assert not policy.collect_if_due(live_calls=0)  # and not again until another interval
    finally:
        policy.uninstall()


def test_a_slow_collection_is_logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.gcpolicy as mod

    monkeypatch.setattr(mod, "SLOW_PAUSE_S", 0.0)
    policy = GcPolicy(interval_s=60.0, max_live_calls=5)
    policy.install()
    try:
        with caplog.at_level("WARNING", logger="creditgate.gc"):
            gc.collect(1)
    finally:
        policy.uninstall()
    assert any("garbage collection of generation 1 stopped the process" in r.message and "ms of CPU" in r.message
               for r in caplog.records)


def test_the_gc_keys_of_sip_are_checked_when_the_configuration_is_read() -> None:
    from gateway.config import Config, SipConfig
    from gateway.errors import ConfigError

    assert SipConfig().gc_full_interval_s == 3600 and SipConfig().gc_full_max_live_calls == 1000
    assert Config.from_dict({"sip": {"gc_full_interval_s": 0}}).sip.gc_full_interval_s == 0  # never
    for bad in ({"gc_full_interval_s": -1}, {"gc_full_max_live_calls": -5}):
        with pytest.raises(ConfigError):
            Config.from_dict({"sip": bad})


def test_the_clock_collects_a_young_generation_the_allocation_count_never_notices() -> None:
    # Renewing calls: each step frees an old object and keeps a new one. CPython's young count is
    # allocations minus deallocations of any generation, so it stays put while the young generation
    # grows; the clock's tick collects it anyway (and every GEN1_EVERY-th tick, generation 1 too).
    from gateway.gcpolicy import GEN1_EVERY

    class State:
        def __init__(self) -> None:
            self.peer: object = [self.__class__]

    policy = GcPolicy(interval_s=HOUR, max_live_calls=10)
    gc.collect()
    old = [State() for _ in range(20_000)]
    gc.collect()  # now all old
    assert len(gc.get_objects(0)) < 1000
    kept = []
    for i in range(len(old)):
        kept.append(State())  # two new tracked objects (the instance and its list)...
        old[i] = None  # type: ignore[call-overload]  # ...and two old ones freed
    young = len(gc.get_objects(0))
    assert young > 20_000, young  # the count never reached the threshold: nothing collected them
    generations = [policy.tick() for _ in range(GEN1_EVERY)]
    assert len(gc.get_objects(0)) < 1000 and generations == [0] * (GEN1_EVERY - 1) + [1]
    assert len(gc.get_objects(1)) < 1000  # the GEN1_EVERY-th tick moved them on to the old generation
    del kept, old
