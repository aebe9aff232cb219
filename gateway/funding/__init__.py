"""Funding an organization's balance: one-time top-ups and purchases, auto-recharge, and its background tasks."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from gateway.funding.providers import (
    HttpProvider,
    PaymentError,
    PaymentProvider,
    PaymentUnavailable,
    PurchaseOutcome,
    PurchaseRequest,
    TestProvider,
    make_provider,
)
from gateway.funding.recharge import RechargeWorker, purchase_key
from gateway.funding.service import FundingRefused, PaymentDeclined, fund_once, region_problem

if TYPE_CHECKING:
    from gateway.services import Services

__all__ = [
    "FundingRefused",
    "PaymentDeclined",
    "PaymentError",
    "PaymentUnavailable",
    "PaymentProvider",
    "PurchaseRequest",
    "PurchaseOutcome",
    "HttpProvider",
    "TestProvider",
    "RechargeWorker",
    "fund_once",
    "make_provider",
    "purchase_key",
    "region_problem",
    "start_funding_tasks",
]

log = logging.getLogger("creditgate.funding")


def start_funding_tasks(svc: "Services") -> list[asyncio.Task[None]]:
    """Start this process's auto-recharge worker and outbox mailer; cancel the tasks to stop them.

    Needs ``svc.client``, ``svc.ledger``, ``svc.directory`` and ``svc.config`` (``[payments]``,
    ``[smtp]``). Safe in every gateway process at once: consumer groups share the work. Without an
    ``[smtp] host`` no mailer starts and notifications wait in the outbox.
    """
    from gateway.notify.mailer import OutboxMailer

    provider = make_provider(svc.config.payments)
    worker = RechargeWorker(client=svc.client, ledger=svc.ledger, directory=svc.directory, provider=provider,
                            config=svc.config.payments)

    async def recharge() -> None:
        try:
            await worker.run()
        finally:
            if provider is not None:
                await provider.close()

    tasks = [asyncio.create_task(recharge(), name="creditgate-recharge")]
    if svc.config.smtp.host:
        mailer = OutboxMailer(svc.client, svc.directory, svc.config.smtp)
        tasks.append(asyncio.create_task(mailer.run(), name="creditgate-mailer"))
    else:
        log.warning("no [smtp] host configured: notifications stay in the outbox until one is")
    return tasks
