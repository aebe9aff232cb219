"""RFC 4475 torture tests: every message gets the verdict the README's table gives a B2BUA/UAS element.

Each file is run as one UDP datagram (``parse_message``) and fed byte by byte into a ``StreamFramer``
(TCP), then, when it parses, through ``check_request``/``check_response``. The vectors are read from the
byte-exact copy in ``tests/sip/rfc4475`` (see PROVENANCE.md) so that CI works from a clean clone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.sip import (
    KNOWN_METHODS,
    AbsoluteUri,
    BadExtension,
    BadRequest,
    DropMessage,
    FramingError,
    MethodNotAllowed,
    NotAcceptable,
    ParseError,
    Request,
    Response,
    SipError,
    StreamFramer,
    TooManyHops,
    UnknownMethod,
    UnsupportedMediaType,
    UnsupportedUriScheme,
    VersionNotSupported,
    check_request,
    check_response,
    make_error_response,
    make_response,
    parse_message,
)

HERE = Path(__file__).resolve().parent
VECTORS = HERE / "rfc4475"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "rfc4475"


@dataclass(frozen=True)
class Err:
    """An expected SipError: its class and status (None: dropped)."""

    cls: type[SipError]
    status: int | None


OK = "ok"  # parses to a message (or, for checks: the check passes)
Expect = str | Err

P400 = Err(ParseError, 400)
DROP = Err(DropMessage, None)
NOT_SERVED = Err(MethodNotAllowed, 405)  # REGISTER / MESSAGE: known methods the gateway does not serve
FRAMING = Err(FramingError, 400)


@dataclass(frozen=True)
class Case:
    """What one vector must give.

    ``udp``: parse_message as a datagram. ``stream``: what the framer yields for the file fed byte by
    byte (None: the same as ``udp``). ``check``: check_request/check_response with the defaults
    (the gateway's methods). ``served``: check_request when REGISTER and MESSAGE are served too, i.e.
    the verdict RFC 4475 gives a registrar or UAS (None: same as ``check``).
    """

    udp: Expect
    stream: tuple[Expect, ...] | None = None
    check: Expect = OK
    served: Expect | None = None


CASES: dict[str, Case] = {
    # 3.1.1 valid messages
    "wsinv.dat": Case(OK),
    "intmeth.dat": Case(OK, check=Err(UnknownMethod, 501)),
    "esc01.dat": Case(OK),
    "escnull.dat": Case(OK, check=NOT_SERVED, served=OK),
    "esc02.dat": Case(OK, check=Err(UnknownMethod, 501)),
    "lwsdisp.dat": Case(OK),
    "longreq.dat": Case(OK),
    # UDP: the trailing INVITE is noise (§18.3). TCP: it is the next message; its body is 5 octets
    # longer than its Content-Length, so the leftover "C" + CRLFCRLF loses the framing.
    "dblreq.dat": Case(OK, stream=(OK, OK, FRAMING), check=NOT_SERVED, served=OK),
    "semiuri.dat": Case(OK),
    "transports.dat": Case(OK),
    "mpart01.dat": Case(OK, check=NOT_SERVED, served=OK),
    "unreason.dat": Case(OK),
    "noreason.dat": Case(OK),
    # 3.1.2 invalid messages
    "badinv01.dat": Case(P400),
    "clerr.dat": Case(P400, stream=()),  # TCP: keep waiting for the rest of the body
    "ncl.dat": Case(P400, stream=(FRAMING,)),
    "scalar02.dat": Case(P400),
    "scalarlg.dat": Case(DROP),
    "quotbal.dat": Case(P400),
    "ltgtruri.dat": Case(P400),
    "lwsruri.dat": Case(P400),
    "lwsstart.dat": Case(P400),
    "trws.dat": Case(P400),
    "escruri.dat": Case(OK, check=Err(BadRequest, 400)),
    "baddate.dat": Case(OK),  # the Date does not matter to us: ignored
    "regbadct.dat": Case(P400),
    "badaspec.dat": Case(P400),
    # This copy has no empty line after the headers: a datagram with an unterminated header section
    # (400); a stream that waits for its end. extras/ holds the terminated version.
    "baddn.dat": Case(P400, stream=()),
    "badvers.dat": Case(Err(VersionNotSupported, 505)),
    "mismatch01.dat": Case(P400),
    "mismatch02.dat": Case(OK, check=Err(UnknownMethod, 501)),
    "bigcode.dat": Case(DROP),
    # 3.2 transaction layer
    "badbranch.dat": Case(OK, check=Err(BadRequest, 400)),
    # 3.3 application layer
    "insuf.dat": Case(P400),
    "unkscm.dat": Case(OK, check=Err(UnsupportedUriScheme, 416)),
    "novelsc.dat": Case(OK, check=Err(UnsupportedUriScheme, 416)),
    "unksm2.dat": Case(OK, check=NOT_SERVED, served=OK),
    "bext01.dat": Case(OK, check=Err(BadExtension, 420)),
    "invut.dat": Case(OK, check=Err(UnsupportedMediaType, 415)),
    "regaut01.dat": Case(OK, check=NOT_SERVED, served=OK),  # a non-registrar answers 405
    "multi01.dat": Case(P400),
    "mcl01.dat": Case(P400, stream=(FRAMING,)),
    "bcast.dat": Case(OK, check=DROP),
    "zeromf.dat": Case(OK, check=Err(TooManyHops, 483)),
    "cparam01.dat": Case(OK, check=NOT_SERVED, served=OK),
    "cparam02.dat": Case(OK, check=NOT_SERVED, served=OK),
    "regescrt.dat": Case(OK, check=NOT_SERVED, served=OK),
    "sdp01.dat": Case(OK, check=Err(NotAcceptable, 406)),
    # 3.4 backward compatibility: no Content-Length, which a stream cannot frame
    "inv2543.dat": Case(OK, stream=(FRAMING,)),
    # extras/
    "extras/baddn.with-final-crlf.dat": Case(P400),
    "extras/test.dat": Case(P400),  # Request-Line without SIP-Version, header line without colon
}

SERVED_METHODS = frozenset(KNOWN_METHODS)


def _read(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def _vector_names() -> list[str]:
    return sorted(
        str(p.relative_to(VECTORS)) for p in VECTORS.rglob("*.dat")
    )


def _assert_verdict(outcome: object, expected: Expect, what: str) -> None:
    if expected == OK:
        assert isinstance(outcome, Request | Response), f"{what}: expected a message, got {outcome!r}"
        return
    assert isinstance(expected, Err)
    assert isinstance(outcome, expected.cls), f"{what}: expected {expected.cls.__name__}, got {outcome!r}"
    assert isinstance(outcome, SipError)
    assert outcome.status_hint == expected.status, f"{what}: status {outcome.status_hint}"


def _udp(data: bytes) -> Request | Response | SipError:
    try:
        return parse_message(data, datagram=True)
    except SipError as exc:
        return exc


def _stream(data: bytes) -> list[Request | Response | SipError]:
    framer = StreamFramer()
    out: list[Request | Response | SipError] = []
    for i in range(len(data)):
        out.extend(framer.feed(data[i : i + 1]))
    return out


def _same(a: Request | Response, b: Request | Response) -> bool:
    """Equal start line, body and header fields, ignoring Content-Length (to_bytes recomputes it)."""
    return (
        a.start_line() == b.start_line()
        and a.body == b.body
        and [h for h in a.headers if h[0] != "Content-Length"]
        == [h for h in b.headers if h[0] != "Content-Length"]
    )


def _check(msg: Request | Response, **kwargs: object) -> None | SipError:
    try:
        if isinstance(msg, Request):
            check_request(msg, **kwargs)  # type: ignore[arg-type]
        else:
            check_response(msg)
    except SipError as exc:
        return exc
    return None


# -- the copy is byte-exact and complete ------------------------------------------------------------


def test_copy_matches_its_sha256sums() -> None:
    sums = {}
    for line in (VECTORS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name] = digest
    assert len([n for n in sums if "/" not in n]) == 49
    for name, digest in sums.items():
        assert hashlib.sha256((VECTORS / name).read_bytes()).hexdigest() == digest, name
    assert sorted(sums) == _vector_names()


def test_every_vector_has_a_verdict() -> None:
    assert sorted(CASES) == _vector_names()


def test_copy_matches_the_shared_directory() -> None:
    for name in _vector_names() + ["SHA256SUMS", "README.md"]:
        assert (VECTORS / name).read_bytes() == (SHARED / name).read_bytes(), name


# -- per-file verdicts ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_datagram_verdict(name: str) -> None:
    _assert_verdict(_udp(_read(name)), CASES[name].udp, f"{name} over UDP")


@pytest.mark.parametrize("name", sorted(CASES))
def test_stream_verdict(name: str) -> None:
    case = CASES[name]
    expected = case.stream if case.stream is not None else (case.udp,)
    out = _stream(_read(name))
    assert len(out) == len(expected), f"{name} over TCP: {out!r}"
    for got, want in zip(out, expected, strict=True):
        _assert_verdict(got, want, f"{name} over TCP")


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c.udp == OK))
def test_element_checks(name: str) -> None:
    case = CASES[name]
    msg = parse_message(_read(name))
    got = _check(msg)
    if case.check == OK:
        assert got is None, f"{name}: {got!r}"
    else:
        _assert_verdict(got, case.check, f"{name} check")
    served = case.served if case.served is not None else case.check
    if isinstance(msg, Request):
        got = _check(msg, allowed_methods=SERVED_METHODS)
        if served == OK:
            assert got is None, f"{name} (served): {got!r}"
        else:
            _assert_verdict(got, served, f"{name} check (served)")


@pytest.mark.parametrize(
    "name", sorted(n for n, c in CASES.items() if isinstance(c.udp, Err) and c.udp.status is not None)
)
def test_invalid_requests_get_an_answer_that_fixes_nothing(name: str) -> None:
    """The stateless answer (RFC 3261 §8.2.6) goes back to the sender only, with its Vias and no body.

    It may echo the sender's own broken From/To (§8.2.6.2 says copy them), so it is not re-parsed here.
    """
    err = _udp(_read(name))
    assert isinstance(err, SipError)
    resp = make_error_response(err)
    if err.headers is None or "Via" not in err.headers:
        assert resp is None
        return
    assert resp is not None and resp.status == err.status_hint
    wire = resp.to_bytes()
    assert wire.startswith(b"SIP/2.0 %d " % err.status_hint)
    assert resp.headers.get_lines("Via") == err.headers.get_lines("Via")
    assert resp.body == b"" and wire.endswith(b"\r\nContent-Length: 0\r\n\r\n")


# -- what the RFC says about individual messages ------------------------------------------------------


def test_wsinv_whitespace_folding_and_odd_case() -> None:
    req = parse_message(_read("wsinv.dat"))
    assert isinstance(req, Request)
    assert req.method == "INVITE"
    assert req.uri.params == (("unknownparam", None),)  # type: ignore[union-attr]
    assert req.max_forwards == 68
    assert (req.cseq.seq, req.cseq.method) == (9, "INVITE")
    assert [v.transport for v in req.vias] == ["UDP", "TCP", "UDP"]
    assert [v.branch for v in req.vias] == ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"]
    assert req.to_tag == "1918181833n"
    assert req.from_.display_name == 'J Rosenberg \\"'
    assert req.from_tag == "98asjd8"
    assert req.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert req.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert req.headers.get("Subject") == ""
    (contact,) = req.contact
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert len(req.body) == 150 == req.content_length


def test_intmeth_odd_method_and_octets_in_quoted_strings() -> None:
    req = parse_message(_read("intmeth.dat"))
    assert isinstance(req, Request)
    assert req.method == "!interesting-Method0123456789_*+`.%indeed'~" == req.cseq.method
    assert req.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"  # type: ignore[union-attr]
    assert req.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"  # type: ignore[union-attr]
    assert req.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert req.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert req.from_.param("fromParam''~+*_!.-%") == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    assert req.from_tag == "_token~1'+`*%!-."
    assert req.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"
    assert req.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert _same(parse_message(req.to_bytes()), req)


def test_esc01_escapes_decoded_once_where_allowed() -> None:
    req = parse_message(_read("esc01.dat"))
    assert isinstance(req, Request)
    assert req.uri.user == "sips%3Auser%40example.com"  # type: ignore[union-attr]
    assert req.uri.user_unescaped == "sips:user@example.com"  # type: ignore[union-attr]
    assert req.uri.host == "example.net"  # type: ignore[union-attr]
    assert req.to.uri.user_unescaped == "user"  # type: ignore[union-attr]
    assert req.from_.uri.user_unescaped == "I have spaces"  # type: ignore[union-attr]
    (contact,) = req.contact
    assert contact.uri.params == (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))
    from gateway.sip import unescape

    assert unescape(contact.uri.param("n%61me")) == "value%41"  # type: ignore[arg-type]


def test_escnull_two_distinct_contacts_with_nul() -> None:
    req = parse_message(_read("escnull.dat"))
    assert isinstance(req, Request)
    users = [c.uri.user_unescaped for c in req.contact]  # type: ignore[union-attr]
    assert users == ["\x00", "\x00\x00"]
    assert req.to.uri.user_unescaped == "null-\x00-null"  # type: ignore[union-attr]


def test_esc02_percent_is_not_an_escape_in_methods_and_header_names() -> None:
    req = parse_message(_read("esc02.dat"))
    assert isinstance(req, Request)
    assert req.method == "RE%47IST%45R"
    assert req.to.display_name == "%Z%45"
    assert len(req.contact) == 2
    assert req.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_and_longreq() -> None:
    assert parse_message(_read("lwsdisp.dat")).from_.display_name == "caller"
    req = parse_message(_read("longreq.dat"))
    assert len(req.vias) == 34
    assert req.to.display_name is not None and "extremeextreme" in req.to.display_name
    assert len(req.call_id) > 100


def test_dblreq_datagram_drops_the_trailing_invite() -> None:
    data = _read("dblreq.dat")
    req = parse_message(data)
    assert isinstance(req, Request) and req.method == "REGISTER" and req.body == b""
    out = _stream(data)
    assert [m.method for m in out[:2]] == ["REGISTER", "INVITE"]  # type: ignore[union-attr]
    assert len(out[1].body) == 150  # type: ignore[union-attr]


def test_semiuri_user_part_holds_the_semicolon() -> None:
    req = parse_message(_read("semiuri.dat"))
    assert req.uri.user == "user;par=u%40example.net"  # type: ignore[union-attr]
    assert req.uri.user_unescaped == "user;par=u@example.net"  # type: ignore[union-attr]
    assert req.uri.host == "example.com" and req.uri.params == ()  # type: ignore[union-attr]
    assert len(req.headers.get_all("Accept")) == 6


def test_transports_and_mpart01() -> None:
    req = parse_message(_read("transports.dat"))
    assert [v.transport for v in req.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    msg = parse_message(_read("mpart01.dat"))
    assert len(msg.body) == 553 and b"\x00" in msg.body and msg.body.endswith(b"--7a9cbec02ceef655--\r\n")
    assert msg.top_via.has_param("rport") and msg.top_via.rport is None


def test_response_reason_phrases() -> None:
    resp = parse_message(_read("unreason.dat"))
    assert isinstance(resp, Response) and resp.status == 200
    assert resp.reason.startswith("= 2**3 * 5**2 \u043d\u043e \u0441\u0442\u043e")
    resp = parse_message(_read("noreason.dat"))
    assert isinstance(resp, Response) and (resp.status, resp.reason) == (100, "")


def test_bext01_lists_every_unsupported_option() -> None:
    req = parse_message(_read("bext01.dat"))
    with pytest.raises(BadExtension) as info:
        check_request(req)
    assert info.value.unsupported == [
        "nothingSupportsThis", "nothingSupportsThisEither", "noProxiesSupportThis",
        "norDoAnyProxiesSupportThis",
    ]  # fmt: skip
    resp = make_error_response(info.value)
    assert resp is not None and resp.status == 420
    assert resp.headers.get_all("Unsupported") == info.value.unsupported


def test_unknown_methods_answer_501_with_allow() -> None:
    for name in ("intmeth.dat", "esc02.dat", "mismatch02.dat"):
        with pytest.raises(UnknownMethod) as info:
            check_request(parse_message(_read(name)))
        resp = make_error_response(info.value)
        assert resp is not None and resp.status == 501
        assert "INVITE" in resp.headers.get_all("Allow")


def test_register_contacts_are_kept_as_received() -> None:
    (c,) = parse_message(_read("cparam01.dat")).contact
    assert c.uri.params == () and c.params == (("unknownparam", None),)  # type: ignore[union-attr]
    (c,) = parse_message(_read("cparam02.dat")).contact
    assert c.uri.params == (("unknownparam", None),) and c.params == ()  # type: ignore[union-attr]
    (c,) = parse_message(_read("regescrt.dat")).contact
    assert c.uri.headers == (("Route", "%3Csip:sip.example.com%3E"),)  # type: ignore[union-attr]
    assert str(c.uri) == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_unksm2_non_sip_schemes_in_to_from_contact() -> None:
    req = parse_message(_read("unksm2.dat"))
    assert req.to.uri == AbsoluteUri(scheme="isbn", raw="2983792873")
    assert req.from_.uri == AbsoluteUri(scheme="http", raw="//www.example.com")
    assert req.contact[0].uri == AbsoluteUri(scheme="name", raw="John_Smith")


def test_inv2543_rfc2543_request() -> None:
    req = parse_message(_read("inv2543.dat"))
    assert req.content_length is None and req.body.startswith(b"v=0\r\n") and req.body.endswith(b"0\r\n")
    assert req.top_via.branch is None and req.from_tag is None and req.max_forwards is None
    assert b"\r\nContent-Length: %d\r\n" % len(req.body) in req.to_bytes()


def test_novelsc_and_unkscm_parse_as_opaque_uris() -> None:
    assert parse_message(_read("novelsc.dat")).uri == AbsoluteUri(
        scheme="soap.beep", raw="//192.0.2.103:3002"
    )
    assert parse_message(_read("unkscm.dat")).uri.scheme == "nobodyknowsthisscheme"


# -- cross-cutting guarantees --------------------------------------------------------------------------

VALID = sorted(n for n, c in CASES.items() if c.udp == OK)


@pytest.mark.parametrize("name", VALID)
def test_round_trip(name: str) -> None:
    msg = parse_message(_read(name))
    again = parse_message(msg.to_bytes())
    assert _same(again, msg)
    assert again.to_bytes() == msg.to_bytes()
    # the same bytes also frame identically on a stream
    assert _stream(msg.to_bytes()) == [again]


@pytest.mark.parametrize("name", sorted(n for n in VALID if n.endswith(".dat")))
def test_make_response_follows_8_2_6(name: str) -> None:
    req = parse_message(_read(name))
    if not isinstance(req, Request):
        return
    resp = make_response(req, 486, to_tag="b2b-1")
    assert (resp.status, resp.reason) == (486, "Busy Here")
    assert resp.headers.get_lines("Via") == req.headers.get_lines("Via")
    assert resp.call_id == req.call_id and resp.cseq == req.cseq
    assert resp.headers.get("From") == req.headers.get("From")
    assert resp.to_tag == (req.to_tag or "b2b-1")
    assert resp.body == b"" and _same(parse_message(resp.to_bytes()), resp)


# -- robustness: nothing but SipError, ever -----------------------------------------------------------

_ALL = [_read(n) for n in sorted(CASES)]


def _only_sip_errors(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipError:
        pass
    else:
        # what parses also serializes and re-parses
        parse_message(msg.to_bytes())
    framer = StreamFramer()
    framer.feed(data)
    framer.feed(data[: len(data) // 2])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_sip_errors(data: bytes) -> None:
    _only_sip_errors(data)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_ALL)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.sampled_from(b' \t\r\n:;,<>"\\%@=?/0129aZ\x00\xff'))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\r\n", b" ", b";", b",", b'"', b"<", b"\r\n ", b"%"]))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            end = min(len(data), pos + draw(st.integers(1, 64)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_mutated_vectors_raise_only_sip_errors(data: bytes) -> None:
    _only_sip_errors(data)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(VALID), min_size=1, max_size=4), st.data())
def test_stream_framing_is_independent_of_chunking(names: list[str], data: st.DataObject) -> None:
    wire = [parse_message(_read(n)).to_bytes() for n in names]
    stream = b"\r\n".join(wire)  # CRLF keep-alives between messages
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    framer = StreamFramer()
    out = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out.extend(framer.feed(stream[prev:cut]))
        prev = cut
    assert out == [parse_message(w) for w in wire]
