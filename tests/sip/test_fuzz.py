"""Property-based fuzz of the SIP parser and stream framer (hypothesis), bounded for CI.

Valid requests and responses are generated from their parts (methods, URIs, Vias, compact and long
header names, extension headers, bodies), then mutated the ways hostile or broken peers do: byte
flips, truncation, duplicated, dropped and reordered header lines, random or absurd Content-Length
values, folds, NULs, header and line bombs. The properties:

* ``parse_message`` returns a Request or Response or raises a ``SipError`` carrying a verdict: a status
  from 400 to 599 to answer with, or None to drop (always None for a response); never another exception.
* The answer the gateway would send to a refused request (``make_error_response``) serializes, carries
  that status, and is never much larger than the request (no amplification).
* An accepted message is stable: ``parse(serialize(parse(x)))`` serializes to the same bytes, and the
  same bytes frame to the same message on a stream.
* ``StreamFramer`` gives the same items however the bytes are cut into reads, and only messages or
  ``SipError`` (a ``FramingError`` last, if any).
* ``check_request`` / ``check_response`` on what parsed raise only ``SipError``.

The number of examples per property is bounded (``CREDITGATE_FUZZ_EXAMPLES``, default 300, to run
longer locally); every example is a few kilobytes, so the whole file stays within seconds in CI.
"""

from __future__ import annotations

import os
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.b2bua.stack import SERVED_METHODS
from gateway.sip import (
    DropMessage,
    FramingError,
    Request,
    Response,
    SipError,
    StreamFramer,
    check_request,
    check_response,
    make_error_response,
    parse_message,
)

