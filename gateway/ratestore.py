"""Keep the rate deck in Redis once and a live, hot-replaced copy of it in every process.

The stored form is the deck's own CSV text (every version, with effective dates), so what an
operator imports, what Redis holds and what each process loads are the same thing. An import
merges into the stored deck (a version with the same effective date is replaced, future-dated
versions are scheduled), bumps a version counter and publishes on a channel; every process
reloads on that message, and also checks the counter on a timer in case a message was missed.
A live call keeps the rate it was authorized with: it copied the terms into its reservation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from redis.exceptions import RedisError, WatchError

from rating_core import RateDeck

from gateway.aio import reraise_cancel, stop_task
from gateway.ledger.client import LedgerUnavailable
from gateway.ledger.keys import DECK_CHANNEL, GLOBAL

__all__ = ["RateStore"]

log = logging.getLogger("creditgate.rates")


class RateStore:
    """The deck of this process (``deck``), loaded from and saved to Redis."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.deck: RateDeck | None = None
        self.version = -1
        self._watch_task: asyncio.Task[None] | None = None

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except WatchError:
            raise  # a lost race, retried by import_deck; not an outage
        except (RedisError, OSError) as exc:
            raise LedgerUnavailable(f"rate store unreachable: {exc}") from exc

    async def load(self) -> RateDeck | None:
        """Load the stored deck if it changed since the last load."""
        raw_version = await self._call(self.client.get(GLOBAL.deck_version))
        version = int(raw_version or 0)
        if version == self.version and self.deck is not None:
            return self.deck
        text = await self._call(self.client.get(GLOBAL.deck))
        if text is None:
            self.deck, self.version = None, version
            return None
        csv_text = _text(text)
        # Parsing a big deck takes a fraction of a second: keep it off the event loop.
        self.deck = await asyncio.to_thread(RateDeck.from_csv_text, csv_text)
        self.version = version
        log.info("rate deck version %d loaded: %d rates", version, len(self.deck))
        return self.deck

    async def save(self, deck: RateDeck) -> int:
        """Replace the stored deck with ``deck`` (already merged) and tell every process."""
        text = await asyncio.to_thread(deck.to_csv_text)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(GLOBAL.deck, text)
            pipe.incr(GLOBAL.deck_version)
            result = await self._call(pipe.execute())
        return await self._published(deck, int(result[1]))

    async def import_deck(self, new: RateDeck, *, attempts: int = 20) -> RateDeck:
        """Merge ``new`` into the stored deck: same effective date replaced, others kept.

        Optimistic: the stored deck is watched while it is merged, and the merge is redone if
        another import landed meanwhile, so concurrent imports never lose a version.
        """
        for _ in range(attempts):
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await self._call(pipe.watch(GLOBAL.deck, GLOBAL.deck_version))
                    text = await self._call(pipe.get(GLOBAL.deck))
                    if text is None:
                        merged = new
                    else:
                        # Merge into a fresh copy: the loaded deck may be serving live lookups.
                        merged = await asyncio.to_thread(RateDeck.from_csv_text, _text(text))
                        merged.merge(new)
                    out = await asyncio.to_thread(merged.to_csv_text)
                    pipe.multi()
                    pipe.set(GLOBAL.deck, out)
                    pipe.incr(GLOBAL.deck_version)
                    result = await self._call(pipe.execute())
                except WatchError:
                    continue
            await self._published(merged, int(result[1]))
            return merged
        raise LedgerUnavailable("rate deck import kept colliding with other imports; try again")

    async def _published(self, deck: RateDeck, version: int) -> int:
        await self._call(self.client.publish(DECK_CHANNEL, str(version)))
        self.deck, self.version = deck, version
        return version

    def watch(self, on_change: Callable[[RateDeck | None], None] | None = None, poll_s: float = 30.0) -> None:
        """Reload on every published change (and every ``poll_s`` as a safety net)."""
        self._watch_task = asyncio.ensure_future(self._watch(on_change, poll_s))

    async def stop(self) -> None:
        await stop_task(self._watch_task, "rate deck watch")
        self._watch_task = None

    async def _watch(self, on_change: Callable[[RateDeck | None], None] | None, poll_s: float) -> None:
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(DECK_CHANNEL)
                while True:
                    # A message or the poll interval: either way, check the stored version.
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=poll_s)
                    reraise_cancel()  # redis-py may have swallowed it (gateway.aio)
                    before = self.version
                    await self.load()
                    if self.version != before and on_change is not None:
                        on_change(self.deck)
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (RedisError, OSError, LedgerUnavailable) as exc:
                reraise_cancel()  # a cancellation redis-py turned into a TimeoutError
                log.warning("rate deck watch interrupted (%s); retrying", exc)
                await pubsub.aclose()
                await asyncio.sleep(min(poll_s, 5.0))
                reraise_cancel()


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
