"""Admin data in Redis: organizations, users, trunks, carriers, toll-free numbers and API tokens.

None of this is money: balances and reservations live only in the ledger scripts. Records are
JSON in hashes under the keys ``gateway.ledger.keys`` names. Input is validated here, once, so the
CLI and the HTTP API refuse the same things with the same words.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import phonenumbers
from redis.exceptions import RedisError

from dialplans import DialPlan, DialplanError, get_plan, monthly_minutes
from rating_core.money import check_currency, format_money
from rating_core.errors import MoneyError

from gateway.aio import reraise_cancel, stop_task
from gateway.errors import InvalidInput, NotFound
from gateway.ledger.client import LedgerUnavailable
from gateway.ledger.keys import DIRECTORY_CHANNEL, GLOBAL, OrgKeys, valid_org_id

log = logging.getLogger("creditgate.directory")

__all__ = [
    "ADMIN_ROLES",
    "TOKEN_ROLES",
    "Org",
    "User",
    "Trunk",
    "Carrier",
    "TollFree",
    "Directory",
    "parse_e164",
    "parse_address",
]

# SPEC section 9: the admin roles that receive funding and balance email.
ADMIN_ROLES = (
    "billing_admin",
    "company_admin",
    "user_account_admin",
    "helpdesk_admin",
    "service_support_admin",
    "device_admin",
    "application_admin",
    "license_admin",
    "cloud_device_admin",
    "authentication_admin",
    "privileged_authentication_admin",
    "communications_admin",
    "communications_support_engineer",
    "communications_support_specialist",
    "service_admin",
)

# Roles an API token can carry (one organization and one role per token).
TOKEN_ROLES = ("operator", "org_admin", "billing_admin", "bridge", "read_only")

_USER_ID_RE = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
DIGEST_REALM = "creditgate"


def parse_e164(number: str, field_name: str = "number") -> str:
    """A number in E.164 form (``+4420...``) that libphonenumber considers valid, else InvalidInput."""
    text = number.strip()
    if not text.startswith("+"):
        raise InvalidInput(f"{number!r} is not in E.164 form (+<country><number>)", field_name)
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise InvalidInput(f"{number!r} is not a phone number", field_name) from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidInput(f"{number!r} is not a valid number", field_name)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def parse_address(text: str, field_name: str = "address") -> tuple[str, int | None]:
    """``ip[:port]`` or ``[v6][:port]``; only literal IP addresses (a trunk is matched by source)."""
    raw = text.strip()
    host, port = raw, None
    if raw.startswith("["):
        inner, sep, rest = raw[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InvalidInput(f"bad address {text!r}", field_name)
        host, port_text = inner, rest[1:]
        port = _port(port_text, text, field_name) if port_text else None
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
        port = _port(port_text, text, field_name)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise InvalidInput(f"{text!r} is not an IP address", field_name) from None
    return host, port


def _port(text: str, whole: str, field_name: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidInput(f"bad port in {whole!r}", field_name)
    return int(text)


def _country(cc: str, field_name: str) -> str:
    code = cc.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidInput(f"unknown country {cc!r}", field_name)
    return code


@functools.lru_cache(maxsize=4096)
def _plan_of(country: str, dialplan: tuple[tuple[str, Any], ...]) -> DialPlan:
    """An organization's dial plan, built (and validated) once per distinct setting."""
    return DialPlan.from_dict(dict(dialplan)) if dialplan else DialPlan.for_country(country)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Org:
    id: str
    name: str
    country: str
    currency: str
    billing_region: str
    dialplan: dict[str, Any] = field(default_factory=dict)
    max_concurrent_calls: int = 0
    daily_spend_limit: int = 0
    min_funding: int = 50_000_000
    blocked_classes: tuple[str, ...] = ()
    blocked_prefixes: tuple[str, ...] = ()
    created: float = 0.0

    @property
    def plan(self) -> DialPlan:
        key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(self.dialplan.items()))
        return _plan_of(self.country, key)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocked_classes"] = list(self.blocked_classes)
        d["blocked_prefixes"] = list(self.blocked_prefixes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Org":
        d = dict(d)
        d["blocked_classes"] = tuple(d.get("blocked_classes", ()))
        d["blocked_prefixes"] = tuple(d.get("blocked_prefixes", ()))
        return cls(**d)

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "country": self.country,
            "currency": self.currency,
            "billing_region": self.billing_region,
            "max_concurrent_calls": self.max_concurrent_calls,
            "daily_spend_limit": format_money(self.daily_spend_limit) if self.daily_spend_limit else None,
            "min_funding": format_money(self.min_funding),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class User:
    org: str
    id: str
    number: str
    email: str = ""
    roles: tuple[str, ...] = ()
    licence: bool = False
    plan: str = "none"
    country: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roles"] = list(self.roles)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "User":
        d = dict(d)
        d["roles"] = tuple(d.get("roles", ()))
        return cls(**d)


@dataclass(frozen=True, slots=True, kw_only=True)
class Trunk:
    id: str
    org: str
    host: str
    port: int | None = None
    kind: str = "pbx"
    username: str = ""
    ha1_md5: str = ""
    ha1_sha256: str = ""

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" if self.port else host

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "org": self.org, "address": self.address, "kind": self.kind,
                "username": self.username or None}


