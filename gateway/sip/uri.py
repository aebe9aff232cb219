"""SIP and SIPS URIs, other absolute URIs, and name-addr / addr-spec values (RFC 3261 §19.1, §20.10, §25.1).

Escapes are kept as received: ``SipUri.user`` and parameter values hold the ``%XX`` text of the wire, and
``unescape`` (or ``SipUri.user_unescaped``) decodes exactly once, so ``value%2541`` becomes ``value%41``
and never ``valueA`` (RFC 4475 §3.1.1.3). ``str()`` of every parsed object gives back text that parses to
an equal object. Non-SIP schemes (``tel:``, ``isbn:``, ``http:`` ...) parse to ``AbsoluteUri``, an opaque
scheme + rest pair: the element only has to recognise them, not understand them (RFC 4475 §3.3.2-4).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import ClassVar

from gateway.sip.errors import ParseError

__all__ = [
    "SipUri",
    "AbsoluteUri",
    "Uri",
    "NameAddr",
    "parse_uri",
    "parse_name_addr",
    "unescape",
    "quote_string",
    "unquote_string",
]

# RFC 3261 §25.1 character classes, ASCII only (the parser hands us text that may hold any code point).
_TOKEN = r"A-Za-z0-9\-.!%*_+`'~"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_TOKEN_RE = re.compile(f"[{_TOKEN}]+")
_PCHAR = f"{_UNRESERVED}%\\[\\]/:&+$"
_HCHAR = f"{_UNRESERVED}%\\[\\]/?:+$"
_BAD_ESCAPE_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# uric (RFC 2396 via RFC 3261 absoluteURI), plus "[]#" seen in practice; no whitespace, <, >, ", {, }.
_OPAQUE_RE = re.compile(f"[{_UNRESERVED}%;/?:@&=+$,\\[\\]#]+")
_HEX = "0123456789abcdefABCDEF"
# The whole SIP-URI after "sip:" in one pass. The userinfo is everything up to the first "@" (no "@"
# may appear unescaped after it), although the user part may hold ";", "?" and "/" (RFC 4475 semiuri).
# User and password exclude ":" and "@", and the quantifiers are possessive, so a hostile URI is
# matched in linear time. "#" is tolerated in the user part: PBX dial strings carry it unescaped in
# practice and it is unambiguous there.
_SIP_URI_RE = re.compile(
    f"(?:([{_UNRESERVED}%&=+$,;?/#]++)(?::([{_UNRESERVED}%&=+$,]*+))?@)?"
    r"(\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9_][A-Za-z0-9_.\-]*+)(?::([0-9]{1,5}))?"
    f"((?:;[{_PCHAR}]++(?:=[{_PCHAR}]*+)?)*+)"
    f"(?:\\?([{_HCHAR}]++=[{_HCHAR}]*+(?:&[{_HCHAR}]++=[{_HCHAR}]*+)*+))?"
)

# Header parameters (generic-param, RFC 3261 §25.1) with the LWS the grammar allows around ";" and "=".
# The value is a token, a host (IPv6 references included) or a quoted string kept with its quotes.
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_HPARAM_RE = re.compile(
    f'[ \\t]*;[ \\t]*([{_TOKEN}]+)(?:[ \\t]*=[ \\t]*({_QUOTED}|[{_TOKEN}\\[\\]:]+))?[ \\t]*', re.S
)
# An unquoted display-name: *(token LWS), RFC 4475 §3.1.1.6 allows no LWS before "<".
_DISPLAY_TOKENS_RE = re.compile(f"[{_TOKEN}]+(?:[ \\t]+[{_TOKEN}]+)*")
_WS = frozenset(" \t")


def unescape(text: str) -> str:
    """Decode ``%XX`` escapes once (bytes read as UTF-8; invalid UTF-8 kept via surrogateescape)."""
    if "%" not in text:
        return text
    out = bytearray()
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out += c.encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "surrogateescape")


def quote_string(text: str) -> str:
    """``text`` as a quoted-string: backslash-escape ``"`` and ``\\`` (RFC 3261 §25.1 quoted-pair)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote_string(text: str) -> str:
    """The content of a quoted-string with its quoted-pairs resolved; other text is returned as is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        body = text[1:-1]
        if "\\" not in body:
            return body
        out = []
        i, n = 0, len(body)
        while i < n:
            if body[i] == "\\" and i + 1 < n:
                i += 1
            out.append(body[i])
            i += 1
        return "".join(out)
    return text


def _find_param(params: tuple[tuple[str, str | None], ...], name: str) -> tuple[bool, str | None]:
    lname = name.lower()
    for pname, value in params:
        if pname.lower() == lname:
            return True, value
    return False, None


def _set_params(
    params: tuple[tuple[str, str | None], ...],
    pairs: tuple[tuple[str, str | None], ...],
) -> tuple[tuple[str, str | None], ...]:
    """Replace same-named parameters in place (case-insensitively); append the new ones in order."""
    out = list(params)
    for name, value in pairs:
        lname = name.lower()
        for i, (pname, _) in enumerate(out):
            if pname.lower() == lname:
                out[i] = (pname, value)
                break
        else:
            out.append((name, value))
    return tuple(out)


def _format_params(params: tuple[tuple[str, str | None], ...]) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


class _ParamsMixin:
    """Parameter lookup shared by URIs, name-addrs and Vias: names compare case-insensitively."""

    __slots__ = ()
    params: tuple[tuple[str, str | None], ...]

    def param(self, name: str) -> str | None:
        """The value of parameter ``name`` as received; None when absent *or* valueless (see has_param)."""
        return _find_param(self.params, name)[1]

    def has_param(self, name: str) -> bool:
        return _find_param(self.params, name)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class SipUri(_ParamsMixin):
    """A ``sip:`` or ``sips:`` URI; ``host`` keeps IPv6 brackets; escapes kept as received."""

    is_sip: ClassVar[bool] = True

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def user_unescaped(self) -> str | None:
        """The user part with ``%XX`` decoded once (``%00`` stays a NUL, RFC 4475 escnull)."""
        return None if self.user is None else unescape(self.user)

    @property
    def host_port(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def with_params(self, *pairs: tuple[str, str | None], **named: str | None) -> SipUri:
        """A copy with these parameters set (None value: a flag such as ``lr``); others kept in order."""
        return dataclasses.replace(self, params=_set_params(self.params, pairs + tuple(named.items())))

    def without_params(self, *names: str) -> SipUri:
        drop = {n.lower() for n in names}
        return dataclasses.replace(self, params=tuple(p for p in self.params if p[0].lower() not in drop))

    def replace(self, **changes: object) -> SipUri:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        if self.params:
            parts.append(_format_params(self.params))
        if self.headers:
            parts.append("?" + "&".join(f"{n}={v}" for n, v in self.headers))
        return "".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class AbsoluteUri(_ParamsMixin):
    """A URI of any other scheme, kept opaque: ``scheme`` (lower case) and the ``raw`` text after ':'."""

    is_sip: ClassVar[bool] = False
    params: ClassVar[tuple[tuple[str, str | None], ...]] = ()

    scheme: str
    raw: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.raw}"


Uri = SipUri | AbsoluteUri

_new = object.__new__
# Frozen dataclasses set each field through object.__setattr__, which costs about 1 us for a SipUri.
# The parser builds thousands per second, so it fills the slots directly; the result is the same
# object the generated __init__ would build (fields, equality, hash, immutability).
_SU = SipUri.__dict__
_su_scheme, _su_user, _su_password, _su_host, _su_port, _su_params, _su_headers = (
    _SU[f].__set__ for f in ("scheme", "user", "password", "host", "port", "params", "headers")
)


def _mk_sip_uri(
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: tuple[tuple[str, str | None], ...],
    headers: tuple[tuple[str, str], ...],
) -> SipUri:
    o = _new(SipUri)
    _su_scheme(o, scheme)
    _su_user(o, user)
    _su_password(o, password)
    _su_host(o, host)
    _su_port(o, port)
    _su_params(o, params)
    _su_headers(o, headers)
    return o  # type: ignore[no-any-return]


# Parsed values are immutable, and the same URIs and addresses recur in every message of a dialog
# (INVITE, provisional and final responses, ACK, BYE), so short texts are memoized. Bounded: at most
# _CACHE_SIZE entries of at most _CACHEABLE characters per cache.
_CACHE_SIZE = 4096
_CACHEABLE = 256


def parse_uri(text: str) -> Uri:
    """Parse a Request-URI or addr-spec; raise ParseError if it is not a valid absolute URI."""
    if len(text) <= _CACHEABLE:
        return _parse_uri_cached(text)
    return _parse_uri(text)


def _parse_uri(text: str) -> Uri:
    if text.startswith("sip:"):
        scheme, colon = "sip", 3
    else:
        colon = text.find(":")
        if colon <= 0 or not _SCHEME_RE.fullmatch(text, 0, colon):
            raise ParseError(f"not a URI: {text[:80]!r}")
        scheme = text[:colon].lower()
    if scheme != "sip" and scheme != "sips":
        raw = text[colon + 1 :]
        if not _OPAQUE_RE.fullmatch(raw) or ("%" in raw and _BAD_ESCAPE_RE.search(raw)):
            raise ParseError(f"malformed {scheme}: URI")
        return AbsoluteUri(scheme=scheme, raw=raw)
    if "%" in text and _BAD_ESCAPE_RE.search(text):
        raise ParseError("malformed %-escape in SIP URI")
    m = _SIP_URI_RE.fullmatch(text, colon + 1)
    if m is None:
        raise ParseError(f"malformed SIP URI {text[:80]!r}")
    user, password, host, port_text, params_text, headers_text = m.groups()
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise ParseError("port out of range in SIP URI")
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    if params_text:
        plist: list[tuple[str, str | None]] = []
        for item in params_text[1:].split(";"):
            name, eq, value = item.partition("=")
            plist.append((name, value if eq else None))
        params = tuple(plist)
    if headers_text is not None:
        headers = tuple(
            (name, value) for name, _, value in (h.partition("=") for h in headers_text.split("&"))
        )
    return _mk_sip_uri(scheme, user, password, host, port, params, headers)


_parse_uri_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_parse_uri)


def _parse_header_params(text: str, pos: int) -> tuple[tuple[str, str | None], ...]:
    """``*( SEMI generic-param )`` from ``pos`` to the end of ``text``; stray ";" is a ParseError."""
    out: list[tuple[str, str | None]] = []
    n = len(text)
    match = _HPARAM_RE.match
    while pos < n:
        m = match(text, pos)
        if m is None:
            if text[pos:].strip(" \t") == "":
                break
            raise ParseError(f"malformed parameter near {text[pos:pos + 40]!r}")
        out.append((m.group(1), m.group(2)))
        pos = m.end()
    return tuple(out)


def _quoted_end(text: str, start: int) -> int:
    """Index just past the quoted-string opening at ``start``; ParseError if it never closes."""
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise ParseError("unterminated quoted string")


@dataclass(frozen=True, slots=True, kw_only=True)
class NameAddr(_ParamsMixin):
    """From/To/Contact/Route value: optional display name, URI, and the header's own parameters."""

    display_name: str | None = None
    uri: Uri
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_params(self, *pairs: tuple[str, str | None], **named: str | None) -> NameAddr:
        return dataclasses.replace(self, params=_set_params(self.params, pairs + tuple(named.items())))

    def with_tag(self, tag: str) -> NameAddr:
        return self.with_params(("tag", tag))

    def replace(self, **changes: object) -> NameAddr:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def __str__(self) -> str:
        # Always the name-addr form: a URI with ";", "," or "?" must be bracketed (§20.10) and
        # brackets are never wrong.
        dn = "" if self.display_name is None else quote_string(self.display_name) + " "
        return f"{dn}<{self.uri}>{_format_params(self.params)}"


