"""The credit engine: authorize a call, extend its grant chunk by chunk, settle it at hang-up.

One service for the SIP side and the HTTP API alike. It gathers the facts (organization, user,
normalized destination, rate in force), asks the pure policy what pays, and asks the ledger's
scripts to hold and charge money. When the ledger is unreachable it applies the configured
outage policy: new calls fail closed (503 with Retry-After) or fail open within a bounded time
and amount; live calls keep the time already granted plus a grace; settlements that cannot be
written are kept and retried (the scripts are idempotent, so a retry never charges twice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from dialplans import Destination, DialplanError, IncompleteNumber, normalize

from rating_core import UNLIMITED_SECONDS, Rate, charge, max_seconds

from gateway.aio import reraise_cancel
from gateway.config import CreditConfig
from gateway.credit.errors import CreditRefused, Refusal, refusal
from gateway.credit.policy import Decision, Direction, decide
from gateway.directory import Directory, Org, User
from gateway.ledger.client import Grant, Ledger, LedgerUnavailable, RateTerms, Settlement, utc_now_iso
from gateway.ledger.keys import month_of
from gateway.ratestore import RateStore

__all__ = ["CreditEngine", "Authorization", "SETUP_WINDOW_S"]

log = logging.getLogger("creditgate.credit")

# How long a reservation may wait for answer before its lease lapses (ringing, early media).
SETUP_WINDOW_S = 300

# Reservations of refused calls whose outcome is unknown (no reply from Redis), kept to be released.
MAX_UNKNOWN_RESERVATIONS = 50_000


@dataclass(slots=True, kw_only=True)
class Authorization:
    """A call the engine authorized, and its progress through the ledger (mutable: seq, grant)."""

    call_id: str
    org: Org
    user: User | None
    destination: Destination
    rate: Rate | None
    decision: Decision
    terms: RateTerms
    grant: Grant
    month: str
    direction: Direction
    conference_id: str = ""
    seq: int = 0
    fail_open: bool = False
    meta: dict[str, Any] | None = None  # fail-open calls: the CDR meta their late settlement writes
    settled: Settlement | None = None
    created: float = field(default_factory=time.time)

    @property
    def granted_s(self) -> int:
        return self.grant.granted_s

    @property
    def max_duration_s(self) -> int:
        return self.grant.max_s

    @property
    def paid_by(self) -> str:
        return self.decision.pays


async def _once_more(request: Callable[[], Awaitable[Any]]) -> Any:
    """``request()``, and once more if the ledger did not answer: every script is idempotent on its
    key (call id; call id and seq), so the second delivery returns what the first one did if it
    ran after all, and a short stall of Redis does not end calls or refuse them."""
    try:
        return await request()
    except LedgerUnavailable:
        return await request()


class _Outage:
    """Bookkeeping of fail-open exposure during one ledger outage."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.exposure = 0

    def note_down(self, now: float) -> None:
        if self.since is None:
            self.since = now
            self.exposure = 0
            log.error("ledger unreachable: outage policy in force")

    def note_up(self) -> None:
        if self.since is not None:
            log.warning("ledger reachable again after %.1f s", time.time() - self.since)
        self.since = None
        self.exposure = 0