@dataclass(frozen=True, slots=True, kw_only=True)
class Carrier:
    name: str
    host: str
    port: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TollFree:
    number: str
    org: str
    target: str


def _match_address(records: list[Any], host: str, port: int) -> Any | None:
    """The most specific record for a source: exact host:port beats a host-only entry."""
    best = None
    for rec in records:
        if rec.host != host:
            continue
        if rec.port == port:
            return rec
        if rec.port is None and best is None:
            best = rec
    return best


class Directory:
    """Reads and writes the admin records; every method may raise LedgerUnavailable."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._trunk_cache: tuple[float, list[Trunk]] | None = None
        self._carrier_cache: tuple[float, list[Carrier]] | None = None

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisError, OSError) as exc:
            raise LedgerUnavailable(f"directory unreachable: {exc}") from exc

    async def shared_secret(self, key: str) -> bytes:
        """A random secret every gateway process shares: made by whichever process asks first (SET NX),
        read by all (digest nonces, dial-out grants)."""
        await self._call(self.client.set(key, secrets.token_hex(32), nx=True))
        value = await self._call(self.client.get(key))
        return bytes.fromhex(_s(value))

    async def _changed(self) -> None:
        """Tell every gateway process that an admin record changed (they drop their caches)."""
        await self._call(self.client.publish(DIRECTORY_CHANNEL, "1"))

    # -- organizations --------------------------------------------------------------------

    async def create_org(
        self,
        name: str,
        *,
        country: str,
        currency: str,
        billing_region: str | None = None,
        min_funding: int = 50_000_000,
        org_id: str | None = None,
    ) -> tuple[Org, str]:
        """Create an organization and its first admin token (returned once, stored hashed)."""
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidInput("name must be 1 to 200 characters", "name")
        cc = _country(country, "country")
        try:
            cur = check_currency(currency.strip().upper())
        except MoneyError as exc:
            raise InvalidInput(str(exc), "currency") from None
        region = _country(billing_region, "billing_region") if billing_region else cc
        oid = org_id or re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63] or "org"
        if not valid_org_id(oid):
            raise InvalidInput(f"cannot make an id from {name!r}", "name")
        org = Org(id=oid, name=name, country=cc, currency=cur, billing_region=region,
                  dialplan=DialPlan.for_country(cc).to_dict(), min_funding=min_funding,
                  created=time.time())
        added = await self._call(self.client.hsetnx(GLOBAL.org_names, name.lower(), oid))
        if not added:
            raise InvalidInput(f"an organization named {name!r} exists", "name")
        if not await self._call(self.client.hsetnx(GLOBAL.orgs, oid, json.dumps(org.to_dict()))):
            await self._call(self.client.hdel(GLOBAL.org_names, name.lower()))
            raise InvalidInput(f"organization id {oid!r} is taken", "name")
        token = await self.create_token(oid, "org_admin", label="first admin token")
        await self._changed()
        return org, token

    async def get_org(self, org_id: str) -> Org:
        if not valid_org_id(org_id):
            raise NotFound(f"no organization {org_id!r}")
        raw = await self._call(self.client.hget(GLOBAL.orgs, org_id))
        if raw is None:
            # Accept the organization's name as well as its id on the command line.
            oid = await self._call(self.client.hget(GLOBAL.org_names, org_id.lower()))
            if oid is not None:
                raw = await self._call(self.client.hget(GLOBAL.orgs, oid))
        if raw is None:
            raise NotFound(f"no organization {org_id!r}")
        return Org.from_dict(json.loads(raw))

    async def resolve_org(self, org_id_or_name: str) -> Org:
        try:
            return await self.get_org(org_id_or_name)
        except NotFound:
            oid = await self._call(self.client.hget(GLOBAL.org_names, org_id_or_name.strip().lower()))
            if oid is None:
                raise
            return await self.get_org(oid.decode() if isinstance(oid, bytes) else oid)

    async def list_orgs(self) -> list[Org]:
        raw = await self._call(self.client.hgetall(GLOBAL.orgs))
        return sorted((Org.from_dict(json.loads(v)) for v in raw.values()), key=lambda o: o.id)

    async def update_org(self, org: Org, **changes: Any) -> Org:
        new = replace(org, **changes)
        await self._call(self.client.hset(GLOBAL.orgs, org.id, json.dumps(new.to_dict())))
        await self._changed()
        return new

    async def set_recharge(self, org: Org, *, threshold: int, amount: int) -> None:
        """Auto-recharge settings live in the account hash, where the debiting script reads them."""
        if amount <= 0:
            raise InvalidInput("recharge amount must be positive", "amount")
        if threshold < 0:
            raise InvalidInput("threshold must not be negative", "threshold")
        await self._call(self.client.hset(OrgKeys(org.id).account,
                                          mapping={"rc_threshold": threshold, "rc_amount": amount}))

    async def recharge_off(self, org: Org) -> None:
        await self._call(self.client.hdel(OrgKeys(org.id).account, "rc_threshold", "rc_amount"))

    async def recharge_settings(self, org: Org) -> tuple[int, int] | None:
        th, amt = await self._call(self.client.hmget(OrgKeys(org.id).account, "rc_threshold", "rc_amount"))
        if amt is None:
            return None
        return int(th or 0), int(amt)

    # -- users ----------------------------------------------------------------------------

    async def add_user(
        self,
        org: Org,
        user_id: str,
        *,
        number: str,
        email: str = "",
        roles: list[str] | tuple[str, ...] = (),
        licence: bool = False,
        plan: str = "none",
        country: str | None = None,
    ) -> User:
        if not _USER_ID_RE.match(user_id):
            raise InvalidInput("user id must be 1-128 of letters, digits and ._@+-", "user")
        e164 = parse_e164(number)
        if email and not _EMAIL_RE.match(email):
            raise InvalidInput(f"{email!r} is not an email address", "email")
        for role in roles:
            if role not in ADMIN_ROLES:
                raise InvalidInput(f"unknown role {role!r} (one of {', '.join(ADMIN_ROLES)})", "role")
        try:
            get_plan(plan)
        except DialplanError as exc:
            raise InvalidInput(str(exc), "plan") from None
        user = User(org=org.id, id=user_id, number=e164, email=email, roles=tuple(dict.fromkeys(roles)),
                    licence=licence, plan=plan,
                    country=_country(country, "country") if country else org.country)
        k = OrgKeys(org.id)
        owner = await self._call(self.client.hget(k.user_numbers, e164))
        if owner is not None and _s(owner) != user_id:
            raise InvalidInput(f"{e164} already belongs to user {_s(owner)!r}", "number")
        old = await self._call(self.client.hget(k.users, user_id))
        if old is not None:
            old_number = json.loads(old)["number"]
            if old_number != e164:
                await self._call(self.client.hdel(k.user_numbers, old_number))
        await self._call(self.client.hset(k.users, user_id, json.dumps(user.to_dict())))
        await self._call(self.client.hset(k.user_numbers, e164, user_id))
        await self._refresh_allotments(org)
        await self._changed()
        return user

    async def get_user(self, org_id: str, user_id: str) -> User:
        raw = await self._call(self.client.hget(OrgKeys(org_id).users, user_id))
        if raw is None:
            raise NotFound(f"no user {user_id!r} in organization {org_id!r}")
        return User.from_dict(json.loads(raw))

    async def user_by_number(self, org_id: str, number: str) -> User | None:
        uid = await self._call(self.client.hget(OrgKeys(org_id).user_numbers, number))
        if uid is None:
            return None
        return await self.get_user(org_id, _s(uid))

    async def list_users(self, org_id: str) -> list[User]:
        raw = await self._call(self.client.hgetall(OrgKeys(org_id).users))
        return sorted((User.from_dict(json.loads(v)) for v in raw.values()), key=lambda u: u.id)

    async def _refresh_allotments(self, org: Org) -> None:
        """Pooled monthly minutes per plan and bucket: the sum of every user's allotment."""
        totals: dict[str, int] = {}
        for user in await self.list_users(org.id):
            plan = get_plan(user.plan)
            for bucket in ("domestic", "international"):
                minutes = monthly_minutes(plan, bucket, user.country)
                if minutes:
                    key = f"{plan.id}:{bucket}"
                    totals[key] = totals.get(key, 0) + minutes * 60
        k = OrgKeys(org.id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(k.allotments)
            if totals:
                pipe.hset(k.allotments, mapping=totals)
            await self._call(pipe.execute())

    # -- trunks and carriers --------------------------------------------------------------

    async def add_trunk(
        self, org: Org, address: str, *, kind: str = "pbx", username: str = "", password: str = ""
    ) -> Trunk:
        if kind not in ("pbx", "bridge"):
            raise InvalidInput("kind must be pbx or bridge", "kind")
        if bool(username) != bool(password):
            raise InvalidInput("username and password go together", "username")
        host, port = parse_address(address)
        trunks = await self.list_trunks()
        for t in trunks:
            if t.host == host and t.port == port and t.org != org.id:
                raise InvalidInput(f"{address} is already a trunk of another organization", "address")
        ha1_md5 = ha1_sha = ""
        if username:
            ha1_md5 = hashlib.md5(f"{username}:{DIGEST_REALM}:{password}".encode()).hexdigest()
            ha1_sha = hashlib.sha256(f"{username}:{DIGEST_REALM}:{password}".encode()).hexdigest()
        tid = f"{org.id}/{host}:{port or '*'}" + (f"/{username}" if username else "")
        trunk = Trunk(id=tid, org=org.id, host=host, port=port, kind=kind, username=username,
                      ha1_md5=ha1_md5, ha1_sha256=ha1_sha)
        await self._call(self.client.hset(GLOBAL.trunks, tid, json.dumps(asdict(trunk))))
        self._trunk_cache = None
        await self._changed()
        return trunk

    async def list_trunks(self) -> list[Trunk]:
        raw = await self._call(self.client.hgetall(GLOBAL.trunks))
        return sorted((Trunk(**json.loads(v)) for v in raw.values()), key=lambda t: t.id)

    async def find_trunk(self, host: str, port: int) -> Trunk | None:
        return _match_address(await self.list_trunks(), _norm_host(host), port)

    async def add_carrier(self, name: str, address: str) -> Carrier:
        name = name.strip()
        if not name or len(name) > 100:
            raise InvalidInput("carrier name must be 1 to 100 characters", "name")
        host, port = parse_address(address)
        if port is None:
            raise InvalidInput("a carrier address needs a port (where calls are sent)", "address")
        carrier = Carrier(name=name, host=host, port=port)
        await self._call(self.client.hset(GLOBAL.carriers, name, json.dumps(asdict(carrier))))
        await self._changed()
        return carrier

    async def list_carriers(self) -> list[Carrier]:
        raw = await self._call(self.client.hgetall(GLOBAL.carriers))
        return sorted((Carrier(**json.loads(v)) for v in raw.values()), key=lambda c: c.name)

    async def find_carrier(self, host: str, port: int) -> Carrier | None:
        """A carrier's source: its address and port, or any port of its address."""
        carriers = await self.list_carriers()
        host = _norm_host(host)
        exact = [c for c in carriers if c.host == host and c.port == port]
        if exact:
            return exact[0]
        same_host = [c for c in carriers if c.host == host]
        return same_host[0] if same_host else None

    # -- toll-free numbers ----------------------------------------------------------------

    async def add_tollfree(self, org: Org, number: str, *, target: str) -> TollFree:
        e164 = parse_e164(number)
        if phonenumbers.number_type(phonenumbers.parse(e164)) != phonenumbers.PhoneNumberType.TOLL_FREE:
            raise InvalidInput(f"{e164} is not a toll-free number", "number")
        if not re.match(r"^sips?:[^\s<>]+$", target.strip()):
            raise InvalidInput("target must be a sip: URI", "target")
        existing = await self._call(self.client.hget(GLOBAL.tollfree, e164))
        if existing is not None and json.loads(existing)["org"] != org.id:
            raise InvalidInput(f"{e164} belongs to another organization", "number")
        tf = TollFree(number=e164, org=org.id, target=target.strip())
        await self._call(self.client.hset(GLOBAL.tollfree, e164, json.dumps(asdict(tf))))
        await self._changed()
        return tf

    async def tollfree(self, number: str) -> TollFree | None:
        raw = await self._call(self.client.hget(GLOBAL.tollfree, number))
        return TollFree(**json.loads(raw)) if raw is not None else None

    async def list_tollfree(self, org_id: str | None = None) -> list[TollFree]:
        raw = await self._call(self.client.hgetall(GLOBAL.tollfree))
        items = (TollFree(**json.loads(v)) for v in raw.values())
        return sorted((t for t in items if org_id is None or t.org == org_id), key=lambda t: t.number)

    # -- API tokens -----------------------------------------------------------------------

    async def create_token(self, org_id: str, role: str, *, label: str = "") -> str:
        if role not in TOKEN_ROLES:
            raise InvalidInput(f"unknown token role {role!r} (one of {', '.join(TOKEN_ROLES)})", "role")
        token = "cg_" + secrets.token_urlsafe(32)
        rec = json.dumps({"org": org_id, "role": role, "label": label, "created": time.time()})
        digest = _token_hash(token)
        await self._call(self.client.hset(GLOBAL.tokens, digest, rec))
        await self._call(self.client.hset(OrgKeys(org_id).tokens, digest, rec))
        return token

    async def token_info(self, token: str) -> dict[str, Any] | None:
        raw = await self._call(self.client.hget(GLOBAL.tokens, _token_hash(token)))
        return json.loads(raw) if raw is not None else None

    async def revoke_token(self, org_id: str, token_or_hash: str) -> bool:
        digest = token_or_hash if re.fullmatch(r"[0-9a-f]{64}", token_or_hash) else _token_hash(token_or_hash)
        raw = await self._call(self.client.hget(GLOBAL.tokens, digest))
        if raw is None or json.loads(raw)["org"] != org_id:
            return False
        await self._call(self.client.hdel(GLOBAL.tokens, digest))
        await self._call(self.client.hdel(OrgKeys(org_id).tokens, digest))
        return True


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _norm_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return host


class DirectoryCache:
    """What the call path reads of the directory, kept in process memory.

    A call setup would otherwise read trunks, carriers, the organization and the user from Redis
    every time. Entries go stale whenever any process changes an admin record (``Directory``
    publishes on ``DIRECTORY_CHANNEL``; ``watch`` listens), when that watch is interrupted, and at
    the latest after ``ttl_s`` as a safety net; a stale entry is read again from Redis. Misses are
    never cached: a record added a moment ago is always found.

    While Redis is unreachable a stale entry is served rather than an error: the call path can
    still tell a trunk from a stranger, so that the outage policy decides what happens to the call
    (SPEC 4: fail closed with 503, or fail open within bounds) instead of every call failing
    before the policy is even asked.
    """

    def __init__(self, directory: Directory, *, ttl_s: float = 10.0) -> None:
        self.directory = directory
        self.ttl_s = ttl_s
        self._lists: dict[str, tuple[float, Any]] = {}
        self._orgs: dict[str, tuple[float, Org]] = {}
        self._users: dict[tuple[str, str], tuple[float, User]] = {}
        self._tollfree: dict[str, tuple[float, TollFree]] = {}
        self._loading: dict[tuple[int, Any], asyncio.Future[Any]] = {}
        # Sources that were neither trunk nor carrier even in Redis's own word, a moment ago.
        self._strangers: dict[tuple[str, int], float] = {}
        self._task: asyncio.Task[None] | None = None

    # A source address found unknown after a fresh read of the trunks and carriers is not read for
    # again for this long, unless a change comes first (``invalidate`` forgets them all). Without it
    # every INVITE of a stranger's flood made the gateway read every trunk and carrier from Redis.
    STRANGER_TTL_S = 2.0
    MAX_STRANGERS = 10_000

    def known_stranger(self, host: str, port: int) -> bool:
        until = self._strangers.get((host, port))
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._strangers[(host, port)]
        return False

    def note_stranger(self, host: str, port: int) -> None:
        if len(self._strangers) >= self.MAX_STRANGERS:
            self._strangers.clear()  # many sources at once: forget them rather than grow
        self._strangers[(host, port)] = time.monotonic() + self.STRANGER_TTL_S

    def invalidate(self) -> None:
        """Every entry stale: read again from Redis next time, kept only as the outage fallback."""
        for cache in (self._lists, self._orgs, self._users, self._tollfree):
            for key, (_, value) in list(cache.items()):
                cache[key] = (0.0, value)  # type: ignore[index]
        self._strangers.clear()

    def _fresh(self, entry: tuple[float, Any] | None) -> bool:
        return entry is not None and entry[0] > time.monotonic()

    async def _read(self, cache: dict[Any, tuple[float, Any]], key: Any, load: Any, *, fresh: bool = False,
                    keep_none: bool = True) -> Any:
        entry = cache.get(key)
        if not fresh and self._fresh(entry):
            return entry[1]  # type: ignore[index]
        if fresh:  # Redis's word, read now: a read already under way may have begun before a change
            return await self._load(cache, key, load, keep_none, fresh=True)
        # One read per stale entry, however many calls want it meanwhile: when a popular entry goes
        # stale (its ttl, or a change) under hundreds of setups per second, each of them would read
        # it again from Redis at once (and the connection pool would grow to carry them).
        flight = (id(cache), key)
        loading = self._loading.get(flight)
        if loading is None:
            loading = asyncio.ensure_future(self._load(cache, key, load, keep_none, fresh=False))
            self._loading[flight] = loading
            loading.add_done_callback(lambda done: self._loading.pop(flight, None)
                                      if self._loading.get(flight) is done else None)
        return await asyncio.shield(loading)  # a caller that gives up does not cancel the others' read

    async def _load(self, cache: dict[Any, tuple[float, Any]], key: Any, load: Any, keep_none: bool, *,
                    fresh: bool) -> Any:
        entry = cache.get(key)
        try:
            value = await load()
        except LedgerUnavailable:
            # Redis is down: the last value read stands in (see the class docstring), unless the
            # caller asked for Redis's word (a miss checked again: it cannot be confirmed now).
            if entry is None or fresh:
                raise
            return entry[1]
        if value is not None or keep_none:
            cache[key] = (time.monotonic() + self.ttl_s, value)
        else:
            cache.pop(key, None)
        return value

    async def list_trunks(self, *, fresh: bool = False) -> list[Trunk]:
        return await self._read(self._lists, "trunks", self.directory.list_trunks, fresh=fresh)  # type: ignore[no-any-return]

    async def list_carriers(self, *, fresh: bool = False) -> list[Carrier]:
        return await self._read(self._lists, "carriers", self.directory.list_carriers, fresh=fresh)  # type: ignore[no-any-return]

    async def get_org(self, org_id: str) -> Org:
        return await self._read(self._orgs, org_id, lambda: self.directory.get_org(org_id))  # type: ignore[no-any-return]

    async def user_by_number(self, org_id: str, number: str) -> User | None:
        return await self._read(self._users, (org_id, number),  # type: ignore[no-any-return]
                                lambda: self.directory.user_by_number(org_id, number), keep_none=False)

    async def tollfree(self, number: str) -> TollFree | None:
        return await self._read(self._tollfree, number, lambda: self.directory.tollfree(number),  # type: ignore[no-any-return]
                                keep_none=False)

    def watch(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        await stop_task(self._task, "directory watch")
        self._task = None

    async def _watch(self) -> None:
        while True:
            pubsub = self.directory.client.pubsub()
            try:
                await pubsub.subscribe(DIRECTORY_CHANNEL)
                self.invalidate()  # whatever changed while we were not listening
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=30.0)
                    reraise_cancel()  # redis-py may have swallowed it (gateway.aio)
                    if msg is not None:
                        self.invalidate()
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (RedisError, OSError) as exc:
                reraise_cancel()  # a cancellation redis-py turned into a TimeoutError
                log.warning("directory watch interrupted (%s); retrying", exc)
                self.invalidate()
                await pubsub.aclose()
                await asyncio.sleep(1.0)
                reraise_cancel()
