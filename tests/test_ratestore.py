"""The rate deck lives once in Redis; every process follows imports without a restart."""

from __future__ import annotations

import asyncio

from rating_core import RateDeck

from gateway.ratestore import RateStore
from gateway.services import redis_client

HEADER = "prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,connection_fee,effective_from\n"


async def test_a_second_process_sees_an_import_at_once(redis_url: str) -> None:
    importer_client, server_client = redis_client(redis_url), redis_client(redis_url)
    importer, server = RateStore(importer_client), RateStore(server_client)
    changes: list[int] = []
    try:
        await importer.import_deck(RateDeck.from_csv_text(HEADER + "44,UK,0.02,GBP,60,60,0,\n"))
        assert (await server.load()).lookup("+442079460000").rate_per_min == 20_000
        server.watch(lambda deck: changes.append(deck.lookup("+442079460000").rate_per_min), poll_s=30)
        await asyncio.sleep(0.1)  # subscribed
        live_rate = server.deck.lookup("+442079460000")
        await importer.import_deck(RateDeck.from_csv_text(HEADER + "44,UK,0.05,GBP,60,60,0,\n"))
        for _ in range(100):
            if changes:
                break
            await asyncio.sleep(0.02)
        assert changes == [50_000]  # well within the 30 s poll: the published message did it
        assert server.deck.lookup("+442079460000").rate_per_min == 50_000
        assert live_rate.rate_per_min == 20_000  # a call authorized before keeps its Rate object
    finally:
        await server.stop()
        await importer_client.aclose()
        await server_client.aclose()


async def test_future_dated_import_is_scheduled_not_applied(redis_url: str) -> None:
    client = redis_client(redis_url)
    store = RateStore(client)
    try:
        await store.import_deck(RateDeck.from_csv_text(HEADER + "44,UK,0.02,GBP,60,60,0,\n"))
        merged = await store.import_deck(RateDeck.from_csv_text(HEADER + "44,UK,0.09,GBP,60,60,0,2999-01-01\n"))
        assert merged.lookup("+442079460000").rate_per_min == 20_000
        assert merged.lookup("+442079460000", at="2999-06-01").rate_per_min == 90_000
        assert len(merged.versions()) == 2
    finally:
        await client.aclose()
