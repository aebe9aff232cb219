"""The Redis ledger: balances, reservations, audit stream, CDRs and outbox, changed only by Lua."""

from gateway.ledger.client import (
    MAX_BALANCE_MICROS,
    Balance,
    Funding,
    Grant,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    RateTerms,
    Settlement,
    utc_now_iso,
)
from gateway.ledger.keys import GLOBAL, OrgKeys

__all__ = [
    "GLOBAL",
    "MAX_BALANCE_MICROS",
    "Balance",
    "Funding",
    "Grant",
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "OrgKeys",
    "RateTerms",
    "Settlement",
    "utc_now_iso",
]
