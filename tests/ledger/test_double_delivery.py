"""The same ledger script call delivered twice, the first reply arriving too late (issue 8, item 3).

Between the credit engine's Redis client and a real redis-server sits a small TCP proxy that passes
requests at once but holds Redis's replies for longer than the client's timeout: the script has
run, the caller sees a timeout, and retries with the same key (call id; call id and seq). Whatever
the engine does then, nothing is charged twice, nothing stays reserved, and every call that
reached the ledger ends with exactly one CDR (checked by tests/_invariants.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.config import CreditConfig
from gateway.credit import CreditEngine, CreditRefused
from gateway.directory import Directory, Org
from gateway.ledger.client import _SCRIPTS, Ledger
from gateway.ratestore import RateStore
from gateway.services import redis_client
from rating_core import RateDeck

try:
    from _invariants import check_books
except ImportError:  # pragma: no cover
    from tests._invariants import check_books

DECK = """prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,connection_fee,effective_from
+4420,London,0.06,GBP,1,1,0.01,
"""
LONDON = "+442079460000"
UNIT = 1_000_000
FUNDED = 10 * UNIT
TIMEOUT_S = 0.3  # the client's socket timeout; replies are held for longer than this
LATE_S = 1.0


def london(seconds: int) -> int:
    """Price of an answered London call of ``seconds`` (1/1 increments, 0.06 a minute, 0.01 fee)."""
    return 10_000 + 1_000 * seconds


class LateReplyProxy:
    """A loopback TCP proxy to redis-server that can hold the server's replies for ``LATE_S``.

    ``late(n)``: the next ``n`` reply chunks (``None``: all until ``on_time()``) reach the client
    only after ``LATE_S`` seconds, by when it has given up on them. Requests are never held: the
    scripts run at once, which is what makes the late reply a late *success*.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._late: int | None = 0
        self.held = 0  # reply chunks held so far
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> LateReplyProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def late(self, n: int | None = 1) -> None:
        self._late = n

    def on_time(self) -> None:
        self._late = 0

    def _hold_this(self) -> bool:
        if self._late is None:
            return True
        if self._late > 0:
            self._late -= 1
            return True
        return False

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        for coro in (self._pump(reader, up_writer, hold=False), self._pump(up_reader, writer, hold=True)):
            task = asyncio.ensure_future(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold: bool) -> None:
        try:
            while data := await reader.read(65536):
                if hold and self._hold_this():
                    self.held += 1
                    await asyncio.sleep(LATE_S)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self._writers:
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.wait_closed()


@dataclass
class World:
    engine: CreditEngine
    ledger: Ledger
    proxy: LateReplyProxy
    org: Org
    alice: Any


