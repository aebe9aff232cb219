"""Notifications: the durable outbox of each organization and the task that mails it to its admins."""

from gateway.notify.mailer import OutboxMailer
from gateway.notify.outbox import (
    BalanceReachedZero,
    Notification,
    RechargeFailed,
    RechargeSucceeded,
    parse_entry,
    recipients,
    render,
)
from gateway.notify.streams import OrgStreamConsumer, consumer_name

__all__ = [
    "BalanceReachedZero",
    "Notification",
    "OrgStreamConsumer",
    "OutboxMailer",
    "RechargeFailed",
    "RechargeSucceeded",
    "consumer_name",
    "parse_entry",
    "recipients",
    "render",
]
