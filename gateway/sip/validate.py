"""What an element checks after parsing and before acting on a message (RFC 3261 §8.2, §16.3, §8.1.3.3).

The parser guarantees syntax; these pure functions apply the rules of a UAS that also forwards (our
B2BUA answers the A leg as a UAS and originates the B leg, so it checks Max-Forwards and Proxy-Require
like a proxy would). Each raises the SipError whose ``status_hint`` is the answer to send, with
``response_headers()`` giving the Allow/Unsupported/Accept header to add. Checks run in RFC 3261 §8.2
order: method (§8.2.1), then header inspection (§8.2.2), then extensions (§8.2.2.3), then content
(§8.2.3), so the most fundamental problem is the one reported.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from gateway.sip.errors import (
    BadExtension,
    BadRequest,
    DropMessage,
    MethodNotAllowed,
    NotAcceptable,
    ParseError,
    SipError,
    TooManyHops,
    UnknownMethod,
    UnsupportedMediaType,
    UnsupportedUriScheme,
)
from gateway.sip.message import Request, Response
from gateway.sip.parser import KNOWN_METHODS

__all__ = [
    "check_request",
    "check_response",
    "DEFAULT_ALLOWED_METHODS",
    "DEFAULT_EXTENSIONS",
    "DEFAULT_SCHEMES",
    "MAGIC_COOKIE",
]

# SPEC §7: calls (INVITE, ACK, BYE, CANCEL, re-INVITE, UPDATE, PRACK), OPTIONS, and INFO (the low-credit
# warning to bridges). REGISTER, MESSAGE, SUBSCRIBE ... are known methods we do not serve: 405.
DEFAULT_ALLOWED_METHODS: frozenset[str] = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "PRACK", "INFO"}
)
DEFAULT_EXTENSIONS: frozenset[str] = frozenset({"timer", "replaces", "100rel"})
DEFAULT_SCHEMES: frozenset[str] = frozenset({"sip", "sips"})
MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7
_METHOD_ORDER = (
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "PRACK", "UPDATE", "INFO", "REGISTER", "SUBSCRIBE",
    "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
)  # fmt: skip
_SDP = "application/sdp"
_SDP_RANGES = frozenset({_SDP, "application/*", "*/*"})
_BOUNDARY_RE = re.compile(r';[ \t]*boundary[ \t]*=[ \t]*(?:"([^"]+)"|([^;\s]+))', re.I)
_PART_TYPE_RE = re.compile(rb"^content-type[ \t]*:[ \t]*application/sdp[ \t]*(?:;|\r?$)", re.I | re.M)


def _allow_list(allowed: frozenset[str]) -> list[str]:
    rank = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return sorted(allowed, key=lambda m: (rank.get(m, len(rank)), m))


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip(" \t").lower()


def _multipart_has_sdp(body: bytes, content_type: str) -> bool:
    """Whether a multipart/mixed body (RFC 2046 §5.1) holds an application/sdp part."""
    m = _BOUNDARY_RE.search(content_type)
    if m is None:
        return False
    boundary = (m.group(1) or m.group(2)).encode("utf-8", "surrogateescape")
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):  # the close delimiter
            break
        end = part.find(b"\r\n\r\n")
        head = part if end < 0 else part[:end]
        if _PART_TYPE_RE.search(head):
            return True
    return False


def _check_content(req: Request) -> None:
    """A UAS that relays SDP takes SDP, or multipart/mixed holding SDP (RFC 3261 §8.2.3, RFC 4475 invut)."""
    if req.body:
        content_type = req.headers.get("Content-Type")
        if content_type is None:
            raise BadRequest("Body without Content-Type")  # RFC 3261 §20.15
        media = _media_type(content_type)
        if media != _SDP and not (
            media == "multipart/mixed" and _multipart_has_sdp(req.body, content_type)
        ):
            raise UnsupportedMediaType(accept=(_SDP, "multipart/mixed"))
    if "Accept" in req.headers:
        # An empty Accept accepts nothing (RFC 3261 §20.1); our answers carry SDP (RFC 4475 sdp01).
        ranges = {_media_type(v) for v in req.headers.get_all("Accept")}
        if not ranges & _SDP_RANGES:
            raise NotAcceptable("Not Acceptable (Accept excludes application/sdp)")


def _check(
    req: Request,
    supported_extensions: frozenset[str],
    allowed_methods: frozenset[str],
    supported_schemes: frozenset[str],
) -> None:
    method = req.method
    if method not in allowed_methods:
        allow = _allow_list(allowed_methods)
        if method in KNOWN_METHODS:
            raise MethodNotAllowed(allow)
        raise UnknownMethod(allow)  # RFC 4475 intmeth, esc02, mismatch02
    if req.cseq.method != method:
        raise ParseError("CSeq method does not match the request method")
    if req.top_via.branch == MAGIC_COOKIE:
        # Nothing after the cookie: neither an RFC 3261 branch nor an RFC 2543 one (RFC 4475 badbranch).
        raise BadRequest("Via branch is only the magic cookie")
    uri = req.uri
    if uri.scheme not in supported_schemes:
        raise UnsupportedUriScheme()  # RFC 4475 unkscm, novelsc
    if uri.is_sip and uri.headers:  # type: ignore[union-attr]
        # Headers escaped into the Request-URI must never be forwarded nor turned into real header
        # fields (RFC 4475 escruri).
        raise BadRequest("Request-URI carries escaped headers")
    if req.max_forwards == 0:
        raise TooManyHops()  # RFC 3261 §16.3 step 3, RFC 4475 zeromf
    if method != "ACK" and method != "CANCEL":  # §8.2.2.3: never for CANCEL or ACK
        wanted = [*req.headers.get_all("Require"), *req.headers.get_all("Proxy-Require")]
        known = {tag.lower() for tag in supported_extensions}
        unsupported: list[str] = []
        for tag in wanted:  # option tags are tokens, compared case-insensitively (§7.3.1)
            if tag.lower() not in known and tag not in unsupported:
                unsupported.append(tag)
        if unsupported:
            raise BadExtension(unsupported)  # RFC 4475 bext01
    if method == "INVITE":
        _check_content(req)


def check_request(
    req: Request,
    *,
    supported_extensions: frozenset[str] = DEFAULT_EXTENSIONS,
    allowed_methods: frozenset[str] = DEFAULT_ALLOWED_METHODS,
    supported_schemes: frozenset[str] = DEFAULT_SCHEMES,
) -> None:
    """Raise the SipError to answer ``req`` with, or return None if an element may process it.

    The error carries the request's headers and method, so ``make_error_response`` can answer it.
    REGISTER Contact URIs and other header fields are never rewritten here.
    """
    try:
        _check(req, supported_extensions, allowed_methods, supported_schemes)
    except SipError as exc:
        exc.headers = req.headers
        exc.method = req.method
        raise


@functools.lru_cache(maxsize=4096)
def _unusable_host(host: str) -> bool:
    """Broadcast, multicast or unspecified (remembered per host: every response asks)."""
    try:
        addr = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        return False
    return (
        addr.is_multicast
        or addr.is_unspecified
        or (addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"))
    )


def check_response(resp: Response, *, as_uac: bool = True) -> None:
    """Raise DropMessage for a response that must be discarded rather than processed or relayed.

    Any Via sent-by that is a broadcast, multicast or unspecified address is unusable (RFC 4475
    bcast). ``as_uac``: we sent the request ourselves, so the response must carry exactly our one Via
    (RFC 3261 §8.1.3.3: more than one Via means it was misrouted).
    """
    try:
        vias = resp.vias
    except SipError as exc:
        raise DropMessage(f"Unusable Via: {exc.reason}") from exc
    for via in vias:
        if _unusable_host(via.host):
            raise DropMessage(f"Via sent-by {via.host} is not a unicast address")
    if as_uac and len(vias) > 1:
        raise DropMessage("Response with more than one Via (RFC 3261 §8.1.3.3)")
