"""Bytes to messages: one datagram with ``parse_message``, a byte stream with ``StreamFramer``.

Theory of operation (RFC 3261 §7, §18.3, §25; RFC 4475):
* The header section ends at the first empty line. It is decoded as UTF-8 with surrogateescape, so any
  octet (NUL in a quoted string, Latin-1 junk, RFC 4475 intmeth) survives a parse/serialize round trip.
  Folded lines (CRLF followed by SP/HTAB) are unfolded into one value.
* The start line, the header split and the header fields every layer above needs (Via, From, To,
  Call-ID, CSeq, Max-Forwards, Contact, Content-Length) are checked here, so a message that parses is
  one the transaction and dialog layers can use; other header values are parsed only when asked for.
* The body is framed by Content-Length, never by looking at its content (RFC 4475 mpart01). In a
  datagram the Content-Length may be absent (the body then runs to the end of the datagram), and bytes
  past the body are noise and dropped (§18.3, RFC 4475 dblreq); a Content-Length larger than what
  arrived is a 400 (clerr). On a stream it is mandatory: without a usable value the next message cannot
  be found, so ``StreamFramer`` reports a ``FramingError`` and stops (ncl, mcl01).
* A broken request raises a SipError carrying its status (400, 505, 513 ...) and, when the header
  section could be read, the headers to answer with; a broken response raises DropMessage (§18.1.2:
  responses are never answered).
* Every size is bounded (message, header count, line length); no input makes the parser raise
  anything but SipError, loop without end, or grow memory without bound.
"""

from __future__ import annotations

import re

from gateway.sip.errors import (
    DropMessage,
    FramingError,
    MessageTooLarge,
    ParseError,
    SipError,
    VersionNotSupported,
)
from gateway.sip.headers import _CANON, _CANON_EXACT, _TOKEN_RE, Headers
from gateway.sip.message import _BUILDERS, Request, Response, _content_length
from gateway.sip.uri import parse_uri

__all__ = ["parse_message", "StreamFramer", "KNOWN_METHODS", "MAX_SIZE"]

MAX_SIZE = 65535
MAX_HEADERS = 256
MAX_LINE = 8192

# Methods defined by RFC 3261 and its extensions. A CSeq method that differs from the request's is a
# 400 for these (RFC 4475 mismatch01); for any other method it is left to check_request, which answers
# 501 first (mismatch02).
KNOWN_METHODS: frozenset[str] = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO", "SUBSCRIBE",
     "NOTIFY", "REFER", "MESSAGE", "PUBLISH"}
)  # fmt: skip

_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.I)
# Content-Length lines (long or compact name) with any continuation lines, found before the header
# section is parsed: the stream framer needs the value to know how many octets to wait for.
_CL_RE = re.compile(rb"^(?:content-length|l)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", re.I | re.M)
_CRLF = b"\r\n"


def _split_head(
    head: str, max_headers: int, max_line: int
) -> tuple[str, list[tuple[str, str, str]]]:
    """Split the header section into the start line and canonical (key, name, value) items."""
    if "\r\n" in head:
        lines = head.split("\r\n")
        breaks = len(lines) - 1
        if head.count("\n") != breaks or head.count("\r") != breaks:
            raise ParseError("Bare CR or LF in header section")
    else:
        if "\r" in head:
            raise ParseError("Bare CR in header section")
        lines = head.split("\n")  # bare-LF line ends: tolerated if used throughout
    if len(lines) - 1 > max_headers:
        raise MessageTooLarge(f"More than {max_headers} header lines")
    if len(head) > max_line and max(map(len, lines)) > max_line:
        raise MessageTooLarge(f"Line longer than {max_line} octets")
    if "\n " in head or "\n\t" in head:
        return lines[0], _split_folded(lines, max_line)
    items: list[tuple[str, str, str]] = []
    append = items.append
    canon = _CANON_EXACT
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name:
            raise ParseError("Header line without a name and colon")
        hit = canon.get(name)
        if hit is None:
            hit = _unknown_name(name)
        append((hit[0], hit[1], value.strip(" \t")))
    return lines[0], items


def _unknown_name(name: str) -> tuple[str, str]:
    """(key, name) of a name in another case, or with SP/HTAB before ":" (HCOLON, RFC 3261 §25.1)."""
    name = name.rstrip(" \t")
    hit = _CANON.get(name.lower())
    if hit is not None:
        return hit
    if not _TOKEN_RE.fullmatch(name):
        raise ParseError("Malformed header name")
    return name.lower(), name


