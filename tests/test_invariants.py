"""The shared books checker (tests/_invariants.py) passes sound books and names every broken invariant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.ledger.client import Ledger, RateTerms
from gateway.ledger.keys import OrgKeys
from gateway.services import redis_client

try:
    from _invariants import assert_books, check_books
except ImportError:  # pragma: no cover
    from tests._invariants import assert_books, check_books

ORG = "acme"
FUNDED = 5_000_000
TERMS = RateTerms(connection_fee=10_000, rate_per_min=60_000, initial_increment_s=1, subsequent_increment_s=1)
K = OrgKeys(ORG)


@pytest.fixture
async def ledger(redis_url: str) -> AsyncIterator[Ledger]:
    client = redis_client(redis_url, timeout_s=5.0)
    try:
        led = Ledger(client)
        await led.fund(ORG, FUNDED)
        yield led
    finally:
        await client.aclose()


async def _call(ledger: Ledger, call_id: str, seconds: int | None = 30, sip: str = "") -> Any:
    """A call reserved and, unless ``seconds`` is None, settled after that long."""
    grant = await ledger.reserve(ORG, call_id, pays="credits", terms=TERMS, chunk_s=60, lease_ms=60_000,
                                 meta={"sip_call_id": sip} if sip else None)
    assert grant.ok
    if seconds is not None:
        month = await ledger.call_month(ORG, call_id)
        assert month is not None
        await ledger.settle(ORG, call_id, 1, month=month, answered=True, duration_ms=seconds * 1000,
                            end_reason="normal")
    return grant


async def _problems(ledger: Ledger, **kw: Any) -> str:
    with pytest.raises(AssertionError) as failed:
        await check_books(ledger, ORG, **kw)
    return str(failed.value)


async def test_sound_books_pass_and_say_what_was_charged(ledger: Ledger) -> None:
    await _call(ledger, "c1", 30, sip="sip-1@pbx")
    await _call(ledger, "c2", 0)
    books = await check_books(ledger, ORG, funded=FUNDED, calls={"sip-1@pbx", "c2"})
    assert (books.charged, books.lost, len(books.cdrs)) == (40_000 + 11_000, 0, 2)  # 0 s answered: fee + 1 s
    assert (await check_books(ledger, ORG, funded=FUNDED, calls=2)).charged == 51_000


def test_the_synchronous_face_reads_a_redis_url(redis_url: str) -> None:
    with pytest.raises(AssertionError, match="funded 0 according to the audit, expected 1"):
        assert_books(redis_url, ORG, funded=1)
    assert assert_books(redis_url, ORG, funded=0, calls=0).lost == 0


async def test_a_call_without_its_cdr_a_stranger_and_the_wrong_funding_are_named(ledger: Ledger) -> None:
    await _call(ledger, "c1")
    text = await _problems(ledger, funded=FUNDED + 1, calls={"c9"})
    assert "funded 5000000 according to the audit, expected 5000001" in text
    assert "CDR of call c1" in text and "1 calls without a CDR, e.g. ['c9']" in text
    assert "2 CDRs, expected" not in text
    assert "1 CDRs, expected 2" in await _problems(ledger, funded=FUNDED, calls=2)


async def test_a_second_cdr_of_one_call_is_named(ledger: Ledger) -> None:
    await _call(ledger, "c1")
    await ledger.client.xadd(K.cdrs, {"call": "c1", "charge": "0", "meta": "{}", "extra": "{}"})
    text = await _problems(ledger, funded=FUNDED, calls={"c1"})
    assert "call c1 has more than one CDR" in text and "1 calls with more than one CDR" in text


async def test_a_call_still_live_is_named_when_the_fault_should_be_over(ledger: Ledger) -> None:
    await _call(ledger, "c1", None)
    text = await _problems(ledger, funded=FUNDED)
    assert "1 leases and 1 live calls left" in text and "70000 micro-units still reserved" in text
    await check_books(ledger, ORG, funded=FUNDED, calls=0, idle=False)  # fine while the call runs


async def test_a_reservation_without_a_lease_is_named(ledger: Ledger) -> None:
    await _call(ledger, "c1", None)
    await ledger.client.zrem(K.leases, "c1")
    text = await _problems(ledger, funded=FUNDED, idle=False)
    assert "call c1 holds a reservation without a lease" in text


async def test_money_debited_twice_or_without_a_cdr_is_named(ledger: Ledger) -> None:
    await _call(ledger, "c1")
    # A second debit of the call, as a replayed script that was not idempotent would write it.
    bal = (await ledger.balance(ORG)).balance
    await ledger.client.xadd(K.audit, {"type": "debit", "amount": "-40000", "balance": str(bal - 40_000),
                                       "call": "c1", "seq": "1", "ts": "", "note": "settle"})
    text = await _problems(ledger, funded=FUNDED, calls={"c1"})
    assert "call c1: CDR charges 0.04, the audit debited it 0.08" in text
    assert "balance 4.96 != audit total 4.92" in text
