"""SIP requests and responses: start line, header fields, body; typed accessors; serialization; §8.2.6.

A message holds its header fields raw (``Headers``) and parses a typed value (Via, CSeq, From ...) the
first time it is asked for, caching it until the headers change. ``to_bytes`` writes canonical long header
names in the order held and always recomputes Content-Length from the body (RFC 3261 §18.3, §20.14).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from typing import Any
from dataclasses import dataclass, field

from gateway.sip.errors import ParseError, SipError
from gateway.sip.headers import CSeq, Headers, Via, parse_cseq, parse_vias, split_list
from gateway.sip.uri import NameAddr, Uri, parse_name_addr

__all__ = [
    "Request",
    "Response",
    "Message",
    "REASON_PHRASES",
    "make_response",
    "make_error_response",
]

# RFC 3261 §21 and the IANA "Response Codes" registry.
REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated", 200: "OK", 202: "Accepted",
    204: "No Notification", 300: "Multiple Choices", 301: "Moved Permanently",
    302: "Moved Temporarily", 305: "Use Proxy", 380: "Alternative Service", 400: "Bad Request",
    401: "Unauthorized", 402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 407: "Proxy Authentication Required",
    408: "Request Timeout", 410: "Gone", 412: "Conditional Request Failed",
    413: "Request Entity Too Large", 414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 417: "Unknown Resource-Priority", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 423: "Interval Too Brief",
    428: "Use Identity Header", 429: "Provide Referrer Identity", 430: "Flow Failed",
    433: "Anonymity Disallowed", 436: "Bad Identity-Info", 437: "Unsupported Certificate",
    438: "Invalid Identity Header", 439: "First Hop Lacks Outbound Support",
    440: "Max-Breadth Exceeded", 469: "Bad Info Package", 470: "Consent Needed",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 482: "Loop Detected",
    483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event", 491: "Request Pending",
    493: "Undecipherable", 494: "Security Agreement Required", 500: "Server Internal Error",
    501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
    607: "Unwanted", 608: "Rejected",
}  # fmt: skip

# Call-ID = word [ "@" word ] (RFC 3261 §25.1).
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID_RE = re.compile(f"{_WORD}(?:@{_WORD})?")
_TAG_PARAM_RE = re.compile(r";[ \t]*tag[ \t]*=", re.I)
# The dialog-creating methods whose 101-299 responses copy Record-Route (RFC 3261 §12.1.1, RFC 6665).
_DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE"})


# Builders of typed values from the raw values of one header field (every line, in order). The
# parser calls them once per message with values it collected in one pass; the properties below call
# them through the Headers cache.


def _single(values: list[str], label: str) -> str:
    if not values:
        raise ParseError(f"Missing {label}")
    if len(values) > 1:
        raise ParseError(f"More than one {label}")
    return values[0]


def _call_id(values: list[str]) -> str:
    value = _single(values, "Call-ID")
    if not _CALL_ID_RE.fullmatch(value):
        raise ParseError("Malformed Call-ID")
    return value


def _cseq(values: list[str]) -> CSeq:
    return parse_cseq(_single(values, "CSeq"))


def _vias(values: list[str]) -> list[Via]:
    if not values:
        raise ParseError("Missing Via")
    if len(values) == 1:
        return parse_vias(values[0])
    out: list[Via] = []
    for v in values:
        out.extend(parse_vias(v))
    return out


def _from(values: list[str]) -> NameAddr:
    return parse_name_addr(_single(values, "From"))


def _to(values: list[str]) -> NameAddr:
    return parse_name_addr(_single(values, "To"))


def _small_int(values: list[str], label: str, limit: int) -> int | None:
    if not values:
        return None
    if len(values) > 1:
        raise ParseError(f"More than one {label}")
    digits = values[0]
    if not (digits.isascii() and digits.isdigit()):
        raise ParseError(f"Malformed {label}")
    if len(digits) > 3:
        digits = digits.lstrip("0") or "0"
        # Length before int(): an unbounded digit string must never reach int() (RFC 4475 scalar02).
        if len(digits) > len(str(limit)):
            raise ParseError(f"{label} out of range")
    value = int(digits)
    if value > limit:
        raise ParseError(f"{label} out of range")
    return value


def _max_forwards(values: list[str]) -> int | None:
    return _small_int(values, "Max-Forwards", 255)


def _content_length(values: list[str]) -> int | None:
    return _small_int(values, "Content-Length", 2**32 - 1)


def _contact(values: list[str]) -> list[NameAddr]:
    if len(values) == 1:
        value = values[0]
        if value == "*":  # REGISTER's "remove all bindings" (RFC 3261 §10.2.2)
            return []
        if "," not in value:
            return [parse_name_addr(value)]
    elements: list[str] = []
    for v in values:
        elements.extend(split_list(v, keep_empty=True))
    return [parse_name_addr(v) for v in elements]


_BUILDERS: dict[str, Callable[[list[str]], Any]] = {
    "call-id": _call_id,
    "cseq": _cseq,
    "via": _vias,
    "from": _from,
    "to": _to,
    "max-forwards": _max_forwards,
    "content-length": _content_length,
    "contact": _contact,
}


def _typed(h: Headers, key: str) -> Any:
    """The typed value of field ``key`` (a lookup key), parsed on first use and cached in ``h``."""
    cache = h._cache
    try:
        return cache[key]
    except KeyError:
        value = cache[key] = _BUILDERS[key]([v for k, _, v in h._items if k == key])
        return value


class Message:
    """What requests and responses share: header fields, body, and typed accessors (lazy, cached)."""

    __slots__ = ()
    headers: Headers
    body: bytes
    version: str

    @property
    def call_id(self) -> str:
        return _typed(self.headers, "call-id")

    @property
    def cseq(self) -> CSeq:
        return _typed(self.headers, "cseq")

    @property
    def vias(self) -> list[Via]:
        """Every via-parm, top first (a fresh list: mutate ``headers``, not this)."""
        return list(_typed(self.headers, "via"))

    @property
    def top_via(self) -> Via:
        return _typed(self.headers, "via")[0]

    @property
    def from_(self) -> NameAddr:
        return _typed(self.headers, "from")

    @property
    def to(self) -> NameAddr:
        return _typed(self.headers, "to")

    @property
    def from_tag(self) -> str | None:
        return self.from_.tag

    @property
    def to_tag(self) -> str | None:
        return self.to.tag

    @property
    def max_forwards(self) -> int | None:
        return _typed(self.headers, "max-forwards")

    @property
    def content_length(self) -> int | None:
        """The Content-Length header's value as received (None if absent); to_bytes recomputes it."""
        return _typed(self.headers, "content-length")

    @property
    def contact(self) -> list[NameAddr]:
        """Contact values in order; ``Contact: *`` gives an empty list."""
        return list(_typed(self.headers, "contact"))

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The wire form: canonical names, headers in order, Content-Length recomputed from the body."""
        lines = [self.start_line()]
        length_done = False
        for key, name, value in self.headers._items:
            if key == "content-length":
                if length_done:
                    continue
                value = str(len(self.body))
                length_done = True
            lines.append(f"{name}: {value}")
        if not length_done:
            lines.append(f"Content-Length: {len(self.body)}")
        lines.append("\r\n")
        try:
            return "\r\n".join(lines).encode("utf-8", "surrogateescape") + self.body
        except UnicodeEncodeError as exc:  # a lone surrogate put in by our own code
            raise SipError(f"unencodable header text: {exc}", ours=True, status_hint=500) from exc


@dataclass(slots=True, kw_only=True)
class Request(Message):
    """A SIP request. ``uri`` is a SipUri, or an AbsoluteUri for other schemes (see check_request)."""

    method: str
    uri: Uri
    version: str = "SIP/2.0"
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"

    def copy(self) -> Request:
        """A copy whose headers can be changed without touching this one's."""
        return Request(
            method=self.method, uri=self.uri, version=self.version, headers=self.headers.copy(),
            body=self.body,
        )  # fmt: skip