@pytest.fixture(params=["direct", "pipelined"])
async def world(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[World]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = await LateReplyProxy(port).start()
    seed = redis_client(redis_url, timeout_s=5.0)
    client = redis_client(proxy.url, timeout_s=TIMEOUT_S)
    ledger = Ledger(client, pipeline=request.param == "pipelined")
    try:
        # Scripts loaded beforehand: a late NOSCRIPT reply would be a failure, not a late success.
        for text in _SCRIPTS.values():
            await seed.script_load(text)
        directory = Directory(seed)
        rates = RateStore(seed)
        await rates.save(RateDeck.from_csv_text(DECK))
        await rates.load()
        org, _ = await directory.create_org("Acme", country="GB", currency="GBP")
        alice = await directory.add_user(org, "alice", number="+442079460001", licence=True, plan="none")
        await ledger.fund(org.id, FUNDED)  # through the proxy: its connection is open before any reply is held
        config = CreditConfig(debit_interval_s=60, outage_grace_s=5, fail_open_max_s=120, fail_open_max_amount="1.00")
        engine = CreditEngine(ledger=ledger, directory=directory, rates=rates, config=config)
        yield World(engine=engine, ledger=Ledger(seed), proxy=proxy, org=org, alice=alice)
    finally:
        await ledger.close()
        await client.aclose()
        await proxy.close()
        await seed.aclose()


async def _settled(w: World, auth: Any, **kw: Any) -> Any:
    """Settle through the proxy, every reply on time."""
    w.proxy.on_time()
    s = await w.engine.settle(auth, **kw)
    assert s is not None and s.ok, s
    return s


async def test_a_late_reserve_reply_is_retried_and_gets_the_one_reservation_it_made(world: World) -> None:
    w = world
    w.proxy.late(1)
    auth = await w.engine.authorize(w.org, call_id="c1", dialed=LONDON, user=w.alice)
    assert w.proxy.held == 1 and not auth.fail_open
    bal = await w.ledger.balance(w.org.id)
    assert (bal.live, bal.reserved) == (1, auth.grant.held) == (1, london(60))  # held once, not twice
    await _settled(w, auth, answered=True, duration_ms=42_300, end_reason="normal")
    books = await check_books(w.ledger, w.org.id, funded=FUNDED, calls={"c1"})
    assert books.charged == london(43)


async def test_a_reserve_that_never_answers_in_time_is_refused_503_and_its_late_reservation_released(
        world: World) -> None:
    w = world
    w.proxy.late(None)
    with pytest.raises(CreditRefused) as refused:
        await w.engine.authorize(w.org, call_id="c1", dialed=LONDON, user=w.alice)
    assert refused.value.refusal.status == 503 and refused.value.refusal.retry_after
    # The reservation was made (its reply held): it holds money for a call that was refused.
    bal = await w.ledger.balance(w.org.id)
    assert (bal.live, bal.reserved) == (1, london(60))
    assert w.engine.pending_settlements == 1
    w.proxy.on_time()
    assert await w.engine.retry_pending() == 0
    books = await check_books(w.ledger, w.org.id, funded=FUNDED, calls={"c1"})
    (cdr,) = books.cdrs
    assert (cdr["charge"], cdr["answered"], cdr["end_reason"]) == ("0", "0", "ledger_outage")
    # Releasing again (a retry after a restart) changes nothing.
    await w.engine.ledger.settle(w.org.id, "c1", 1, month=(await w.ledger.call_month(w.org.id, "c1")) or "",
                                 answered=False, duration_ms=0, end_reason="ledger_outage")
    await check_books(w.ledger, w.org.id, funded=FUNDED, calls={"c1"})


async def test_a_late_extend_reply_is_retried_with_the_same_seq_and_commits_once(world: World) -> None:
    w = world
    auth = await w.engine.authorize(w.org, call_id="c1", dialed=LONDON, user=w.alice)
    w.proxy.late(1)
    grant = await w.engine.extend(auth, remaining_s=10)
    assert w.proxy.held == 1
    assert (grant.reason, grant.granted_s, auth.seq) == ("ok", 120, 1)  # the call goes on, not cut short
    audit = [e for _, e in await w.ledger.audit_entries(w.org.id) if e["call"] == "c1"]
    # Committed once: what the call surely used when its first chunk began (the fee, one increment).
    assert [(e["note"], e["amount"]) for e in audit] == [("chunk", str(-london(1)))]
    await _settled(w, auth, answered=True, duration_ms=95_000, end_reason="normal")
    books = await check_books(w.ledger, w.org.id, funded=FUNDED, calls={"c1"})
    assert books.charged == london(95)


async def test_an_extend_without_a_timely_reply_ends_the_call_on_grace_and_bills_what_the_late_chunk_covers(
        world: World) -> None:
    w = world
    auth = await w.engine.authorize(w.org, call_id="c1", dialed=LONDON, user=w.alice)
    w.proxy.late(None)
    grant = await w.engine.extend(auth, remaining_s=10)
    assert (grant.reason, grant.final, grant.granted_s) == ("ledger_outage", True, 65)  # 60 s + 5 s grace
    # The extend ran in Redis all the same: the chunk was committed and the next one held, once.
    rec = await w.ledger.call_record(w.org.id, "c1")
    assert (rec["seq"], rec["com"], rec["g"], rec["held"]) == (1, london(1), 120, london(120))
    await _settled(w, auth, answered=True, duration_ms=65_000, end_reason="ledger_outage")
    books = await check_books(w.ledger, w.org.id, funded=FUNDED, calls={"c1"})
    assert books.charged == london(65)


async def test_a_settle_whose_reply_is_late_is_kept_retried_and_charges_once(world: World) -> None:
    w = world
    auth = await w.engine.authorize(w.org, call_id="c1", dialed=LONDON, user=w.alice)
    w.proxy.late(None)
    assert await w.engine.settle(auth, answered=True, duration_ms=30_000, end_reason="normal") is None
    assert w.engine.pending_settlements == 1
    assert len(await w.ledger.cdr_entries(w.org.id)) == 1  # it ran: the CDR is there already
    w.proxy.on_time()
    assert await w.engine.retry_pending() == 0
    assert auth.settled is not None and auth.settled.charge == london(30)
    books = await check_books(w.ledger, w.org.id, funded=FUNDED, calls={"c1"})
    assert books.charged == london(30)


@pytest.mark.parametrize("seconds", [45, 150])
async def test_a_fail_open_call_whose_reservation_landed_late_is_settled_against_it(world: World,
                                                                                   seconds: int) -> None:
    w = world
    w.engine.config = CreditConfig(debit_interval_s=60, on_ledger_outage="fail_open", fail_open_max_s=300,
                                   fail_open_max_amount="1.00")
    w.proxy.late(None)
    auth = await w.engine.authorize(w.org, call_id="c1", dialed=LONDON, user=w.alice)
    assert auth.fail_open and auth.granted_s == 300
    assert (await w.ledger.balance(w.org.id)).reserved == london(60)  # the late reservation: one chunk
    # Charged its whole duration, also beyond the chunk the late reservation held.
    s = await _settled(w, auth, answered=True, duration_ms=seconds * 1000, end_reason="normal")
    assert s.charge == london(seconds)
    books = await check_books(w.ledger, w.org.id, funded=FUNDED, calls={"c1"})
    assert books.cdrs[0]["extra"]["fail_open"] is True and books.charged == london(seconds)
