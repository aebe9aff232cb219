"""SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state): sans-IO state machines.

Theory of operation
-------------------
A transaction is one request and its responses. The client side (we sent the request) retransmits
over UDP until a response arrives, times out if none does, and for an INVITE answered with a
failure sends the ACK itself. The server side (we received the request) absorbs retransmissions
of the request by resending its last response, sends 100 Trying for an INVITE at once, and over
UDP retransmits a final failure to an INVITE until the ACK arrives.

Four machines, each a transition table ``{(State, Input): (action, NewState)}``:

* INVITE client (§17.1.1; 2xx per RFC 6026 §7.2): Calling, Proceeding, Completed, Accepted.
* non-INVITE client (§17.1.2): Trying, Proceeding, Completed.
* INVITE server (§17.2.1; 2xx per RFC 6026 §7.1): Proceeding, Completed, Confirmed, Accepted.
* non-INVITE server (§17.2.2): Trying, Proceeding, Completed.

A (state, input) pair missing from its table is a protocol error: it is reported as a
``ProtocolViolation`` event and changes nothing, never silently ignored. Where the RFC says to
discard something (a provisional response after the final one), the table says ``absorb``.

Time comes in as an argument (seconds on a monotonic clock). Timers are deadlines kept in a heap;
``next_deadline()`` tells the transport edge when to call ``expire(now)``. Over a reliable
transport (TCP) there are no retransmissions and the wait timers D, I, J and K are zero
(§17.1.1.2, §17.2.1). Retransmissions and timeouts never allocate new messages: the bytes sent
first are kept and sent again.

Matching (§17.1.3, §17.2.3): a response matches the client transaction of its top Via branch
and CSeq method; a request matches the server transaction of its top Via branch, sent-by and
method, where an ACK matches its INVITE and a CANCEL is its own transaction that names the INVITE
it cancels. Requests without the RFC 3261 magic cookie (RFC 2543 peers, RFC 4475 inv2543) are
matched on Call-ID, From tag, CSeq number and top Via sent-by.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import secrets
from dataclasses import dataclass, field
from typing import Any, Union

from gateway.sip.errors import SipError
from gateway.sip.headers import Headers
from gateway.sip.message import Request, Response, make_response

__all__ = [
    "T1",
    "T2",
    "T4",
    "MAGIC_COOKIE",
    "Address",
    "State",
    "Input",
    "ClientTransaction",
    "ServerTransaction",
    "TransactionLayer",
    "Transmit",
    "RequestReceived",
    "ResponseReceived",
    "AckReceived",
    "CancelReceived",
    "TransactionTimedOut",
    "TransactionTerminated",
    "ProtocolViolation",
    "Output",
    "new_branch",
    "INVITE_CLIENT",
    "NON_INVITE_CLIENT",
    "INVITE_SERVER",
    "NON_INVITE_SERVER",
]

T1 = 0.5  # RTT estimate (§17.1.1.1)
T2 = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
T4 = 5.0  # maximum time a message remains in the network
MAGIC_COOKIE = "z9hG4bK"

Address = tuple[str, int]


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(10)


class State(enum.Enum):
    # Members are singletons: hash by identity in C (Enum's own __hash__ is Python code, and the
    # transaction tables are looked up by (state, input) on every message).
    __hash__ = object.__hash__

    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class Input(enum.Enum):
    __hash__ = object.__hash__  # identity, in C (see transaction.State)

    # from the network
    PROVISIONAL = "1xx"
    SUCCESS = "2xx"
    FAILURE = "300-699"
    RETRANSMISSION = "request retransmitted"
    ACK = "ACK"
    # from the transaction user
    SEND_PROVISIONAL = "TU 1xx"
    SEND_SUCCESS = "TU 2xx"
    SEND_FAILURE = "TU 300-699"
    # timers and the transport
    TIMER_A = "A"
    TIMER_B = "B"
    TIMER_D = "D"
    TIMER_E = "E"
    TIMER_F = "F"
    TIMER_G = "G"
    TIMER_H = "H"
    TIMER_I = "I"
    TIMER_J = "J"
    TIMER_K = "K"
    TIMER_L = "L"
    TIMER_M = "M"
    TRANSPORT_ERROR = "transport error"


S, I = State, Input
Table = dict[tuple[State, Input], tuple[str, State]]

# Actions: pass_up (to the TU), ack_pass_up (send ACK, pass up), ack (resend the ACK), absorb,
# retransmit (the request, client side), resend (the last response, server side), send (a TU
# response), timeout, transport_error, ack_timeout (INVITE server: no ACK came), none.

INVITE_CLIENT: Table = {
    (S.CALLING, I.PROVISIONAL): ("pass_up", S.PROCEEDING),
    (S.CALLING, I.SUCCESS): ("pass_up", S.ACCEPTED),
    (S.CALLING, I.FAILURE): ("ack_pass_up", S.COMPLETED),
    (S.CALLING, I.TIMER_A): ("retransmit", S.CALLING),
    (S.CALLING, I.TIMER_B): ("timeout", S.TERMINATED),
    (S.CALLING, I.TRANSPORT_ERROR): ("transport_error", S.TERMINATED),
    (S.PROCEEDING, I.PROVISIONAL): ("pass_up", S.PROCEEDING),
    (S.PROCEEDING, I.SUCCESS): ("pass_up", S.ACCEPTED),
    (S.PROCEEDING, I.FAILURE): ("ack_pass_up", S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("transport_error", S.TERMINATED),
    (S.COMPLETED, I.FAILURE): ("ack", S.COMPLETED),
    (S.COMPLETED, I.PROVISIONAL): ("absorb", S.COMPLETED),
    (S.COMPLETED, I.TIMER_D): ("none", S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): ("none", S.TERMINATED),
    # RFC 6026: 2xx retransmissions (and 2xx from other forks) go up so the TU re-sends its ACK.
    (S.ACCEPTED, I.SUCCESS): ("pass_up", S.ACCEPTED),
    (S.ACCEPTED, I.PROVISIONAL): ("absorb", S.ACCEPTED),
    (S.ACCEPTED, I.FAILURE): ("absorb", S.ACCEPTED),
    (S.ACCEPTED, I.TIMER_M): ("none", S.TERMINATED),
    (S.ACCEPTED, I.TRANSPORT_ERROR): ("none", S.ACCEPTED),
}

NON_INVITE_CLIENT: Table = {
    (S.TRYING, I.TIMER_E): ("retransmit", S.TRYING),
    (S.TRYING, I.TIMER_F): ("timeout", S.TERMINATED),
    (S.TRYING, I.PROVISIONAL): ("pass_up", S.PROCEEDING),
    (S.TRYING, I.SUCCESS): ("pass_up", S.COMPLETED),
    (S.TRYING, I.FAILURE): ("pass_up", S.COMPLETED),
    (S.TRYING, I.TRANSPORT_ERROR): ("transport_error", S.TERMINATED),
    (S.PROCEEDING, I.TIMER_E): ("retransmit", S.PROCEEDING),
    (S.PROCEEDING, I.TIMER_F): ("timeout", S.TERMINATED),
    (S.PROCEEDING, I.PROVISIONAL): ("pass_up", S.PROCEEDING),
    (S.PROCEEDING, I.SUCCESS): ("pass_up", S.COMPLETED),
    (S.PROCEEDING, I.FAILURE): ("pass_up", S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("transport_error", S.TERMINATED),
    (S.COMPLETED, I.PROVISIONAL): ("absorb", S.COMPLETED),
    (S.COMPLETED, I.SUCCESS): ("absorb", S.COMPLETED),
    (S.COMPLETED, I.FAILURE): ("absorb", S.COMPLETED),
    (S.COMPLETED, I.TIMER_K): ("none", S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): ("none", S.TERMINATED),
}

INVITE_SERVER: Table = {
    (S.PROCEEDING, I.RETRANSMISSION): ("resend", S.PROCEEDING),
    (S.PROCEEDING, I.SEND_PROVISIONAL): ("send", S.PROCEEDING),
    (S.PROCEEDING, I.SEND_SUCCESS): ("send", S.ACCEPTED),
    (S.PROCEEDING, I.SEND_FAILURE): ("send", S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("transport_error", S.TERMINATED),
    (S.COMPLETED, I.RETRANSMISSION): ("resend", S.COMPLETED),
    (S.COMPLETED, I.TIMER_G): ("resend", S.COMPLETED),
    (S.COMPLETED, I.ACK): ("none", S.CONFIRMED),
    (S.COMPLETED, I.TIMER_H): ("ack_timeout", S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): ("transport_error", S.TERMINATED),
    (S.CONFIRMED, I.ACK): ("absorb", S.CONFIRMED),
    (S.CONFIRMED, I.RETRANSMISSION): ("absorb", S.CONFIRMED),
    (S.CONFIRMED, I.TIMER_I): ("none", S.TERMINATED),
    # RFC 6026 §7.1: the INVITE's retransmissions are absorbed; the 2xx is retransmitted (§13.3.1.4,
    # a UAS core duty kept here so every TU gets it) until its ACK arrives.
    (S.ACCEPTED, I.RETRANSMISSION): ("absorb", S.ACCEPTED),
    (S.ACCEPTED, I.SEND_SUCCESS): ("send", S.ACCEPTED),
    (S.ACCEPTED, I.TIMER_G): ("resend", S.ACCEPTED),
    (S.ACCEPTED, I.ACK): ("stop_2xx", S.ACCEPTED),
    (S.ACCEPTED, I.TIMER_L): ("none", S.TERMINATED),
    (S.ACCEPTED, I.TRANSPORT_ERROR): ("none", S.ACCEPTED),
}

NON_INVITE_SERVER: Table = {
    (S.TRYING, I.RETRANSMISSION): ("absorb", S.TRYING),
    (S.TRYING, I.SEND_PROVISIONAL): ("send", S.PROCEEDING),
    (S.TRYING, I.SEND_SUCCESS): ("send", S.COMPLETED),
    (S.TRYING, I.SEND_FAILURE): ("send", S.COMPLETED),
    (S.TRYING, I.TRANSPORT_ERROR): ("transport_error", S.TERMINATED),
    (S.PROCEEDING, I.RETRANSMISSION): ("resend", S.PROCEEDING),
    (S.PROCEEDING, I.SEND_PROVISIONAL): ("send", S.PROCEEDING),
    (S.PROCEEDING, I.SEND_SUCCESS): ("send", S.COMPLETED),
    (S.PROCEEDING, I.SEND_FAILURE): ("send", S.COMPLETED),
    (S.PROCEEDING, I.TRANSPORT_ERROR): ("transport_error", S.TERMINATED),
    (S.COMPLETED, I.RETRANSMISSION): ("resend", S.COMPLETED),
    (S.COMPLETED, I.TIMER_J): ("none", S.TERMINATED),
    (S.COMPLETED, I.TRANSPORT_ERROR): ("none", S.TERMINATED),
}


# -- events and outputs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Transmit:
    """Send ``data`` to ``dest`` over ``transport`` ('udp' or 'tcp')."""

    data: bytes
    dest: Address
    transport: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestReceived:
    """A new request for the TU, with the server transaction that will carry its responses."""

    transaction: "ServerTransaction"
    request: Request


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseReceived:
    transaction: "ClientTransaction"
    response: Response


@dataclass(frozen=True, slots=True, kw_only=True)
class AckReceived:
    """An ACK that belongs to no transaction: the ACK for a 2xx, for the dialog (§17.2.3 note)."""

    request: Request
    source: Address
    transport: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelReceived:
    """A CANCEL for a pending INVITE; the layer has already answered the CANCEL with 200."""

    invite: "ServerTransaction"
    request: Request


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionTimedOut:
    """No final response (client), or no ACK for our failure (INVITE server, Timer H)."""

    transaction: "ClientTransaction | ServerTransaction"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionTerminated:
    transaction: "ClientTransaction | ServerTransaction"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolViolation:
    """An input the state machine has no transition for (logged by the TU; nothing changed)."""

    transaction: "ClientTransaction | ServerTransaction"
    state: State
    input: Input


Output = Union[Transmit, RequestReceived, ResponseReceived, AckReceived, CancelReceived,
               TransactionTimedOut, TransactionTerminated, ProtocolViolation]


# -- transactions ---------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Transaction:
    key: tuple[Any, ...]
    table: Table
    state: State
    peer: Address
    transport: str
    request: Request
    timers: dict[Input, int] = field(default_factory=dict)  # live timer -> generation
    intervals: dict[Input, float] = field(default_factory=dict)
    context: Any = None  # for the TU (the call leg this transaction belongs to)

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED


@dataclass(slots=True, eq=False)
class ClientTransaction(_Transaction):
    data: bytes = b""
    ack_data: bytes = b""
    last_response: Response | None = None


@dataclass(slots=True, eq=False)
class ServerTransaction(_Transaction):
    last_data: bytes = b""
    last_status: int = 0
    to_tag: str | None = None


class TransactionLayer:
    """All transactions of one gateway process; feed it messages and time, act on what it returns."""

    def __init__(self, *, t1: float = T1, t2: float = T2, t4: float = T4, timer_d: float = 32.0) -> None:
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.timer_d = timer_d  # at least 32 s over UDP (§17.1.1.2): not a multiple of T1
        self._client: dict[tuple[Any, ...], ClientTransaction] = {}
        self._server: dict[tuple[Any, ...], ServerTransaction] = {}
        # INVITE server transactions that sent a 2xx, by (Call-ID, CSeq number): the 2xx's ACK has
        # a branch of its own, and some user agents even change the To tag, so match on these.
        self._accepted: dict[tuple[str, int], ServerTransaction] = {}
        self._heap: list[tuple[float, int, _Transaction, Input, int]] = []
        self._seq = itertools.count()

    # -- sizes and time -----------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._client) + len(self._server)

    def next_deadline(self) -> float | None:
        while self._heap:
            when, _, txn, timer, gen = self._heap[0]
            if txn.timers.get(timer) == gen:
                return when
            heapq.heappop(self._heap)  # cancelled or superseded
        return None

    def expire(self, now: float) -> list[Output]:
        out: list[Output] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, txn, timer, gen = heapq.heappop(self._heap)
            if txn.timers.get(timer) != gen:
                continue
            del txn.timers[timer]
            self._fire(txn, timer, now, out)
        return out

    def _arm(self, txn: _Transaction, timer: Input, delay: float, now: float) -> None:
        gen = next(self._seq)
        txn.timers[timer] = gen
        heapq.heappush(self._heap, (now + delay, gen, txn, timer, gen))

    def _disarm(self, txn: _Transaction, *timers: Input) -> None:
        for t in timers:
            txn.timers.pop(t, None)

    # -- matching keys --------------------------------------------------------------------

    @staticmethod
    def _server_key(req: Request, method: str) -> tuple[Any, ...]:
        via = req.top_via
        branch = via.branch or ""
        if branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE):
            return ("3261", branch, via.sent_by.lower(), method)
        # RFC 2543 peers: no usable branch (RFC 3261 §17.2.3, second half).
        return ("2543", req.call_id, req.from_tag or "", req.cseq.seq, via.sent_by.lower(), method)

    @staticmethod
    def _client_key(branch: str, method: str) -> tuple[Any, ...]:
        return (branch, method)

    # -- client side ----------------------------------------------------------------------

    def send_request(self, request: Request, dest: Address, transport: str, now: float,
                     *, context: Any = None) -> tuple[ClientTransaction, list[Output]]:
        """Start a client transaction; ``request`` carries our Via with a fresh branch on top.

        ACK is not a transaction: send it with ``send_stateless``.
        """
        method = request.method
        if method == "ACK":
            raise SipError("ACK is sent without a transaction", ours=True, status_hint=500)
        branch = request.top_via.branch or ""
        invite = method == "INVITE"
        txn = ClientTransaction(
            key=self._client_key(branch, method),
            table=INVITE_CLIENT if invite else NON_INVITE_CLIENT,
            state=State.CALLING if invite else State.TRYING,
            peer=dest,
            transport=transport,
            request=request,
            context=context,
        )
        txn.data = request.to_bytes()
        self._client[txn.key] = txn
        if invite:
            if not txn.reliable:
                txn.intervals[Input.TIMER_A] = self.t1
                self._arm(txn, Input.TIMER_A, self.t1, now)
            self._arm(txn, Input.TIMER_B, 64 * self.t1, now)
        else:
            if not txn.reliable:
                txn.intervals[Input.TIMER_E] = self.t1
                self._arm(txn, Input.TIMER_E, self.t1, now)
            self._arm(txn, Input.TIMER_F, 64 * self.t1, now)
        return txn, [Transmit(data=txn.data, dest=dest, transport=transport)]

    @staticmethod
    def send_stateless(message: Request | Response, dest: Address, transport: str) -> list[Output]:
        """An ACK for a 2xx, or a 2xx retransmission by the TU: no transaction keeps it."""
        return [Transmit(data=message.to_bytes(), dest=dest, transport=transport)]

    def receive_response(self, response: Response, source: Address, transport: str, now: float) -> list[Output]:
        """Match a response to its client transaction; a response that matches none is dropped
        (a stray 2xx retransmission for an INVITE already gone is the TU's: returned as such)."""
        try:
            via = response.top_via
            key = self._client_key(via.branch or "", response.cseq.method)
        except SipError:  # a response without a usable Via or CSeq matches nothing
            return []
        txn = self._client.get(key)
        if txn is None:
            return []
        status = response.status
        inp = Input.PROVISIONAL if status < 200 else Input.SUCCESS if status < 300 else Input.FAILURE
        out: list[Output] = []
        self._step(txn, inp, now, out, response=response)
        return out

    # -- server side ----------------------------------------------------------------------

    def receive_request(self, request: Request, source: Address, transport: str, now: float) -> list[Output]:
        method = request.method
        out: list[Output] = []
        if method == "ACK":
            txn = self._server.get(self._server_key(request, "INVITE"))
            if txn is not None and txn.state in (State.COMPLETED, State.CONFIRMED):
                self._step(txn, Input.ACK, now, out)
                return out
            # The ACK of a 2xx (a new branch) belongs to the dialog, not to a transaction; it also
            # ends our 2xx retransmissions.
            accepted = self._accepted.get((request.call_id, request.cseq.seq))
            if accepted is not None:
                self._step(accepted, Input.ACK, now, out)
            out.append(AckReceived(request=request, source=source, transport=transport))
            return out
        key = self._server_key(request, method)
        txn = self._server.get(key)
        if txn is not None:
            self._step(txn, Input.RETRANSMISSION, now, out)
            return out
        invite = method == "INVITE"
        txn = ServerTransaction(
            key=key,
            table=INVITE_SERVER if invite else NON_INVITE_SERVER,
            state=State.PROCEEDING if invite else State.TRYING,
            peer=source,
            transport=transport,
            request=request,
        )
        self._server[key] = txn
        if method == "CANCEL":
            invite_txn = self._server.get(self._server_key(request, "INVITE"))
            if invite_txn is None or invite_txn.state is not State.PROCEEDING:
                # §9.2: nothing to cancel (unknown, or already answered): 481.
                out += self.respond(txn, make_response(request, 481), now)
                return out
            out += self.respond(txn, make_response(request, 200, to_tag=invite_txn.to_tag), now)
            out.append(CancelReceived(invite=invite_txn, request=request))
            return out
        if invite:
            # §17.2.1: the INVITE server transaction answers 100 Trying itself, at once.
            trying = make_response(request, 100)
            txn.last_data = trying.to_bytes()
            txn.last_status = 100
            out.append(Transmit(data=txn.last_data, dest=source, transport=transport))
        out.append(RequestReceived(transaction=txn, request=request))
        return out

    def respond(self, txn: ServerTransaction, response: Response, now: float) -> list[Output]:
        """Send a TU response through its server transaction."""
        status = response.status
        inp = Input.SEND_PROVISIONAL if status < 200 else Input.SEND_SUCCESS if status < 300 else Input.SEND_FAILURE
        out: list[Output] = []
        if txn.to_tag is None and status > 100:
            txn.to_tag = response.to_tag
        self._step(txn, inp, now, out, response=response)
        return out

    # -- the machine ----------------------------------------------------------------------

    def _fire(self, txn: _Transaction, timer: Input, now: float, out: list[Output]) -> None:
        self._step(txn, timer, now, out)

    def _step(self, txn: _Transaction, inp: Input, now: float, out: list[Output],
              response: Response | None = None) -> None:
        if txn.state is State.TERMINATED:
            return
        found = txn.table.get((txn.state, inp))
        if found is None:
            out.append(ProtocolViolation(transaction=txn, state=txn.state, input=inp))  # type: ignore[arg-type]
            return
        action, new_state = found
        old_state = txn.state
        txn.state = new_state
        if isinstance(txn, ClientTransaction):
            self._client_action(txn, action, old_state, inp, now, out, response)
        else:
            assert isinstance(txn, ServerTransaction)
            self._server_action(txn, action, old_state, inp, now, out, response)
        if new_state is not old_state:
            self._entered(txn, new_state, now)
        if txn.state is State.TERMINATED:
            self._remove(txn, out)

    def _client_action(self, txn: ClientTransaction, action: str, old: State, inp: Input, now: float,
                       out: list[Output], response: Response | None) -> None:
        if action in ("pass_up", "ack_pass_up"):
            assert response is not None
            txn.last_response = response
            if action == "ack_pass_up":
                txn.ack_data = _ack_for(txn.request, response).to_bytes()
                out.append(Transmit(data=txn.ack_data, dest=txn.peer, transport=txn.transport))
            out.append(ResponseReceived(transaction=txn, response=response))
        elif action == "ack":
            out.append(Transmit(data=txn.ack_data, dest=txn.peer, transport=txn.transport))
        elif action == "retransmit":
            out.append(Transmit(data=txn.data, dest=txn.peer, transport=txn.transport))
            # Timer A doubles without bound (B ends it); Timer E doubles up to T2 (§17.1.2.2),
            # and stays at T2 once a provisional response arrived.
            interval = txn.intervals[inp] * 2
            if inp is Input.TIMER_E:
                interval = self.t2 if old is State.PROCEEDING else min(interval, self.t2)
            txn.intervals[inp] = interval
            self._arm(txn, inp, interval, now)
        elif action == "timeout":
            out.append(TransactionTimedOut(transaction=txn))
        elif action == "transport_error":
            out.append(TransactionTimedOut(transaction=txn))

    def _server_action(self, txn: ServerTransaction, action: str, old: State, inp: Input, now: float,
                       out: list[Output], response: Response | None) -> None:
        if action == "send":
            assert response is not None
            txn.last_data = response.to_bytes()
            txn.last_status = response.status
            out.append(Transmit(data=txn.last_data, dest=txn.peer, transport=txn.transport))
        elif action == "resend":
            if txn.last_data:
                out.append(Transmit(data=txn.last_data, dest=txn.peer, transport=txn.transport))
            if inp is Input.TIMER_G:
                interval = min(txn.intervals[Input.TIMER_G] * 2, self.t2)
                txn.intervals[Input.TIMER_G] = interval
                self._arm(txn, Input.TIMER_G, interval, now)
        elif action == "stop_2xx":
            self._disarm(txn, Input.TIMER_G)
        elif action in ("ack_timeout", "transport_error"):
            out.append(TransactionTimedOut(transaction=txn))

    def _entered(self, txn: _Transaction, state: State, now: float) -> None:
        """Timers that start and stop with a state (§17)."""
        reliable = txn.reliable
        if isinstance(txn, ClientTransaction):
            if txn.table is INVITE_CLIENT:
                if state is State.PROCEEDING:
                    self._disarm(txn, Input.TIMER_A, Input.TIMER_B)
                elif state is State.COMPLETED:
                    self._disarm(txn, Input.TIMER_A, Input.TIMER_B)
                    self._arm(txn, Input.TIMER_D, 0 if reliable else self.timer_d, now)
                elif state is State.ACCEPTED:
                    self._disarm(txn, Input.TIMER_A, Input.TIMER_B)
                    self._arm(txn, Input.TIMER_M, 64 * self.t1, now)
            elif state is State.COMPLETED:
                self._disarm(txn, Input.TIMER_E, Input.TIMER_F)
                self._arm(txn, Input.TIMER_K, 0 if reliable else self.t4, now)
        else:
            if state is State.COMPLETED and txn.table is INVITE_SERVER:
                if not reliable:
                    txn.intervals[Input.TIMER_G] = self.t1
                    self._arm(txn, Input.TIMER_G, self.t1, now)
                self._arm(txn, Input.TIMER_H, 64 * self.t1, now)
            elif state is State.CONFIRMED:
                self._disarm(txn, Input.TIMER_G, Input.TIMER_H)
                self._arm(txn, Input.TIMER_I, 0 if reliable else self.t4, now)
            elif state is State.ACCEPTED:
                self._accepted[(txn.request.call_id, txn.request.cseq.seq)] = txn
                if not reliable:
                    txn.intervals[Input.TIMER_G] = self.t1
                    self._arm(txn, Input.TIMER_G, self.t1, now)
                self._arm(txn, Input.TIMER_L, 64 * self.t1, now)
            elif state is State.COMPLETED:
                self._arm(txn, Input.TIMER_J, 0 if reliable else 64 * self.t1, now)

    def _remove(self, txn: _Transaction, out: list[Output]) -> None:
        txn.timers.clear()
        if isinstance(txn, ClientTransaction):
            self._client.pop(txn.key, None)
        else:
            self._server.pop(txn.key, None)
            if txn.table is INVITE_SERVER:
                akey = (txn.request.call_id, txn.request.cseq.seq)
                if self._accepted.get(akey) is txn:
                    del self._accepted[akey]
        out.append(TransactionTerminated(transaction=txn))  # type: ignore[arg-type]


def _ack_for(invite: Request, response: Response) -> Request:
    """The ACK a client INVITE transaction sends for a failure (§17.1.1.3): same Request-URI,
    Call-ID, From, CSeq number and top Via as the INVITE, To with the response's tag, and the
    INVITE's Route set."""
    h = Headers()
    h.add("Via", invite.headers.get_all("Via")[0])
    for route in invite.headers.get_all("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", "70")
    h.add("From", invite.headers.get("From") or "")
    h.add("To", response.headers.get("To") or invite.headers.get("To") or "")
    h.add("Call-ID", invite.call_id)
    h.add("CSeq", f"{invite.cseq.seq} ACK")
    return Request(method="ACK", uri=invite.uri, headers=h)
