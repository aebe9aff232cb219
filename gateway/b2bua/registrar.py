"""The registrar (RFC 3261 §10): PBXs and phones of a trunk register their contacts with the gateway.

Only a trunk may register: by its source address when it has no credentials (the same trust that lets
it place calls), or with digest credentials (401 + WWW-Authenticate, RFC 8760) when it has them. A
binding is the address-of-record's user part (``sip:bob@...`` -> ``bob``) of the trunk's organization,
with its contacts and their expiry, kept in Redis (``OrgKeys.registrations``) so every gateway process
sees it; a registered contact can then be the target of a call (``lookup``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from gateway.ledger.keys import OrgKeys
from gateway.sip.message import Request
from gateway.sip.uri import SipUri, parse_uri

__all__ = ["Binding", "Registrar", "DEFAULT_EXPIRES", "MAX_EXPIRES", "MIN_EXPIRES", "MAX_CONTACTS"]

DEFAULT_EXPIRES = 3600
MIN_EXPIRES = 60  # below this: 423 Interval Too Brief (§10.3 step 7)
MAX_EXPIRES = 86400
MAX_CONTACTS = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    contact: str  # the Contact URI as registered
    expires_at: float  # epoch seconds
    source: tuple[str, int]  # where the REGISTER came from (the flow to send requests on)
    transport: str

    def to_json(self) -> dict[str, Any]:
        return {"contact": self.contact, "expires_at": self.expires_at, "source": list(self.source),
                "transport": self.transport}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Binding":
        return cls(contact=d["contact"], expires_at=float(d["expires_at"]), source=(d["source"][0], int(d["source"][1])),
                   transport=d.get("transport", "udp"))


class RegistrationError(Exception):
    """A REGISTER to answer with ``status`` (and ``headers``)."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


def _expires(value: str | None, default: int) -> int:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 10:
        return default
    return int(value.strip())


def aor_user(request: Request) -> str:
    uri = request.to.uri
    if not isinstance(uri, SipUri) or not uri.user:
        raise RegistrationError(400, "address-of-record must be a SIP URI with a user part")
    return uri.user_unescaped or uri.user


class Registrar:
    def __init__(self, redis: Any) -> None:
        self.redis = redis

    async def bindings(self, org: str, user: str, *, now: float | None = None) -> list[Binding]:
        """The live bindings of ``user`` in ``org`` (expired ones are left out)."""
        raw = await self.redis.hget(OrgKeys(org).registrations, user)
        if raw is None:
            return []
        t = time.time() if now is None else now
        return [b for b in (Binding.from_json(d) for d in json.loads(raw)) if b.expires_at > t]

    async def register(self, org: str, request: Request, source: tuple[str, int], transport: str) -> list[Binding]:
        """Apply a REGISTER (§10.3 steps 6-8) and return the bindings now in force."""
        user = aor_user(request)
        now = time.time()
        header_expires = _expires(request.headers.get("Expires"), DEFAULT_EXPIRES)
        current = {b.contact: b for b in await self.bindings(org, user, now=now)}
        raw_contacts = request.headers.get_all("Contact")
        if len(raw_contacts) == 1 and raw_contacts[0].strip() == "*":
            if header_expires != 0:
                raise RegistrationError(400, "Contact: * needs Expires: 0")
            current = {}
        else:
            for na in request.contact:
                if not isinstance(na.uri, SipUri):
                    raise RegistrationError(400, "contacts must be SIP URIs")
                expires = min(_expires(na.param("expires"), header_expires), MAX_EXPIRES)
                key = str(na.uri)
                if expires == 0:
                    current.pop(key, None)
                    continue
                if expires < MIN_EXPIRES:
                    raise RegistrationError(423, "Interval Too Brief", [("Min-Expires", str(MIN_EXPIRES))])
                current[key] = Binding(contact=key, expires_at=now + expires, source=source, transport=transport)
        if len(current) > MAX_CONTACTS:
            raise RegistrationError(403, "too many contacts")
        k = OrgKeys(org).registrations
        if current:
            await self.redis.hset(k, user, json.dumps([b.to_json() for b in current.values()]))
        else:
            await self.redis.hdel(k, user)
        return list(current.values())

    async def lookup(self, org: str, user: str) -> Binding | None:
        """The most recently refreshed live binding of ``user``, or None."""
        live = await self.bindings(org, user)
        return max(live, key=lambda b: b.expires_at) if live else None


def contact_header(bindings: list[Binding], now: float | None = None) -> list[tuple[str, str]]:
    t = time.time() if now is None else now
    return [("Contact", f"<{b.contact}>;expires={max(int(b.expires_at - t), 0)}") for b in bindings]


def binding_target(binding: Binding) -> tuple[SipUri, tuple[str, int], str]:
    """Where a call to a binding goes: its Contact as Request-URI, sent along the registering flow."""
    uri = parse_uri(binding.contact)
    assert isinstance(uri, SipUri)
    return uri, binding.source, binding.transport


__all__ += ["RegistrationError", "aor_user", "binding_target", "contact_header"]