_NA = NameAddr.__dict__
_na_display, _na_uri, _na_params = (_NA[f].__set__ for f in ("display_name", "uri", "params"))


def _mk_name_addr(
    display_name: str | None, uri: Uri, params: tuple[tuple[str, str | None], ...]
) -> NameAddr:
    o = _new(NameAddr)
    _na_display(o, display_name)
    _na_uri(o, uri)
    _na_params(o, params)
    return o  # type: ignore[no-any-return]


# The common name-addr shapes in one match: ["quoted" | token *(LWS token)] [LWS] "<" URI ">".
# Anything else (addr-spec, or an error to diagnose) takes the slow path below.
_NAME_ADDR_RE = re.compile(
    f'[ \\t]*+(?:"((?:[^"\\\\]|\\\\.)*+)"[ \\t]*+|([{_TOKEN}]++(?:[ \\t]++[{_TOKEN}]++)*+)?[ \\t]*+)'
    r"<([^> \t<]*+)>",
    re.S,
)


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``[display-name] <URI> *(;param)`` or ``addr-spec *(;param)`` (RFC 3261 §20.10).

    Without brackets the URI ends at the first ";", so the parameters belong to the header field, not to
    the URI (RFC 4475 cparam01); such a URI may not hold "?" or "," (regbadct) nor whitespace.
    """
    if len(text) <= _CACHEABLE:
        return _parse_name_addr_cached(text)
    return _parse_name_addr(text)


def _parse_name_addr(text: str) -> NameAddr:
    m = _NAME_ADDR_RE.match(text)
    if m is None:
        return _parse_name_addr_slow(text)
    quoted, tokens, uri_text = m.groups()
    if quoted is not None:
        display: str | None = unquote_string(f'"{quoted}"') if "\\" in quoted else quoted
    else:
        display = tokens
    end = m.end()
    params = _parse_header_params(text, end) if end < len(text) else ()
    return _mk_name_addr(display, parse_uri(uri_text), params)


_parse_name_addr_cached = functools.lru_cache(maxsize=_CACHE_SIZE)(_parse_name_addr)


def clear_caches() -> None:
    """Forget memoized URIs and addresses (benchmarks measure the cold path with it)."""
    _parse_uri_cached.cache_clear()
    _parse_name_addr_cached.cache_clear()


def _parse_name_addr_slow(text: str) -> NameAddr:
    """addr-spec forms, and the precise diagnosis of malformed name-addrs."""
    s = text.strip(" \t")
    if not s:
        raise ParseError("empty address")
    display: str | None = None
    if s[0] == '"':
        end = _quoted_end(s, 0)
        display = unquote_string(s[:end])
        lt = end
        while lt < len(s) and s[lt] in _WS:
            lt += 1
        if lt >= len(s) or s[lt] != "<":
            raise ParseError("quoted display name without <URI>")
    else:
        lt = s.find("<")
        if lt > 0 and ";" in s[:lt]:
            lt = -1  # an addr-spec whose parameters hold a "<" (inside a quoted value)
        if lt > 0:
            dn = s[:lt].rstrip(" \t")
            if dn and not _DISPLAY_TOKENS_RE.fullmatch(dn):
                raise ParseError("unquoted display name with characters outside token")
            display = dn or None
    if lt >= 0:
        gt = s.find(">", lt + 1)
        if gt < 0:
            raise ParseError("missing > in address")
        uri_text = s[lt + 1 : gt]
        if " " in uri_text or "\t" in uri_text:
            raise ParseError("whitespace inside <URI>")
        uri = parse_uri(uri_text)
        params = _parse_header_params(s, gt + 1) if gt + 1 < len(s) else ()
        return NameAddr(display_name=display, uri=uri, params=params)
    semi = s.find(";")
    uri_text = s if semi < 0 else s[:semi].rstrip(" \t")
    for bad in (" ", "\t", ",", "?", ">", '"'):
        if bad in uri_text:
            raise ParseError("addr-spec needs <> (or is malformed)")
    uri = parse_uri(uri_text)
    params = _parse_header_params(s, semi) if semi >= 0 else ()
    return NameAddr(uri=uri, params=params)
