"""The B2BUA: turn an authorized INVITE into a second call leg, relay between the legs, enforce credit.

Theory of operation
-------------------
A new INVITE (no To tag) starts a ``Call``. Its source must be a known trunk (PBX or bridge, with
digest credentials when the trunk has them) or a carrier (SPEC 3.1); anything else is refused 403
and nothing is sent on. The credit engine authorizes it (SPEC 3: number normalized and classified,
what pays decided, the first chunk reserved atomically) or refuses it with the SIP status, a reason
phrase and ``Warning: 399``. An authorized call gets a B leg: a new INVITE with our own Call-ID, tags,
CSeq and Via, the caller's session description and end-to-end header fields, sent to the carrier
(outbound) or to the toll-free number's target (inbound).

Responses of the B leg come back through its client transaction: provisional ones are relayed to
the caller, a 2xx is ACKed by us (the B2BUA is the UAC of that leg) and relayed, and billing starts
(``CallSession`` arms the renewal and end deadlines); a failure is mapped (486/480/603 and other
4xx/6xx pass, 408 and 5xx become 502/503 with a Warning) and the reservation released. CANCEL of the
caller cancels the B leg and releases the reservation. In-dialog requests (BYE, re-INVITE, UPDATE,
PRACK, INFO) are relayed to the other leg's dialog and their responses relayed back; BYE from either
side ends both legs and settles the call (exact charge and CDR in one ledger script). When the paid
time runs out the session reports it and both legs get a BYE with
``Reason: SIP;cause=402;text="credit exhausted"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from typing import Any

from redis.exceptions import RedisError

from gateway.b2bua.call import Call, CallState, Leg, passthrough
from gateway.b2bua.overload import Admission, LoadMeter, Refusal
from gateway.b2bua.routing import (
    Origin,
    calling_number,
    dialed_digits,
    find_user,
    identify_source,
    presented_user,
    target_address,
    tollfree_for,
)
from gateway.b2bua.registrar import Registrar, RegistrationError, aor_user, binding_target, contact_header
from gateway.b2bua.stack import BRANCH_PREFIX, SERVED_METHODS, SipStack
from gateway.config import SipConfig
from gateway.credit.engine import CreditEngine
from gateway.credit.errors import CreditRefused
from gateway.credit.grants import Grants
from gateway.credit.session import CallSession, CreditExhausted, CreditLow
from gateway.directory import DIGEST_REALM, Directory, DirectoryCache, Trunk
from gateway.ledger.client import LedgerError, LedgerUnavailable, utc_now_iso
from gateway.ledger.keys import GLOBAL
from gateway.sip.digest import Challenger, DigestError, parse_credentials
from gateway.sip.dialog import Dialog
from gateway.sip.errors import SipError
from gateway.sip.headers import Headers
from gateway.sip.message import Request, Response, make_response
from gateway.sip.throttle import FailureThrottle
from gateway.sip.transaction import ClientTransaction, ServerTransaction, State
from gateway.sip.uri import SipUri, parse_uri
from gateway.sip.validate import DEFAULT_EXTENSIONS

__all__ = ["B2BUA", "LoadMeter", "RING_TIMEOUT_S", "map_failure"]

log = logging.getLogger("creditgate.b2bua")

# RFC 3261 §16.6 Timer C: an INVITE that rang this long without a final response is cancelled.
RING_TIMEOUT_S = 180.0
# How long an ended call's legs stay findable (64*T1, as long as its transactions may retransmit).
LINGER_S = 32.0
ALLOW = ", ".join(m for m in ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "PRACK", "INFO", "REGISTER")
                  if m in SERVED_METHODS)
SUPPORTED = ", ".join(sorted(DEFAULT_EXTENSIONS))
_RACK_RE = re.compile(r"^\s*(\d+)\s+(\d+)\s+(\S+)\s*$")
CREDIT_EXHAUSTED_REASON = 'SIP;cause=402;text="credit exhausted"'
OUTAGE_REASON = 'SIP;cause=503;text="ledger unavailable"'
SHUTDOWN_REASON = 'SIP;cause=503;text="gateway shutting down"'
WARNING_CONTENT_TYPE = "application/vnd.creditgate.warning+json"


def map_failure(status: int, reason: str) -> tuple[int, str, str | None]:
    """What the caller is told when the B leg fails: (status, reason phrase, Warning text or None).

    Busy, unavailable and declined (486/480/603) and other client and global failures pass through as
    the far end said them; a timeout (408) or a server failure of the far end is the gateway's
    problem to report (502 Bad Gateway, or 503 when the far end was itself unavailable).
    """
    if status == 408:
        return 502, "Bad Gateway", "no answer from the far end"
    if status == 503:
        return 503, "Service Unavailable", "far end unavailable"
    if 500 <= status < 600:
        return 502, "Bad Gateway", f"far end failed with {status}"
    return status, reason, None


def _warning_text(text: str) -> str:
    return text.replace("\\", "").replace('"', "'").replace("\r", " ").replace("\n", " ")[:200]


class B2BUA:
    """All calls of one gateway process."""

    def __init__(
        self,
        stack: SipStack,
        *,
        directory: Directory | DirectoryCache,
        engine: CreditEngine,
        config: SipConfig,
        redis: Any = None,
        digest_secret: bytes | None = None,
        grants: Grants | None = None,
    ) -> None:
        self.stack = stack
        stack.tu = self
        self.directory = directory
        self.engine = engine
        self.config = config
        self.redis = redis
        self.challenger = Challenger(digest_secret or secrets.token_bytes(32), DIGEST_REALM,
                                     nonce_ttl_s=config.digest_nonce_ttl_s)
        # Failed digest attempts per source host, per process: a source that keeps guessing is refused
        # before any digest work. Per process (not in Redis) because only configured trunk hosts reach
        # it, a check must cost no round trip, and with --workers N a source stays on one worker (the
        # kernel spreads a shared port by source address and port), so the bound is at most N times
        # the configured one for a sender that also varies its port.
        self.auth_failures = FailureThrottle(config.digest_max_failures, config.digest_failure_window_s)
        stack.tcp.limit(max_connections=config.tcp_max_connections,
                        max_per_source=config.tcp_max_connections_per_source,
                        message_timeout_s=config.tcp_message_timeout_s)
        self.registrar = Registrar(redis)
        self.grants = grants
        self.calls: dict[str, Call] = {}
        self.linger_s = LINGER_S
        self.gc_policy: Any = None  # gateway.gcpolicy.GcPolicy of the process, for the metrics
        self._legs: dict[tuple[str, str], tuple[Call, Leg]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.load = LoadMeter()
        self.load.start(stack.loop)
        self.admission = Admission(max_live_calls=config.max_live_calls, max_setups_per_s=config.max_setups_per_s,
                                   max_loop_lag_ms=config.max_loop_lag_ms, max_queue_age_ms=config.max_queue_age_ms,
                                   retry_after_s=config.overload_retry_after_s)
        self._shed: dict[str, int] = {}  # refusals for load since the last summary line
        self._shed_logged = float("-inf")
        self._shed_age_s = 0.0
        self._shed_report: asyncio.TimerHandle | None = None
        self.draining = False
        self.counters: dict[str, int] = {}

    # -- bookkeeping ----------------------------------------------------------------------

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call task failed", exc_info=task.exception())

    @property
    def live_calls(self) -> int:
        return len(self.calls)

    def _index(self, call: Call, leg: Leg, peer_tag: str) -> None:
        self._legs[(leg.call_id, peer_tag)] = (call, leg)

    def _find(self, request: Request) -> tuple[Call, Leg] | None:
        found = self._legs.get((request.call_id, request.from_tag or ""))
        return found if found is not None else self._legs.get((request.call_id, ""))

    def _log(self, call: Call, level: int, msg: str, *args: Any) -> None:
        log.log(level, msg, *args, extra={"call_id": call.id})

    # -- the transaction user interface ---------------------------------------------------

    def on_request(self, txn: ServerTransaction, request: Request) -> None:
        method = request.method
        if request.to_tag is None:
            if method == "INVITE":
                self._new_invite(txn, request)
            elif method == "REGISTER":
                self._spawn(self._register(txn, request))
            elif method == "OPTIONS":
                self._answer(txn, request, 200, headers=[("Allow", ALLOW), ("Accept", "application/sdp"),
                                                          ("Supported", SUPPORTED)])
            else:
                self._answer(txn, request, 481)
            return
        found = self._find(request)
        if found is None:
            self._answer(txn, request, 481)
            return
        call, leg = found
        self._in_dialog(call, leg, txn, request)

    def on_response(self, txn: ClientTransaction, response: Response) -> None:
        ctx = txn.context
        if not ctx:
            return
        kind, call = ctx[0], ctx[1]
        if kind == "b_invite":
            self._b_invite_response(call, txn, response)
        elif kind == "relay":
            self._relay_response(call, ctx[2], ctx[3], txn, response)

    def on_ack(self, request: Request, source: tuple[str, int], transport: str) -> None:
        found = self._find(request)
        if found is None:
            return
        call, leg = found
        if leg is not call.a or not self._from_party(leg, source):
            return
        leg.acked = True
        if call.defer_b_ack and call.b_ack is None and call.b is not None and call.b.dialog is not None:
            # Late offer: the caller's ACK carries the answer to the offer in the B leg's 2xx.
            call.b_ack = self._ack_for_b(call, body=request.body,
                                         content_type=request.headers.get("Content-Type"))
            self.stack.send_stateless(call.b_ack, call.b.peer, call.b.transport)

    def on_cancel(self, invite: ServerTransaction, request: Request) -> None:
        call = invite.context
        if not isinstance(call, Call) or call.ended or call.answered:
            return
        self._log(call, logging.INFO, "caller cancelled the call")
        call.cancelled = True
        self._respond_a(call, 487)
        if call.state is CallState.ROUTING and call.provisional_seen:
            self._cancel_b(call)
        self._finish(call, end_reason="cancelled")

    def on_timeout(self, txn: ClientTransaction | ServerTransaction) -> None:
        ctx = txn.context
        if isinstance(txn, ClientTransaction) and ctx:
            kind, call = ctx[0], ctx[1]
            if kind == "b_invite" and not call.ended and not call.answered:
                self._log(call, logging.WARNING, "no final response from %s:%s", *txn.peer)
                self._fail_to_a(call, 408, "Request Timeout")
            elif kind == "relay":
                server: ServerTransaction = ctx[3]
                if server.state in (State.TRYING, State.PROCEEDING):
                    self._answer(server, server.request, 408, to_tag=ctx[2].local_tag)

    def screen_invite(self, call_id: str, from_tag: str, queue_age_s: float) -> Refusal | None:
        """Whether a new INVITE may start a call now (None), or its refusal: asked by the stack before
        the INVITE is parsed in full (see ``gateway.b2bua.overload``)."""
        if (call_id, from_tag) in self._legs:
            return None  # a retransmission of a call's INVITE (or a merged request): the full path answers
        now = self.stack.now()
        refusal = self.admission.decide(now, live_calls=len(self.calls), loop_lag_s=self.load.lag_s,
                                        queue_age_s=queue_age_s)
        if refusal is None:
            return None
        self._count("refused_503")
        self._count(f"overload_{refusal.cause}")
        # One line a second at most: a flood must not turn into a flood of log lines. The first
        # refusal is reported at once, the ones after it at the end of that second.
        self._shed[refusal.cause] = self._shed.get(refusal.cause, 0) + 1
        self._shed_age_s = queue_age_s
        if now - self._shed_logged >= 1.0:
            if self._shed_report is not None:  # due, but the socket was read first
                self._shed_report.cancel()
            self._report_shed()
        elif self._shed_report is None:
            self._shed_report = self.stack.loop.call_at(self._shed_logged + 1.0, self._report_shed)
        return refusal

    def _report_shed(self) -> None:
        self._shed_report = None
        if not self._shed:
            return
        log.warning("overload: refused %d new calls with 503 (%s); %d live calls, event loop %.0f ms behind, "
                    "last refused INVITE queued %.0f ms, admission ceiling %s", sum(self._shed.values()),
                    ", ".join(f"{k}: {v}" for k, v in sorted(self._shed.items())), len(self.calls),
                    self.load.lag_s * 1000, self._shed_age_s * 1000,
                    "none" if self.admission.ceiling.rate is None else f"{self.admission.ceiling.rate:.0f}/s")
        self._shed.clear()
        self._shed_logged = self.stack.now()

    def on_terminated(self, txn: ClientTransaction | ServerTransaction) -> None:
        call = txn.context
        if isinstance(txn, ServerTransaction) and isinstance(call, Call) and txn is call.a.invite_txn:
            if call.answered and not call.a.acked and not call.ended:
                # RFC 3261 §13.3.1.4: no ACK for our 2xx: the session is not established; end it.
                self._log(call, logging.WARNING, "caller never acknowledged the answer: hanging up")
                self._teardown(call, end_reason="no_ack", reason_header=None)

    # -- new calls ------------------------------------------------------------------------

    def _answer(self, txn: ServerTransaction, request: Request, status: int, reason: str | None = None, *,
                to_tag: str | None = None, headers: list[tuple[str, str]] | None = None) -> None:
        tag = to_tag if to_tag is not None else (None if request.to_tag else secrets.token_hex(6))
        self.stack.respond(txn, make_response(request, status, reason, to_tag=tag, headers=headers or ()))

    def _looped(self, request: Request) -> bool:
        mine = {f"{self.stack.hostport}:{p}".lower() for p in (self.stack.port, self.stack.listen_port)}
        return any((v.branch or "").startswith(BRANCH_PREFIX) and v.sent_by.lower() in mine
                   for v in request.vias)

    def _new_invite(self, txn: ServerTransaction, request: Request) -> None:
        if self._looped(request):
            self._answer(txn, request, 482, headers=[("Warning", f'399 {self.stack.hostport} "loop detected"')])
            return
        key = (request.call_id, request.from_tag or "")
        known = self._legs.get(key)
        if known is not None:
            earlier = known[1].invite
            if earlier is not None and earlier.cseq.seq >= request.cseq.seq:
                # Same Call-ID, From tag and CSeq on another branch: a merged request (RFC 3261
                # §8.2.2.2), or an old one. A higher CSeq is a new attempt (a retry with credentials
                # after 407, §22.2), allowed once the earlier one ended.
                self._answer(txn, request, 482)
                return
            if not known[0].ended:
                self._answer(txn, request, 482)
                return
        now = self.stack.now()
        a = Leg(name="a", call_id=request.call_id, local_tag=secrets.token_hex(6), peer=txn.peer,
                transport=txn.transport, invite=request, invite_txn=txn)
        call = Call(id=secrets.token_hex(12), a=a, created=now, created_wall=time.time())
        txn.context = call
        self._index(call, a, request.from_tag or "")
        self.calls[call.id] = call
        if self.draining:
            self._refuse(call, 503, "gateway shutting down", retry_after=30)
            return
        # Load was judged before the parse (screen_invite): what reaches here was admitted.
        self._spawn(self._setup(call, request))

    def _refuse(self, call: Call, status: int, reason: str, *, retry_after: int | None = None,
                extra_headers: list[tuple[str, str]] | None = None) -> None:
        headers = [("Warning", f'399 {self.stack.hostport} "{_warning_text(reason)}"')]
        if retry_after:
            headers.append(("Retry-After", str(retry_after)))
        headers += extra_headers or []
        self._count(f"refused_{status}")
        self._log(call, logging.INFO, "refused %d %s", status, reason)
        self._respond_a(call, status, reason, headers=headers)
        call.sip_status = status
        self._finish(call, end_reason="refused")

    def _respond_a(self, call: Call, status: int, reason: str | None = None, *,
                   headers: list[tuple[str, str]] | None = None, body: bytes = b"") -> None:
        txn = call.a.invite_txn
        if not isinstance(txn, ServerTransaction) or call.a.invite is None or txn.state is not State.PROCEEDING:
            return  # already answered finally (or long forgotten: _forget let go of the transaction)
        resp = make_response(call.a.invite, status, reason, to_tag=call.a.local_tag, headers=headers or ())
        resp.body = body
        self.stack.respond(txn, resp)

    async def _setup(self, call: Call, request: Request) -> None:
        try:
            await self._authorize_and_route(call, request)
        except CreditRefused as exc:
            r = exc.refusal
            self._count(f"refusal_{r.code}")
            if not call.ended:
                self._refuse(call, r.status, r.reason, retry_after=r.retry_after)
        except LedgerUnavailable:
            if not call.ended:
                self._refuse(call, 503, "ledger unavailable", retry_after=max(1, self.engine.config.outage_grace_s or 30))
        except (LedgerError, SipError, RedisError) as exc:
            self._log(call, logging.ERROR, "call setup failed: %s", exc)
            if not call.ended:
                self._refuse(call, 500, "call setup failed")
        except Exception:  # noqa: BLE001 - a bug must fail the call, never leave it hanging
            log.exception("call setup failed", extra={"call_id": call.id})
            if not call.ended:
                self._refuse(call, 500, "call setup failed")

    def _auth_refused_for(self, source: tuple[str, int]) -> int:
        """Seconds a source must wait before its next digest attempt (0: it may try now)."""
        wait = self.auth_failures.retry_after(source[0].strip("[]").lower(), self.stack.now())
        return int(wait) + 1 if wait > 0 else 0

    def _auth_failed(self, source: tuple[str, int], trunk: Trunk, why: str) -> None:
        host = source[0].strip("[]").lower()
        self._count("digest_failed")
        if self.auth_failures.failed(host, self.stack.now()):
            self._count("digest_source_limited")
            log.warning("digest failures from %s for trunk %s reached %d (%s): refusing it for %.0f s", host,
                        trunk.id, self.auth_failures.max_failures, why, self.auth_failures.window_s)

    async def _digest(self, request: Request, trunk: Trunk, header: str,
                      source: tuple[str, int]) -> tuple[bool, bool]:
        """Check the trunk's digest credentials in ``header``: (accepted, stale). Unknown user and
        wrong password look the same from outside; each (nonce, nc, cnonce) is accepted once, across
        every gateway process (the replay key is set in Redis with NX). Every refused answer (and a
        malformed one) counts against ``source``'s failure budget."""
        now = time.time()
        verdict = None
        for value in request.headers.get_all(header):
            try:
                creds = parse_credentials(value)
            except DigestError:
                self._auth_failed(source, trunk, "malformed credentials")
                raise  # answered 400
            if creds.realm != DIGEST_REALM:
                continue

            def ha1(username: str, algorithm: str) -> str | None:
                if username != trunk.username:
                    return None
                return trunk.ha1_sha256 if algorithm == "SHA-256" else trunk.ha1_md5

            verdict = self.challenger.verify(creds, method=request.method, now=now, ha1=ha1)
            break
        if verdict is None:
            return False, False
        if not verdict.ok:
            log.info("digest refused for %s from trunk %s: %s", request.method, trunk.id, verdict.reason)
            self._count(f"digest_{verdict.reason}")
            if not verdict.stale:  # stale: the right password on an old nonce, not a guess
                self._auth_failed(source, trunk, verdict.reason)
            return False, verdict.stale
        if verdict.replay_key and self.redis is not None:
            fresh = await self.redis.set(GLOBAL.digest_replay(verdict.replay_key), 1, nx=True,
                                         ex=self.challenger.replay_ttl_s)
            if not fresh:
                log.warning("replayed digest response from trunk %s", trunk.id)
                self._count("digest_replay")
                self._auth_failed(source, trunk, "replay")
                return False, False
        return True, False

    def _limited_headers(self, wait_s: int) -> list[tuple[str, str]]:
        return [("Retry-After", str(wait_s)),
                ("Warning", f'399 {self.stack.hostport} "too many failed authentication attempts"')]

    async def _authenticate(self, call: Call, request: Request, trunk: Trunk) -> bool:
        """Digest for a trunk with credentials (407 challenge); True when the call may go on. A source
        over its failure budget gets 503 + Retry-After, right credentials or not (nothing to learn)."""
        wait = self._auth_refused_for(call.a.peer)
        if wait:
            self._count("digest_limited")
            self._refuse(call, 503, "too many failed authentication attempts", retry_after=wait)
            return False
        try:
            ok, stale = await self._digest(request, trunk, "Proxy-Authorization", call.a.peer)
        except DigestError:
            self._refuse(call, 400, "malformed credentials")
            return False
        if ok:
            return True
        challenges = [("Proxy-Authenticate", c) for c in self.challenger.challenge(time.time(), stale=stale)]
        self._count("challenged")
        self._respond_a(call, 407, headers=challenges)
        call.sip_status = 407
        self._finish(call, end_reason="challenged")
        return False

    async def _register(self, txn: ServerTransaction, request: Request) -> None:
        """REGISTER from a trunk (by address, or with its digest credentials): bind its contacts."""
        tag = secrets.token_hex(6)
        try:
            origin = await identify_source(self.directory, *txn.peer)
            if origin is None or origin.trunk is None:
                self._answer(txn, request, 403, to_tag=tag,
                             headers=[("Warning", f'399 {self.stack.hostport} "unknown source"')])
                return
            trunk = origin.trunk
            if trunk.username:
                wait = self._auth_refused_for(txn.peer)
                if wait:
                    self._count("digest_limited")
                    self._answer(txn, request, 503, to_tag=tag, headers=self._limited_headers(wait))
                    return
                try:
                    ok, stale = await self._digest(request, trunk, "Authorization", txn.peer)
                except DigestError:
                    self._answer(txn, request, 400, "Malformed credentials", to_tag=tag)
                    return
                if not ok:
                    challenges = [("WWW-Authenticate", c) for c in self.challenger.challenge(time.time(), stale=stale)]
                    self._answer(txn, request, 401, to_tag=tag, headers=challenges)
                    return
            bindings = await self.registrar.register(trunk.org, request, txn.peer, txn.transport)
        except RegistrationError as exc:
            self._answer(txn, request, exc.status, exc.reason, to_tag=tag, headers=exc.headers)
            return
        except (LedgerUnavailable, RedisError, OSError):
            self._answer(txn, request, 503, to_tag=tag, headers=[("Retry-After", "5")])
            return
        log.info("registered %d contact(s) for %s of trunk %s", len(bindings), aor_user(request), trunk.id)
        self._answer(txn, request, 200, to_tag=tag, headers=contact_header(bindings))

    async def _authorize_and_route(self, call: Call, request: Request) -> None:
        origin: Origin | None = await identify_source(self.directory, *call.a.peer)
        if origin is None:
            self._refuse(call, 403, "unknown source")
            return
        dialed = dialed_digits(request)
        caller = calling_number(request)
        conference_id = ""
        transport: str | None = None
        if origin.kind == "trunk":
            trunk = origin.trunk
            assert trunk is not None
            if trunk.username and not await self._authenticate(call, request, trunk):
                return
            org = await self.directory.get_org(trunk.org)
            if not dialed:
                self._refuse(call, 404, "no number in the Request-URI")
                return
            user = await find_user(self.directory, org, caller)
            direction = "dialout" if trunk.kind == "bridge" else "outbound"
            conference_id = (request.headers.get("X-Creditgate-Conference") or "")[:128]
            carriers = await self.directory.list_carriers()
            grant = request.headers.get("X-Creditgate-Grant")
            if grant and self.grants is not None and trunk.kind == "bridge":
                # A dial-out the bridge was granted over HTTP: bill it against that reservation.
                auth = await self.grants.claim(grant, org=org, dialed=dialed, user=user)
                # The call is the grant's reservation: it takes the reservation's id.
                self.calls.pop(call.id, None)
                call.id = auth.call_id
                self.calls[call.id] = call
            else:
                auth = await self.engine.authorize(
                    org, call_id=call.id, dialed=dialed, user=user, direction=direction,  # type: ignore[arg-type]
                    conference_id=conference_id, caller=user.number if user is not None else (caller or ""),
                    sip_call_id=request.call_id)
            call.auth = auth  # from here on, whatever goes wrong releases the reservation with a CDR
            if not carriers:
                self._refuse(call, 503, "no carrier configured", retry_after=60)
                return
            carrier = carriers[0]
            number = auth.destination.number
            host = f"[{carrier.host}]" if ":" in carrier.host else carrier.host
            b_uri = parse_uri(f"sip:{number}@{host}:{carrier.port}" + (";user=phone" if number.startswith("+") else ""))
            dest = (carrier.host, carrier.port)
            from_user = user.number if user is not None else presented_user(caller)
        else:
            tf = await tollfree_for(self.directory, dialed)
            if tf is None:
                self._refuse(call, 404, "not a toll-free number of this gateway")
                return
            org = await self.directory.get_org(tf.org)
            auth = await self.engine.authorize(org, call_id=call.id, dialed=tf.number, user=None,
                                               direction="inbound_tollfree", caller=caller or "",
                                               sip_call_id=request.call_id)
            call.auth = auth
            target = parse_uri(tf.target)
            if not isinstance(target, SipUri):
                self._refuse(call, 503, "toll-free target is not a SIP URI")
                return
            b_uri, dest = target, target_address(target)
            # A target whose user registered with us is reached at its registered contact.
            binding = await self.registrar.lookup(org.id, target.user_unescaped) if target.user else None
            if binding is not None:
                b_uri, dest, transport = binding_target(binding)
            from_user = presented_user(caller)
        call.org_id = org.id
        if call.ended:
            # The caller cancelled while the engine was deciding: give the reservation back.
            await self.engine.release(auth, end_reason="cancelled")
            return
        self._route(call, request, b_uri, dest, from_user, transport)

    def _route(self, call: Call, request: Request, b_uri: SipUri, dest: tuple[str, int], from_user: str,
               transport: str | None) -> None:
        if transport is None:
            transport = "tcp" if (b_uri.param("transport") or "").lower() == "tcp" else call.a.transport
        b = Leg(name="b", call_id=call.id, local_tag=secrets.token_hex(6), peer=dest, transport=transport)
        h = Headers()
        h.add("Via", self.stack.via(transport))
        h.add("Max-Forwards", str(max((request.max_forwards or 70) - 1, 0)))
        display = request.from_.display_name
        shown = f'"{_warning_text(display)}" ' if display else ""
        h.add("From", f"{shown}<sip:{from_user}@{self.stack.hostport}>;tag={b.local_tag}")
        h.add("To", f"<{b_uri}>")
        h.add("Call-ID", call.id)
        h.add("CSeq", "1 INVITE")
        h.add("Contact", self.stack.contact(transport))
        for name, value in passthrough(request.headers, drop=frozenset({"content-type"})):
            h.add(name, value)
        if request.body:
            h.add("Content-Type", request.headers.get("Content-Type") or "application/sdp")
        call.defer_b_ack = not request.body
        invite = Request(method="INVITE", uri=b_uri, headers=h, body=request.body)
        b.invite = invite
        call.b = b
        self._index(call, b, "")
        call.state = CallState.ROUTING
        self._log(call, logging.DEBUG, "routing %s to %s:%s over %s", b_uri, dest[0], dest[1], transport)
        b.invite_txn = self.stack.send_request(invite, dest, transport, context=("b_invite", call))
        call.ring_timer = self.stack.loop.call_later(RING_TIMEOUT_S, self._ring_timeout, call)

    def _ring_timeout(self, call: Call) -> None:
        if call.state is CallState.ROUTING and not call.ended:
            self._log(call, logging.INFO, "no answer within %.0f s: cancelling", RING_TIMEOUT_S)
            self._cancel_b(call)
            self._fail_to_a(call, 408, "Request Timeout")

    # -- the B leg's answer ---------------------------------------------------------------

    def _provisional_to_a(self, call: Call, response: Response) -> None:
        headers = passthrough(response.headers, drop=frozenset({"content-type"}))
        if response.status > 100 and response.to_tag:
            headers.append(("Contact", self.stack.contact(call.a.transport)))
        if response.body:
            headers.append(("Content-Type", response.headers.get("Content-Type") or "application/sdp"))
        self._respond_a(call, response.status, response.reason, headers=headers, body=response.body)

    def _b_invite_response(self, call: Call, txn: ClientTransaction, response: Response) -> None:
        b = call.b
        status = response.status
        if b is None or b.invite is None:
            return
        if 200 <= status < 300:
            if b.dialog is None or b.dialog.remote_tag != response.to_tag:
                b.dialog = Dialog.as_uac(b.invite, response)
            else:
                b.dialog.confirm(response)
            if call.b_ack is not None:
                self.stack.send_stateless(call.b_ack, b.peer, b.transport)  # a 2xx retransmission
            elif call.ended:
                # Answered after the caller cancelled (or after we gave up): ACK it and hang up.
                call.b_ack = self._ack_for_b(call)
                self.stack.send_stateless(call.b_ack, b.peer, b.transport)
                self._bye(call, b, None)
            elif not call.answered:
                self._answered(call, response)
            # else: answered, late offer: the B leg's ACK waits for the caller's
            return
        if call.ended:
            return
        if status < 200:
            if status == 100:
                return
            call.provisional_seen = True
            if response.to_tag and b.dialog is None:
                try:
                    b.dialog = Dialog.as_uac(b.invite, response)
                except SipError:
                    b.dialog = None
            self._provisional_to_a(call, response)
            return
        call.sip_status = status
        self._fail_to_a(call, status, response.reason, response)

    def _fail_to_a(self, call: Call, status: int, reason: str, response: Response | None = None) -> None:
        mapped, text, warning = map_failure(status, reason)
        headers: list[tuple[str, str]] = []
        if response is not None and mapped == status:
            headers = passthrough(response.headers, drop=frozenset({"content-type", "warning"}))
            headers += [("Warning", w) for w in response.headers.get_all("Warning")]
        if warning:
            headers.append(("Warning", f'399 {self.stack.hostport} "{warning}"'))
        if mapped == 503 and response is not None and "Retry-After" not in {n for n, _ in headers}:
            ra = response.headers.get("Retry-After")
            if ra:
                headers.append(("Retry-After", ra))
        self._log(call, logging.DEBUG, "far end answered %d: caller gets %d", status, mapped)
        self._respond_a(call, mapped, text, headers=headers)
        end = {486: "busy", 600: "busy", 480: "unavailable", 603: "declined", 408: "no_answer"}.get(status, "failed")
        call.sip_status = call.sip_status or status
        self._finish(call, end_reason=end)

    def _ack_for_b(self, call: Call, *, body: bytes = b"", content_type: str | None = None) -> Request:
        b = call.b
        assert b is not None and b.dialog is not None and b.invite is not None
        return b.dialog.new_request("ACK", via=self.stack.via(b.transport), cseq=b.invite.cseq.seq, body=body,
                                    content_type=content_type)

    def _answered(self, call: Call, response: Response) -> None:
        b, a = call.b, call.a
        assert b is not None and call.auth is not None and a.invite is not None
        call.state = CallState.CONFIRMED
        call.answered_wall = time.time()
        call.stop_ringing()
        self._count(f"answered_{call.auth.paid_by}_{call.auth.destination.number_class.value}")
        if not call.defer_b_ack or not response.body:
            call.defer_b_ack = False
            call.b_ack = self._ack_for_b(call)
            self.stack.send_stateless(call.b_ack, b.peer, b.transport)
        try:
            a.dialog = Dialog.as_uas(a.invite, a.local_tag)
            a.dialog.state = a.dialog.state.CONFIRMED
        except SipError:
            a.dialog = None  # no Contact: in-dialog requests still follow the flow
        session = CallSession(self.engine, call.auth, on_exhausted=lambda ev: self._exhausted(call, ev),
                              on_low=lambda ev: self._credit_low(call, ev))
        call.session = session
        session.answered(self.stack.now())
        headers = passthrough(response.headers, drop=frozenset({"content-type"}))
        headers.append(("Contact", self.stack.contact(a.transport)))
        if response.body:
            headers.append(("Content-Type", response.headers.get("Content-Type") or "application/sdp"))
        self._log(call, logging.DEBUG, "answered: paid through %d s", call.auth.granted_s)
        self._respond_a(call, response.status, response.reason, headers=headers, body=response.body)

    def _cancel_b(self, call: Call) -> None:
        b = call.b
        if b is None or b.invite is None or call.cancel_sent:
            return
        call.cancel_sent = True
        inv = b.invite
        h = Headers()
        h.add("Via", inv.headers.get_all("Via")[0])
        h.add("Max-Forwards", "70")
        h.add("From", inv.headers.get("From") or "")
        h.add("To", inv.headers.get("To") or "")
        h.add("Call-ID", inv.call_id)
        h.add("CSeq", f"{inv.cseq.seq} CANCEL")
        cancel = Request(method="CANCEL", uri=inv.uri, headers=h)
        self.stack.send_request(cancel, b.peer, b.transport, context=("cancel", call))

    # -- in-dialog ------------------------------------------------------------------------

    @staticmethod
    def _from_party(leg: Leg, source: tuple[str, int]) -> bool:
        """Whether ``source`` is the host this leg talks to: Call-ID and tags travel in the clear, so
        knowing them must not be enough to hang up or re-route someone else's call."""
        return source[0].strip("[]").lower() == leg.peer[0].strip("[]").lower()

    def _in_dialog(self, call: Call, leg: Leg, txn: ServerTransaction, request: Request) -> None:
        method = request.method
        if not self._from_party(leg, txn.peer):
            self._count("dialog_foreign_source")
            log.warning("%s for call %s from %s:%s, not from its party: refused", method, call.id, *txn.peer)
            self._answer(txn, request, 403, "Not a party to this dialog", to_tag=leg.local_tag)
            return
        if leg.dialog is not None and not leg.dialog.check_remote_cseq(request):
            self._answer(txn, request, 500, "CSeq out of order", to_tag=leg.local_tag,
                         headers=[("Retry-After", "1")])
            return
        if method == "BYE":
            self._answer(txn, request, 200, to_tag=leg.local_tag)
            if not call.ended:
                self._log(call, logging.DEBUG, "%s leg hung up", leg.name.upper())
                other = call.other(leg)
                if other is not None:
                    if call.answered:
                        self._bye(call, other, None)
                    elif other is call.a:
                        self._respond_a(call, 487)
                self._finish(call, end_reason="normal")
            return
        other = call.other(leg)
        if call.ended or other is None or other.dialog is None:
            self._answer(txn, request, 481, to_tag=leg.local_tag)
            return
        headers = passthrough(request.headers, drop=frozenset({"content-type"}))
        if method == "PRACK":
            rack = request.headers.get("RAck") or ""
            m = _RACK_RE.match(rack)
            if m and other.invite is not None:
                headers.append(("RAck", f"{m.group(1)} {other.invite.cseq.seq} {m.group(3)}"))
        if method in ("INVITE", "UPDATE") and leg.dialog is not None:
            leg.dialog.refresh_target(request)
        fwd = other.dialog.new_request(method, via=self.stack.via(other.transport),
                                       contact=self.stack.contact(other.transport), body=request.body,
                                       content_type=request.headers.get("Content-Type"), headers=headers)
        self.stack.send_request(fwd, other.peer, other.transport, context=("relay", call, leg, txn))

    def _relay_response(self, call: Call, leg: Leg, server: ServerTransaction, txn: ClientTransaction,
                        response: Response) -> None:
        status = response.status
        if status == 100:
            return
        method = txn.request.method
        other = call.other(leg)
        if method == "INVITE" and 200 <= status < 300 and other is not None and other.dialog is not None:
            other.dialog.refresh_target(response)
            ack = other.dialog.new_request("ACK", via=self.stack.via(other.transport), cseq=txn.request.cseq.seq)
            self.stack.send_stateless(ack, other.peer, other.transport)
        if server.state not in (State.TRYING, State.PROCEEDING):
            return
        headers = passthrough(response.headers, drop=frozenset({"content-type"}))
        if method in ("INVITE", "UPDATE") and status < 300:
            headers.append(("Contact", self.stack.contact(leg.transport)))
        if response.body:
            headers.append(("Content-Type", response.headers.get("Content-Type") or "application/sdp"))
        resp = make_response(server.request, status, response.reason, to_tag=leg.local_tag, headers=headers)
        resp.body = response.body
        self.stack.respond(server, resp)

    def _bye(self, call: Call, leg: Leg, reason_header: str | None) -> None:
        if leg.dialog is None:
            return
        headers = [("Reason", reason_header)] if reason_header else []
        bye = leg.dialog.new_request("BYE", via=self.stack.via(leg.transport), headers=headers)
        self.stack.send_request(bye, leg.peer, leg.transport, context=("bye", call))

    # -- ending ---------------------------------------------------------------------------

    def _exhausted(self, call: Call, event: CreditExhausted) -> None:
        if call.ended:
            return
        header = OUTAGE_REASON if event.reason == "ledger_outage" else CREDIT_EXHAUSTED_REASON
        self._log(call, logging.INFO, "paid time over after %d s (%s): hanging up both legs", event.paid_s, event.reason)
        self._teardown(call, end_reason=event.reason, reason_header=header)

    def _credit_low(self, call: Call, event: CreditLow) -> None:
        """Tell the caller's side (the bridge, the PBX) the call ends soon: an INFO in its dialog."""
        a = call.a
        if call.ended or a.dialog is None:
            return
        body = json.dumps({"event": "credit_low", "remaining_s": round(event.remaining_s),
                           "call_id": call.id}).encode()
        info = a.dialog.new_request("INFO", via=self.stack.via(a.transport), body=body,
                                    content_type=WARNING_CONTENT_TYPE)
        self._log(call, logging.INFO, "credit low: %.0f s left, INFO sent to the caller", event.remaining_s)
        self.stack.send_request(info, a.peer, a.transport, context=("warning", call))

    def _teardown(self, call: Call, *, end_reason: str, reason_header: str | None) -> None:
        """The gateway ends an answered call: BYE to both legs."""
        # Settle first: the duration is what was used up to now, whatever the BYEs meet.
        self._finish(call, end_reason=end_reason)
        for leg in (call.a, call.b):
            if leg is not None:
                self._bye(call, leg, reason_header)

    def hangup_all(self, end_reason: str = "shutdown") -> int:
        """End every call now (shutdown after the drain period)."""
        n = 0
        for call in list(self.calls.values()):
            if call.ended:
                continue
            n += 1
            if call.answered:
                self._teardown(call, end_reason=end_reason, reason_header=SHUTDOWN_REASON)
            else:
                self._cancel_b(call)
                self._respond_a(call, 503, "Service Unavailable", headers=[("Retry-After", "30")])
                self._finish(call, end_reason=end_reason)
        return n

    def _finish(self, call: Call, *, end_reason: str) -> None:
        if call.ended:
            return
        now = self.stack.now()
        answered = call.answered
        duration_ms = call.session.elapsed_ms(now) if call.session is not None else 0
        if call.session is not None:
            call.session.stop()
        call.state = CallState.ENDED
        call.end_reason = end_reason
        self._count(f"ended_{end_reason}")
        self.calls.pop(call.id, None)
        call.stop_ringing()
        # Keep the legs findable a little while: a late BYE or ACK retransmission gets its answer.
        self.stack.loop.call_later(self.linger_s, self._forget, call)
        if call.auth is None:
            return
        extra = {
            "start": utc_now_iso(call.created_wall),
            "answer": utc_now_iso(call.answered_wall) if call.answered_wall else "",
            "end": utc_now_iso(),
            "sip_call_id": call.a.call_id,
            "sip_status": call.sip_status or (200 if answered else 0),
        }
        self._log(call, logging.INFO, "ended (%s, SIP %s) after %d ms: call to %s paid by %s", end_reason,
                  extra["sip_status"], duration_ms, call.auth.destination.number, call.auth.paid_by)
        self._spawn(self._settle(call.auth, answered=answered, duration_ms=duration_ms, end_reason=end_reason,
                                 extra=extra))

    async def _settle(self, auth: Any, **kw: Any) -> None:
        settled = await self.engine.settle(auth, **kw)
        if settled is not None:  # None: kept for a retry while the ledger is down
            self.counters["debited_micros"] = self.counters.get("debited_micros", 0) + settled.charge

    def _forget(self, call: Call) -> None:
        for leg, tag in ((call.a, call.a.invite.from_tag if call.a.invite else ""), (call.b, "")):
            if leg is not None and self._legs.get((leg.call_id, tag or "")) == (call, leg):
                del self._legs[(leg.call_id, tag or "")]
        # Break the call's reference cycles (its transactions and its credit session's callbacks point
        # back at it): reference counting then frees the call as soon as its last transaction ends, and
        # the cyclic collector never has to find it (gateway.gcpolicy keeps long-lived objects frozen).
        for leg in (call.a, call.b):
            if leg is not None:
                leg.invite_txn = None
        call.session = None
        call.relays.clear()

    async def drain(self, timeout_s: float) -> None:
        """Refuse new calls; wait up to ``timeout_s`` for live ones to end, then end the rest."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.calls and loop.time() < deadline:
            await asyncio.sleep(0.2)
        if self.calls:
            n = self.hangup_all()
            log.warning("drain period over: ended %d live calls", n)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        self.load.stop()
        if self._shed_report is not None:
            self._shed_report.cancel()
            self._report_shed()
