"""Typed SIP errors: each carries the status a server answers with (or None to drop) and whose fault it was.

The parser, the validator and (later) the transaction layer raise these; the element that catches one
answers ``status_hint`` with ``reason`` as the reason phrase and the extra header fields of
``response_headers()`` (RFC 3261 §8.2: Unsupported for 420, Allow for 405/501, Accept for 415), or drops
the message when ``status_hint`` is None (broken responses are never answered, RFC 3261 §18.1.2).
``headers`` and ``method`` are the header section and method of the offending request when they could be
read, so that a stateless error response can still be built (``gateway.sip.message.make_error_response``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rating_core.errors import CreditgateError

if TYPE_CHECKING:  # pragma: no cover
    from gateway.sip.headers import Headers

__all__ = [
    "SipError",
    "BadRequest",
    "ParseError",
    "VersionNotSupported",
    "UnsupportedUriScheme",
    "BadExtension",
    "MessageTooLarge",
    "MethodNotAllowed",
    "UnknownMethod",
    "TooManyHops",
    "UnsupportedMediaType",
    "NotAcceptable",
    "DropMessage",
    "FramingError",
]


class _Default:
    """Marks "use the class's default status" (None is a meaningful status_hint: drop)."""


_DEFAULT = _Default()


class SipError(CreditgateError):
    """A SIP message that cannot be processed; answer ``status_hint`` (None: drop it silently)."""

    default_status: int | None = 500
    default_reason: str = "Server Internal Error"

    def __init__(
        self,
        reason: str | None = None,
        *,
        status_hint: int | None | _Default = _DEFAULT,
        ours: bool = False,
        headers: Headers | None = None,
        method: str | None = None,
    ) -> None:
        self.status_hint: int | None = (
            self.default_status if isinstance(status_hint, _Default) else status_hint
        )
        # The reason doubles as the response's reason phrase, so it stays on one line.
        text = reason or self.default_reason
        self.reason: str = text.replace("\r", " ").replace("\n", " ")
        self.ours = ours
        self.headers = headers
        self.method = method
        status = "drop" if self.status_hint is None else str(self.status_hint)
        super().__init__(f"{status} {self.reason}")

    def response_headers(self) -> list[tuple[str, str]]:
        """Header fields the error response must carry besides the ones copied from the request."""
        return []


class BadRequest(SipError):
    """400: the request is malformed or breaks a rule an element must enforce (RFC 3261 §21.4.1)."""

    default_status = 400
    default_reason = "Bad Request"


class ParseError(BadRequest):
    """400: the message does not follow the RFC 3261 grammar (§25) closely enough to be processed."""


class VersionNotSupported(SipError):
    """505: a request whose SIP-Version is not SIP/2.0 (RFC 3261 §8.2.2, RFC 4475 badvers)."""

    default_status = 505
    default_reason = "Version Not Supported"


class UnsupportedUriScheme(SipError):
    """416: the Request-URI scheme is not one this element serves (RFC 3261 §8.2.2.1)."""

    default_status = 416
    default_reason = "Unsupported URI Scheme"


class BadExtension(SipError):
    """420: Require/Proxy-Require name options we do not support; ``unsupported`` lists them (§8.2.2.3)."""

    default_status = 420
    default_reason = "Bad Extension"

    def __init__(self, unsupported: Iterable[str], reason: str | None = None, **kwargs: object) -> None:
        self.unsupported: list[str] = list(unsupported)
        super().__init__(reason, **kwargs)  # type: ignore[arg-type]

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Unsupported", ", ".join(self.unsupported))]


class MessageTooLarge(SipError):
    """513: the message (or one of its lines, or its number of header fields) exceeds our bounds."""

    default_status = 513
    default_reason = "Message Too Large"


class _WithAllow(SipError):
    def __init__(self, allow: Iterable[str] = (), reason: str | None = None, **kwargs: object) -> None:
        self.allow: tuple[str, ...] = tuple(allow)
        super().__init__(reason, **kwargs)  # type: ignore[arg-type]

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Allow", ", ".join(self.allow))] if self.allow else []


class MethodNotAllowed(_WithAllow):
    """405: a method we know but do not serve; ``allow`` lists the ones we do (RFC 3261 §8.2.1)."""

    default_status = 405
    default_reason = "Method Not Allowed"


class UnknownMethod(_WithAllow):
    """501: a method we do not implement at all (RFC 3261 §8.2.1, RFC 4475 intmeth, esc02, mismatch02)."""

    default_status = 501
    default_reason = "Not Implemented"


class TooManyHops(SipError):
    """483: Max-Forwards reached 0 on a request we would forward (RFC 3261 §16.3 step 3)."""

    default_status = 483
    default_reason = "Too Many Hops"


class UnsupportedMediaType(SipError):
    """415: a body type (or encoding) we cannot pass on; ``accept`` lists the types we take (§8.2.3)."""

    default_status = 415
    default_reason = "Unsupported Media Type"

    def __init__(self, accept: Iterable[str] = (), reason: str | None = None, **kwargs: object) -> None:
        self.accept: tuple[str, ...] = tuple(accept)
        super().__init__(reason, **kwargs)  # type: ignore[arg-type]

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Accept", ", ".join(self.accept))] if self.accept else []


class NotAcceptable(SipError):
    """406: the request's Accept excludes every body type our answer could carry (RFC 4475 sdp01)."""

    default_status = 406
    default_reason = "Not Acceptable"


class DropMessage(SipError):
    """Discard the message without answering: a broken response, a keep-alive, an unusable Via."""

    default_status = None
    default_reason = "Message dropped"


class FramingError(SipError):
    """A stream whose message boundaries are lost; send ``status_hint`` if not None, then close it.

    RFC 3261 §18.3: on a stream transport only Content-Length delimits messages, so a missing,
    negative, non-numeric or duplicated value (RFC 4475 ncl, mcl01) or an oversized message leaves no way
    to find where the next message starts.
    """

    default_status = 400
    default_reason = "Bad Request (stream framing lost)"
