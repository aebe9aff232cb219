"""Auto-recharge: buy each purchase the ledger queued, once, and fund the balance with it.

When a debit takes a balance below the organization's threshold, the debiting script appends one
``kind=recharge`` entry to ``OrgKeys(org).purchases`` (and sets ``rc_pending`` so that the other
calls crossing at the same moment start nothing more). This worker consumes those streams with a
consumer group (``gateway.notify.streams``: one handler per entry across every gateway process,
entries of a dead process taken over after ``[payments] claim_idle_s``) and for each entry:

1. refuses the purchase when the organization's region differs from its billing region;
2. asks the payment provider, with the idempotency key ``recharge:<org>:<entry id>`` (stream ids
   are unique per stream only; the provider's keys are global), the same on every retry;
3. on success funds the ledger with kind 'recharge' under that same key: fund.lua clears
   ``rc_pending``, appends ``recharge_succeeded`` to the outbox, and turns a replay into a no-op;
4. on a decline (an expired card...) records the failure at once, never retrying it: fund.lua
   kind 'recharge_failed' clears ``rc_pending`` (only a later crossing of the threshold starts a
   new purchase) and appends ``recharge_failed`` with the provider's reason to the outbox;
5. when the provider gives no answer, leaves the entry pending and tries again with backoff, up to
   ``[payments] recharge_attempts`` attempts in all (counted in Redis, so a restart does not reset
   them), then records the failure as in 4.

A purchase whose outcome the ledger already holds (the key is in the fundings hash) is only
acknowledged: reprocessing an entry never reaches the provider or the balance again.
"""

from __future__ import annotations

import logging
from typing import Any

from rating_core.money import format_money

from gateway.config import PaymentsConfig
from gateway.directory import Directory
from gateway.errors import NotFound
from gateway.funding.providers import PaymentError, PaymentUnavailable, PurchaseRequest
from gateway.funding.service import region_problem
from gateway.ledger.client import Ledger, LedgerUnavailable
from gateway.ledger.keys import OrgKeys
from gateway.notify.streams import OrgStreamConsumer

log = logging.getLogger("creditgate.funding.recharge")

__all__ = ["RechargeWorker", "GROUP", "purchase_key"]

GROUP = "recharge"


def purchase_key(org: str, entry_id: str) -> str:
    """The idempotency key of the purchase a purchases-stream entry asks for."""
    return f"recharge:{org}:{entry_id}"


class RechargeWorker:
    """The auto-recharge worker of one process; ``run()`` until cancelled."""

    def __init__(
        self,
        *,
        client: Any,
        ledger: Ledger,
        directory: Directory,
        provider: Any,
        config: PaymentsConfig,
        consumer: str | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.directory = directory
        self.provider = provider
        self.config = config
        self.consumer = OrgStreamConsumer(
            client, stream_of=lambda org: OrgKeys(org).purchases, group=GROUP, handler=self.handle,
            poll_interval_s=config.poll_interval_s, claim_idle_s=config.claim_idle_s,
            backoff_s=config.recharge_backoff_s, max_backoff_s=config.recharge_backoff_s * 4, consumer=consumer)

    async def run(self) -> None:
        await self.consumer.run()

    async def handle(self, org_id: str, entry_id: str, fields: dict[str, str]) -> bool:
        """Run one purchase through to its recorded outcome; False: not yet (retry later)."""
        if fields.get("kind") != "recharge":
            log.warning("purchase entry %s of %s has an unknown kind %r; skipped", entry_id, org_id,
                        fields.get("kind"))
            return True
        try:
            amount = int(fields["amount"])
        except (KeyError, ValueError):
            log.error("purchase entry %s of %s has no valid amount; skipped", entry_id, org_id)
            return True
        k = OrgKeys(org_id)
        key = purchase_key(org_id, entry_id)
        try:
            if await self.client.hexists(k.fundings, key):
                return await self._finish(k, entry_id)  # already recorded: a reprocessed entry
            org = await self.directory.get_org(org_id)
        except NotFound:
            return True
        except LedgerUnavailable:
            return False
        if self.provider is None:
            return await self._fail(k, entry_id, org_id, amount, key,
                                    "no payment provider is configured ([payments] provider = manual)")
        problem = region_problem(org)
        if problem:
            return await self._fail(k, entry_id, org_id, amount, key, problem)
        attempt = int(await self.client.hincrby(k.purchase_attempts, entry_id, 1))
        try:
            outcome = await self.provider.purchase(PurchaseRequest(
                idempotency_key=key, org=org_id, amount=amount, currency=org.currency, reason="auto-recharge"))
        except PaymentUnavailable as exc:
            if attempt < self.config.recharge_attempts:
                log.warning("auto-recharge %s: %s (attempt %d of %d); will retry", key, exc, attempt,
                            self.config.recharge_attempts)
                return False
            return await self._fail(k, entry_id, org_id, amount, key, f"{exc} ({attempt} attempts)")
        except PaymentError as exc:
            return await self._fail(k, entry_id, org_id, amount, key, str(exc))
        if not outcome.succeeded:
            return await self._fail(k, entry_id, org_id, amount, key, outcome.reason)
        result = await self.ledger.fund(org_id, amount, kind="recharge", idempotency_key=key,
                                        note=f"auto-recharge {outcome.id}".strip())
        if result.ok:
            log.info("auto-recharge %s: funded %s %s, balance %s", key, format_money(amount), org.currency,
                     format_money(result.balance))
        elif result.reason != "declined":
            # Paid but not fundable (the balance would pass the ledger's bound): say so loudly.
            log.error("auto-recharge %s: provider charged %s but the ledger refused it: %s (payment %s)",
                      key, format_money(amount), result.reason, outcome.id)
            return await self._fail(k, entry_id, org_id, amount, key,
                                    f"charged (payment {outcome.id}) but not funded: {result.reason}")
        return await self._finish(k, entry_id)

    async def _fail(self, k: OrgKeys, entry_id: str, org_id: str, amount: int, key: str, reason: str) -> bool:
        log.warning("auto-recharge %s failed: %s", key, reason)
        await self.ledger.fund(org_id, amount, kind="recharge_failed", idempotency_key=key, note=reason[:500])
        return await self._finish(k, entry_id)

    async def _finish(self, k: OrgKeys, entry_id: str) -> bool:
        await self.client.hdel(k.purchase_attempts, entry_id)
        return True