def _split_folded(lines: list[str], max_line: int) -> list[tuple[str, str, str]]:
    """The header split for a section with folded lines (LWS = [*WSP CRLF] 1*WSP, §7.3.1)."""
    items: list[tuple[str, str, str]] = []
    canon = _CANON
    for line in lines[1:]:
        first = line[:1]
        if first == " " or first == "\t":
            if not items:
                raise ParseError("Continuation line before any header")
            cont = line.strip(" \t")
            if cont:
                key, name, value = items[-1]
                value = f"{value} {cont}" if value else cont
                if len(value) > max_line:
                    raise MessageTooLarge(f"Header value longer than {max_line} octets")
                items[-1] = (key, name, value)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name:
            raise ParseError("Header line without a name and colon")
        hit = canon.get(name.lower())
        if hit is None:
            hit = _unknown_name(name)
        items.append((hit[0], hit[1], value.strip(" \t")))
    return items


def _parse_start(start: str, headers: Headers) -> Request | Response:
    """Parse the start line into a message without body; errors carry ``headers`` for answering."""
    if start[:4].upper() == "SIP/":
        parts = start.split(" ", 2)
        version = parts[0]
        if version.upper() != "SIP/2.0":
            raise DropMessage(f"Response with version {version[:20]!r}")
        code = parts[1] if len(parts) > 1 else ""
        # Status-Code = 3DIGIT (RFC 3261 §25.1): 4294967301 is not one (RFC 4475 bigcode).
        if len(code) != 3 or not (code.isascii() and code.isdigit()) or not 100 <= int(code) <= 699:
            raise DropMessage("Malformed status code")
        return Response(status=int(code), reason=parts[2] if len(parts) > 2 else "", version=version,
                        headers=headers)  # fmt: skip
    # Request-Line = Method SP Request-URI SP SIP-Version: exactly two single spaces and no LWS
    # anywhere else (RFC 4475 lwsstart, trws, lwsruri).
    parts = start.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError("Malformed Request-Line", headers=headers, method=parts[0] or None)
    method, uri_text, version = parts
    if method not in KNOWN_METHODS and not _TOKEN_RE.fullmatch(method):
        raise ParseError("Malformed method", headers=headers)
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        if _VERSION_RE.fullmatch(version):
            raise VersionNotSupported(headers=headers, method=method)
        raise ParseError("Malformed SIP-Version", headers=headers, method=method)
    try:
        uri = parse_uri(uri_text)
    except ParseError as exc:
        raise ParseError(f"Malformed Request-URI: {exc.reason}", headers=headers, method=method) from None
    return Request(method=method, uri=uri, version=version, headers=headers)


# The fields parsed (and cached) for every message: what the transaction and dialog layers rely on.
_CHECKED = ("via", "from", "to", "call-id", "cseq", "max-forwards", "contact")


def _collect(headers: Headers) -> dict[str, list[str]]:
    """Values of the checked fields and Content-Length, in one pass over the header lines."""
    found: dict[str, list[str]] = {
        "via": [], "from": [], "to": [], "call-id": [], "cseq": [], "max-forwards": [], "contact": [],
        "content-length": [],
    }  # fmt: skip
    get = found.get
    for k, _, v in headers._items:
        values = get(k)
        if values is not None:
            values.append(v)
    return found


def _check_fields(msg: Request | Response, found: dict[str, list[str]]) -> None:
    """Parse (and cache) the header fields every layer relies on; raise ParseError if one is bad.

    Missing or duplicated Call-ID/From/To/CSeq (RFC 4475 insuf, multi01) and their syntax (quotbal,
    baddn, badaspec, regbadct, scalar02), stray separators in Via and Contact (badinv01).
    """
    cache = msg.headers._cache
    for key in _CHECKED:
        cache[key] = _BUILDERS[key](found[key])
    if isinstance(msg, Request) and cache["cseq"].method != msg.method and msg.method in KNOWN_METHODS:
        raise ParseError("CSeq method does not match the request method")


def _content_length_values(head: bytes) -> list[bytes]:
    return [b" ".join(m.group(1).split()) for m in _CL_RE.finditer(head)]


