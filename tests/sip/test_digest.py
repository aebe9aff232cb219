"""Digest authentication: RFC test vectors, challenge/verify round trips, refusals, replay keys, the parser."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rating_core.errors import CreditgateError

import gateway.sip.digest as digest
from gateway.sip.digest import (
    Challenger,
    Credentials,
    DigestError,
    Verdict,
    authorization_header,
    compute_response,
    ha1_for,
    parse_challenge,
    parse_credentials,
    select_challenge,
)
from gateway.sip.errors import SipError

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "sip.example.com"
NOW = 1_700_000_000.0
URI = "sip:sip.example.com"
USERS = {"alice": "wonderland", "bob": 'pa"ss\\word'}


def lookup(realm: str = REALM, users: dict[str, str] = USERS):
    def ha1(username: str, algorithm: str) -> str | None:
        password = users.get(username)
        return None if password is None else ha1_for(username, realm, password, algorithm)

    return ha1


def answer(challenge_value: str, *, username: str = "alice", password: str = "wonderland",
           method: str = "REGISTER", nc: str = "00000001", cnonce: str = "c0ffee", **over) -> Credentials:
    """What a client sends back for one challenge value, parsed as the server sees it."""
    ch = parse_challenge(challenge_value)
    kwargs = dict(username=username, password=password, realm=ch.realm, nonce=ch.nonce, method=method,
                  uri=URI, algorithm=ch.algorithm, nc=nc, cnonce=cnonce, opaque=ch.opaque)
    kwargs.update(over)
    return parse_credentials(authorization_header(**kwargs))


# ------------------------------------------------------------------------------------ RFC test vectors

RFC_2617_3_5 = dict(username="Mufasa", password="Circle Of Life", realm="testrealm@host.com",
                    nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", method="GET", uri="/dir/index.html",
                    algorithm="MD5", qop="auth", nc="00000001", cnonce="0a4f113b")
RFC_7616_3_9_1 = dict(username="Mufasa", password="Circle of Life", realm="http-auth@example.org",
                      nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", method="GET", uri="/dir/index.html",
                      qop="auth", nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (RFC_2617_3_5, "6629fae49393a05397450978507c4ef1"),
        ({**RFC_7616_3_9_1, "algorithm": "SHA-256"},
         "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ({**RFC_7616_3_9_1, "algorithm": "MD5"}, "8ca523f5e9506fed4657c9700eebdbec"),
        # algorithm tokens are case-insensitive; nc may be given as a number
        ({**RFC_2617_3_5, "algorithm": "md5", "nc": 1}, "6629fae49393a05397450978507c4ef1"),
    ],
    ids=["rfc2617-md5", "rfc7616-sha256", "rfc7616-md5", "rfc2617-lowercase-alg-int-nc"],
)
def test_rfc_vectors(kwargs, expected):
    assert compute_response(**kwargs) == expected


def test_rfc_2617_header_parses_and_verifies_against_its_own_nonce():
    """The §3.5 Authorization header, folded as printed, carries the fields and the response it should."""
    value = (
        'Digest username="Mufasa",\r\n'
        '                 realm="testrealm@host.com",\r\n'
        '                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",\r\n'
        '                 uri="/dir/index.html",\r\n'
        "                 qop=auth,\r\n"
        "                 nc=00000001,\r\n"
        '                 cnonce="0a4f113b",\r\n'
        '                 response="6629fae49393a05397450978507c4ef1",\r\n'
        '                 opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    c = parse_credentials(value)
    assert (c.scheme, c.username, c.realm, c.uri, c.qop, c.nc, c.cnonce, c.opaque) == (
        "Digest", "Mufasa", "testrealm@host.com", "/dir/index.html", "auth", "00000001", "0a4f113b",
        "5ccc069c403ebaf9f0171e9517f40e41")
    assert c.algorithm is None and c.hash_algorithm == "MD5"  # absent means MD5
    assert c.response == compute_response(**RFC_2617_3_5)


@pytest.mark.parametrize(
    "algorithm,expected",
    [
        ("MD5", "939e7578ed9e3c518a452acee763bce9"),  # RFC 2617 §3.5's H(A1)
        ("MD5-sess", "939e7578ed9e3c518a452acee763bce9"),  # -sess shares the stored value
    ],
)
def test_ha1_for(algorithm, expected):
    assert ha1_for("Mufasa", "testrealm@host.com", "Circle Of Life", algorithm) == expected


@pytest.mark.parametrize("algorithm", ["SHA-256", "sha-256-SESS"])
def test_ha1_for_sha256(algorithm):
    expected = hashlib.sha256(b"Mufasa:testrealm@host.com:Circle Of Life").hexdigest()
    assert ha1_for("Mufasa", "testrealm@host.com", "Circle Of Life", algorithm) == expected


# -------------------------------------------------------------------------------------------- challenge


def test_challenge_offers_sha256_then_md5_with_one_nonce():
    values = Challenger(SECRET, REALM).challenge(NOW)
    parsed = [parse_challenge(v) for v in values]
    assert [p.algorithm for p in parsed] == ["SHA-256", "MD5"]  # RFC 8760: most preferred first
    for value, p in zip(values, parsed):
        assert p.is_digest and p.realm == REALM and p.qop == ("auth",) and p.opaque and not p.stale
        assert 'qop="auth"' in value and "stale" not in value
    assert parsed[0].nonce == parsed[1].nonce


def test_challenge_stale_flag_and_fresh_nonces():
    ch = Challenger(SECRET, REALM)
    stale = [parse_challenge(v) for v in ch.challenge(NOW, stale=True)]
    assert all(p.stale for p in stale)
    assert all("stale=true" in v for v in ch.challenge(NOW, stale=True))
    assert ch.nonce(NOW) != ch.nonce(NOW)  # salted: unique even within one second


def test_select_challenge_takes_the_first_supported():
    values = ['Bearer realm="x"', 'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"',
              "garbage ,,, =", 'Digest realm="r", nonce="n2", algorithm=MD5, qop="auth"']
    chosen = select_challenge(values)
    assert chosen is not None and (chosen.nonce, chosen.algorithm) == ("n2", "MD5")
    assert select_challenge(values[:3]) is None


# ----------------------------------------------------------------------------------- round trips (ok)

SESS = ("SHA-256", "MD5", "SHA-256-sess", "MD5-sess")


@pytest.mark.parametrize("algorithm", SESS)
@pytest.mark.parametrize("username,password", list(USERS.items()))
def test_round_trip_ok(algorithm, username, password):
    ch = Challenger(SECRET, REALM, algorithms=SESS)
    value = next(v for v in ch.challenge(NOW) if parse_challenge(v).algorithm == algorithm)
    creds = answer(value, username=username, password=password, method="INVITE")
    v = ch.verify(creds, method="INVITE", now=NOW + 10, ha1=lookup())
    assert (v.ok, v.reason, v.username, v.challenge_again, v.stale, v.algorithm) == (
        True, "ok", username, False, False, algorithm)
    assert v.replay_key is not None


def test_another_process_with_the_same_secret_verifies():
    creds = answer(Challenger(SECRET, REALM).challenge(NOW)[0])
    assert Challenger(SECRET, REALM).verify(creds, method="REGISTER", now=NOW + 1, ha1=lookup()).ok


def test_method_is_bound_into_the_response():
    creds = answer(Challenger(SECRET, REALM).challenge(NOW)[0], method="REGISTER")
    v = Challenger(SECRET, REALM).verify(creds, method="INVITE", now=NOW, ha1=lookup())
    assert (v.ok, v.reason) == (False, "bad_response")


# ------------------------------------------------------------------------------------------- refusals


def _replace(creds: Credentials, **changes) -> Credentials:
    return dataclasses.replace(creds, **changes)


def _tamper(nonce: str) -> str:
    i = len(nonce) // 2
    return nonce[:i] + ("A" if nonce[i] != "A" else "B") + nonce[i + 1:]


OTHER = Challenger(b"another secret, same length....!", REALM)
OTHER_REALM = Challenger(SECRET, "other.example.com")

# (id, how the client answers the challenge, seconds after issue, expected reason, expected stale)
REFUSALS = [
    ("wrong-password", lambda v: answer(v, password="nope"), 1, "bad_response", False),
    ("unknown-user", lambda v: answer(v, username="mallory", password="x"), 1, "unknown_user", False),
    ("tampered-nonce", lambda v: _replace(answer(v), nonce=_tamper(parse_challenge(v).nonce)), 1, "bad_nonce",
     False),
    ("nonce-not-ours-shape", lambda v: _replace(answer(v), nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"), 1,
     "bad_nonce", False),
    ("expired", lambda v: answer(v), 301, "stale", True),
    ("expired-wrong-password", lambda v: answer(v, password="nope"), 301, "bad_response", False),
    ("expired-unknown-user", lambda v: answer(v, username="mallory"), 301, "unknown_user", False),
    ("from-the-future", lambda v: answer(v), -31, "bad_nonce", False),
    ("wrong-realm", lambda v: answer(v, realm="evil.example.com"), 1, "bad_realm", False),
    ("other-secret", lambda v: answer(OTHER.challenge(NOW)[0]), 1, "bad_nonce", False),
    ("other-realm-nonce", lambda v: answer(v, nonce=parse_challenge(OTHER_REALM.challenge(NOW)[0]).nonce), 1,
     "bad_nonce", False),
    ("wrong-opaque", lambda v: answer(v, opaque="bm90IG91cnM"), 1, "bad_nonce", False),
    ("sha512-256", lambda v: _replace(answer(v), algorithm="SHA-512-256"), 1, "bad_algorithm", False),
    ("md5-sess-not-offered", lambda v: answer(v, algorithm="MD5-sess"), 1, "bad_algorithm", False),
    ("rfc2069-no-qop", lambda v: answer(v, qop=None), 1, "malformed", False),
    ("auth-int", lambda v: _replace(answer(v), qop="auth-int"), 1, "malformed", False),
    ("foreign-scheme", lambda v: parse_credentials("NoOneKnowsThisScheme opaque-data=here"), 1, "malformed",
     False),
    ("hand-built-missing-response", lambda v: _replace(answer(v), response=None), 1, "malformed", False),
]


@pytest.mark.parametrize("make,after,reason,stale", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusals(make, after, reason, stale):
    ch = Challenger(SECRET, REALM)
    creds = make(ch.challenge(NOW)[0])
    v = ch.verify(creds, method="REGISTER", now=NOW + after, ha1=lookup())
    assert (v.ok, v.reason, v.stale, v.challenge_again, v.replay_key) == (False, reason, stale, True, None)


def test_accepted_just_inside_the_ttl_and_the_skew():
    ch = Challenger(SECRET, REALM)
    for after in (300, -30):
        creds = answer(ch.challenge(NOW)[0])
        assert ch.verify(creds, method="REGISTER", now=NOW + after, ha1=lookup()).ok, after


def test_stale_then_answering_the_new_stale_challenge_succeeds():
    ch = Challenger(SECRET, REALM, nonce_ttl_s=60)
    first = ch.verify(answer(ch.challenge(NOW)[0]), method="REGISTER", now=NOW + 61, ha1=lookup())
    assert (first.reason, first.stale, first.challenge_again) == ("stale", True, True)
    again = ch.challenge(NOW + 61, stale=first.stale)
    assert all(parse_challenge(v).stale for v in again)
    second = ch.verify(answer(again[0]), method="REGISTER", now=NOW + 62, ha1=lookup())
    assert second.ok


def _outward(v: Verdict) -> tuple:
    """Everything a peer can learn: whether it passed, whether it is challenged again, and how."""
    return (v.ok, v.challenge_again, v.stale, v.replay_key)


def test_unknown_user_and_wrong_password_look_the_same_from_outside():
    ch = Challenger(SECRET, REALM)
    value = ch.challenge(NOW)[0]
    wrong = ch.verify(answer(value, password="nope"), method="REGISTER", now=NOW, ha1=lookup())
    unknown = ch.verify(answer(value, username="mallory"), method="REGISTER", now=NOW, ha1=lookup())
    assert (wrong.reason, unknown.reason) == ("bad_response", "unknown_user")  # logs tell them apart
    assert _outward(wrong) == _outward(unknown) == (False, True, False, None)


def test_unknown_user_still_computes_a_digest(monkeypatch):
    calls: list[str] = []
    real = digest._request_digest

    def counting(algorithm, ha1, **kw):
        calls.append(ha1)
        return real(algorithm, ha1, **kw)

    ch = Challenger(SECRET, REALM)
    value = ch.challenge(NOW)[0]
    unknown, wrong = answer(value, username="mallory"), answer(value, password="nope")
    monkeypatch.setattr(digest, "_request_digest", counting)
    ch.verify(unknown, method="REGISTER", now=NOW, ha1=lookup())
    ch.verify(wrong, method="REGISTER", now=NOW, ha1=lookup())
    assert len(calls) == 2 and len(calls[0]) == len(calls[1]) == 64  # a dummy SHA-256 H(A1), same work


def test_a_user_whose_password_is_right_for_another_realm_is_refused():
    ch = Challenger(SECRET, REALM)
    creds = answer(ch.challenge(NOW)[0])
    v = ch.verify(creds, method="REGISTER", now=NOW, ha1=lookup(realm="elsewhere"))
    assert v.reason == "bad_response"


# -------------------------------------------------------------------------------------------- replays


def test_replay_keys():
    ch = Challenger(SECRET, REALM)
    value = ch.challenge(NOW)[0]
    header = authorization_header(username="alice", password="wonderland", realm=REALM, method="REGISTER",
                                  nonce=parse_challenge(value).nonce, uri=URI, cnonce="abc", nc="00000001")

    def key(creds: Credentials) -> str | None:
        v = ch.verify(creds, method="REGISTER", now=NOW, ha1=lookup())
        assert v.ok, v
        return v.replay_key

    first, replayed = key(parse_credentials(header)), key(parse_credentials(header))
    assert first is not None and first == replayed
    keys = {
        first,
        key(answer(value, cnonce="abc", nc="00000002")),  # nc + 1
        key(answer(value, cnonce="abd", nc="00000001")),  # another cnonce
        key(answer(ch.challenge(NOW)[0], cnonce="abc", nc="00000001")),  # another nonce
    }
    assert len(keys) == 4
    # the count is compared by value: a hex-case variant of the same nc is the same use
    assert key(answer(value, cnonce="abc", nc="0000000a")) == key(answer(value, cnonce="abc", nc="0000000A"))


def test_a_caller_with_a_shared_store_refuses_the_replay():
    store: set[str] = set()
    ch = Challenger(SECRET, REALM)

    def admit(creds: Credentials) -> bool:  # what the registrar does with the verdict
        v = ch.verify(creds, method="REGISTER", now=NOW, ha1=lookup())
        if not v.ok or v.replay_key in store:
            return False
        store.add(v.replay_key)
        return True

    value = ch.challenge(NOW)[0]
    creds = answer(value)
    assert [admit(creds), admit(creds), admit(answer(value, nc="00000002"))] == [True, False, True]
    assert ch.replay_ttl_s >= ch.nonce_ttl_s


# --------------------------------------------------------------------------------------------- parser

GOOD = [
    ("odd-spacing",
     'Digest   username = "alice" ,realm="r"  ,\tnonce="n",uri="sip:r" , response="ab" ,qop = auth, nc=00000001,'
     ' cnonce="c"  ',
     {"username": "alice", "realm": "r", "nonce": "n", "uri": "sip:r", "response": "ab", "qop": "auth",
      "nc": "00000001", "cnonce": "c"}),
    ("reordered-lowercase-scheme-quoted-tokens",
     'digest RESPONSE="ab", URI="sip:r", Nonce="n", realm="r", username="alice", algorithm="SHA-256",'
     ' qop="auth", nc=0000000A, cnonce="c"',
     {"username": "alice", "response": "ab", "uri": "sip:r", "algorithm": "SHA-256", "qop": "auth",
      "nc": "0000000A"}),
    ("escaped-quotes",
     r'Digest username="a\"b\\c", realm="sip \"x\"", nonce="n", uri="sip:r", response="ab"',
     {"username": 'a"b\\c', "realm": 'sip "x"'}),
    ("folded", 'Digest username="alice",\r\n  realm="r",\r\n\tnonce="n", uri="sip:r",\r\n response="ab"',
     {"username": "alice", "realm": "r", "nonce": "n"}),
    ("utf8-username-and-extensions",
     'Digest username="jürgen", realm="r", nonce="n", uri="sip:r", response="ab", userhash=false, x-ext="1"',
     {"username": "jürgen"}),
    ("empty-username-and-stray-commas", 'Digest username="", ,realm="r", nonce="n", uri="sip:r", response="ab",',
     {"username": ""}),
]


@pytest.mark.parametrize("value,fields", [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_parse_credentials_good(value, fields):
    c = parse_credentials(value)
    assert c.is_digest
    for name, expected in fields.items():
        assert getattr(c, name) == expected, name
        assert c.params[name] == expected


@pytest.mark.parametrize(
    "value,scheme,params,token68",
    [
        ("NoOneKnowsThisScheme opaque-data=here", "NoOneKnowsThisScheme", {"opaque-data": "here"}, None),  # 4475
        ('NewAuth realm="x", value="hijk"', "NewAuth", {"realm": "x", "value": "hijk"}, None),
        ("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "Basic", {}, "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ("Bearer eyJhbGciOi.eyJzdWIi.c2lnbg", "Bearer", {}, "eyJhbGciOi.eyJzdWIi.c2lnbg"),
        ("Negotiate", "Negotiate", {}, None),
    ],
)
def test_parse_credentials_foreign_schemes(value, scheme, params, token68):
    c = parse_credentials(value)
    assert (c.scheme, dict(c.params), c.token68, c.is_digest) == (scheme, params, token68, False)


BAD = [
    ("empty", ""),
    ("blank", "   "),
    ("digest-alone", "Digest"),
    ("unterminated", 'Digest username="alice'),
    ("no-equals", "Digest username"),
    ("no-name", 'Digest ="x"'),
    ("missing-comma", 'Digest username="a" realm="r"'),
    ("duplicate", 'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="x"'),
    ("missing-nonce", 'Digest username="a", realm="r", uri="u", response="x"'),
    ("missing-response", 'Digest username="a", realm="r", nonce="n", uri="u"'),
    ("qop-without-nc", 'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, cnonce="c"'),
    ("short-nc", 'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=1, cnonce="c"'),
    ("control-char", 'Digest username="a\x01", realm="r", nonce="n", uri="u", response="x"'),
    ("bare-newline", 'Digest username="a",\nrealm="r", nonce="n", uri="u", response="x"'),
    ("quoted-scheme", '"Digest" username="a"'),
    ("scheme-then-comma", 'Digest,username="a"'),
    ("digest-token68", "Digest QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
    ("unquoted-uri", 'Digest username="a", realm="r", nonce="n", uri=sip:r, response="x"'),
    ("non-ascii-quoted-pair", 'Digest username="a\\é", realm="r", nonce="n", uri="u", response="x"'),
    ("lone-surrogate", 'Digest username="\ud800", realm="r", nonce="n", uri="u", response="x"'),
    ("too-long", 'Digest username="' + "a" * digest.MAX_HEADER_LENGTH + '"'),
    ("too-many-params", "X " + ", ".join(f"p{i}=1" for i in range(100))),
    ("not-a-str", b'Digest username="a"'),
]


@pytest.mark.parametrize("value", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_parse_credentials_garbage(value):
    with pytest.raises(DigestError) as info:
        parse_credentials(value)
    assert info.value.status_hint == 400 and not info.value.ours
    assert isinstance(info.value, SipError) and isinstance(info.value, CreditgateError)


@given(st.text(max_size=300))
@settings(max_examples=400)
def test_parse_credentials_only_raises_digest_error(text):
    try:
        parse_credentials(text)
    except DigestError:
        pass


_PIECES = st.sampled_from(['Digest ', 'NewAuth ', 'username', 'realm', 'nonce', 'uri', 'response', 'qop', 'nc',
                           'cnonce', 'algorithm', '=', '"', '\\', ',', ' ', '\t', '\r\n ', '\r', 'auth',
                           '00000001', 'MD5', 'a', 'é', '\x00', '\ud800', '\udcff', '=='])


@given(st.lists(_PIECES, max_size=60).map("".join))
@settings(max_examples=800)
def test_parse_then_verify_never_raise_on_near_grammar_text(text):
    try:
        creds = parse_credentials(text)
    except DigestError:
        return
    v = Challenger(SECRET, REALM).verify(creds, method="REGISTER", now=NOW, ha1=lookup())
    assert not v.ok and v.challenge_again


_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)


@given(username=_TEXT, password=_TEXT, realm=_TEXT.filter(bool))
@settings(max_examples=200)
def test_any_printable_username_password_realm_round_trips(username, password, realm):
    ch = Challenger(SECRET, realm)
    value = ch.challenge(NOW)[1]
    creds = answer(value, username=username, password=password)
    assert (creds.username, creds.realm) == (username, realm)
    v = ch.verify(creds, method="REGISTER", now=NOW, ha1=lookup(realm, {username: password}))
    assert v.ok, v


# ---------------------------------------------------------------------------------------- our misuse


@pytest.mark.parametrize(
    "make",
    [
        lambda: Challenger(b"short", REALM),
        lambda: Challenger("not bytes" * 4, REALM),  # type: ignore[arg-type]
        lambda: Challenger(SECRET, "bad\r\nrealm"),
        lambda: Challenger(SECRET, ""),
        lambda: Challenger(SECRET, REALM, nonce_ttl_s=0),
        lambda: Challenger(SECRET, REALM, algorithms=("SHA-512-256",)),
        lambda: Challenger(SECRET, REALM, algorithms=()),
        lambda: Challenger(SECRET, REALM).challenge(float("nan")),
        lambda: Challenger(SECRET, REALM).challenge(-1.0),
        lambda: compute_response(**{**RFC_2617_3_5, "cnonce": None}),
        lambda: compute_response(**{**RFC_2617_3_5, "nc": "1"}),
        lambda: compute_response(**{**RFC_2617_3_5, "algorithm": "SHA-1"}),
        lambda: authorization_header(**{**RFC_2617_3_5, "username": "a\r\nb"}),
    ],
)
def test_misuse_is_our_digest_error(make):
    with pytest.raises(DigestError) as info:
        make()
    assert info.value.ours and info.value.status_hint == 500


def test_rfc2069_client_form_is_computed_for_legacy_servers():
    # Without qop: response = H(H(A1) ":" nonce ":" H(A2)) (RFC 2617 §3.2.2.1, RFC 2069).
    kw = {k: v for k, v in RFC_2617_3_5.items() if k not in ("qop", "nc", "cnonce")}
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1, ha2 = md5("Mufasa:testrealm@host.com:Circle Of Life"), md5("GET:/dir/index.html")
    assert compute_response(**kw, qop=None) == md5(f"{ha1}:dcd98b7102dd2f0e8b11d0f600bfb0c093:{ha2}")
    header = authorization_header(**kw, qop=None)
    assert "qop" not in parse_credentials(header).params
