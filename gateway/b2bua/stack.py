"""Drive the sans-IO SIP layer from the sockets: parse, answer bad messages, run transactions and timers.

The transports hand up bytes (UDP) or framed messages (TCP); the stack parses and validates them,
answers what cannot be processed (RFC 4475: 400, 416, 420, 483, 501, 505 ... statelessly, or drops
bad responses), feeds the rest to the ``TransactionLayer`` and gives the transaction user (the
B2BUA) what concerns it. Transaction timers are one ``loop.call_at`` for the earliest deadline the
layer reports, re-armed after every input. Time is the loop's monotonic clock.

New INVITEs are screened before anything else (see ``gateway.b2bua.overload``): over UDP from a
look at their header lines, before the full parse, so that past capacity a refused INVITE costs a
few microseconds and a stateless 503 instead of a parse, a transaction and a call. The transaction
user says whether the call may start (``screen_invite``); the stack answers the refusal, remembers
it (its retransmissions get the same 503, even once the load has passed) and drops the ACK of it.
Nothing else is ever refused for load: in-dialog requests and responses keep the full path.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Protocol

from gateway.b2bua.overload import (
    RecentlyRefused,
    Refusal,
    RequestHead,
    invite_key,
    is_refusal_ack,
    peek_request,
    refusal_bytes,
    refusal_tag,
)
from gateway.sip.errors import DropMessage, SipError
from gateway.sip.message import Request, Response, make_error_response, make_response
from gateway.sip.parser import parse_message
from gateway.sip.transaction import (
    AckReceived,
    CancelReceived,
    ClientTransaction,
    Output,
    ProtocolViolation,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    Transmit,
)
from gateway.sip.validate import DEFAULT_ALLOWED_METHODS, MAGIC_COOKIE, check_request, check_response
from gateway.transport.tcp import TcpTransport
from gateway.transport.udp import UdpTransport

__all__ = ["SipStack", "TransactionUser", "BRANCH_PREFIX", "SERVED_METHODS"]

log = logging.getLogger("creditgate.sip")

Address = tuple[str, int]

# What the gateway serves: the call methods, and REGISTER (it is the registrar of its trunks).
SERVED_METHODS = DEFAULT_ALLOWED_METHODS | {"REGISTER"}

# Our Via branches start with this, so a request that already carries one of ours has looped.
BRANCH_PREFIX = MAGIC_COOKIE + "cg"


class TransactionUser(Protocol):
    def on_request(self, txn: ServerTransaction, request: Request) -> None: ...
    def on_response(self, txn: ClientTransaction, response: Response) -> None: ...
    def on_ack(self, request: Request, source: Address, transport: str) -> None: ...
    def on_cancel(self, invite: ServerTransaction, request: Request) -> None: ...
    def on_timeout(self, txn: ClientTransaction | ServerTransaction) -> None: ...
    def on_terminated(self, txn: ClientTransaction | ServerTransaction) -> None: ...
    def screen_invite(self, call_id: str, from_tag: str, queue_age_s: float) -> Refusal | None: ...


class SipStack:
    """One process's SIP endpoint: UDP and TCP on one address, one transaction layer."""

    def __init__(self, *, max_message_bytes: int = 65535, tcp_idle_timeout_s: float = 300.0,
                 max_transactions: int = 200_000) -> None:
        self.layer = TransactionLayer()
        self.tu: TransactionUser | None = None
        self.max_message_bytes = max_message_bytes
        self.max_transactions = max_transactions
        self.udp: UdpTransport | None = None
        self.tcp = TcpTransport(self._on_stream, max_size=max_message_bytes, idle_timeout_s=tcp_idle_timeout_s)
        self.udp_own: UdpTransport | None = None
        self.host = "127.0.0.1"
        self.port = 0  # the port our Via and Contact name
        self.listen_port = 0  # the configured (possibly shared) port
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counters: dict[str, int] = {}
        self.refused = RecentlyRefused()  # new INVITEs answered 503 statelessly, for their retransmissions

    # -- life -----------------------------------------------------------------------------

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """Listen on ``host:port``. With ``reuse_port`` (several worker processes on one port) this
        process also opens a UDP socket of its own and names it in its Via and Contact: the kernel
        spreads datagrams on the shared port by source, so the answers and in-dialog requests of the
        legs this process started must come back to a port that is only this process's."""
        self._loop = asyncio.get_running_loop()
        self.udp = await UdpTransport.listen(host, port, self._on_datagram, reuse_port=reuse_port)
        assert self.udp.address is not None
        self.host, self.listen_port = self.udp.address[0], self.udp.address[1]
        self.port = self.listen_port
        await self.tcp.listen(host, self.listen_port, reuse_port=reuse_port)
        if reuse_port:
            self.udp_own = await UdpTransport.listen(host, 0, self._on_datagram)
            assert self.udp_own.address is not None
            self.port = self.udp_own.address[1]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for udp in (self.udp, self.udp_own):
            if udp is not None:
                udp.close()
        self.tcp.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    # -- addressing -----------------------------------------------------------------------

    @property
    def hostport(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def via(self, transport: str) -> str:
        branch = BRANCH_PREFIX + secrets.token_hex(8)
        port = self.port if transport == "udp" else self.listen_port
        return f"SIP/2.0/{transport.upper()} {self.hostport}:{port};branch={branch};rport"

    def contact(self, transport: str, user: str = "creditgate") -> str:
        if transport == "tcp":
            return f"<sip:{user}@{self.hostport}:{self.listen_port};transport=tcp>"
        return f"<sip:{user}@{self.hostport}:{self.port}>"

    # -- input ----------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _on_datagram(self, data: bytes, source: Address, queue_age_s: float = 0.0) -> None:
        screened = False
        if data.startswith(b"INVITE "):
            head = peek_request(data)
            if head is not None and not head.to_tag:
                if self._screen_head(head, source, queue_age_s):
                    self._count("in_INVITE")
                    return
                screened = True
        elif is_refusal_ack(data):
            self._count("in_ACK")  # the ACK of a stateless 503: nothing to do (RFC 3261 §8.2.7)
            return
        try:
            msg = parse_message(data, datagram=True, max_size=self.max_message_bytes)
        except SipError as exc:
            self._refuse(exc, source, "udp")
            return
        self._on_message(msg, source, "udp", queue_age_s=queue_age_s, screened=screened)

    # -- admission of new INVITEs ---------------------------------------------------------------

    def _screen_head(self, head: RequestHead, source: Address, queue_age_s: float) -> bool:
        """Answer a new INVITE read from its header lines with 503 if it may not start a call; True
        when it was answered (the caller then skips the full parse)."""
        call_id = head.call_id.decode("utf-8", "surrogateescape")
        refusal = self._screen(head.key, call_id, head.from_tag, queue_age_s, remember=True)
        if refusal is None:
            return False
        self.send(refusal_bytes(head, refusal, host=self.hostport), source, "udp")
        return True

    def _screen_request(self, request: Request, source: Address, transport: str, queue_age_s: float) -> bool:
        """The same for a new INVITE the full parser read (TCP, or a datagram the look could not
        read): answered statelessly too, so every refusal looks the same."""
        from_tag = request.from_tag or ""
        seq = request.cseq.seq
        key = invite_key(request.call_id, from_tag, seq)
        refusal = self._screen(key, request.call_id, from_tag, queue_age_s, remember=transport == "udp")
        if refusal is None:
            return False
        headers = [("Retry-After", str(refusal.retry_after)),
                   ("Warning", f'399 {self.hostport} "{refusal.reason}"')]
        response = make_response(request, refusal.status, "Service Unavailable",
                                 to_tag=refusal_tag(request.call_id, from_tag, seq), headers=headers)
        self.send(response.to_bytes(), source, transport)
        return True

    def _screen(self, key: int, call_id: str, from_tag: str, queue_age_s: float, *,
                remember: bool) -> Refusal | None:
        known = self.refused.get(key)
        if known is not None:  # a retransmission of an INVITE refused already: the same answer
            self._count("refused_again")
            return known
        if self.tu is None:
            return None
        refusal = self.tu.screen_invite(call_id, from_tag, queue_age_s)
        if refusal is not None and remember:
            self.refused.add(key, refusal, self.now())
        return refusal

    def _on_stream(self, item: Request | Response | SipError, source: Address, transport: str) -> None:
        if isinstance(item, SipError):
            self._refuse(item, source, transport)
            return
        self._on_message(item, source, transport)

    def _refuse(self, exc: SipError, source: Address, transport: str) -> None:
        if isinstance(exc, DropMessage) or exc.status_hint is None:
            log.debug("dropped a message from %s:%s: %s", source[0], source[1], exc.reason)
            self._count("dropped")
            return
        response = make_error_response(exc)
        log.info("refused a message from %s:%s: %s %s", source[0], source[1], exc.status_hint, exc.reason)
        self._count(f"refused_{exc.status_hint}")
        if response is not None:
            self.send(response.to_bytes(), source, transport)

    def _on_message(self, msg: Request | Response, source: Address, transport: str, *, queue_age_s: float = 0.0,
                    screened: bool = False) -> None:
        now = self.now()
        if isinstance(msg, Request):
            self._count(f"in_{msg.method}" if len(msg.method) < 12 else "in_other")
            try:
                check_request(msg, allowed_methods=SERVED_METHODS)
                if msg.method != "ACK" and self.layer.pending >= self.max_transactions:
                    raise SipError("Too many transactions in progress", status_hint=503)
            except SipError as exc:
                self._refuse(exc, source, transport)
                return
            if (msg.method == "INVITE" and not screened and msg.to_tag is None
                    and self._screen_request(msg, source, transport, queue_age_s)):
                return
            out = self.layer.receive_request(msg, source, transport, now)
        else:
            self._count(f"resp_{msg.status}")
            try:
                check_response(msg, as_uac=True)
            except SipError as exc:
                self._refuse(exc, source, transport)
                return
            out = self.layer.receive_response(msg, source, transport, now)
        self.process(out)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.process(self.layer.expire(self.now()))

    # -- output ---------------------------------------------------------------------------

    def send(self, data: bytes, dest: Address, transport: str) -> None:
        if transport == "udp":
            # Responses leave from the shared port the requests came to; our requests from our own
            # port (the one our Via names), when there is one.
            udp = self.udp if self.udp_own is None or data.startswith(b"SIP/2.0 ") else self.udp_own
            if udp is not None:
                udp.send(data, dest)
        else:
            self.tcp.send(data, dest)

    def send_request(self, request: Request, dest: Address, transport: str, *, context: Any = None) -> ClientTransaction:
        txn, out = self.layer.send_request(request, dest, transport, self.now(), context=context)
        self.process(out)
        return txn

    def respond(self, txn: ServerTransaction, response: Response) -> None:
        self.process(self.layer.respond(txn, response, self.now()))

    def send_stateless(self, message: Request | Response, dest: Address, transport: str) -> None:
        self.send(message.to_bytes(), dest, transport)

    def process(self, out: list[Output]) -> None:
        tu = self.tu
        for item in out:
            try:
                if isinstance(item, Transmit):
                    self.send(item.data, item.dest, item.transport)
                elif tu is None:
                    continue
                elif isinstance(item, RequestReceived):
                    tu.on_request(item.transaction, item.request)
                elif isinstance(item, ResponseReceived):
                    tu.on_response(item.transaction, item.response)
                elif isinstance(item, AckReceived):
                    tu.on_ack(item.request, item.source, item.transport)
                elif isinstance(item, CancelReceived):
                    tu.on_cancel(item.invite, item.request)
                elif isinstance(item, TransactionTimedOut):
                    tu.on_timeout(item.transaction)
                elif isinstance(item, TransactionTerminated):
                    tu.on_terminated(item.transaction)
                elif isinstance(item, ProtocolViolation):
                    log.debug("transaction %s: no transition for %s in %s", item.transaction.key,
                              item.input.value, item.state.value)
            except Exception:  # noqa: BLE001 - one call's bug must never stop the stack
                log.exception("SIP event %s could not be handled", type(item).__name__)
        self._rearm()

    def _rearm(self) -> None:
        deadline = self.layer.next_deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_timer)
