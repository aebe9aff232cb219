"""Header fields: an ordered, case-insensitive multimap of raw values, and the typed Via and CSeq values.

``Headers`` keeps every field as the (unfolded) text that arrived, in order, under its canonical long name
(compact forms such as ``v`` and ``i`` are mapped on the way in, RFC 3261 §7.3.3), so a message that is
only relayed is re-serialized without being understood. Values are split into list elements only for the
header fields whose grammar is a comma-separated list (RFC 3261 §7.3.1), and never inside a quoted string
or a ``<URI>``. Typed values are parsed on demand by ``gateway.sip.message`` and cached in ``_cache``
until the next mutation.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.sip.errors import ParseError, SipError
from gateway.sip.uri import (
    _CACHE_SIZE,
    _CACHEABLE,
    _TOKEN,
    _format_params,
    _ParamsMixin,
    _parse_header_params,
    _set_params,
)
from gateway.sip.uri import clear_caches as _uri_clear_caches

__all__ = [
    "Headers",
    "Via",
    "CSeq",
    "parse_via",
    "parse_vias",
    "parse_cseq",
    "canonical_name",
    "split_list",
    "COMPACT_FORMS",
    "LIST_HEADERS",
]

# RFC 3261 §7.3.3 and the compact forms registered since (IANA "Header Fields" registry).
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "u": "Allow-Events",
    "y": "Identity",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "n": "Identity-Info",
}

_KNOWN_NAMES = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length", "Content-Type",
    "CSeq", "Date", "Diversion", "Error-Info", "Event", "Expires", "From", "History-Info", "Identity",
    "Identity-Info", "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE",
    "Organization", "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route",
    "Refer-To", "Referred-By", "Reject-Contact", "Replaces", "Reply-To", "Request-Disposition",
    "Require", "Retry-After", "Route", "RSeq", "Server", "Service-Route", "Session-Expires",
    "Subject", "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent",
    "Via", "Warning", "WWW-Authenticate",
)  # fmt: skip

# lower-case spelling (long or compact) -> (lookup key, canonical name)
_CANON: dict[str, tuple[str, str]] = {n.lower(): (n.lower(), n) for n in _KNOWN_NAMES}
_CANON.update({short: (long.lower(), long) for short, long in COMPACT_FORMS.items()})
# Exact-case entries for the canonical spellings, so the parser usually finds a name without lower().
_CANON_EXACT: dict[str, tuple[str, str]] = {**_CANON, **{n: (n.lower(), n) for n in _KNOWN_NAMES}}

# Header fields whose grammar is a comma-separated list (RFC 3261 §7.3.1 and the defining RFCs).
# Authorization, WWW-Authenticate and friends are absent on purpose: their commas separate
# auth-params, not values.
LIST_HEADERS: frozenset[str] = frozenset(
    n.lower()
    for n in (
        "Via", "Contact", "Route", "Record-Route", "Path", "Service-Route", "Allow", "Allow-Events",
        "Supported", "Require", "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding",
        "Accept-Language", "Accept-Contact", "Reject-Contact", "Content-Encoding", "Content-Language",
        "Alert-Info", "Call-Info", "Error-Info", "In-Reply-To", "Warning", "Reason", "History-Info",
        "Diversion", "P-Asserted-Identity", "P-Preferred-Identity", "Request-Disposition",
    )
)  # fmt: skip

_TOKEN_RE = re.compile(f"[{_TOKEN}]+")
_VIA_RE = re.compile(
    f"[ \\t]*SIP[ \\t]*/[ \\t]*2\\.0[ \\t]*/[ \\t]*([{_TOKEN}]+)[ \\t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.\-]*)(?:[ \t]*:[ \t]*([0-9]{1,5}))?[ \t]*",
    re.I,
)
_CSEQ_RE = re.compile(f"[ \\t]*([0-9]+)[ \\t]+([{_TOKEN}]+)[ \\t]*")
MAX_CSEQ = 2**32 - 1


def canonical_name(name: str) -> str:
    """The canonical long form of a header name (``v`` -> ``Via``); unknown names are kept as given."""
    hit = _CANON.get(name.lower())
    return name if hit is None else hit[1]


def _key(name: str) -> str:
    lname = name.lower()
    hit = _CANON.get(lname)
    return lname if hit is None else hit[0]


def split_list(value: str, *, keep_empty: bool = False) -> list[str]:
    """Split a list-valued header on commas outside quoted strings and ``<...>``; strip each element.

    Empty elements are dropped unless ``keep_empty`` (the strict parser uses it to reject ``;;,;,,``).
    """
    if "," not in value:
        v = value.strip(" \t")
        return [v] if v or keep_empty else []
    out: list[str] = []
    start = i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == '"':
            i += 1
            while i < n and value[i] != '"':
                i += 2 if value[i] == "\\" else 1
        elif c == "<":
            j = value.find(">", i)
            i = n if j < 0 else j
        elif c == ",":
            out.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    out.append(value[start:].strip(" \t"))
    return out if keep_empty else [v for v in out if v]


class Headers:
    """Ordered multimap of header fields: case-insensitive names, raw values, canonical long names."""

    __slots__ = ("_items", "_cache")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str, str]] = []  # (lookup key, canonical name, value)
        self._cache: dict[str, Any] = {}
        for name, value in items:
            self.add(name, value)

    @classmethod
    def _trusted(cls, items: list[tuple[str, str, str]]) -> Headers:
        """Wrap items the parser already validated and canonicalized (no copy, no checks)."""
        h = cls.__new__(cls)
        h._items = items
        h._cache = {}
        return h

    @staticmethod
    def _entry(name: str, value: str) -> tuple[str, str, str]:
        hit = _CANON.get(name.lower())
        if hit is None:
            if not _TOKEN_RE.fullmatch(name):
                raise SipError(f"invalid header name {name!r}", ours=True, status_hint=500)
            hit = (name.lower(), name)
        if "\r" in value or "\n" in value:
            raise SipError(f"CR or LF in the value of {name}", ours=True, status_hint=500)
        return hit[0], hit[1], value.strip(" \t")

    # -- reading -------------------------------------------------------------------------------

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (the first list element for list-valued fields), or None."""
        key = _key(name)
        for k, _, v in self._items:
            if k == key:
                if key in LIST_HEADERS and "," in v:
                    parts = split_list(v)
                    return parts[0] if parts else ""
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order, list-valued fields split into their elements."""
        key = _key(name)
        if key in LIST_HEADERS:
            out: list[str] = []
            for k, _, v in self._items:
                if k == key:
                    out.extend(split_list(v))
            return out
        return [v for k, _, v in self._items if k == key]

    def get_lines(self, name: str) -> list[str]:
        """The raw value of each ``name`` field line, unsplit."""
        key = _key(name)
        return [v for k, _, v in self._items if k == key]

    def count(self, name: str) -> int:
        """How many field lines carry ``name`` (not list elements)."""
        key = _key(name)
        return sum(1 for k, _, _ in self._items if k == key)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = _key(name)
        return any(k == key for k, _, _ in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return ((n, v) for _, n, v in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(n, v) for _, n, v in self._items] == [(n, v) for _, n, v in other._items]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def copy(self) -> Headers:
        return Headers._trusted(list(self._items))

    # -- writing -------------------------------------------------------------------------------

    def add(self, name: str, value: str) -> None:
        """Append a field line at the end."""
        self._items.append(self._entry(name, value))
        self._cache.clear()

    def set(self, name: str, value: str) -> None:
        """Replace the first ``name`` line in place and remove the others; append if absent."""
        entry = self._entry(name, value)
        key = entry[0]
        out: list[tuple[str, str, str]] = []
        placed = False
        for item in self._items:
            if item[0] == key:
                if not placed:
                    out.append(entry)
                    placed = True
            else:
                out.append(item)
        if not placed:
            out.append(entry)
        self._items = out
        self._cache.clear()

    def insert_first(self, name: str, value: str) -> None:
        """Insert before the first ``name`` line (e.g. a new top Via), or at the very top if absent."""
        entry = self._entry(name, value)
        key = entry[0]
        for i, item in enumerate(self._items):
            if item[0] == key:
                self._items.insert(i, entry)
                break
        else:
            self._items.insert(0, entry)
        self._cache.clear()

    def remove(self, name: str) -> int:
        """Remove every ``name`` line; return how many there were."""
        key = _key(name)
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        self._cache.clear()
        return before - len(self._items)

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of ``name`` (one list element for list-valued fields)."""
        key = _key(name)
        for i, (k, n, v) in enumerate(self._items):
            if k == key:
                self._cache.clear()
                if key in LIST_HEADERS and "," in v:
                    parts = split_list(v)
                    if len(parts) > 1:
                        self._items[i] = (k, n, ", ".join(parts[1:]))
                        return parts[0]
                del self._items[i]
                return v
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Via(_ParamsMixin):
    """One via-parm: ``SIP/2.0/<transport> <host>[:port] *(;param)`` (RFC 3261 §20.42)."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def rport(self) -> int | None:
        """The rport value filled in by a server (RFC 3581); a bare ``;rport`` is ``has_param('rport')``."""
        value = self.param("rport")
        if value is None or not (value.isascii() and value.isdigit()) or len(value) > 5:
            return None
        return int(value)

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, *pairs: tuple[str, str | None], **named: str | None) -> Via:
        return dataclasses.replace(self, params=_set_params(self.params, pairs + tuple(named.items())))

    def replace(self, **changes: object) -> Via:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"SIP/2.0/{self.transport} {self.sent_by}{_format_params(self.params)}"


_VD = Via.__dict__
_via_transport, _via_host, _via_port, _via_params = (
    _VD[f].__set__ for f in ("transport", "host", "port", "params")
)


def _mk_via(
    transport: str, host: str, port: int | None, params: tuple[tuple[str, str | None], ...]
) -> Via:
    """Via(...) without the frozen dataclass __init__'s per-field object.__setattr__ (see uri.py)."""
    o = object.__new__(Via)
    _via_transport(o, transport)
    _via_host(o, host)
    _via_port(o, port)
    _via_params(o, params)
    return o  # type: ignore[no-any-return]