EXAMPLES = int(os.environ.get("CREDITGATE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                             HealthCheck.data_too_large])
MAX_SIZE = 16384  # small, so that size bounds are reached by generated bombs too

# -- building valid messages ----------------------------------------------------------------------

_TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=12)
_USER = st.one_of(st.from_regex(r"\+[1-9][0-9]{6,13}", fullmatch=True), st.text("abcdefghij0123456789.-_", min_size=1,
                                                                                max_size=10))
_HOST = st.sampled_from(["127.0.0.1", "gw.example.com", "[::1]", "10.0.0.7", "example.org"])
_PORT = st.one_of(st.none(), st.integers(1, 65535))
_METHOD = st.sampled_from(["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "UPDATE", "PRACK",
                           "NOTIFY", "FOOBAR"])


@st.composite
def _uri(draw: st.DrawFn, *, user: bool = True) -> str:
    host = draw(_HOST)
    port = draw(_PORT)
    u = f"{draw(_USER)}@" if user and draw(st.booleans()) else ""
    params = "".join(draw(st.lists(st.sampled_from([";transport=tcp", ";lr", ";user=phone", ";maddr=10.1.1.1"]),
                                   max_size=2, unique=True)))
    return f"sip:{u}{host}{'' if port is None else f':{port}'}{params}"


@st.composite
def _via(draw: st.DrawFn) -> str:
    transport = draw(st.sampled_from(["UDP", "TCP", "udp"]))
    host = draw(_HOST)
    port = draw(_PORT)
    branch = "z9hG4bK" + draw(st.text("0123456789abcdef", min_size=1, max_size=16))
    extra = draw(st.sampled_from(["", ";rport", ";received=10.0.0.1", ";ttl=3"]))
    return f"SIP/2.0/{transport} {host}{'' if port is None else f':{port}'};branch={branch}{extra}"


def _name(long: str, compact: str | None, draw: st.DrawFn) -> str:
    choices = [long, long.lower(), long.upper()] + ([compact] if compact else [])
    return draw(st.sampled_from(choices))


@st.composite
def valid_messages(draw: st.DrawFn) -> bytes:
    """A well-formed request or response, as bytes (CRLF line ends, a correct Content-Length)."""
    is_request = draw(st.integers(0, 3)) > 0
    method = draw(_METHOD)
    if is_request:
        start = f"{method} {draw(_uri())} SIP/2.0"
    else:
        status = draw(st.sampled_from([100, 180, 183, 200, 202, 302, 401, 404, 407, 486, 503, 603]))
        start = f"SIP/2.0 {status} {draw(st.sampled_from(['OK', 'Ringing', 'Busy Here', 'Whatever Text', '']))}"
    lines = [start]
    for _ in range(draw(st.integers(1, 3))):
        lines.append(f"{_name('Via', 'v', draw)}: {draw(_via())}")
    lines.append(f"{_name('From', 'f', draw)}: <{draw(_uri())}>;tag={draw(_TOKEN)}")
    to_tag = f";tag={draw(_TOKEN)}" if (not is_request or draw(st.booleans())) else ""
    display = draw(st.sampled_from(["", '"Bob" ', "Bob "]))
    lines.append(f"{_name('To', 't', draw)}: {display}<{draw(_uri())}>{to_tag}")
    lines.append(f"{_name('Call-ID', 'i', draw)}: {draw(_TOKEN)}@{draw(_HOST)}")
    lines.append(f"{_name('CSeq', None, draw)}: {draw(st.integers(0, 2**31 - 1))} {method}")
    lines.append(f"{_name('Max-Forwards', None, draw)}: {draw(st.integers(0, 255))}")
    if draw(st.booleans()):
        lines.append(f"{_name('Contact', 'm', draw)}: <{draw(_uri())}>")
    for _ in range(draw(st.integers(0, 4))):
        lines.append(f"X-{draw(_TOKEN)}: {draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)).strip()}")
    body = draw(st.binary(max_size=200)) if draw(st.booleans()) else b""
    if body:
        lines.append(f"{_name('Content-Type', 'c', draw)}: application/sdp")
    lines.append(f"{_name('Content-Length', 'l', draw)}: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# -- mutating them -------------------------------------------------------------------------------

_CL_LINE = re.compile(rb"(?im)^(content-length|l)[ \t]*:[^\r\n]*")


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """A valid message, then one to four mutations of the kinds real broken or hostile peers send."""
    data = draw(valid_messages())
    for _ in range(draw(st.integers(1, 4))):
        head, sep, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        op = draw(st.sampled_from(["flip", "truncate", "duplicate", "drop", "reorder", "content-length", "fold",
                                   "nul", "header-bomb", "line-bomb", "crlf", "bare-lf", "garbage-line"]))
        if op == "flip" and data:
            pos = draw(st.integers(0, len(data) - 1))
            data = data[:pos] + bytes([draw(st.integers(0, 255))]) + data[pos + 1:]
            continue
        if op == "truncate":
            data = data[: draw(st.integers(0, len(data)))]
            continue
        if op == "crlf":
            pos = draw(st.integers(0, len(data)))
            data = data[:pos] + draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"\r", b"\n"])) + data[pos:]
            continue
        if len(lines) > 1:
            i = draw(st.integers(1, len(lines) - 1))
            if op == "duplicate":
                lines.insert(i, lines[i])
            elif op == "drop":
                del lines[i]
            elif op == "reorder":
                rest = lines[1:]
                order = draw(st.permutations(list(range(len(rest)))))
                lines = [lines[0], *(rest[k] for k in order)]
            elif op == "fold":
                line = lines[i]
                cut = draw(st.integers(0, len(line)))
                lines[i] = line[:cut] + b"\r\n " + line[cut:]
            elif op == "nul":
                line = lines[i]
                cut = draw(st.integers(0, len(line)))
                lines[i] = line[:cut] + b"\x00" + line[cut:]
            elif op == "bare-lf":
                lines[i] = lines[i] + b"\n"
            elif op == "garbage-line":
                lines.insert(i, draw(st.binary(min_size=1, max_size=40)).replace(b"\r\n", b""))
        if op == "content-length":
            value = draw(st.one_of(
                st.integers(-5, 100_000).map(lambda n: str(n).encode()),
                st.sampled_from([b"", b"abc", b"1e3", b"99999999999999999999999", b"0x10", b" 12 ", b"4294967296",
                                 b"-0", b"+5", b"1,000", b"\xff"]),
            ))
            lines = [_CL_LINE.sub(b"Content-Length: " + value, line) for line in lines]
        elif op == "header-bomb":
            lines[1:1] = [b"X-Bomb: " + str(k).encode() for k in range(draw(st.integers(200, 2000)))]
        elif op == "line-bomb":
            lines.append(b"X-Long: " + b"a" * draw(st.integers(8000, 20000)))
        data = b"\r\n".join(lines) + sep + body
    return data


# -- the properties ------------------------------------------------------------------------------


