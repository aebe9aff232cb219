"""The work-queue streams (outbox, purchases) are trimmed of what every group has handled, and nothing else."""

from __future__ import annotations

import time

import redis.asyncio

from gateway.ledger.keys import GLOBAL, OrgKeys
from gateway.notify.streams import OrgStreamConsumer

DAY = 86400


async def test_trim_drops_old_handled_entries_and_keeps_pending_undelivered_and_recent(
        redis_client: redis.asyncio.Redis) -> None:
    org = "trimco"
    stream = OrgKeys(org).outbox
    await redis_client.hset(GLOBAL.orgs, org, "{}")
    now_ms = int(time.time() * 1000)
    old = [f"{now_ms - (30 - i) * DAY * 1000}-0" for i in range(6)]  # 30..25 days old
    for eid in old:
        await redis_client.xadd(stream, {"kind": "balance_zero"}, id=eid)
    recent = await redis_client.xadd(stream, {"kind": "balance_zero"})

    handled: list[str] = []

    async def handler(_org: str, eid: str, _fields: dict[str, str]) -> bool:
        handled.append(eid)
        return eid != old[3]  # old[3] fails: stays pending in the group

    consumer = OrgStreamConsumer(redis_client, stream_of=lambda o: OrgKeys(o).outbox, group="mailer",
                                 handler=handler, retention_s=7 * DAY, backoff_s=3600, batch=4)
    await consumer._ensure_group(org)
    await consumer._read_new(org)  # the first four: old[0..3]
    await consumer.idle()
    assert handled == old[:4]
    # A second group that has been handed nothing yet holds everything back.
    await redis_client.xgroup_create(stream, "webhooks", id="0")
    assert await consumer.trim(org) == 0
    await redis_client.xgroup_destroy(stream, "webhooks")

    # old[0..2] are acknowledged: gone; old[3] is pending; old[4], old[5] not delivered yet; recent is recent.
    assert await consumer.trim(org) == 3
    left = [eid.decode() for eid, _ in await redis_client.xrange(stream)]
    assert left == [*old[3:], recent.decode()]

    # Once everything is handled, only what is younger than the retention stays.
    consumer.handler = lambda _o, _e, _f: _done()
    await consumer._read_new(org)
    await consumer.idle()
    await redis_client.xack(stream, "mailer", old[3])
    assert await consumer.trim(org) == 3
    assert [eid.decode() for eid, _ in await redis_client.xrange(stream)] == [recent.decode()]
    assert await consumer.trim(org) == 0
    assert await consumer.trim("no-such-org") == 0


async def _done() -> bool:
    return True