@dataclass(slots=True, kw_only=True)
class Response(Message):
    """A SIP response; ``reason`` may be empty (RFC 4475 noreason)."""

    status: int
    reason: str = ""
    version: str = "SIP/2.0"
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def copy(self) -> Response:
        return Response(
            status=self.status, reason=self.reason, version=self.version, headers=self.headers.copy(),
            body=self.body,
        )  # fmt: skip


def _has_tag(to_value: str) -> bool:
    try:
        return parse_name_addr(to_value).tag is not None
    except ParseError:
        return bool(_TAG_PARAM_RE.search(to_value))


def _response_from(
    src: Headers,
    method: str | None,
    status: int,
    reason: str | None,
    to_tag: str | None,
    extra: Iterable[tuple[str, str]],
) -> Response:
    if not 100 <= status <= 699:
        raise SipError(f"status {status} out of range", ours=True, status_hint=500)
    # RFC 3261 §8.2.6.2: Via (all, in order), From, Call-ID, CSeq copied; To copied with our tag
    # added unless it has one. §12.1.1: a dialog-creating response copies Record-Route. §8.2.6.1:
    # a 100 copies Timestamp.
    to_value = next((v for k, _, v in src._items if k == "to"), None)
    out_of_dialog = to_value is not None and not _has_tag(to_value)
    copy_rr = method in _DIALOG_METHODS and 101 <= status <= 299 and out_of_dialog
    items: list[tuple[str, str, str]] = []
    to_done = False
    for item in src._items:
        k = item[0]
        if k == "via" or k == "from" or k == "call-id" or k == "cseq":
            items.append(item)
        elif k == "to":
            if to_done:
                continue
            to_done = True
            if to_tag is not None and out_of_dialog:
                try:
                    parse_name_addr(item[2])
                except ParseError:
                    items.append(item)  # unparseable To: echoed as received, never rewritten
                else:
                    items.append((k, item[1], f"{item[2]};tag={to_tag}"))
            else:
                items.append(item)
        elif (k == "record-route" and copy_rr) or (k == "timestamp" and status == 100):
            items.append(item)
    headers = Headers._trusted(items)
    for name, value in extra:
        headers.add(name, value)
    return Response(
        status=status, reason=reason if reason is not None else REASON_PHRASES.get(status, ""),
        headers=headers,
    )  # fmt: skip


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """The response a UAS sends to ``request`` (RFC 3261 §8.2.6), with ``headers`` appended."""
    return _response_from(request.headers, request.method, status, reason, to_tag, headers)


def make_error_response(error: SipError, *, to_tag: str | None = None) -> Response | None:
    """The stateless answer to a request that failed parsing or validation, or None to send nothing.

    None when the error says drop, when the request's header section could not be read, when it has
    no Via to send the answer along, or when it is an ACK (never answered, RFC 3261 §17.2.1). Without
    ``to_tag`` a tag is derived from the request, so a retransmission is answered identically.
    """
    src = error.headers
    if error.status_hint is None or src is None or error.method == "ACK" or "via" not in src:
        return None
    if to_tag is None:
        seed = "\x00".join(v for k, _, v in src._items if k in ("call-id", "from", "via", "cseq"))
        to_tag = hashlib.blake2s(seed.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    reason = error.reason if error.reason.isascii() and len(error.reason) <= 120 else None
    return _response_from(
        src, error.method, error.status_hint, reason, to_tag, error.response_headers()
    )
