"""One call through the gateway: its two legs, their dialogs and flows, and the messages that cross.

A B2BUA call has an A leg (the caller: a PBX, a bridge or, for toll-free, a carrier) where the gateway
is the UAS, and a B leg (the carrier or the toll-free target) where it is the UAC. Each leg has its own
Call-ID, tags, CSeqs and dialog; nothing of one leg's transaction state leaks into the other. What
crosses is the session description and the end-to-end header fields: ``passthrough`` drops every
hop-by-hop and dialog field and our own ``X-Creditgate-*`` fields. Each leg also remembers its flow
(the address and transport it talks over): in-dialog requests go back along it, which is what trunks
behind NAT and user agents that copy Vias (pyVoIP) need.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.sip.dialog import Dialog
from gateway.sip.headers import Headers
from gateway.sip.message import Request
from gateway.sip.transaction import ClientTransaction, ServerTransaction

if TYPE_CHECKING:
    from gateway.credit.engine import Authorization
    from gateway.credit.session import CallSession

__all__ = ["Call", "CallState", "Leg", "passthrough", "HOP_BY_HOP"]

Address = tuple[str, int]

# Header fields a B2BUA never copies from one leg to the other: each leg has its own (RFC 3261 §8,
# §12, §16.6 for the proxy equivalents), or they are credentials and challenges for one hop only.
HOP_BY_HOP = frozenset({
    "via", "route", "record-route", "contact", "call-id", "cseq", "from", "to", "max-forwards",
    "content-length", "authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate",
    "proxy-require", "authentication-info", "proxy-authentication-info", "rack",
})


def passthrough(headers: Headers, *, drop: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The end-to-end header fields of a message, in order, minus ``drop`` (lower-case names)."""
    out = []
    for key, name, value in headers._items:
        if key in HOP_BY_HOP or key in drop or key.startswith("x-creditgate-"):
            continue
        out.append((name, value))
    return out


class CallState(enum.Enum):
    __hash__ = object.__hash__  # identity, in C (see transaction.State)

    AUTHORIZING = "authorizing"  # the credit engine is deciding
    ROUTING = "routing"  # B-leg INVITE sent, no final response yet
    CONFIRMED = "confirmed"  # answered
    ENDED = "ended"


@dataclass(slots=True, eq=False, kw_only=True)
class Leg:
    name: str  # 'a' or 'b'
    call_id: str
    local_tag: str
    peer: Address
    transport: str
    dialog: Dialog | None = None
    invite: Request | None = None  # the INVITE of this leg (received on A, sent on B)
    invite_txn: ClientTransaction | ServerTransaction | None = None
    acked: bool = False


@dataclass(slots=True, eq=False, kw_only=True, weakref_slot=True)  # weakly referable: tests watch calls die
class Call:
    id: str  # the ledger's call id (our B-leg Call-ID: unique, ours)
    a: Leg
    b: Leg | None = None
    org_id: str = ""
    state: CallState = CallState.AUTHORIZING
    auth: "Authorization | None" = None
    session: "CallSession | None" = None
    created: float = 0.0  # loop clock
    created_wall: float = 0.0  # epoch seconds, for the CDR
    answered_wall: float | None = None
    cancelled: bool = False
    cancel_sent: bool = False
    provisional_seen: bool = False
    b_ack: Request | None = None  # the ACK we sent for the B leg's 2xx (re-sent on retransmissions)
    defer_b_ack: bool = False  # late offer: the B leg's ACK waits for the A leg's (it carries the answer)
    end_reason: str = ""
    sip_status: int = 0
    ring_timer: Any = None  # the asyncio handle of the no-answer timeout, cancelled once answered or ended
    # Relayed in-dialog transactions: our client transaction -> the server transaction to answer.
    relays: dict[int, ServerTransaction] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def stop_ringing(self) -> None:
        """Cancel the no-answer timeout (answered or ended): it would hold the call until it fired."""
        if self.ring_timer is not None:
            self.ring_timer.cancel()
            self.ring_timer = None

    def other(self, leg: Leg) -> Leg | None:
        return self.b if leg is self.a else self.a

    @property
    def ended(self) -> bool:
        return self.state is CallState.ENDED

    @property
    def answered(self) -> bool:
        return self.answered_wall is not None
