"""SIP dialogs (RFC 3261 §12): identity, route set, remote target and CSeq of one leg of a call.

Theory of operation
-------------------
A dialog is the peer-to-peer relationship an INVITE sets up: identified by Call-ID, local tag and
remote tag (§12). On the UAC side it is created from a response carrying a To tag (a 1xx makes it
early, a 2xx confirmed; the route set is the response's Record-Route reversed, the remote target
its Contact, §12.1.2). On the UAS side it is created from the INVITE with the tag we put in our To
(route set in order, remote target the request's Contact, §12.1.1). Requests inside the dialog
(§12.2.1.1) use the remote target as Request-URI and the route set as Route; loose routing only
(a strict-routing first hop is refused, as nothing on our networks uses it). The local CSeq grows
by one per request, except ACK and CANCEL, which reuse the INVITE's. Remote CSeqs must grow
(§12.2.2): an older one is answered 500. A target refresh (re-INVITE, UPDATE, their 2xx) replaces
the remote target (§12.2). No I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gateway.sip.errors import ParseError, SipError
from gateway.sip.headers import Headers
from gateway.sip.message import Request, Response
from gateway.sip.uri import NameAddr, SipUri, Uri, parse_name_addr

__all__ = ["Dialog", "DialogState", "dialog_id"]


class DialogState(enum.Enum):
    __hash__ = object.__hash__  # identity, in C (see transaction.State)

    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


def dialog_id(call_id: str, local_tag: str | None, remote_tag: str | None) -> tuple[str, str, str]:
    return (call_id, local_tag or "", remote_tag or "")


def _target(msg: Request | Response) -> Uri | None:
    contacts = msg.contact
    return contacts[0].uri if contacts else None


@dataclass(slots=True, kw_only=True)
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str | None
    local_party: str  # our From (UAC) / To (UAS) value, without the tag
    remote_party: str  # the peer's, without the tag
    remote_target: Uri
    route_set: list[str] = field(default_factory=list)
    local_seq: int = 0
    remote_seq: int | None = None
    state: DialogState = DialogState.EARLY

    @property
    def id(self) -> tuple[str, str, str]:
        return dialog_id(self.call_id, self.local_tag, self.remote_tag)

    # -- creation -------------------------------------------------------------------------

    @classmethod
    def as_uac(cls, invite: Request, response: Response) -> "Dialog":
        """The dialog a UAC gets from a 1xx (early) or 2xx (confirmed) with a To tag (§12.1.2)."""
        remote_tag = response.to_tag
        if remote_tag is None:
            raise ParseError("a dialog-creating response has no To tag")
        target = _target(response) or invite.uri
        local = invite.from_
        return cls(
            call_id=invite.call_id,
            local_tag=local.tag or "",
            remote_tag=remote_tag,
            local_party=str(_untagged(local)),
            remote_party=str(_untagged(response.to)),
            remote_target=target,
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_seq=invite.cseq.seq,
            state=DialogState.CONFIRMED if 200 <= response.status < 300 else DialogState.EARLY,
        )

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str) -> "Dialog":
        """The dialog a UAS creates when it answers ``invite`` with ``local_tag`` in its To (§12.1.1)."""
        target = _target(invite)
        if target is None:
            raise ParseError("an INVITE without Contact cannot set up a dialog")
        return cls(
            call_id=invite.call_id,
            local_tag=local_tag,
            remote_tag=invite.from_tag,
            local_party=str(_untagged(invite.to)),
            remote_party=str(_untagged(invite.from_)),
            remote_target=target,
            route_set=list(invite.headers.get_all("Record-Route")),
            remote_seq=invite.cseq.seq,
        )

    # -- in-dialog requests ---------------------------------------------------------------

    def new_request(
        self,
        method: str,
        *,
        via: str,
        contact: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        headers: list[tuple[str, str]] | tuple[tuple[str, str], ...] = (),
        cseq: int | None = None,
        max_forwards: int = 70,
    ) -> Request:
        """A request in this dialog (§12.2.1.1). ``cseq`` is for ACK/CANCEL (the INVITE's number)."""
        if self.route_set and not _loose(self.route_set[0]):
            raise SipError("strict routing is not supported", ours=True, status_hint=500)
        if cseq is None:
            self.local_seq += 1
            cseq = self.local_seq
        h = Headers()
        h.add("Via", via)
        for route in self.route_set:
            h.add("Route", route)
        h.add("Max-Forwards", str(max_forwards))
        h.add("From", f"{self.local_party};tag={self.local_tag}")
        h.add("To", self.remote_party + (f";tag={self.remote_tag}" if self.remote_tag else ""))
        h.add("Call-ID", self.call_id)
        h.add("CSeq", f"{cseq} {method}")
        if contact is not None and method in ("INVITE", "UPDATE", "SUBSCRIBE", "REFER", "NOTIFY"):
            h.add("Contact", contact)
        for name, value in headers:
            h.add(name, value)
        if content_type is not None and body:
            h.add("Content-Type", content_type)
        return Request(method=method, uri=self.remote_target, headers=h, body=body)

    def destination(self) -> tuple[str, int]:
        """Where to send the next in-dialog request: the first route, else the remote target."""
        uri: Uri = self.remote_target
        if self.route_set:
            uri = parse_name_addr(self.route_set[0]).uri
        if not isinstance(uri, SipUri):
            raise SipError(f"cannot send to a {uri.scheme}: URI", ours=True, status_hint=500)
        return uri.host.strip("[]"), uri.port or 5060

    # -- what the peer sends --------------------------------------------------------------

    def check_remote_cseq(self, request: Request) -> bool:
        """§12.2.2: a lower CSeq than the last one is out of order (answer 500); ACK/CANCEL exempt."""
        if request.method in ("ACK", "CANCEL"):
            return True
        seq = request.cseq.seq
        if self.remote_seq is not None and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        return True

    def confirm(self, response: Response) -> None:
        """A 2xx to our INVITE: the dialog is confirmed and its route set and target are final."""
        if self.state is DialogState.EARLY:
            self.route_set = list(reversed(response.headers.get_all("Record-Route")))
        self.refresh_target(response)
        self.state = DialogState.CONFIRMED

    def refresh_target(self, msg: Request | Response) -> None:
        """Target refresh (re-INVITE, UPDATE, or a 2xx to them): a new Contact replaces the target."""
        target = _target(msg)
        if target is not None:
            self.remote_target = target


def _untagged(na: NameAddr) -> NameAddr:
    return na.replace(params=tuple(p for p in na.params if p[0].lower() != "tag"))


def _loose(route: str) -> bool:
    try:
        uri = parse_name_addr(route).uri
    except ParseError:
        return False
    return isinstance(uri, SipUri) and uri.has_param("lr")
