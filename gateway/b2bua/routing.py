"""Who sent a call and where it goes: trunk, carrier and toll-free identification (SPEC 3.1, 9).

A source is matched against the configured trunks and carriers: an entry with a port matches only
that address and port, one without a port any port of that address, and the most specific match
wins (an exact trunk or carrier before a host-only trunk). Nothing else is trusted: an unknown source
is refused (no open relay). Calls from a PBX or bridge trunk go out to a carrier; calls from a
carrier must be for a toll-free number, and go to that number's target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dialplans import DialplanError, normalize

from gateway.directory import Carrier, Directory, DirectoryCache, Org, TollFree, Trunk, User
from gateway.sip.errors import ParseError
from gateway.sip.message import Request
from gateway.sip.uri import SipUri, Uri, parse_name_addr, unescape

__all__ = ["Origin", "identify_source", "calling_number", "dialed_digits", "find_user", "target_address",
           "presented_user"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """A known source: a trunk of an organization, or a carrier."""

    kind: Literal["trunk", "carrier"]
    trunk: Trunk | None = None
    carrier: Carrier | None = None


def _host(host: str) -> str:
    return host.strip("[]").lower()


def _match(trunks: list[Trunk], carriers: list[Carrier], host: str, port: int) -> Origin | None:
    host = _host(host)
    mine = [t for t in trunks if _host(t.host) == host]
    for t in mine:
        if t.port == port:
            return Origin(kind="trunk", trunk=t)
    for c in carriers:
        if _host(c.host) == host and c.port == port:
            return Origin(kind="carrier", carrier=c)
    for t in mine:
        if t.port is None:
            return Origin(kind="trunk", trunk=t)
    return None


async def identify_source(directory: Directory | DirectoryCache, host: str, port: int) -> Origin | None:
    """The trunk or carrier ``host:port`` belongs to, or None (an unknown source). Through a cache,
    a miss is checked once more against Redis: a trunk added a moment ago is always found (the
    cache forgets its strangers on every change; see ``DirectoryCache.known_stranger``)."""
    origin = _match(await directory.list_trunks(), await directory.list_carriers(), host, port)
    if origin is None and isinstance(directory, DirectoryCache):
        if directory.known_stranger(host, port):
            return None
        origin = _match(await directory.list_trunks(fresh=True), await directory.list_carriers(fresh=True),
                        host, port)
        if origin is None:
            directory.note_stranger(host, port)
    return origin


def _user_part(value: str | None) -> str | None:
    """The user part of a SIP URI (unescaped), or the number of a tel: URI, from a header value."""
    if not value:
        return None
    try:
        return _uri_user(parse_name_addr(value).uri)
    except ParseError:
        return None


def _uri_user(uri: Uri) -> str | None:
    """A SIP URI's user part (unescaped, user parameters cut), or a tel: URI's number."""
    if isinstance(uri, SipUri):
        user = uri.user_unescaped
        return user.split(";", 1)[0] if user else None
    if uri.scheme == "tel":
        return unescape(str(uri)[4:]).split(";", 1)[0]
    return None


def calling_number(request: Request) -> str | None:
    """The calling identity: P-Asserted-Identity when present, else From (SPEC 3.1)."""
    for pai in request.headers.get_all("P-Asserted-Identity"):
        user = _user_part(pai)
        if user:
            return user
    return _user_part(request.headers.get("From"))


# What a SIP user part may carry unescaped (RFC 3261 §25.1 unreserved, plus "+" of E.164 numbers).
_USER_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()+")
MAX_PRESENTED = 64


def presented_user(caller: str | None) -> str:
    """The caller's identity as the user part of the B leg's From: anything but unreserved characters
    percent-escaped, at most 64 characters of it. The identity is the caller's to choose (an unknown
    caller is billed as nobody), but its text must never add a header, a parameter or a host to the
    request we build (an escaped CRLF, ">" or "@" in a From would otherwise do exactly that)."""
    if not caller:
        return "anonymous"
    out = []
    for ch in caller[:MAX_PRESENTED]:
        if ch in _USER_SAFE:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def dialed_digits(request: Request) -> str | None:
    """What was dialed: the Request-URI's user part (with visual separators as sent)."""
    return _uri_user(request.uri)


async def find_user(directory: Directory | DirectoryCache, org: Org, number: str | None) -> User | None:
    """The organization's user whose number is ``number`` (in any dialing form of its plan)."""
    if not number:
        return None
    try:
        e164 = normalize(number, org.plan).number
    except DialplanError:
        return None
    if not e164.startswith("+"):
        return None
    return await directory.user_by_number(org.id, e164)


async def tollfree_for(directory: Directory | DirectoryCache, number: str | None) -> TollFree | None:
    """The toll-free record of a number a carrier delivered (E.164 with or without '+')."""
    if not number:
        return None
    digits = "".join(ch for ch in number if ch.isdigit())
    if not digits:
        return None
    return await directory.tollfree("+" + digits)


def target_address(uri: SipUri) -> tuple[str, int]:
    """Where to send a request for ``uri`` (an address with a port; no DNS on the call path)."""
    return uri.host.strip("[]"), uri.port or 5060
