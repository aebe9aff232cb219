"""Admission of new calls under load: refuse what the process cannot carry, cheaply and at once.

Theory of operation
-------------------
A process past its capacity that still accepts every INVITE answers each one late; the callers
retransmit (RFC 3261 §17.1.1.2, Timer A: 0.5 s, 1 s, 2 s ...), the retransmissions queue behind
the originals, and by the time a request is read its caller has given up: the work done for it is
wasted and throughput collapses (measured: 300 call setups/s at capacity, about 64/s completed when
600/s were offered). Three things keep the gateway at its capacity instead:

1. **Decide before the work.** A new INVITE (no To tag) is recognized from its request line and a
   handful of header lines (``peek_request``), without the full parse, and ``Admission`` decides
   from cheap numbers: live calls, setups in the current second, the event loop's lateness
   (``LoadMeter``) and how long the datagram waited in the socket's receive queue (the kernel's
   receive timestamp: a backlog the loop's lateness cannot see). Those two signals come late: by
   the time requests queue too long, the calls admitted meanwhile have work still to come. So each
   time they fire, ``RateCeiling`` cuts the rate at which new calls are admitted (to 3/4 of what was
   admitted), and raises it again step by step while they stay quiet (multiplicative decrease, as
   TCP does): past capacity the gateway admits about its capacity, steadily, and refuses
   the rest as soon as they arrive instead of after they queued. A refused INVITE gets a stateless
   503 with ``Retry-After`` (RFC 3261 §8.2.7, §21.5.4) built from those few lines
   (``refusal_bytes``): no transaction, no call, no log line of its own.
2. **Refuse the same request the same way.** Its retransmissions get the same 503 (same To tag,
   derived from the request), and ``RecentlyRefused`` remembers it for 64*T1 so that a
   retransmission read after the load has passed is refused again instead of starting a call its
   caller already gave up. The ACK of such a 503 is recognized by its To tag and dropped (a
   stateless UAS ignores ACKs, §8.2.7).
3. **Never shed what is already admitted.** Only new INVITEs are refused: requests inside dialogs
   (ACK, BYE, re-INVITE, UPDATE ...), CANCELs, responses from the far ends, and retransmissions of
   INVITEs already admitted take the full path whatever the load, so live calls keep their billing
   and their deadlines.

Everything here is pure (no sockets, no clock reads, except ``LoadMeter.start`` which arms its tick
on the loop it is given): time comes in as arguments, and the tests drive it.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections import deque
from dataclasses import dataclass

__all__ = [
    "Admission",
    "LoadMeter",
    "RateCeiling",
    "RecentlyRefused",
    "Refusal",
    "RequestHead",
    "SetupMeter",
    "SHED_TAG_PREFIX",
    "peek_request",
    "refusal_bytes",
    "refusal_tag",
]

# The To tag of our stateless refusals. Call legs get tags of hex digits only (secrets.token_hex), so
# a tag with this prefix can never be a live dialog's: an ACK carrying it belongs to a refusal.
SHED_TAG_PREFIX = "ovl-"
_SHED_TAG_PARAM = b";tag=" + SHED_TAG_PREFIX.encode()

# How long a refused INVITE is remembered: 64*T1, the longest a caller retransmits it (Timer B).
REMEMBER_S = 32.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """Why a new call is not admitted: the status (503), reason text and Retry-After seconds."""

    status: int
    reason: str
    retry_after: int
    cause: str  # a short metric label: live_calls, setups, loop_lag, queue_age


class LoadMeter:
    """How far behind the event loop runs: a moving average of the lateness of a tick armed every
    ``interval_s``.

    A process past its capacity answers late, the callers retransmit, and the retransmissions take
    the capacity that was left. Watching the loop's own lateness lets new calls be refused before
    that happens, while calls in progress keep their deadlines. The average (each tick weighs
    ``weight``) rises within a few ticks of a real overload but hardly moves for one pause (a
    garbage collection, a slow disk write), which must not refuse calls.
    """

    def __init__(self, interval_s: float = 0.05, weight: float = 0.2) -> None:
        self.interval_s = interval_s
        self.weight = weight
        self.lag_s = 0.0
        self._expected = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def observe(self, late_s: float) -> float:
        """Fold one tick's lateness into the average (pure: the tests drive it)."""
        self.lag_s += self.weight * (late_s - self.lag_s)
        return self.lag_s

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._expected = loop.time() + self.interval_s
        self._handle = loop.call_at(self._expected, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.observe(max(now - self._expected, 0.0))
        self._expected = now + self.interval_s
        self._handle = self._loop.call_at(self._expected, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class SetupMeter:
    """Call setups admitted in the current second of the monotonic clock (``max_setups_per_s``)."""

    __slots__ = ("second", "count")

    def __init__(self) -> None:
        self.second = -1
        self.count = 0

    def admit(self, now: float, limit: int) -> bool:
        """Count one setup at ``now`` unless ``limit`` (0: none) are already counted this second."""
        sec = int(now)
        if sec != self.second:
            self.second, self.count = sec, 0
        if limit and self.count >= limit:
            return False
        self.count += 1
        return True


class RateCeiling:
    """A ceiling on new calls per second, learnt from overload signals (AIMD).

    No ceiling at first. ``overloaded(now, arrived)`` (a request that arrived at ``arrived`` queued
    too long, or the loop runs behind) sets it to ``cut`` times the rate admitted lately (or times the
    ceiling, when that is lower), and cuts it
    again only for a request that arrived *after* the last cut: the requests queued before it show
    the load of before, and cutting for each of them would drive the ceiling to nothing while the
    backlog drains. Each ``step_s`` without a cut raises it by ``grow`` (10 % a quarter second:
    doubling in under 2 s, so a ceiling set while a neighbour held the CPU does not outlive it for
    long); ``quiet_s`` without any signal lifts it. Admissions draw from a token bucket at the
    ceiling's rate holding a tenth of a second's worth, so a short burst is not refused for being a
    burst. Pure: time comes in as arguments.
    """

    RATE_WINDOW_S = 10

    def __init__(self, *, cut: float = 0.75, grow: float = 0.10, step_s: float = 0.25, quiet_s: float = 10.0,
                 floor: float = 1.0) -> None:
        self.cut, self.grow, self.step_s, self.quiet_s, self.floor = cut, grow, step_s, quiet_s, floor
        self.rate: float | None = None
        self._tokens = 0.0
        self._refilled = 0.0
        self._cut_at = float("-inf")
        self._grown_at = 0.0
        # Admissions in the current second and the RATE_WINDOW_S before it. The first ceiling starts
        # from the best of those whole seconds: by the time a standing queue is seen, the last
        # moments admitted next to nothing (the INVITEs read were stale, or the process stood still
        # for a second or two: a full collection of a heap holding tens of thousands of calls), and
        # starting from them would shut the door (1 call/s) on a gateway that was carrying its full
        # load a moment before. Measured: a 34,000-call run refused 9,861 INVITEs that way when
        # only the last two seconds were remembered.
        self._second = 0
        self._counts = [0] * (self.RATE_WINDOW_S + 1)  # [0]: this second, [i]: i seconds before

    def _roll(self, now: float) -> None:
        second = int(now)
        gap = second - self._second
        if gap > 0:
            n = len(self._counts)
            self._counts = [0] * min(gap, n) + self._counts[:max(n - gap, 0)]
            self._second = second

    def admitted_rate(self, now: float) -> float:
        """Calls admitted in the busiest of the last RATE_WINDOW_S whole seconds (this one's so far
        if none)."""
        self._roll(now)
        return float(max(self._counts[1:]) or self._counts[0])

    def overloaded(self, now: float, arrived: float) -> None:
        """An overload signal at ``now`` about a request that arrived at ``arrived``."""
        if arrived <= self._cut_at:
            return  # queued before the last cut: that cut has yet to show
        # From the ceiling, or from what was admitted lately when that is lower: a ceiling that grew
        # for seconds above a load that never reached it says nothing about the load, and cutting it
        # by a quarter would leave it far above (cut, grow, cut again: measured at 23 million/s).
        admitted = self.admitted_rate(now)
        base = admitted if self.rate is None else min(self.rate, admitted)
        self.rate = max(self.floor, base * self.cut)
        self._tokens = min(self._tokens, self._burst())
        self._cut_at = self._grown_at = self._refilled = now

    def _burst(self) -> float:
        assert self.rate is not None
        return max(1.0, self.rate * 0.1)

    def admit(self, now: float) -> bool:
        """Whether one more call may be admitted at ``now`` (counted if so)."""
        rate = self.rate
        if rate is not None:
            if now - self._cut_at >= self.quiet_s:
                self.rate = None
            else:
                while now - self._grown_at >= self.step_s:
                    self._grown_at += self.step_s
                    rate = self.rate = rate * (1.0 + self.grow)
                self._tokens = min(self._burst(), self._tokens + (now - self._refilled) * rate)
                self._refilled = now
                if self._tokens < 1.0:
                    return False
                self._tokens -= 1.0
        self._roll(now)
        self._counts[0] += 1
        return True


class Admission:
    """Whether a new call may start now: the limits of ``[sip]``, checked cheapest first.

    Limits of 0 are off. A refusal never counts as a setup, so a flood of refused INVITEs does not
    use up the second's setups for the calls that come after it. An INVITE that queued too long is
    refused, but the ceiling is cut only for a standing queue: INVITEs still queued too long
    ``standing_s`` after the first one, with no fresh one between. One pause of the process (a
    neighbour took the CPU, a collection ran) leaves a few stale INVITEs behind it, not an overload,
    and must not cost the next second's calls.
    """

    standing_s = 0.1

    def __init__(self, *, max_live_calls: int, max_setups_per_s: int, max_loop_lag_ms: int,
                 max_queue_age_ms: int, retry_after_s: int) -> None:
        self.max_live_calls = max_live_calls
        self.max_setups_per_s = max_setups_per_s
        self.max_loop_lag_s = max_loop_lag_ms / 1000.0
        self.max_queue_age_s = max_queue_age_ms / 1000.0
        self.retry_after_s = retry_after_s
        self.setups = SetupMeter()
        self.ceiling = RateCeiling()
        self._stale_since: float | None = None  # first of the INVITEs queued too long in a row
        # One object per cause: a flood of refusals allocates nothing here.
        self.refusals = {cause: Refusal(status=503, reason=reason, retry_after=retry_after_s, cause=cause)
                         for cause, reason in (("live_calls", "too many live calls"),
                                               ("queue_age", "overloaded: requests queued too long"),
                                               ("loop_lag", "overloaded: event loop behind"),
                                               ("ceiling", "overloaded"),
                                               ("setups", "too many call setups per second"))}

    def decide(self, now: float, *, live_calls: int, loop_lag_s: float, queue_age_s: float) -> Refusal | None:
        """None to admit (the setup is then counted), else the refusal to answer with."""
        if self.max_live_calls and live_calls >= self.max_live_calls:
            return self.refusals["live_calls"]
        if self.max_queue_age_s and queue_age_s > self.max_queue_age_s:
            if self._stale_since is None:
                self._stale_since = now
            elif now - self._stale_since >= self.standing_s:
                self.ceiling.overloaded(now, now - queue_age_s)
            return self.refusals["queue_age"]
        self._stale_since = None
        if self.max_loop_lag_s and loop_lag_s > self.max_loop_lag_s:
            self.ceiling.overloaded(now, now - loop_lag_s)
            return self.refusals["loop_lag"]
        if self.max_setups_per_s and self.setups.second == int(now) and self.setups.count >= self.max_setups_per_s:
            return self.refusals["setups"]  # checked before the ceiling, which would count the setup
        if not self.ceiling.admit(now):
            return self.refusals["ceiling"]
        self.setups.admit(now, self.max_setups_per_s)
        return None


class RecentlyRefused:
    """The new INVITEs refused in the last ``remember_s`` seconds, at most ``capacity`` of them.

    A key is a hash of (Call-ID, From tag, CSeq number): the same for every retransmission of one
    INVITE, different for a new attempt (RFC 3261 §8.1.3.5: a retry gets a new CSeq). When more
    INVITEs are refused than the capacity holds, the oldest are forgotten first: memory stays
    bounded whatever the flood, and only a retransmission older than the oldest kept could slip
    through (it is then judged like a new INVITE).
    """

    def __init__(self, capacity: int = 100_000, remember_s: float = REMEMBER_S) -> None:
        self.capacity = capacity
        self.remember_s = remember_s
        self._refusals: dict[int, Refusal] = {}
        self._order: deque[tuple[float, int]] = deque()  # (forget at, key), oldest first

    def __len__(self) -> int:
        return len(self._refusals)

    def get(self, key: int) -> Refusal | None:
        """How the INVITE of ``key`` was refused, if it was (and is still remembered)."""
        return self._refusals.get(key)

    def add(self, key: int, refusal: Refusal, now: float) -> None:
        if key not in self._refusals:
            self._order.append((now + self.remember_s, key))
        self._refusals[key] = refusal
        self.expire(now)

    def expire(self, now: float) -> None:
        order, refusals = self._order, self._refusals
        while order and (order[0][0] <= now or len(order) > self.capacity):
            refusals.pop(order.popleft()[1], None)


def invite_key(call_id: str, from_tag: str, cseq_number: int) -> int:
    """The ``RecentlyRefused`` key of an INVITE (the same for all its retransmissions)."""
    return hash((call_id, from_tag, cseq_number))


# -- the cheap look at a datagram -------------------------------------------------------------

# The header lines a stateless answer copies, by long or compact name (RFC 3261 §7.3.3), any case:
# one regular expression over the header section finds them all (a loop over every line costs more).
_FIELD_RE = re.compile(rb"\n(via|v|from|f|to|t|call-id|i|cseq)[ \t]*:[ \t]*([^\r\n]*)", re.I)
_FIELD_KEYS = {b"via": 0, b"v": 0, b"from": 1, b"f": 1, b"to": 2, b"t": 2, b"call-id": 3, b"i": 3, b"cseq": 4}
_FIELD_KEYS.update({b"Via": 0, b"From": 1, b"To": 2, b"Call-ID": 3, b"CSeq": 4})  # as nearly everyone writes them
_TAG_RE = re.compile(rb";[ \t]*tag[ \t]*=[ \t]*([^;,> \t]+)", re.I)


class RequestHead:
    """The request line's method and the header lines a stateless answer copies (RFC 3261 §8.2.6.2),
    as they came (values with surrounding whitespace removed), plus the tags and CSeq number.
    (A plain slotted class: this is built for every INVITE of a flood.)"""

    __slots__ = ("method", "vias", "from_", "to", "call_id", "cseq", "cseq_number", "from_tag", "to_tag")

    def __init__(self, method: str, vias: list[bytes], from_: bytes, to: bytes, call_id: bytes, cseq: bytes,
                 cseq_number: int) -> None:
        self.method = method
        self.vias = vias
        self.from_ = from_
        self.to = to
        self.call_id = call_id
        self.cseq = cseq
        self.cseq_number = cseq_number
        self.from_tag = _tag(from_)
        self.to_tag = _tag(to)

    @property
    def key(self) -> int:
        return invite_key(self.call_id.decode("utf-8", "surrogateescape"), self.from_tag, self.cseq_number)


def _tag(value: bytes) -> str:
    """The tag parameter of a From/To value ('' when absent). Parameters inside <...> belong to the
    URI; without brackets every parameter is the header's (RFC 3261 §20: a URI with ';' must be
    bracketed)."""
    m = _TAG_RE.search(value, value.rfind(b">") + 1)
    return m.group(1).decode("utf-8", "surrogateescape") if m else ""


def peek_request(data: bytes) -> RequestHead | None:
    """INVITE and ACK requests, read from a few header lines only; None for anything else and for
    anything unusual (folded lines, a header missing or repeated, a CSeq that does not match): the
    full parser then reads the message and answers what is wrong with it."""
    if data.startswith(b"INVITE "):
        method, cseq_method = "INVITE", b"INVITE"
    elif data.startswith(b"ACK "):
        method, cseq_method = "ACK", b"ACK"
    else:
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    line_end = data.find(b"\r\n")
    if data[line_end - 8:line_end] != b" SIP/2.0":
        return None
    head = data[:end]
    if b"\n " in head or b"\n\t" in head:  # folded lines: the full parser unfolds them
        return None
    vias: list[bytes] = []
    one: list[bytes | None] = [None, None, None, None, None]
    keys = _FIELD_KEYS
    for name, value in _FIELD_RE.findall(head):
        i = keys.get(name)
        if i is None:
            i = keys[name.lower()]
        value = value.strip(b" \t")
        if i == 0:
            vias.append(value)
        elif one[i] is not None:
            return None
        else:
            one[i] = value
    _, from_, to, call_id, cseq = one
    if not vias or from_ is None or to is None or not call_id or cseq is None:
        return None
    number, _, cseq_name = cseq.partition(b" ")
    if cseq_name.strip(b" \t") != cseq_method or not number.isdigit() or len(number) > 10:
        return None
    return RequestHead(method, vias, from_, to, call_id, cseq, int(number))


def is_refusal_ack(data: bytes) -> bool:
    """Whether a datagram is the ACK of one of our stateless refusals (quick test first: the marker
    appears nowhere in other traffic but a stranger's own header values)."""
    if not data.startswith(b"ACK ") or _SHED_TAG_PARAM not in data:
        return False
    head = peek_request(data)
    return head is not None and head.to_tag.startswith(SHED_TAG_PREFIX)


def refusal_tag(call_id: str, from_tag: str, cseq_number: int) -> str:
    """Our To tag for a refusal: derived from the request, so every retransmission gets the same
    response (RFC 3261 §8.2.7: a stateless UAS generates tags in a stateless manner)."""
    seed = f"{call_id}\x00{from_tag}\x00{cseq_number}".encode("utf-8", "surrogateescape")
    return f"{SHED_TAG_PREFIX}{zlib.crc32(seed):08x}"


def refusal_bytes(head: RequestHead, refusal: Refusal, *, host: str) -> bytes:
    """The stateless response to ``head`` (RFC 3261 §8.2.6.2: Via, From, Call-ID, CSeq copied, To
    with our tag), with Retry-After (§21.5.4) and ``Warning: 399 <host> "<reason>"`` (SPEC 3.6)."""
    tag = refusal_tag(head.call_id.decode("utf-8", "surrogateescape"), head.from_tag, head.cseq_number)
    to = head.to if head.to_tag else head.to + b";tag=" + tag.encode()
    lines = [f"SIP/2.0 {refusal.status} Service Unavailable".encode()]
    lines += [b"Via: " + via for via in head.vias]
    lines += [b"From: " + head.from_, b"To: " + to, b"Call-ID: " + head.call_id, b"CSeq: " + head.cseq,
              f"Retry-After: {refusal.retry_after}".encode(),
              f'Warning: 399 {host} "{refusal.reason}"'.encode(), b"Content-Length: 0", b"", b""]
    return b"\r\n".join(lines)
