"""Dial-out grants: a bridge asks over HTTP, gets a short-lived signed grant, and dials carrying it.

``issue`` authorizes the dial-out like a call (reserving its first chunk) and returns a token that
names the organization, the reservation, the number, the user and the conference, with an expiry, under
an HMAC every gateway process can check (the secret is shared through Redis). The reservation waits
in the organization's grants set until ``claim``: the INVITE that carries the grant takes it out (one
ZREM: whoever removes it owns it, so a grant is used once), and the call is billed against it. A grant
nobody claimed is released by the sweeper when it expires, at no charge (``release_expired``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from dialplans import DialplanError, normalize

from gateway.credit.engine import Authorization, CreditEngine
from gateway.credit.errors import CreditRefused, refusal
from gateway.directory import Org, User
from gateway.ledger.keys import GLOBAL, OrgKeys

__all__ = ["GrantClaim", "Grants", "sign", "verify", "GRANT_PREFIX"]

GRANT_PREFIX = "cg1"


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantClaim:
    org: str
    call_id: str
    number: str  # E.164 (or an emergency short code)
    user: str
    conference_id: str
    expires: float


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, claim: GrantClaim) -> str:
    payload = json.dumps({"o": claim.org, "c": claim.call_id, "n": claim.number, "u": claim.user,
                          "f": claim.conference_id, "e": int(claim.expires)}, separators=(",", ":")).encode()
    mac = hmac.new(secret, b"creditgate-grant\0" + payload, hashlib.sha256).digest()
    return f"{GRANT_PREFIX}.{_b64(payload)}.{_b64(mac)}"


def verify(secret: bytes, token: str, *, now: float) -> GrantClaim:
    """The claim of a well-signed, unexpired grant; ``CreditRefused`` (403) otherwise."""
    bad = CreditRefused(refusal("blocked", reason="invalid dial-out grant"))
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != GRANT_PREFIX or len(token) > 2048:
        raise bad
    try:
        payload, mac = _unb64(parts[1]), _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise bad from None
    good = hmac.new(secret, b"creditgate-grant\0" + payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, good):
        raise bad
    try:
        d = json.loads(payload)
        claim = GrantClaim(org=str(d["o"]), call_id=str(d["c"]), number=str(d["n"]), user=str(d["u"]),
                           conference_id=str(d["f"]), expires=float(d["e"]))
    except (ValueError, KeyError, TypeError):
        raise bad from None
    if claim.expires < now:
        raise CreditRefused(refusal("blocked", reason="dial-out grant expired"))
    return claim


class Grants:
    """Issue, claim and expire dial-out grants of every organization."""

    def __init__(self, engine: CreditEngine, client: Any, *, ttl_s: int = 60) -> None:
        self.engine = engine
        self.client = client
        self.ttl_s = ttl_s
        self._secret: bytes | None = None

    async def secret(self) -> bytes:
        if self._secret is None:
            self._secret = await self.engine.directory.shared_secret(GLOBAL.grant_secret)
        return self._secret

    async def issue(self, org: Org, *, number: str, user: User | None, conference_id: str) -> tuple[str, Authorization]:
        """Authorize a dial-out and sign its grant (``CreditRefused`` when it may not be placed)."""
        call_id = "g" + secrets.token_hex(12)
        setup = self.engine.config.debit_interval_s + self.engine.config.lease_grace_s
        auth = await self.engine.authorize(org, call_id=call_id, dialed=number, user=user, direction="dialout",
                                           conference_id=conference_id,
                                           lease_ms=(self.ttl_s + 300 + setup) * 1000)
        expires = time.time() + self.ttl_s
        await self.client.zadd(OrgKeys(org.id).grants, {call_id: int(expires * 1000)})
        claim = GrantClaim(org=org.id, call_id=call_id, number=auth.destination.number,
                           user=user.id if user is not None else "", conference_id=conference_id, expires=expires)
        return sign(await self.secret(), claim), auth

    async def claim(self, token: str, *, org: Org, dialed: str, user: User | None) -> Authorization:
        """The reservation of a grant carried by an INVITE: checked, taken once, adopted as the call's."""
        claim = verify(await self.secret(), token, now=time.time())
        if claim.org != org.id:
            raise CreditRefused(refusal("blocked", reason="dial-out grant of another organization"))
        try:
            number = normalize(dialed, org.plan).number
        except DialplanError:
            number = dialed
        if number != claim.number:
            raise CreditRefused(refusal("blocked", reason="dial-out grant is for another number"))
        if not await self.client.zrem(OrgKeys(org.id).grants, claim.call_id):
            raise CreditRefused(refusal("blocked", reason="dial-out grant already used or expired"))
        return await self.engine.adopt(org, claim.call_id, number=claim.number, user=user,
                                       direction="dialout", conference_id=claim.conference_id)

    async def release_expired(self, org_id: str) -> int:
        """Release, at no charge and with a CDR, the grants of ``org_id`` nobody claimed in time."""
        now_ms = int(time.time() * 1000)
        key = OrgKeys(org_id).grants
        n = 0
        for raw in await self.client.zrangebyscore(key, "-inf", now_ms, start=0, num=200):
            call_id = raw.decode() if isinstance(raw, bytes) else raw
            if not await self.client.zrem(key, call_id):
                continue  # claimed by an INVITE a moment ago
            month = await self.engine.ledger.call_month(org_id, call_id)
            if month is None:
                continue
            await self.engine.ledger.settle(org_id, call_id, 1, month=month, answered=False, duration_ms=0,
                                            end_reason="grant_expired")
            n += 1
        return n
