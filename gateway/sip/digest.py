"""SIP digest authentication (RFC 8760, RFC 7616, RFC 2617, RFC 3261 §22): challenge, parse, verify, answer.

Theory of operation
-------------------
The gateway authenticates registering users and trunks as a registrar (401 + WWW-Authenticate) or as the
authenticating proxy of a B2BUA (407 + Proxy-Authenticate); the header values are the same either way, the
caller picks the status and header name.

* ``Challenger.challenge(now)`` returns one challenge per offered algorithm, most preferred first (RFC 8760
  §2.3: SHA-256, then MD5), each with ``qop="auth"`` and an ``opaque``. All of them carry the same nonce.
* Nonces are stateless: ``base64url(issued_at[8] || salt[16] || mac[24])`` where ``mac`` is HMAC-SHA256 under
  the shared secret of (issued_at, salt, realm), truncated to 192 bits (RFC 2104 §5). Any gateway process
  holding the secret can validate a nonce another one issued; nothing is stored per challenge. Because
  several processes and machines share nonces, time here is wall-clock epoch seconds, passed in, never read.
* ``Challenger.verify(creds, method=, now=, ha1=)`` checks realm, algorithm, qop, opaque, the nonce's MAC
  and age, then the response (``hmac.compare_digest``). A nonce older than ``nonce_ttl_s`` whose response is
  right is *stale* (RFC 2617 §3.2.1: answer a fresh challenge with ``stale=true``, the client retries without
  asking its user); a stale nonce with a wrong response is simply a wrong response.
* Replays: on success the verdict carries ``replay_key`` (a hash of nonce, nonce-count and cnonce). The
  caller records it in the shared store (e.g. Redis ``SET key 1 NX EX replay_ttl_s``) and refuses the
  request when it was already there. That makes every (nonce, nc, cnonce) single use across all gateway
  processes without the per-nonce nc bookkeeping of RFC 7616 §3.4 (which needs server state per nonce).
* Unknown user and wrong password are indistinguishable from outside: both verdicts have
  ``challenge_again`` and nothing else the peer can see differs; for an unknown user a dummy H(A1) derived
  from the secret is used so the same digest work is done. ``reason`` is for logs and metrics only.

Choices
-------
* The RFC 2069 form (no ``qop``) is refused (reason ``malformed``): we always offer ``qop="auth"`` and RFC 3261
  §22.4 obliges a client that received ``qop`` to send it back; without a cnonce, a no-qop response is also
  weaker against chosen-plaintext attacks. ``qop=auth-int`` is refused the same way (never offered).
* ``MD5-sess`` and ``SHA-256-sess`` are implemented (RFC 7616 §3.4.2) and accepted only when offered.
* ``userhash`` (RFC 7616 §3.4.4) and ``username*`` are not supported: a hashed username is just an unknown
  user, and credentials without ``username`` are malformed.
* An absent ``opaque`` is tolerated (it carries no state here; the nonce is self-authenticating); a wrong one
  is ``bad_nonce``. The ``uri`` parameter is not compared with the Request-URI (proxies may rewrite it); it
  is bound into the response and the replay key makes each response single use.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from gateway.sip.errors import SipError

__all__ = [
    "DigestError",
    "Credentials",
    "Challenge",
    "Verdict",
    "Reason",
    "Challenger",
    "parse_credentials",
    "parse_challenge",
    "select_challenge",
    "compute_response",
    "authorization_header",
    "ha1_for",
    "ALGORITHMS",
    "MAX_HEADER_LENGTH",
]

Reason = Literal["ok", "stale", "bad_nonce", "bad_response", "unknown_user", "bad_realm", "bad_algorithm",
                 "malformed"]

# Algorithm as it appears on the wire -> hashlib name. RFC 7616 §3.3 registers these spellings; tokens are
# compared case-insensitively (RFC 7235 §2.1 treats the parameter values of a token as tokens).
_HASHLIB = {"MD5": "md5", "MD5-sess": "md5", "SHA-256": "sha256", "SHA-256-sess": "sha256"}
ALGORITHMS: tuple[str, ...] = tuple(_HASHLIB)
_CANONICAL = {name.lower(): name for name in _HASHLIB}
_DEFAULT_OFFER = ("SHA-256", "MD5")

# Bounds (house rule 9): an Authorization value longer than this, or with more parameters, is refused.
MAX_HEADER_LENGTH = 8192
_MAX_PARAMS = 64

# RFC 3261 §25.1 token characters.
_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
# RFC 7235 §2.1 token68, for foreign schemes (e.g. "Bearer <token>", RFC 8898).
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*\Z")
# RFC 3261 §7.3.1: LWS including a line fold may be replaced by a single SP before interpretation.
_FOLD = re.compile(r"[ \t]*\r\n[ \t]+")
_NC = re.compile(r"[0-9a-fA-F]{8}\Z")
_NONCE = re.compile(r"[A-Za-z0-9_-]{64}\Z")

_TS = struct.Struct(">Q")
_SALT_LEN = 16
_MAC_LEN = 24
_MIN_SECRET_LEN = 16


class DigestError(SipError):
    """A digest header that cannot be parsed (the peer's: 400), or a misuse of this module (ours: 500).

    A ``SipError`` (so a ``CreditgateError``): the element that catches it answers ``status_hint``.
    """

    default_status = 400
    default_reason = "Bad Request"

    def __init__(self, message: str, *, ours: bool = False) -> None:
        super().__init__(message, status_hint=500 if ours else 400, ours=ours)


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """An Authorization / Proxy-Authorization value: the scheme, as sent, and its auth-params.

    ``params`` holds every parameter (names lower-cased, values unquoted), including extensions; the named
    fields are the digest ones. A foreign scheme may carry ``token68`` instead of parameters.
    """

    scheme: str
    username: str | None = None
    realm: str | None = None
    nonce: str | None = None
    uri: str | None = None
    response: str | None = None
    algorithm: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    token68: str | None = None

    @property
    def is_digest(self) -> bool:
        return self.scheme.lower() == "digest"

    @property
    def hash_algorithm(self) -> str | None:
        """The H(A1) family to look up for these credentials ('MD5' or 'SHA-256'), None if unsupported.

        An absent ``algorithm`` means MD5 (RFC 2617 §3.2.1). Lets a caller fetch the stored H(A1) before
        calling ``Challenger.verify`` (whose ``ha1`` callback is synchronous).
        """
        name = _canonical_algorithm(self.algorithm)
        return None if name is None else _base_algorithm(name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """A WWW-Authenticate / Proxy-Authenticate value as a client sees it (outbound use)."""

    scheme: str
    realm: str | None = None
    nonce: str | None = None
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    stale: bool = False
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def is_digest(self) -> bool:
        return self.scheme.lower() == "digest"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """The outcome of ``Challenger.verify``.

    Outward, only ``ok``, ``challenge_again`` and ``stale`` matter: on ``challenge_again`` answer 401/407
    with ``Challenger.challenge(now, stale=verdict.stale)``. ``reason`` is for logs and metrics only; it
    separates an unknown user from a wrong password, which the peer must never be able to do.
    On ``ok`` the caller must record ``replay_key`` in the shared store and refuse the request if the key
    was already there.
    """

    ok: bool
    reason: Reason
    username: str | None = None
    stale: bool = False
    replay_key: str | None = None
    algorithm: str | None = None

    @property
    def challenge_again(self) -> bool:
        # Every refusal is answered with a fresh challenge: unknown scheme (RFC 4475 §3.3.7), wrong realm
        # (RFC 3261 §22.3), stale nonce, wrong password and unknown user alike. Unparseable headers never
        # reach verify; parse_credentials raised DigestError (400) for them.
        return not self.ok


# ---------------------------------------------------------------------------------------------- parsing


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    return i


def _token(text: str, i: int) -> tuple[str, int]:
    j = i
    n = len(text)
    while j < n and text[j] in _TOKEN_CHARS:
        j += 1
    if j == i:
        raise DigestError(f"token expected at offset {i}")
    return text[i:j], j


def _quoted(text: str, i: int) -> tuple[str, int]:
    """Unquote the quoted-string opening at ``text[i]`` (RFC 3261 §25.1 qdtext / quoted-pair)."""
    out: list[str] = []
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        o = ord(c)
        if c == '"':
            return "".join(out), j + 1
        if c == "\\":
            if j + 1 >= n or ord(text[j + 1]) > 0x7F:  # quoted-pair escapes US-ASCII only
                raise DigestError("bad quoted-pair")
            out.append(text[j + 1])
            j += 2
            continue
        if o == 0x09 or 0x20 <= o <= 0x7E or o >= 0x80:  # qdtext (the DQUOTE and backslash handled above)
            out.append(c)
            j += 1
            continue
        raise DigestError("control character in quoted-string")
    raise DigestError("unterminated quoted-string")


def _params(text: str, i: int) -> dict[str, str]:
    """Parse ``auth-param *(COMMA auth-param)`` from ``i`` to the end; names are lower-cased."""
    params: dict[str, str] = {}
    n = len(text)
    while True:
        i = _skip_ws(text, i)
        if i >= n:
            return params
        if text[i] == ",":  # tolerate empty list elements (RFC 7230 §7)
            i += 1
            continue
        name, i = _token(text, i)
        i = _skip_ws(text, i)
        if i >= n or text[i] != "=":
            raise DigestError(f"'=' expected after {name!r}")
        i = _skip_ws(text, i + 1)
        if i < n and text[i] == '"':
            value, i = _quoted(text, i)
        else:
            value, i = _token(text, i)
        key = name.lower()
        if key in params:  # RFC 3261 §7.3.1 / RFC 7616 §3.4: a parameter appears at most once
            raise DigestError(f"duplicate parameter {key!r}")
        if len(params) >= _MAX_PARAMS:
            raise DigestError("too many parameters")
        params[key] = value
        i = _skip_ws(text, i)
        if i < n and text[i] != ",":
            raise DigestError(f"',' expected after {key!r}")


def _split_scheme(value: object) -> tuple[str, str, int]:
    """Check bounds and folding, return (unfolded text, scheme, offset after the scheme and its LWS)."""
    if not isinstance(value, str):
        raise DigestError("header value must be a str")
    if len(value) > MAX_HEADER_LENGTH:
        raise DigestError("header value too long")
    try:  # every value must be hashable as UTF-8 later (surrogateescape keeps undecodable input bytes)
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise DigestError("header value is not encodable text") from None
    text = _FOLD.sub(" ", value)
    if "\r" in text or "\n" in text:
        raise DigestError("line break that is not a fold")
    i = _skip_ws(text, 0)
    scheme, i = _token(text, i)
    if i < len(text) and text[i] not in " \t":
        raise DigestError("whitespace expected after the scheme")
    return text, scheme, _skip_ws(text, i)


def _digest_problem(creds: Credentials) -> str | None:
    """Why digest credentials cannot be checked at all (RFC 2617 §3.2.2 digest-response), or None."""
    for name in ("username", "realm", "nonce", "uri", "response"):
        if getattr(creds, name) is None:
            return f"missing {name}"
    if creds.qop is not None and (creds.cnonce is None or creds.nc is None):
        return "qop without cnonce and nc"
    if creds.nc is not None and not _NC.match(creds.nc):
        return "nc is not 8 hex digits"
    return None


def parse_credentials(value: str) -> Credentials:
    """Parse an Authorization / Proxy-Authorization header value.

    Tolerates LWS (including folds), any parameter order, quoted or bare values and parameter-name case.
    A foreign scheme (RFC 4475 §3.3.7 ``NoOneKnowsThisScheme opaque-data=here``) parses and is reported by
    ``scheme``; ``Challenger.verify`` answers it with a challenge. Raises ``DigestError`` (status_hint 400)
    and nothing else on text that is not credentials, on duplicate parameters, and on Digest credentials
    lacking username, realm, nonce, uri or response, or with qop but no cnonce/nc, or a bad nc.
    """
    text, scheme, i = _split_scheme(value)
    token68: str | None = None
    try:
        params = _params(text, i)
    except DigestError:
        rest = text[i:].rstrip(" \t")
        if scheme.lower() == "digest" or not _TOKEN68.match(rest):
            raise
        params, token68 = {}, rest
    creds = Credentials(
        scheme=scheme,
        username=params.get("username"),
        realm=params.get("realm"),
        nonce=params.get("nonce"),
        uri=params.get("uri"),
        response=params.get("response"),
        algorithm=params.get("algorithm"),
        cnonce=params.get("cnonce"),
        opaque=params.get("opaque"),
        qop=params.get("qop"),
        nc=params.get("nc"),
        params=MappingProxyType(params),
        token68=token68,
    )
    if creds.is_digest:
        problem = _digest_problem(creds)
        if problem is not None:
            raise DigestError(f"digest credentials: {problem}")
    return creds


def parse_challenge(value: str) -> Challenge:
    """Parse one WWW-Authenticate / Proxy-Authenticate value (a client receiving a 401/407).

    Raises ``DigestError`` on garbage and on a Digest challenge without realm or nonce.
    """
    text, scheme, i = _split_scheme(value)
    params = _params(text, i)
    challenge = Challenge(
        scheme=scheme,
        realm=params.get("realm"),
        nonce=params.get("nonce"),
        opaque=params.get("opaque"),
        algorithm=params.get("algorithm", "MD5"),
        qop=tuple(q.strip() for q in params.get("qop", "").split(",") if q.strip()),
        stale=params.get("stale", "").lower() == "true",
        params=MappingProxyType(params),
    )
    if challenge.is_digest and (challenge.realm is None or challenge.nonce is None):
        raise DigestError("digest challenge without realm or nonce")
    return challenge


def select_challenge(values: Iterable[str], *, algorithms: Sequence[str] = ALGORITHMS) -> Challenge | None:
    """The first Digest challenge, in the order received, whose algorithm we support (RFC 8760 §2.4).

    Values that do not parse, foreign schemes and unsupported algorithms are skipped.
    """
    allowed = {a.lower() for a in algorithms}
    for value in values:
        try:
            challenge = parse_challenge(value)
        except DigestError:
            continue
        if challenge.is_digest and challenge.algorithm.lower() in allowed:
            return challenge
    return None


# -------------------------------------------------------------------------------------------- computing


def _canonical_algorithm(name: str | None) -> str | None:
    if name is None:
        return "MD5"  # RFC 2617 §3.2.1: absent means MD5
    return _CANONICAL.get(name.lower())


def _base_algorithm(name: str) -> str:
    return name[: -len("-sess")] if name.endswith("-sess") else name


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _h(algorithm: str, data: str) -> str:
    return hashlib.new(_HASHLIB[algorithm], _b(data)).hexdigest()


def _request_digest(algorithm: str, ha1: str, *, nonce: str, nc: str | None, cnonce: str | None,
                    qop: str | None, method: str, uri: str) -> str:
    """request-digest of RFC 7616 §3.4.1 (RFC 2617 §3.2.2.1) from a stored H(A1)."""
    if algorithm.endswith("-sess"):
        # RFC 7616 §3.4.2: A1 = H(user:realm:password) ":" nonce ":" cnonce
        ha1 = _h(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _h(algorithm, f"{method}:{uri}")  # qop=auth (or none): A2 = Method ":" digest-uri
    if qop is None:
        return _h(algorithm, f"{ha1}:{nonce}:{ha2}")  # RFC 2069 form, client side only
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _algorithm_or_raise(algorithm: str) -> str:
    name = _canonical_algorithm(algorithm)
    if name is None:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}", ours=True)
    return name


def ha1_for(username: str, realm: str, password: str, algorithm: str = "SHA-256") -> str:
    """H(username ":" realm ":" password) in lower-case hex: what a user directory stores per algorithm.

    ``-sess`` variants use the same stored value; ``algorithm`` may name either.
    """
    return _h(_base_algorithm(_algorithm_or_raise(algorithm)), f"{username}:{realm}:{password}")


def _nc_text(nc: str | int) -> str:
    if isinstance(nc, int) and not isinstance(nc, bool):
        if not 0 < nc <= 0xFFFFFFFF:
            raise DigestError("nc out of range", ours=True)
        return f"{nc:08x}"
    if not isinstance(nc, str) or not _NC.match(nc):
        raise DigestError("nc must be 8 hex digits", ours=True)
    return nc


def compute_response(*, username: str, password: str, realm: str, nonce: str, method: str, uri: str,
                     algorithm: str = "SHA-256", qop: str | None = "auth", nc: str | int = "00000001",
                     cnonce: str | None = None) -> str:
    """The ``response`` a client sends (RFC 7616 §3.4.1). ``qop=None`` gives the RFC 2069 form.

    With a qop, ``cnonce`` is required (the same value must go into the header: see
    ``authorization_header``, which generates one when none is given).
    """
    name = _algorithm_or_raise(algorithm)
    if qop is not None and cnonce is None:
        raise DigestError("cnonce is required with qop", ours=True)
    if qop is not None and qop.lower() != "auth":
        raise DigestError(f"unsupported qop {qop!r}", ours=True)
    ha1 = ha1_for(username, realm, password, name)
    return _request_digest(name, ha1, nonce=nonce, nc=_nc_text(nc) if qop is not None else None,
                           cnonce=cnonce, qop=qop, method=method, uri=uri)


def _quote(value: str) -> str:
    if any(ord(c) < 0x20 and c != "\t" or c == "\x7f" for c in value):
        raise DigestError("control character in a header parameter", ours=True)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization_header(*, username: str, password: str, realm: str, nonce: str, method: str, uri: str,
                         algorithm: str = "SHA-256", qop: str | None = "auth", nc: str | int = "00000001",
                         cnonce: str | None = None, opaque: str | None = None) -> str:
    """A complete Authorization / Proxy-Authorization value answering a challenge.

    A random cnonce is generated when ``qop`` is set and none is given.
    """
    name = _algorithm_or_raise(algorithm)
    if qop is not None and cnonce is None:
        cnonce = secrets.token_hex(16)
    response = compute_response(username=username, password=password, realm=realm, nonce=nonce,
                                method=method, uri=uri, algorithm=name, qop=qop, nc=nc, cnonce=cnonce)
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={name}",
    ]
    if qop is not None:
        assert cnonce is not None
        parts += [f"cnonce={_quote(cnonce)}", f"qop={qop}", f"nc={_nc_text(nc)}"]
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    return "Digest " + ", ".join(parts)


# ------------------------------------------------------------------------------------------ the server


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _check_now(now: float) -> float:
    if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now) or not (
        0 <= now < 2**63
    ):
        raise DigestError(f"now must be finite epoch seconds, got {now!r}", ours=True)
    return float(now)


class Challenger:
    """Issues digest challenges and verifies the answers for one realm; shareable by every gateway process.

    ``secret`` (at least 16 bytes, the same in every process) keys the nonce MAC; ``nonce_ttl_s`` is how long
    a nonce stays fresh; ``clock_skew_s`` how far in the future a nonce's issue time may lie (the issuing
    machine's clock may run ahead). ``algorithms`` are offered in order (RFC 8760 §2.3: most preferred first)
    and are the only ones accepted. ``token_bytes`` supplies the salt (injectable for replayable tests).
    """

    __slots__ = ("_secret", "_realm", "_ttl", "_skew", "_algorithms", "_token_bytes", "_opaque")

    def __init__(self, secret: bytes, realm: str, nonce_ttl_s: int = 300, *, clock_skew_s: int = 30,
                 algorithms: Sequence[str] = _DEFAULT_OFFER,
                 token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET_LEN:
            raise DigestError(f"secret must be at least {_MIN_SECRET_LEN} bytes", ours=True)
        if not isinstance(realm, str) or not realm or any(ord(c) < 0x20 or c == "\x7f" for c in realm):
            raise DigestError("realm must be non-empty text without control characters", ours=True)
        if isinstance(nonce_ttl_s, bool) or not isinstance(nonce_ttl_s, int) or nonce_ttl_s <= 0:
            raise DigestError("nonce_ttl_s must be a positive int", ours=True)
        if isinstance(clock_skew_s, bool) or not isinstance(clock_skew_s, int) or clock_skew_s < 0:
            raise DigestError("clock_skew_s must be a non-negative int", ours=True)
        offered = tuple(_algorithm_or_raise(a) for a in algorithms)
        if not offered or len(set(offered)) != len(offered):
            raise DigestError("algorithms must be a non-empty list without repeats", ours=True)
        self._secret = secret
        self._realm = realm
        self._ttl = nonce_ttl_s
        self._skew = clock_skew_s
        self._algorithms = offered
        self._token_bytes = token_bytes
        self._opaque = _b64(self._mac(b"opaque", realm.encode("utf-8"))[:12])

    @property
    def realm(self) -> str:
        return self._realm

    @property
    def algorithms(self) -> tuple[str, ...]:
        return self._algorithms

    @property
    def nonce_ttl_s(self) -> int:
        return self._ttl

    @property
    def replay_ttl_s(self) -> int:
        """How long the caller must remember a ``replay_key``: a nonce can verify ok for at most this long
        after any moment it was first seen (TTL, plus the allowed clock skew, plus 1 s of flooring)."""
        return self._ttl + self._skew + 1

    def _mac(self, label: bytes, data: bytes) -> bytes:
        # The label separates the uses of the one secret (nonce MAC, opaque, dummy H(A1)).
        return hmac.new(self._secret, b"creditgate-digest-" + label + b"\0" + data, hashlib.sha256).digest()

    def nonce(self, now: float) -> str:
        """A fresh nonce: issue time (whole seconds), random salt, MAC over both and the realm."""
        issued = _TS.pack(int(_check_now(now)))
        salt = self._token_bytes(_SALT_LEN)
        if not isinstance(salt, bytes) or len(salt) != _SALT_LEN:
            raise DigestError("token_bytes returned the wrong length", ours=True)
        mac = self._mac(b"nonce", issued + salt + self._realm.encode("utf-8"))[:_MAC_LEN]
        return _b64(issued + salt + mac)

    def _issued_at(self, nonce: str) -> int | None:
        """The nonce's issue time if it is one of ours for this realm and secret, else None."""
        if not _NONCE.match(nonce):
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce)
        except (binascii.Error, ValueError):
            return None
        issued, salt, mac = raw[:8], raw[8:8 + _SALT_LEN], raw[8 + _SALT_LEN:]
        expected = self._mac(b"nonce", issued + salt + self._realm.encode("utf-8"))[:_MAC_LEN]
        if not hmac.compare_digest(mac, expected):
            return None
        return int(_TS.unpack(issued)[0])

    def challenge(self, now: float, *, stale: bool = False) -> list[str]:
        """WWW-Authenticate (401) / Proxy-Authenticate (407) values, one per offered algorithm, in order."""
        nonce = self.nonce(now)
        tail = ", stale=true" if stale else ""
        realm = _quote(self._realm)
        return [
            f'Digest realm={realm}, nonce="{nonce}", opaque="{self._opaque}", algorithm={algorithm}, '
            f'qop="auth"{tail}'
            for algorithm in self._algorithms
        ]

    def _dummy_ha1(self, username: str, algorithm: str) -> str:
        digest = self._mac(b"dummy-ha1", algorithm.encode("ascii") + b"\0" + _b(username)).hex()
        return digest[: len(_h(algorithm, ""))]

    def verify(self, creds: Credentials, *, method: str, now: float,
               ha1: Callable[[str, str], str | None]) -> Verdict:
        """Check ``creds`` for a request with ``method`` received at ``now`` (epoch seconds).

        ``ha1(username, algorithm)`` returns the stored H(A1) hex for 'MD5' or 'SHA-256' (the ``-sess``
        variants use the same one), or None for an unknown user. Never raises on peer input.
        """
        now = _check_now(now)
        username = creds.username

        def refuse(reason: Reason, *, stale: bool = False) -> Verdict:
            return Verdict(ok=False, reason=reason, username=username, stale=stale)

        if not creds.is_digest or _digest_problem(creds) is not None:
            return refuse("malformed")
        assert username is not None and creds.nonce is not None and creds.response is not None
        assert creds.uri is not None
        if creds.realm != self._realm:
            return refuse("bad_realm")
        algorithm = _canonical_algorithm(creds.algorithm)
        if algorithm is None or algorithm not in self._algorithms:
            return refuse("bad_algorithm")
        if creds.qop is None or creds.qop.lower() != "auth":
            return refuse("malformed")  # RFC 2069 form or auth-int: never offered (see module docstring)
        try:
            opaque_ok = creds.opaque is None or hmac.compare_digest(_b(creds.opaque), self._opaque.encode())
            issued = self._issued_at(creds.nonce)
            if not opaque_ok or issued is None:
                return refuse("bad_nonce")
            age = now - issued
            if age < -self._skew:
                return refuse("bad_nonce")  # "issued" in the future: not by a sane clock of ours
            expired = age > self._ttl

            base = _base_algorithm(algorithm)
            stored = ha1(username, base)
            known = stored is not None
            # Unknown user: the same digest work with a dummy H(A1), so timing does not tell (much).
            key = stored.lower() if stored is not None else self._dummy_ha1(username, base)
            expected = _request_digest(algorithm, key, nonce=creds.nonce, nc=creds.nc, cnonce=creds.cnonce,
                                       qop=creds.qop, method=method, uri=creds.uri)
            matches = hmac.compare_digest(expected.encode("ascii"), _b(creds.response.lower()))
        except UnicodeEncodeError:  # hand-built credentials holding unencodable text
            return refuse("malformed")
        if not known:
            return refuse("unknown_user")
        if not matches:
            return refuse("bad_response")
        if expired:
            # RFC 2617 §3.2.1: stale only when the digest was right for the old nonce.
            return refuse("stale", stale=True)
        return Verdict(ok=True, reason="ok", username=username, algorithm=algorithm,
                       replay_key=_replay_key(creds.nonce, creds.nc, creds.cnonce))


def _replay_key(nonce: str, nc: str | None, cnonce: str | None) -> str:
    # Fixed length whatever the client sent; nc by value so "0000000A" and "0000000a" are one count.
    count = int(nc, 16) if nc is not None else 0
    material = b"\0".join((_b(nonce), f"{count:08x}".encode("ascii"), _b(cnonce or "")))
    return "digest-replay:" + hashlib.sha256(material).hexdigest()