def parse_message(
    data: bytes,
    *,
    datagram: bool = True,
    max_size: int = MAX_SIZE,
    max_headers: int = MAX_HEADERS,
    max_line: int = MAX_LINE,
) -> Request | Response:
    """Parse one complete message: a UDP datagram, or (``datagram=False``) one framed stream message.

    Raises a SipError subclass only: ParseError/VersionNotSupported/MessageTooLarge for requests (with
    the headers to answer with when readable), DropMessage for responses and keep-alives.
    """
    if type(data) is not bytes:
        data = bytes(data)
    try:
        return _parse(data, datagram, max_size, max_headers, max_line)
    except DropMessage:
        raise
    except SipError as exc:
        if data.lstrip(_CRLF)[:4].upper() == b"SIP/":
            raise DropMessage(f"Unusable response: {exc.reason}") from exc
        if isinstance(exc, MessageTooLarge) and exc.headers is None:
            exc.headers, exc.method = _salvage(data, max_size, max_headers, max_line)
        raise
    except RecursionError as exc:  # defensive: nothing here recurses, but never crash the caller
        raise ParseError("Message too complex") from exc


def _parse(
    data: bytes, datagram: bool, max_size: int, max_headers: int, max_line: int
) -> Request | Response:
    if len(data) > max_size:
        raise MessageTooLarge(f"Message larger than {max_size} octets")
    start = 0
    n = len(data)
    while start < n and data[start] in _CRLF:  # CRLFs before the start line (§7.5; keep-alives)
        start += 1
    if start == n:
        raise DropMessage("Keep-alive or empty datagram")
    end = data.find(b"\r\n\r\n", start)
    sep = 4
    lf_end = data.find(b"\n\n", start, None if end < 0 else end)
    if lf_end >= 0:
        end, sep = lf_end, 2
    if end < 0:
        raise ParseError("Header section not terminated by an empty line")
    head = data[start:end].decode("utf-8", "surrogateescape")
    start_line, items = _split_head(head, max_headers, max_line)
    headers = Headers._trusted(items)
    msg = _parse_start(start_line, headers)
    method = msg.method if isinstance(msg, Request) else None
    body_start = end + sep
    available = n - body_start
    try:
        found = _collect(headers)
        length = headers._cache["content-length"] = _content_length(found["content-length"])
        if length is None:
            if not datagram:
                raise ParseError("Content-Length is required on a stream transport")
            length = available
        elif length > available:
            raise ParseError("Content-Length larger than the message body")
        elif length < available and not datagram:
            raise ParseError("Octets after the message body")
        msg.body = data[body_start : body_start + length]
        _check_fields(msg, found)
    except SipError as exc:
        exc.headers = headers
        exc.method = method
        raise
    return msg


def _salvage(data: bytes, max_size: int, max_headers: int, max_line: int) -> tuple[Headers | None, str | None]:
    """Best effort, bounded: the header fields that fit the bounds of a request refused for its size,
    so that it can still be answered 513 (RFC 3261 §21.5.13) instead of silently dropped.

    Only the first ``max_size`` octets and ``max_headers`` lines are looked at; lines over ``max_line``,
    continuation lines, lines that are not ``name: value`` and an unterminated last line (it may be
    cut) are left out. Without a Via among what is left the message is still dropped."""
    head = data[:max_size].lstrip(_CRLF)
    end = head.find(b"\r\n\r\n")
    lines = head[: end if end >= 0 else len(head)].decode("utf-8", "surrogateescape").replace("\r\n", "\n").split("\n")
    if end < 0:
        lines.pop()  # possibly cut in the middle
    if not lines or len(lines[0]) > max_line or lines[0][:4].upper() == "SIP/":
        return None, None
    items: list[tuple[str, str, str]] = []
    for line in lines[1 : max_headers + 1]:
        if not line or line[0] in " \t" or len(line) > max_line:
            continue
        name, colon, value = line.partition(":")
        if not colon:
            continue
        hit = _CANON.get(name.rstrip(" \t").lower())
        if hit is None:
            if not _TOKEN_RE.fullmatch(name.rstrip(" \t")):
                continue
            hit = (name.rstrip(" \t").lower(), name.rstrip(" \t"))
        items.append((hit[0], hit[1], value.strip(" \t")))
    return Headers._trusted(items), lines[0].split(" ", 1)[0] or None


