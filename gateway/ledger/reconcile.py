"""Check an organization's books: the audit stream, the CDRs and the balance must agree.

Used by ``creditgate reconcile`` (exit 1 on any difference) and by every fault test as its
invariant checker. It only reads; it never repairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rating_core.money import format_money as _m

from gateway.ledger.client import Ledger, LedgerUnavailable
from gateway.ledger.keys import OrgKeys

__all__ = ["Reconciliation", "reconcile"]


@dataclass(slots=True, kw_only=True)
class Reconciliation:
    org: str
    balance: int = 0
    reserved: int = 0
    audit_sum: int = 0
    audit_entries: int = 0
    funded: int = 0
    debited: int = 0
    cdr_charges: int = 0
    cdrs: int = 0
    live_calls: int = 0
    live_held: int = 0
    live_committed: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "org": self.org,
            "ok": self.ok,
            "balance": _m(self.balance),
            "reserved": _m(self.reserved),
            "audit_sum": _m(self.audit_sum),
            "audit_entries": self.audit_entries,
            "funded": _m(self.funded),
            "debited": _m(self.debited),
            "cdr_charges": _m(self.cdr_charges),
            "cdrs": self.cdrs,
            "live_calls": self.live_calls,
            "problems": list(self.problems),
        }


async def reconcile(ledger: Ledger, org: str) -> Reconciliation:
    """Every check the books must pass; ``problems`` lists each difference found."""
    rep = Reconciliation(org=org)
    bal = await ledger.balance(org)
    rep.balance, rep.reserved = bal.balance, bal.reserved
    if bal.balance < 0:
        rep.problems.append(f"balance is negative: {_m(bal.balance)}")
    if bal.reserved < 0:
        rep.problems.append(f"reserved is negative: {_m(bal.reserved)}")
    if bal.reserved > bal.balance:
        rep.problems.append(f"reserved {_m(bal.reserved)} exceeds balance {_m(bal.balance)}")

    running = 0
    # What the audit debited each call (refunds count negative): a call charged twice, or charged
    # by a script that wrote no CDR, shows as a difference from its CDR's charge.
    debited_by_call: dict[str, int] = {}
    for entry_id, e in await ledger.audit_entries(org):
        amount, after = int(e["amount"]), int(e["balance"])
        running += amount
        rep.audit_entries += 1
        if after != running:
            rep.problems.append(f"audit {entry_id}: running balance {_m(after)} != sum of entries {_m(running)}")
            running = after
        if after < 0:
            rep.problems.append(f"audit {entry_id}: balance went negative ({_m(after)})")
        if e["type"] in ("fund", "purchase", "recharge"):
            rep.funded += amount
        else:
            rep.debited -= amount
            if e.get("call"):
                debited_by_call[e["call"]] = debited_by_call.get(e["call"], 0) - amount
    rep.audit_sum = running
    if running != bal.balance:
        rep.problems.append(f"balance {_m(bal.balance)} != audit total {_m(running)}")
    elif bal.funded != rep.funded or bal.spent != rep.debited:
        # The account's counters are written by the same scripts as the audit, so they agree with
        # it (when the balance itself does not, that difference is already the one to report).
        rep.problems.append(f"account says funded {_m(bal.funded)} and spent {_m(bal.spent)}, the audit "
                            f"{_m(rep.funded)} and {_m(rep.debited)}")

    seen: set[str] = set()
    for entry_id, c in await ledger.cdr_entries(org):
        rep.cdrs += 1
        cdr_charge = int(c["charge"])
        rep.cdr_charges += cdr_charge
        if cdr_charge < 0:
            rep.problems.append(f"call {c['call']}: CDR charge is negative ({_m(cdr_charge)})")
        if c["call"] in seen:
            rep.problems.append(f"call {c['call']} has more than one CDR ({entry_id})")
        elif debited_by_call.get(c["call"], 0) != cdr_charge:
            rep.problems.append(f"call {c['call']}: CDR charges {_m(cdr_charge)}, the audit debited it "
                                f"{_m(debited_by_call.get(c['call'], 0))}")
        seen.add(c["call"])

    # Every reservation belongs to a live call with a lease, and they add up to 'reserved'.
    live_ids = set(await ledger.live_call_ids(org))
    rep.live_calls = len(live_ids)
    if bal.live != len(live_ids):
        rep.problems.append(f"account counts {bal.live} live calls, {len(live_ids)} hold a lease")
    for call_id, amount in debited_by_call.items():
        if call_id not in seen and call_id not in live_ids and amount != 0:
            rep.problems.append(f"call {call_id}: debited {_m(amount)} but has neither a CDR nor a lease")
    held = committed = 0
    for call_id in live_ids:
        rec = await ledger.call_record(org, call_id)
        if rec.get("st") not in ("held", "live"):
            rep.problems.append(f"lease for call {call_id} that is not live (state {rec.get('st')!r})")
            continue
        held += rec["held"] - rec["com"]
        committed += rec["com"]
        if debited_by_call.get(call_id, 0) != rec["com"]:
            rep.problems.append(f"live call {call_id} committed {_m(rec['com'])}, the audit debited it "
                                f"{_m(debited_by_call.get(call_id, 0))}")
    rep.live_held = held
    rep.live_committed = committed
    # Every debit is either in a CDR (settled calls) or committed by a call still running.
    if rep.cdr_charges + committed != rep.debited:
        rep.problems.append(f"CDR charges {_m(rep.cdr_charges)} + committed by live calls {_m(committed)} "
                            f"!= debits in the audit {_m(rep.debited)}")
    if held != bal.reserved:
        rep.problems.append(f"reserved {_m(bal.reserved)} != sum held by live calls {_m(held)}")
    k = OrgKeys(org)
    try:
        async for key in ledger.client.scan_iter(match=k.call("*"), count=1000):
            name = key.decode() if isinstance(key, bytes) else key
            call_id = name[len(k.call("")):]
            if call_id in live_ids:
                continue
            rec = await ledger.call_record(org, call_id)
            if rec.get("st") in ("held", "live"):
                rep.problems.append(f"call {call_id} holds a reservation without a lease")
    except OSError as exc:  # pragma: no cover - surfaced as an outage, like every Redis error
        raise LedgerUnavailable(str(exc)) from exc
    return rep