def parse_via(text: str) -> Via:
    """Parse one via-parm (not a comma-separated list: see ``parse_vias``)."""
    if len(text) <= _CACHEABLE:
        return _parse_via_cached(text)
    return _parse_via(text)


def _parse_via(text: str) -> Via:
    m = _VIA_RE.match(text)
    if m is None:
        raise ParseError(f"malformed Via {text[:60]!r}")
    port = None
    if m.group(3) is not None:
        port = int(m.group(3))
        if port > 65535:
            raise ParseError("Via port out of range")
    params = _parse_header_params(text, m.end()) if m.end() < len(text) else ()
    return _mk_via(m.group(1).upper(), m.group(2), port, params)


# A Via recurs in every response of its transaction and in retransmissions (see uri._CACHE_SIZE).
_parse_via_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_parse_via)


def clear_caches() -> None:
    """Forget memoized Vias, URIs and addresses."""
    _parse_via_cached.cache_clear()
    _uri_clear_caches()


def parse_vias(value: str) -> list[Via]:
    """Parse a Via field line that may hold several comma-separated via-parms; empty ones are errors."""
    if "," not in value:
        return [parse_via(value)]
    return [parse_via(part) for part in split_list(value, keep_empty=True)]


@dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: <seq> <method>``; seq is an unsigned 32-bit integer (RFC 3261 §8.1.1.5, §20.16)."""

    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(text: str) -> CSeq:
    m = _CSEQ_RE.fullmatch(text)
    if m is None:
        raise ParseError(f"malformed CSeq {text[:60]!r}")
    digits = m.group(1).lstrip("0") or "0"
    # Length first: never hand an unbounded digit string to int() (RFC 4475 scalar02, scalarlg).
    if len(digits) > 10 or int(digits) > MAX_CSEQ:
        raise ParseError("CSeq number larger than 2**32-1")
    return CSeq(int(digits), m.group(2))
