"""Background tasks stop on shutdown even when redis-py loses their cancellation (gateway.aio).

A task cancelled while redis-py waits for a pub/sub message or a reply can see the cancellation
swallowed (the call returns as if its timeout had passed) or turned into a TimeoutError. The
directory and rate-deck watchers and the housekeeping loop then used to carry on, and the process
waited for them for ever on SIGTERM. Here redis-py's ``PubSub.get_message`` (and the sweep's ledger
read) is wrapped to do exactly that, against a real Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio.client import PubSub

from gateway.aio import stop_task
from gateway.config import CreditConfig
from gateway.credit import CreditEngine
from gateway.directory import Directory, DirectoryCache
from gateway.ledger.client import Ledger, LedgerUnavailable
from gateway.ratestore import RateStore
from gateway.services import redis_client

_real_get_message = PubSub.get_message
_lost: list[int] = []  # cancellations lost so far: one per test (a later one gets through)


def _losing_once(lost: Callable[[], Any]) -> Callable[..., Awaitable[Any]]:
    """``PubSub.get_message`` that loses the first cancellation of a test: ``lost()`` is what the
    cancelled call does instead (returns as if its wait timed out, or raises a TimeoutError)."""

    async def get_message(self: PubSub, *args: Any, **kwargs: Any) -> Any:
        try:
            return await _real_get_message(self, *args, **kwargs)
        except asyncio.CancelledError:
            if _lost:
                raise
            _lost.append(1)
            return lost()

    return get_message


def _timeout() -> None:
    raise TimeoutError("Timeout reading from socket")


_swallowing = _losing_once(lambda: None)
_as_timeout = _losing_once(_timeout)


async def _directory_watch(client: Any) -> tuple[Callable[[], Awaitable[None]], Callable[[], Any]]:
    cache = DirectoryCache(Directory(client), ttl_s=60.0)
    cache.watch()
    return cache.stop, lambda: cache._task


async def _rates_watch(client: Any) -> tuple[Callable[[], Awaitable[None]], Callable[[], Any]]:
    store = RateStore(client)
    store.watch(None, poll_s=30)
    return store.stop, lambda: store._watch_task


@pytest.mark.parametrize("lose", [_swallowing, _as_timeout], ids=["swallowed", "as_timeout"])
@pytest.mark.parametrize("start", [_directory_watch, _rates_watch], ids=["directory", "rates"])
async def test_a_watch_stops_at_once_when_redis_py_loses_the_cancellation(
        redis_url: str, monkeypatch: pytest.MonkeyPatch, start: Any, lose: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(PubSub, "get_message", lose)
    _lost.clear()
    client = redis_client(redis_url)
    try:
        stop, task_of = await start(client)
        task = task_of()
        await asyncio.sleep(0.3)  # subscribed, waiting for a message (30 s wait)
        assert not task.done()
        started = time.monotonic()
        await stop()
        elapsed = time.monotonic() - started
        assert _lost, "the cancellation was not lost: the case under test did not happen"
        assert task.done() and task.cancelled(), task
        assert elapsed < 2.0, elapsed  # not the 5 s bound of stop_task, nor the 30 s of the next wait
        assert "did not stop" not in caplog.text
    finally:
        await client.aclose()


async def test_stop_task_gives_up_on_a_task_that_will_not_stop(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue  # ignores every cancellation

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    caplog.set_level(logging.WARNING, logger="creditgate")
    started = time.monotonic()
    assert await stop_task(task, "the stubborn task", timeout_s=0.3) is False
    assert 0.25 < time.monotonic() - started < 2.0
    assert "the stubborn task did not stop" in caplog.text
    release.set()
    await asyncio.wait_for(task, 2)
    # a task that ends when asked is waited for, and True says so
    assert await stop_task(asyncio.ensure_future(asyncio.sleep(30)), "a sleeper") is True
    assert await stop_task(None, "nothing") is True


async def test_housekeeping_stops_when_its_ledger_read_turns_the_cancellation_into_an_outage(
        redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sweep's Redis read is cancelled; redis-py reports it as a timeout, which the ledger maps to
    # LedgerUnavailable, which housekeeping logs and waits out: it used to sweep on for ever.
    client = redis_client(redis_url)
    directory = Directory(client)
    engine = CreditEngine(ledger=Ledger(client), directory=directory, rates=RateStore(client),
                          config=CreditConfig(debit_interval_s=60))
    await directory.create_org("Acme", country="GB", currency="GBP")
    reads: list[int] = []

    async def slow_expire_due(org: str) -> list[Any]:
        reads.append(1)
        try:
            await asyncio.sleep(30)  # Redis slow to answer
        except asyncio.CancelledError:
            if len(reads) > 1:
                raise  # one cancellation lost is the case under test; a later one gets through
            raise LedgerUnavailable("ledger unreachable: Timeout reading from socket") from None
        return []

    monkeypatch.setattr(engine.ledger, "expire_due", slow_expire_due)
    try:
        task = asyncio.ensure_future(engine.run_housekeeping(0.05))
        await asyncio.sleep(0.2)
        assert reads  # inside the sweep's read
        started = time.monotonic()
        assert await stop_task(task, "housekeeping", timeout_s=3.0)
        assert time.monotonic() - started < 1.0 and task.cancelled()
        assert len(reads) == 1  # it did not sweep again after being asked to stop
    finally:
        await client.aclose()
