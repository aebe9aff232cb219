"""The books invariants every fault test asserts once its fault is over (issue 8, item 7).

``assert_books(target, org, funded=..., calls=...)`` raises one ``AssertionError`` listing every
problem found, or returns what it read (``Books``). ``target`` is a Redis URL (the function opens
and closes its own ledger; call it from synchronous tests) or a ``Ledger`` (then use
``await check_books(ledger, ...)`` from asynchronous tests, which does the same).

What it asserts, on top of ``gateway.ledger.reconcile.reconcile`` (what ``creditgate reconcile``
checks: balance >= 0 at every audit entry, the running balances add up, sum(audit) = balance,
CDR charges + committed by live calls = debits, one CDR per ledger call id, each call's audit
debits = its CDR charge, every reservation held by a call with a lease, the account's counters
agree with the audit):

* the organization was funded exactly ``funded`` micro-units (the audit's fund entries);
* every CDR charges >= 0, and what a fail-open call could not collect is >= 0;
* ``calls``: the calls that must each have exactly one CDR. An ``int`` is how many CDRs there
  must be; a collection of ids is matched against each CDR's ledger call id or its SIP Call-ID
  (``extra.sip_call_id`` or ``meta.sip_call_id``): each id exactly one CDR, and no CDR of a call
  not listed;
* ``idle=True`` (the default; the fault is over, nothing is live): no lease, nothing reserved, the
  account's live counter 0, and balance = ``funded`` - sum(CDR charges): not one micro-unit
  charged twice, lost or invented.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from gateway.ledger.client import Balance, Ledger
from gateway.ledger.reconcile import Reconciliation, reconcile
from gateway.services import redis_client

__all__ = ["Books", "assert_books", "cdr_sip_call_id", "check_books"]


@dataclass(slots=True, kw_only=True)
class Books:
    """What the check read: the reconciliation, the account and the CDRs (meta/extra decoded)."""

    reconciliation: Reconciliation
    balance: Balance
    cdrs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def charged(self) -> int:
        return sum(int(c["charge"]) for c in self.cdrs)

    @property
    def lost(self) -> int:
        """Micro-units that left the balance without a CDR charging them (or appeared from nowhere)."""
        return self.reconciliation.funded - self.balance.balance - self.charged


def cdr_sip_call_id(cdr: dict[str, Any]) -> str:
    """The SIP Call-ID of the caller's leg a CDR belongs to, when the gateway recorded it."""
    return str(cdr["extra"].get("sip_call_id") or cdr["meta"].get("sip_call_id") or "")


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def check_books(ledger: Ledger, org: str = "acme", *, funded: int,
                      calls: int | Collection[str] | None = None, idle: bool = True) -> Books:
    """``assert_books`` on an open ledger (asynchronous tests)."""
    rep = await reconcile(ledger, org)
    bal = await ledger.balance(org)
    cdrs = []
    for _, raw in await ledger.cdr_entries(org):
        rec: dict[str, Any] = dict(raw)
        rec["meta"], rec["extra"] = _json(raw.get("meta")), _json(raw.get("extra"))
        cdrs.append(rec)
    books = Books(reconciliation=rep, balance=bal, cdrs=cdrs)
    problems = list(rep.problems)

    if rep.funded != funded:
        problems.append(f"funded {rep.funded} according to the audit, expected {funded}")
    for c in cdrs:
        if int(c.get("uncollected", 0) or 0) < 0:
            problems.append(f"call {c['call']}: uncollected {c['uncollected']} is negative")

    if isinstance(calls, int):
        if len(cdrs) != calls:
            problems.append(f"{len(cdrs)} CDRs, expected {calls}")
    elif calls is not None:
        wanted = set(calls)
        found: Counter[str] = Counter()
        for c in cdrs:
            ids = {c["call"], cdr_sip_call_id(c)} & wanted
            if not ids:
                problems.append(f"CDR of call {c['call']} (SIP {cdr_sip_call_id(c) or '?'}) is of no expected call")
            for i in ids:
                found[i] += 1
        missing = sorted(i for i in wanted if found[i] == 0)
        doubled = sorted(i for i in wanted if found[i] > 1)
        if missing:
            problems.append(f"{len(missing)} calls without a CDR, e.g. {missing[:5]}")
        if doubled:
            problems.append(f"{len(doubled)} calls with more than one CDR, e.g. {doubled[:5]}")

    if idle:
        if rep.live_calls or bal.live:
            problems.append(f"{rep.live_calls} leases and {bal.live} live calls left after the fault")
        if bal.reserved:
            problems.append(f"{bal.reserved} micro-units still reserved after the fault")
        if books.lost:
            problems.append(f"balance {bal.balance} != funded {rep.funded} - CDR charges {books.charged}: "
                            f"{books.lost} micro-units lost")
    if problems:
        raise AssertionError(f"the books of {org} are wrong:\n  " + "\n  ".join(problems))
    return books


def assert_books(target: str | Ledger, org: str = "acme", *, funded: int,
                 calls: int | Collection[str] | None = None, idle: bool = True) -> Books:
    """Assert every invariant of the module docstring; ``target`` a Redis URL or a ``Ledger``
    (from synchronous code only: it runs its own event loop)."""

    async def go() -> Books:
        if isinstance(target, Ledger):
            return await check_books(target, org, funded=funded, calls=calls, idle=idle)
        client = redis_client(target, timeout_s=5.0)
        try:
            return await check_books(Ledger(client), org, funded=funded, calls=calls, idle=idle)
        finally:
            await client.aclose()

    return asyncio.run(go())
