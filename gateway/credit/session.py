"""In-call enforcement: renew an answered call's credit chunk by chunk and end it when no time is left.

Theory of operation
-------------------
Billing starts at answer. The grant says the call is paid through ``granted_s`` seconds after answer
(``UNLIMITED_SECONDS`` for included destinations and emergency calls). Two absolute deadlines are armed
with ``loop.call_at`` (ARCHITECTURE rule 8: nothing polls every call):

* the **renewal**, a lead before the paid time ends (and at least once per debit interval, which keeps
  the ledger lease of an unlimited call alive): it asks the engine to commit the chunk used and hold
  the next one. The lead is jittered per call so that renewals of calls answered in the same second
  spread over the following seconds instead of arriving at Redis together;
* the **end**, at the paid time itself: when no renewal extended it (a final grant, an outage grace
  that ran out), the session reports ``CreditExhausted`` and the B2BUA hangs up both legs.

The arithmetic of those deadlines is in ``plan_deadlines`` (pure, tested alone); ``CallSession`` only
arms timers and calls the engine.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Callable

from rating_core import UNLIMITED_SECONDS

from gateway.credit.engine import Authorization, CreditEngine

__all__ = ["CallSession", "CreditExhausted", "CreditLow", "Deadlines", "plan_deadlines", "renewal_lead"]

log = logging.getLogger("creditgate.credit")


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditExhausted:
    """The paid time of an answered call ended and nothing more could be reserved."""

    call_id: str
    reason: str  # 'credit_exhausted' or 'ledger_outage'
    paid_s: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CreditLow:
    """The paid time of an answered call ends in ``remaining_s`` and no more can be had (a final grant)."""

    call_id: str
    remaining_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Deadlines:
    """Absolute times (loop clock, seconds): ``renew_at`` None when no renewal is due, ``end_at`` None
    when the call may run without limit."""

    renew_at: float | None
    end_at: float | None


def renewal_lead(chunk_s: int, jitter: float) -> float:
    """How long before the paid time ends a renewal is asked for: a quarter of the chunk, capped at
    10 s, plus up to as much again by ``jitter`` in [0, 1). Always below half a chunk, so a renewal
    never commits time that has not been used yet."""
    base = min(10.0, chunk_s / 4)
    return base * (1.0 + min(max(jitter, 0.0), 0.999))


def plan_deadlines(*, answered_at: float, now: float, granted_s: int, final: bool, chunk_s: int,
                   lead_s: float) -> Deadlines:
    """When to renew and when to end a call answered at ``answered_at`` and paid through ``granted_s``."""
    unlimited = granted_s >= UNLIMITED_SECONDS
    end_at = None if unlimited else answered_at + granted_s
    if final:
        return Deadlines(renew_at=None, end_at=end_at)
    # Renew a lead before the paid time ends, and at least once a chunk (the lease of an unlimited
    # call must be kept alive too), never in the past.
    renew_at = now + chunk_s - lead_s
    if end_at is not None:
        renew_at = min(renew_at, end_at - lead_s)
    return Deadlines(renew_at=max(renew_at, now), end_at=end_at)


class CallSession:
    """The credit side of one call from answer to hang-up."""

    def __init__(
        self,
        engine: CreditEngine,
        auth: Authorization,
        *,
        on_exhausted: Callable[[CreditExhausted], None],
        on_low: Callable[[CreditLow], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        jitter: float | None = None,
    ) -> None:
        self.engine = engine
        self.auth = auth
        self._on_exhausted = on_exhausted
        self._on_low = on_low
        self._warn_handle: asyncio.TimerHandle | None = None
        self.warned = False
        self._loop = loop or asyncio.get_running_loop()
        chunk = engine.config.debit_interval_s
        self.chunk_s = chunk
        self.lead_s = renewal_lead(chunk, random.random() if jitter is None else jitter)
        self.answered_at: float | None = None
        self._renew_handle: asyncio.TimerHandle | None = None
        self._end_handle: asyncio.TimerHandle | None = None
        self._renewing: asyncio.Task[None] | None = None
        self.stopped = False

    # -- what the B2BUA tells us ----------------------------------------------------------

    def answered(self, at: float | None = None) -> None:
        """The far end answered (200 OK): billing starts now, deadlines are armed."""
        if self.answered_at is not None or self.stopped:
            return
        self.answered_at = self._loop.time() if at is None else at
        self._arm()

    def elapsed_ms(self, now: float | None = None) -> int:
        """Milliseconds since answer (0 when not answered)."""
        if self.answered_at is None:
            return 0
        t = self._loop.time() if now is None else now
        return max(int(round((t - self.answered_at) * 1000)), 0)

    @property
    def paid_s(self) -> int:
        return self.auth.granted_s

    def stop(self) -> None:
        """The call ended (either side hung up): disarm everything."""
        self.stopped = True
        for handle in (self._renew_handle, self._end_handle, self._warn_handle):
            if handle is not None:
                handle.cancel()
        self._renew_handle = self._end_handle = self._warn_handle = None

    # -- deadlines ------------------------------------------------------------------------

    def _arm(self) -> None:
        assert self.answered_at is not None
        grant = self.auth.grant
        d = plan_deadlines(answered_at=self.answered_at, now=self._loop.time(), granted_s=grant.granted_s,
                           final=grant.final or self.auth.fail_open, chunk_s=self.chunk_s, lead_s=self.lead_s)
        for handle in (self._renew_handle, self._end_handle):
            if handle is not None:
                handle.cancel()
        self._renew_handle = self._loop.call_at(d.renew_at, self._renew) if d.renew_at is not None else None
        self._end_handle = self._loop.call_at(d.end_at, self._end) if d.end_at is not None else None
        # SPEC 4: optionally warn the caller's side some seconds before a final grant runs out.
        before = self.engine.config.warning_before_s
        if (self._on_low is not None and before > 0 and d.renew_at is None and d.end_at is not None
                and not self.warned and self._warn_handle is None):
            self._warn_handle = self._loop.call_at(max(d.end_at - before, self._loop.time()), self._warn)

    def _renew(self) -> None:
        self._renew_handle = None
        if self.stopped or (self._renewing is not None and not self._renewing.done()):
            return
        self._renewing = self._loop.create_task(self._do_renew())

    async def _do_renew(self) -> None:
        assert self.answered_at is not None
        remaining = self.answered_at + self.auth.granted_s - self._loop.time()
        try:
            await self.engine.extend(self.auth, remaining_s=max(remaining, 0.0))
        except Exception:  # noqa: BLE001 - a renewal that failed must still leave the end deadline armed
            log.exception("renewal of %s failed", self.auth.call_id, extra={"call_id": self.auth.call_id})
        if not self.stopped:
            self._arm()

    def _warn(self) -> None:
        self._warn_handle = None
        if self.stopped or self.warned or self.answered_at is None or self._on_low is None:
            return
        self.warned = True
        remaining = self.answered_at + self.auth.granted_s - self._loop.time()
        self._on_low(CreditLow(call_id=self.auth.call_id, remaining_s=max(remaining, 0.0)))

    def _end(self) -> None:
        self._end_handle = None
        if self.stopped:
            return
        self.stop()
        # A grace after the ledger went away, or a fail-open grant while it was away, ran out: the
        # call ends for the outage, not for want of credit.
        reason = "ledger_outage" if self.auth.grant.reason in ("ledger_outage", "fail_open") else "credit_exhausted"
        self._on_exhausted(CreditExhausted(call_id=self.auth.call_id, reason=reason, paid_s=self.auth.granted_s))