def _partial_headers(
    head: bytes, max_size: int, max_headers: int, max_line: int
) -> tuple[Headers | None, str | None]:
    """Best effort: the header section and method of a message we cannot frame, to answer it."""
    try:
        start_line, items = _split_head(
            head.lstrip(b"\r\n").decode("utf-8", "surrogateescape"), max_headers, max_line
        )
    except MessageTooLarge:
        return _salvage(head + b"\r\n\r\n", max_size, max_headers, max_line)
    except SipError:
        return None, None
    if start_line[:4].upper() == "SIP/":
        return None, None  # a response: never answered
    return Headers._trusted(items), start_line.split(" ", 1)[0] or None


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages by Content-Length (RFC 3261 §18.3).

    ``feed`` returns, in order, each message completed by the new data, a SipError for a message that
    was framed but is malformed (the stream goes on), or a final FramingError after which the
    connection must be closed (``closed`` becomes True and further data is ignored). CRLFs between
    messages are keep-alives (RFC 5626 §3.5.1) and skipped. A message cut short just stays buffered:
    ``buffered`` tells the transport how much is pending, to close an idle connection (RFC 4475 clerr).
    """

    def __init__(
        self, *, max_size: int = MAX_SIZE, max_headers: int = MAX_HEADERS, max_line: int = MAX_LINE
    ) -> None:
        self.max_size = max_size
        self.max_headers = max_headers
        self.max_line = max_line
        self._buf = bytearray()
        self._scan = 0  # where the search for the end of the header section resumes
        self._line_start = 0  # start of the current (unterminated) header line, for max_line
        self._need: int | None = None  # total octets of the message being framed, once known
        self.closed = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _fail(self, error: FramingError, out: list[Request | Response | SipError]) -> None:
        out.append(error)
        self.closed = True
        self._buf = bytearray()
        self._need = None

    def feed(self, data: bytes) -> list[Request | Response | SipError]:
        out: list[Request | Response | SipError] = []
        if self.closed:
            return out
        buf = self._buf
        old_len = len(buf)
        buf += data
        while True:
            if self._need is None:
                skip = 0
                blen = len(buf)
                while skip < blen and buf[skip] in _CRLF:
                    skip += 1
                if skip:
                    del buf[:skip]
                    old_len = max(0, old_len - skip)
                    self._scan = self._line_start = 0
                if not buf:
                    break
                end = buf.find(b"\r\n\r\n", self._scan)
                sep = 4
                lf_end = buf.find(b"\n\n", self._scan, None if end < 0 else end)
                if lf_end >= 0:
                    end, sep = lf_end, 2
                if end < 0:
                    blen = len(buf)
                    nl = buf.rfind(b"\n", old_len, blen)
                    if nl >= 0:
                        self._line_start = nl + 1
                    if blen > self.max_size or blen - self._line_start > self.max_line:
                        reason = ("Header section too large" if blen > self.max_size
                                  else f"Line longer than {self.max_line} octets")
                        err = FramingError(reason, status_hint=513)
                        if buf.lstrip(_CRLF)[:4].upper() == b"SIP/":
                            err.status_hint = None  # a response is never answered, only dropped
                        else:
                            err.headers, err.method = _salvage(bytes(buf), self.max_size, self.max_headers,
                                                               self.max_line)
                        self._fail(err, out)
                    else:
                        self._scan = max(0, blen - 3)
                    break
                head = bytes(buf[:end])
                values = _content_length_values(head)
                problem = None
                status: int | None = 400
                if not values:
                    problem = "Content-Length missing on a stream transport"
                elif len(values) > 1:
                    problem = "Several Content-Length values"
                elif not (values[0].isdigit() and len(values[0].lstrip(b"0")) <= 10):
                    problem = "Malformed Content-Length"
                elif end + sep + int(values[0]) > self.max_size:
                    problem = f"Message larger than {self.max_size} octets"
                    status = 513
                if problem is not None:
                    if head.lstrip(_CRLF)[:4].upper() == b"SIP/":
                        status = None  # a response is never answered, only dropped
                    err = FramingError(problem, status_hint=status)
                    err.headers, err.method = _partial_headers(head, self.max_size, self.max_headers,
                                                               self.max_line)
                    self._fail(err, out)
                    break
                total = end + sep + int(values[0])
                self._need = total
            if len(buf) < self._need:
                break
            message = bytes(buf[: self._need])
            del buf[: self._need]
            old_len = 0
            self._need = None
            self._scan = self._line_start = 0
            try:
                out.append(
                    parse_message(
                        message, datagram=False, max_size=self.max_size,
                        max_headers=self.max_headers, max_line=self.max_line,
                    )  # fmt: skip
                )
            except SipError as exc:
                out.append(exc)
        return out