class CreditEngine:
    def __init__(
        self,
        *,
        ledger: Ledger,
        directory: Directory,
        rates: RateStore,
        config: CreditConfig,
    ) -> None:
        self.ledger = ledger
        self.directory = directory
        self.rates = rates
        self.config = config
        self.outage = _Outage()
        # Settlements that could not be written yet: call id -> a retry of the same request.
        self._pending: dict[str, tuple[Authorization, dict[str, Any]]] = {}
        # Reservations whose outcome is unknown (no reply) for calls refused: call id -> (org, month).
        self._unknown: dict[str, tuple[str, str]] = {}
        # More per-organization sweeps for the housekeeping loop (unclaimed dial-out grants).
        self.sweeps: list[Callable[[str], Awaitable[int]]] = []

    # -- authorization --------------------------------------------------------------------

    async def authorize(
        self,
        org: Org,
        *,
        call_id: str,
        dialed: str,
        user: User | None,
        direction: Direction = "outbound",
        conference_id: str = "",
        caller: str = "",
        lease_ms: int | None = None,
        sip_call_id: str = "",
    ) -> Authorization:
        """Authorize and reserve the first chunk, or raise ``CreditRefused``.

        ``sip_call_id``: the caller's SIP Call-ID, kept in the reservation's meta so that every CDR
        of the call, also one the sweeper writes for a process that died, names the SIP call."""
        try:
            destination = normalize(dialed, org.plan)
        except IncompleteNumber as exc:
            raise CreditRefused(refusal("incomplete_number", reason=str(exc) or None)) from None
        except DialplanError:
            raise CreditRefused(refusal("invalid_number")) from None

        deck = self.rates.deck
        rate = None
        if deck is not None and destination.number.startswith("+"):
            rate = deck.lookup(destination.number)
        verdict = decide(
            destination=destination,
            rate=rate,
            org_currency=org.currency,
            direction=direction,
            user_licence=user.licence if user is not None else None,
            user_plan=user.plan if user is not None else None,
            user_country=user.country if user is not None else None,
            blocked_classes=org.blocked_classes,
            blocked_prefixes=org.blocked_prefixes,
        )
        if isinstance(verdict, Refusal):
            raise CreditRefused(verdict)
        terms = RateTerms.of(rate) if rate is not None and verdict.pays != "included" else RateTerms()
        month = month_of(time.time())
        meta = {
            "org": org.id,
            "user": user.id if user is not None else "",
            "caller": caller or (user.number if user is not None else ""),
            "callee": destination.number,
            "dialed": dialed,
            "class": destination.number_class.value,
            "destination": rate.destination if rate is not None else "",
            "prefix": rate.prefix if rate is not None else "",
            "currency": org.currency,
            "direction": direction,
            "conference_id": conference_id,
            "coverage": verdict.reason,
            # Kept with the reservation: a call whose gateway died is settled from the ledger alone
            # (expire.lua), and its CDR still says when it started.
            "start": utc_now_iso(),
        }
        if sip_call_id:
            meta["sip_call_id"] = sip_call_id
        chunk = self.config.debit_interval_s
        lease = lease_ms if lease_ms is not None else (SETUP_WINDOW_S + chunk + self.config.lease_grace_s) * 1000

        def reserve() -> Awaitable[Grant]:
            return self.ledger.reserve(
                org.id,
                call_id,
                pays=verdict.pays,
                terms=terms,
                chunk_s=chunk,
                lease_ms=lease,
                bucket=verdict.bucket,
                licence=verdict.licence,
                max_live=org.max_concurrent_calls or self.config.max_concurrent_calls,
                daily_limit=org.daily_spend_limit,
                emergency=verdict.emergency,
                meta=meta,
                month=month,
            )

        try:
            grant = await _once_more(reserve)
        except LedgerUnavailable:
            # The reservation may still have been made (a reply lost or late): it must not hold
            # money, nor be charged as 'interrupted' when its lease runs out, for a call that was
            # refused or went on without it. Released (or, fail-open, settled) once Redis answers.
            return self._authorize_offline(org, call_id, destination, rate, verdict, terms, month,
                                           direction, conference_id, user, meta)
        self.outage.note_up()
        if not grant.ok:
            raise CreditRefused(refusal(grant.reason))
        return Authorization(call_id=call_id, org=org, user=user, destination=destination, rate=rate,
                             decision=verdict, terms=terms, grant=grant, month=month,
                             direction=direction, conference_id=conference_id)

    def _authorize_offline(
        self,
        org: Org,
        call_id: str,
        destination: Destination,
        rate: Rate | None,
        verdict: Decision,
        terms: RateTerms,
        month: str,
        direction: Direction,
        conference_id: str,
        user: User | None,
        meta: dict[str, Any],
    ) -> Authorization:
        now = time.time()
        self.outage.note_down(now)
        cfg = self.config
        offline_grant = None
        if verdict.emergency:
            offline_grant = UNLIMITED_SECONDS
        elif cfg.on_ledger_outage == "fail_open" and now - (self.outage.since or now) < cfg.fail_open_max_s:
            budget = cfg.fail_open_max_micros - self.outage.exposure
            if verdict.pays == "included":
                offline_grant = cfg.fail_open_max_s
            elif budget > 0:
                rate_for_cap = rate
                secs = max_seconds(rate_for_cap, budget) if rate_for_cap is not None else cfg.fail_open_max_s
                offline_grant = min(secs, cfg.fail_open_max_s)
                if offline_grant > 0 and rate_for_cap is not None:
                    self.outage.exposure += charge(rate_for_cap, offline_grant)
        if not offline_grant:
            self._release_unknown(org, call_id, month)
            retry = max(1, min(cfg.outage_grace_s or 30, 60))
            raise CreditRefused(refusal("ledger_unavailable", retry_after=retry))
        log.warning("call %s authorized fail-open for %d s while the ledger is down", call_id, offline_grant)
        grant = Grant(ok=True, reason="fail_open", granted_s=offline_grant, held=0, final=True,
                      max_s=offline_grant, balance=0, reserved=0, seq=0)
        return Authorization(call_id=call_id, org=org, user=user, destination=destination, rate=rate,
                             decision=verdict, terms=terms, grant=grant, month=month,
                             direction=direction, conference_id=conference_id, fail_open=True,
                             meta=meta)

    def _release_unknown(self, org: Org, call_id: str, month: str) -> None:
        """Keep a release of a reservation whose outcome is unknown, written once Redis answers:
        an unanswered settle gives back whatever a late reservation holds (charge 0, its CDR says
        'ledger_outage'), and does nothing at all when no reservation was made."""
        if len(self._unknown) >= MAX_UNKNOWN_RESERVATIONS:
            # A long outage under a flood of new calls must not grow this without bound: the oldest
            # is given up (its lease, if it was made at all, runs out and the sweeper settles it).
            dropped = next(iter(self._unknown))
            del self._unknown[dropped]
            log.warning("too many reservations of unknown outcome: %s left to its lease", dropped)
        self._unknown[call_id] = (org.id, month)

    async def adopt(
        self,
        org: Org,
        call_id: str,
        *,
        number: str,
        user: User | None,
        direction: Direction,
        conference_id: str = "",
    ) -> Authorization:
        """The authorization of a reservation made earlier (a dial-out grant), rebuilt from the ledger's
        record of it: the terms and grant it holds, and what pays as the policy says again."""
        rec = await self.ledger.call_record(org.id, call_id)
        month = await self.ledger.call_month(org.id, call_id)
        if not rec or rec.get("st") != "held" or month is None:
            raise CreditRefused(refusal("blocked", reason="dial-out grant already used or expired"))
        destination = normalize(number, org.plan)
        deck = self.rates.deck
        rate = deck.lookup(destination.number) if deck is not None and destination.number.startswith("+") else None
        verdict = decide(destination=destination, rate=rate, org_currency=org.currency, direction=direction,
                         user_licence=user.licence if user is not None else None,
                         user_plan=user.plan if user is not None else None,
                         user_country=user.country if user is not None else None,
                         blocked_classes=org.blocked_classes, blocked_prefixes=org.blocked_prefixes)
        if isinstance(verdict, Refusal):
            raise CreditRefused(verdict)
        terms = RateTerms(connection_fee=rec["fee"], rate_per_min=rec["rate"], initial_increment_s=rec["inc1"],
                          subsequent_increment_s=rec["inc2"])
        grant = Grant(ok=True, reason="ok", granted_s=rec["g"], held=rec["held"], final=rec["fin"] == 1, max_s=0,
                      balance=0, reserved=0, seq=rec["seq"])
        return Authorization(call_id=call_id, org=org, user=user, destination=destination, rate=rate,
                             decision=verdict, terms=terms, grant=grant, month=month, direction=direction,
                             conference_id=conference_id, seq=rec["seq"])

    # -- during the call ------------------------------------------------------------------

    async def extend(self, auth: Authorization, *, remaining_s: float | None = None) -> Grant:
        """Commit the chunk used and hold the next; on an outage, grant the grace once, finally."""
        if auth.fail_open or auth.grant.final:
            return auth.grant
        lease_s = (remaining_s if remaining_s is not None else 0) + self.config.debit_interval_s
        lease_ms = int((lease_s + self.config.lease_grace_s) * 1000)
        try:
            # Retried once with the same seq: a reply that was only late gives the grant it made.
            grant = await _once_more(lambda: self.ledger.extend(
                auth.org.id, auth.call_id, auth.seq + 1, month=auth.month, lease_ms=lease_ms,
                daily_limit=auth.org.daily_spend_limit))
        except LedgerUnavailable:
            self.outage.note_down(time.time())
            # SPEC 4: live calls continue within the time already reserved plus a grace, then end.
            grace = Grant(ok=True, reason="ledger_outage", granted_s=auth.grant.granted_s + self.config.outage_grace_s,
                          held=auth.grant.held, final=True, max_s=0, balance=auth.grant.balance,
                          reserved=auth.grant.reserved, seq=auth.seq)
            auth.grant = grace
            return grace
        self.outage.note_up()
        if not grant.ok:
            log.error("extend of %s refused by the ledger: %s", auth.call_id, grant.reason)
            final = Grant(ok=True, reason=grant.reason, granted_s=auth.grant.granted_s, held=auth.grant.held,
                          final=True, max_s=0, balance=grant.balance, reserved=grant.reserved, seq=auth.seq)
            auth.grant = final
            return final
        auth.seq = grant.seq
        auth.grant = grant
        return grant

    async def settle(
        self,
        auth: Authorization,
        *,
        answered: bool,
        duration_ms: int,
        end_reason: str,
        extra: dict[str, Any] | None = None,
    ) -> Settlement | None:
        """Charge the call and write its CDR; None when the ledger is down (kept and retried)."""
        if auth.settled is not None:
            return auth.settled
        request = {"answered": answered, "duration_ms": duration_ms, "end_reason": end_reason,
                   "extra": extra or {}}
        try:
            result = await self._settle_now(auth, request)
        except LedgerUnavailable:
            self.outage.note_down(time.time())
            self._pending[auth.call_id] = (auth, request)
            log.error("settle of %s deferred: ledger unreachable", auth.call_id)
            return None
        self.outage.note_up()
        auth.settled = result
        return result

    async def release(self, auth: Authorization, *, end_reason: str = "cancelled") -> Settlement | None:
        """Release a reservation that was never answered (CANCEL, failure): no charge, a CDR."""
        return await self.settle(auth, answered=False, duration_ms=0, end_reason=end_reason)

    async def _settle_now(self, auth: Authorization, request: dict[str, Any]) -> Settlement:
        if auth.fail_open:
            # late_settle also settles a reservation whose reply was lost but which did reach the
            # ledger: it releases what that holds and charges the whole call once, atomically.
            meta = dict(auth.meta or {})
            meta.update({"org": auth.org.id, "user": auth.user.id if auth.user else "",
                         "callee": auth.destination.number, "class": auth.destination.number_class.value,
                         "destination": auth.rate.destination if auth.rate else "",
                         "currency": auth.org.currency, "direction": auth.direction,
                         "conference_id": auth.conference_id})
            terms = auth.terms if auth.decision.pays == "credits" else RateTerms(rate_per_min=0, connection_fee=0)
            return await self.ledger.late_settle(
                auth.org.id, auth.call_id, terms=terms, answered=request["answered"],
                duration_ms=request["duration_ms"], end_reason=request["end_reason"], meta=meta,
                extra={**request["extra"], "fail_open": True})
        return await self.ledger.settle(
            auth.org.id, auth.call_id, auth.seq + 1, month=auth.month, answered=request["answered"],
            duration_ms=request["duration_ms"], end_reason=request["end_reason"], extra=request["extra"])

    @property
    def pending_settlements(self) -> int:
        return len(self._pending) + len(self._unknown)

    async def retry_pending(self) -> int:
        """Write the settlements and releases kept during an outage; returns how many still wait."""
        for call_id, (auth, request) in list(self._pending.items()):
            try:
                result = await self._settle_now(auth, request)
            except LedgerUnavailable:
                return self.pending_settlements
            auth.settled = result
            self._pending.pop(call_id, None)
        for call_id, (org_id, month) in list(self._unknown.items()):
            try:
                await self.ledger.settle(org_id, call_id, 1, month=month, answered=False, duration_ms=0,
                                         end_reason="ledger_outage", extra={"refused": "ledger_unavailable"})
            except LedgerUnavailable:
                return self.pending_settlements
            self._unknown.pop(call_id, None)
        self.outage.note_up()
        return 0

    async def sweep(self) -> int:
        """Settle expired reservations of every organization (a gateway process died)."""
        n = 0
        for org in await self.directory.list_orgs():
            n += len(await self.ledger.expire_due(org.id))
            for extra in self.sweeps:
                n += await extra(org.id)
        return n

    async def run_housekeeping(self, interval_s: float) -> None:
        """Forever: retry kept settlements and sweep expired leases."""
        while True:
            try:
                if self.pending_settlements:
                    await self.retry_pending()
                await self.sweep()
            except LedgerUnavailable as exc:
                reraise_cancel()  # a cancellation redis-py turned into a timeout (gateway.aio)
                log.warning("housekeeping skipped: %s", exc)
            except Exception:  # noqa: BLE001 - the sweeper must outlive any one bad record
                reraise_cancel()
                log.exception("housekeeping failed")
            reraise_cancel()
            await asyncio.sleep(interval_s)
