"""Name every Redis key creditgate uses; nothing else in the code decides a key's name.

Every key of one organization carries the hash tag ``{<org>}`` (``cg:{acme}:acct``), so all of
them fall in one Redis Cluster hash slot and a Lua script may touch them atomically. Keys that
are not an organization's (the organization index, trunks, carriers, toll-free numbers, the rate
deck) share the tag ``{global}``; they are never touched by the same script as an
organization's keys.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timezone

from gateway.errors import InvalidInput

__all__ = [
    "ORG_ID_RE",
    "OrgKeys",
    "GlobalKeys",
    "GLOBAL",
    "DECK_CHANNEL",
    "DIRECTORY_CHANNEL",
    "valid_org_id",
    "call_key",
    "month_of",
]

# Organization ids go inside a hash tag and into URLs: lower-case slugs only, never braces.
ORG_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

DECK_CHANNEL = "cg:deck:changed"
DIRECTORY_CHANNEL = "cg:directory:changed"


def valid_org_id(org: str) -> bool:
    return bool(ORG_ID_RE.match(org))


class OrgKeys:
    """The keys of one organization, all in the slot of ``{<org>}``."""

    __slots__ = ("org", "_p")

    def __init__(self, org: str) -> None:
        if not valid_org_id(org):
            raise InvalidInput(f"invalid organization id {org!r}", "org")
        self.org = org
        self._p = f"cg:{{{org}}}:"

    @property
    def profile(self) -> str:
        """Hash: name, country, currency, billing region, dial plan, limits, recharge settings."""
        return self._p + "org"

    @property
    def account(self) -> str:
        """Hash of integers: balance, reserved, live, funded, spent, today's spend, recharge settings."""
        return self._p + "acct"

    def call(self, call_id: str) -> str:
        """Hash: one call's rate, grants, holdings, idempotency results; kept a while after settle."""
        return self._p + "call:" + call_id

    @property
    def leases(self) -> str:
        """Sorted set: live call id -> lease expiry (Redis server time, ms)."""
        return self._p + "leases"

    @property
    def audit(self) -> str:
        """Stream: every balance change with the running balance."""
        return self._p + "audit"

    @property
    def cdrs(self) -> str:
        """Stream: one call detail record per call."""
        return self._p + "cdr"

    @property
    def fundings(self) -> str:
        """Hash: funding idempotency key -> result."""
        return self._p + "fundings"

    @property
    def outbox(self) -> str:
        """Stream: notifications waiting to be mailed (durable outbox)."""
        return self._p + "outbox"

    @property
    def purchases(self) -> str:
        """Stream: payment purchases the ledger decided to start (auto-recharge)."""
        return self._p + "purchases"

    @property
    def grants(self) -> str:
        """Sorted set: reservation id of an unclaimed dial-out grant -> its expiry (epoch ms)."""
        return self._p + "grants"

    @property
    def purchase_attempts(self) -> str:
        """Hash: purchases stream entry id -> provider attempts made so far (bounded retries)."""
        return self._p + "purchase:attempts"

    def outbox_sent(self, entry_id: str) -> str:
        """Set with a TTL: the addresses one outbox entry was already mailed to (no duplicates)."""
        return self._p + "outbox:sent:" + entry_id

    @property
    def allotments(self) -> str:
        """Hash: '<plan>:<bucket>' -> pooled monthly seconds of the organization."""
        return self._p + "allot"

    def minutes(self, month: str) -> str:
        """Hash for one UTC month ('YYYYMM'): '<plan>:<bucket>:used|held' in seconds."""
        return self._p + "min:" + month

    @property
    def users(self) -> str:
        """Hash: user id -> JSON record."""
        return self._p + "users"

    @property
    def user_numbers(self) -> str:
        """Hash: E.164 number -> user id (calling identity lookup)."""
        return self._p + "numbers"

    @property
    def tokens(self) -> str:
        """Hash: sha256(token) -> JSON {role, created, label}."""
        return self._p + "tokens"

    @property
    def registrations(self) -> str:
        """Hash: address-of-record -> JSON contacts with expiry."""
        return self._p + "reg"


class GlobalKeys:
    """Keys that belong to no organization."""

    _p = "cg:{global}:"
    orgs = _p + "orgs"  # hash: org id -> name
    org_names = _p + "orgnames"  # hash: lower-cased name -> org id
    trunks = _p + "trunks"  # hash: trunk id -> JSON
    carriers = _p + "carriers"  # hash: carrier name -> JSON
    tollfree = _p + "tollfree"  # hash: E.164 number -> JSON {org, target}
    deck = _p + "deck"  # string: the rate deck as CSV text (all versions)
    deck_version = _p + "deckver"  # integer: bumped on every deck change
    tokens = _p + "tokens"  # hash: sha256(token) -> JSON {org, role, label, created}
    grant_secret = _p + "grantsecret"  # string: the HMAC secret of dial-out grants, shared by every process
    digest_secret = _p + "digestsecret"  # string: the HMAC secret of SIP digest nonces, shared by every process
    registrations = _p + "reg"  # hash: address-of-record -> JSON contacts with expiry (the registrar)

    @staticmethod
    def digest_replay(key: str) -> str:
        """String with a TTL: a (nonce, nc, cnonce) already used once (digest replay protection)."""
        return "cg:{global}:dr:" + key


GLOBAL = GlobalKeys()


def call_key(org: str, call_id: str) -> str:
    """``OrgKeys(org).call(call_id)`` for an organization id already validated (the hot path)."""
    return "cg:{" + org + "}:call:" + call_id


@functools.lru_cache(maxsize=1024)
def _month_of_day(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, timezone.utc).strftime("%Y%m")


def month_of(ts: float) -> str:
    """The UTC calendar month of ``ts`` as ``YYYYMM`` (the allotments' month key), formatted once per
    UTC day rather than per call."""
    day, into = divmod(ts, 86400)
    if into < 0.001 or into > 86399.999:  # at midnight: round to the microsecond exactly as datetime does
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y%m")
    return _month_of_day(int(day))