def _verdict_ok(exc: SipError, data: bytes, *, one_message: bool = True) -> None:
    assert exc.status_hint is None or 400 <= exc.status_hint <= 599, exc
    if isinstance(exc, DropMessage):
        assert exc.status_hint is None
    if one_message and data.lstrip(b"\r\n")[:4].upper() == b"SIP/":
        assert exc.status_hint is None, f"a response must only ever be dropped: {exc}"
    answer = make_error_response(exc)
    if answer is not None:
        # What we would send serializes, says the status, and is never much bigger than what came
        # (no amplification: only Via, From, To, Call-ID and CSeq are echoed, plus a few of our own).
        wire = answer.to_bytes()
        assert wire.startswith(f"SIP/2.0 {exc.status_hint} ".encode()), wire[:80]
        assert len(wire) <= len(data) + 512, (len(wire), len(data))


def _stable(msg: Request | Response) -> None:
    wire = msg.to_bytes()
    again = parse_message(wire, max_size=1 << 20)
    assert again.to_bytes() == wire
    assert StreamFramer(max_size=1 << 20).feed(wire) == [again]


def _check_parsed(data: bytes) -> None:
    try:
        msg = parse_message(data, max_size=MAX_SIZE)
    except SipError as exc:
        _verdict_ok(exc, data)
        return
    assert isinstance(msg, (Request, Response))
    _stable(msg)
    try:
        if isinstance(msg, Request):
            check_request(msg, allowed_methods=SERVED_METHODS)
        else:
            check_response(msg, as_uac=True)
    except SipError as exc:
        assert exc.status_hint is None or 400 <= exc.status_hint <= 599


def _summary(items: list[Request | Response | SipError]) -> list[object]:
    return [(type(i).__name__, i.status_hint, i.reason) if isinstance(i, SipError) else i.to_bytes() for i in items]


def _check_stream(data: bytes, cuts: list[int]) -> None:
    whole = StreamFramer(max_size=MAX_SIZE).feed(data)
    framer = StreamFramer(max_size=MAX_SIZE)
    pieces: list[Request | Response | SipError] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        pieces += framer.feed(data[prev:cut])
        prev = cut
    for i, item in enumerate(whole):
        assert isinstance(item, (Request, Response, SipError))
        if isinstance(item, FramingError):
            assert i == len(whole) - 1, "nothing may follow a framing error"
        if isinstance(item, SipError):
            assert item.status_hint is None or 400 <= item.status_hint <= 599
    # However the octets arrive, the same messages and verdicts come out, up to the first framing error.
    # (An over-long line or header section is noticed as soon as it arrives: in pieces, that may be
    # before the rest of that header section would have shown another fault, so at that point both
    # sides must give a verdict, not necessarily the same one; the stream ends there.)
    for a, b in zip(whole, pieces):
        if isinstance(a, FramingError) or isinstance(b, FramingError):
            assert isinstance(a, SipError) and isinstance(b, SipError), (_summary([a]), _summary([b]))
            return
        assert _summary([a]) == _summary([b])
    assert len(whole) == len(pieces), (_summary(whole), _summary(pieces))


@FUZZ
@given(valid_messages())
def test_generated_valid_messages_parse_and_are_stable(data: bytes) -> None:
    msg = parse_message(data, max_size=MAX_SIZE)
    _stable(msg)
    assert StreamFramer(max_size=MAX_SIZE).feed(data) == [msg]


@FUZZ
@given(hostile())
def test_hostile_datagrams_get_a_verdict_never_a_crash(data: bytes) -> None:
    _check_parsed(data)


@FUZZ
@given(hostile(), st.lists(st.integers(0, 40_000), max_size=6))
def test_hostile_streams_frame_the_same_however_they_are_cut(data: bytes, cuts: list[int]) -> None:
    _check_stream(data, [c for c in cuts if c <= len(data)])


@FUZZ
@given(st.lists(hostile(), min_size=2, max_size=4))
def test_pipelined_hostile_messages_never_break_the_framer(messages: list[bytes]) -> None:
    stream = b"".join(messages)
    items = StreamFramer(max_size=MAX_SIZE).feed(stream)
    for item in items:
        assert isinstance(item, (Request, Response, SipError))
        if isinstance(item, SipError):
            _verdict_ok(item, stream, one_message=False)
