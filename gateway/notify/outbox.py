"""The durable outbox: what each notification entry says, who receives it, and the email it becomes.

The ledger's scripts append the entries to ``OrgKeys(org).outbox`` in the same atomic step as the
change they report, so there is exactly one entry per event:

- ``recharge_succeeded`` (fund.lua, kind 'recharge'): ``amount``, ``balance``, ``ts``;
- ``recharge_failed`` (fund.lua, kind 'recharge_failed'): ``amount``, ``balance``, ``reason``, ``ts``;
- ``balance_zero`` (any debit that takes the balance from above zero to zero): ``balance``, ``ts``.

Amounts are integer micro-units in the entry and decimal strings with the currency in the email;
times are ISO 8601 UTC. Recipients are the organization's users holding one of the notified admin
roles (SPEC section 5, ``ADMIN_ROLES``) and an email address; nobody else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Iterable, Union

from rating_core.money import format_money

from gateway.directory import ADMIN_ROLES, Org, User

__all__ = [
    "RechargeSucceeded",
    "RechargeFailed",
    "BalanceReachedZero",
    "Notification",
    "parse_entry",
    "recipients",
    "render",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RechargeSucceeded:
    org: str
    entry_id: str
    amount: int
    balance: int
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RechargeFailed:
    org: str
    entry_id: str
    amount: int
    balance: int
    reason: str
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BalanceReachedZero:
    org: str
    entry_id: str
    at: str


Notification = Union[RechargeSucceeded, RechargeFailed, BalanceReachedZero]


def _int(fields: dict[str, str], name: str) -> int:
    try:
        return int(fields.get(name) or 0)
    except ValueError:
        return 0


def parse_entry(org: str, entry_id: str, fields: dict[str, str]) -> Notification | None:
    """The notification an outbox entry holds; None for a kind this version does not mail."""
    kind, at = fields.get("kind", ""), fields.get("ts", "")
    if kind == "recharge_succeeded":
        return RechargeSucceeded(org=org, entry_id=entry_id, amount=_int(fields, "amount"),
                                 balance=_int(fields, "balance"), at=at)
    if kind == "recharge_failed":
        return RechargeFailed(org=org, entry_id=entry_id, amount=_int(fields, "amount"),
                              balance=_int(fields, "balance"), reason=fields.get("reason", ""), at=at)
    if kind == "balance_zero":
        return BalanceReachedZero(org=org, entry_id=entry_id, at=at)
    return None


def recipients(users: Iterable[User]) -> list[str]:
    """Email addresses of the users holding a notified admin role, each once, sorted."""
    notified = set(ADMIN_ROLES)
    return sorted({u.email for u in users if u.email and notified.intersection(u.roles)})


def _money(amount: int, org: Org) -> str:
    return f"{format_money(amount)} {org.currency}"


def render(note: Notification, org: Org, *, sender: str, to: str) -> EmailMessage:
    """The email for one notification and one recipient."""
    name = org.name
    if isinstance(note, RechargeSucceeded):
        subject = f"{name}: communications credits recharged with {_money(note.amount, org)}"
        body = (f"The communications credits balance of {name} was recharged automatically.\n\n"
                f"Amount: {_money(note.amount, org)}\n"
                f"Balance: {_money(note.balance, org)}\n"
                f"Time: {note.at}\n")
    elif isinstance(note, RechargeFailed):
        subject = f"{name}: auto-recharge of {_money(note.amount, org)} failed"
        body = (f"An automatic recharge of the communications credits of {name} failed.\n\n"
                f"Amount: {_money(note.amount, org)}\n"
                f"Reason: {note.reason}\n"
                f"Balance: {_money(note.balance, org)}\n"
                f"Time: {note.at}\n\n"
                "No money was added. Fix the payment method, then fund the balance or wait for the next "
                "recharge.\n")
    else:
        subject = f"{name}: communications credits balance reached zero"
        body = (f"The communications credits balance of {name} reached zero.\n\n"
                f"Balance: {_money(0, org)}\n"
                f"Time: {note.at}\n\n"
                "Calls paid with credits, and toll-free numbers, stop until the balance is funded.\n")
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    # Stable per entry and recipient: a duplicate that slips through is recognisable downstream.
    domain = sender.rpartition("@")[2] or "creditgate"
    rcpt = hashlib.sha256(to.encode()).hexdigest()[:12]
    msg["Message-ID"] = f"<cg.{note.org}.{note.entry_id}.{rcpt}@{domain}>"
    msg["X-Creditgate-Notification"] = f"{note.org}/{note.entry_id}"
    msg.set_content(body)
    return msg
