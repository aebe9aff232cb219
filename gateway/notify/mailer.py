"""Mail the outbox: one email per notification and admin recipient, through ``[smtp]``, each sent once.

Runs as an asyncio task beside the calls (it only awaits sockets). For each outbox entry the
sender looks up the organization and its admin-role users, then sends each recipient who has not
had it yet, over one SMTP connection, marking every address done in a per-entry set in Redis
(``OrgKeys(org).outbox_sent(entry_id)``, kept ``SENT_TTL_S``). The entry is acknowledged only
when every recipient is done; while the SMTP server is unreachable the entry stays pending and is
tried again with backoff. A redelivered entry (after a crash, or taken over from a dead process)
skips the addresses already marked. The window left is a crash between an SMTP server accepting
a message and the marker being written: that one recipient may get it twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiosmtplib
from redis.exceptions import RedisError

from gateway.config import SmtpConfig
from gateway.directory import Directory
from gateway.errors import NotFound
from gateway.ledger.client import LedgerUnavailable
from gateway.ledger.keys import OrgKeys
from gateway.notify.outbox import parse_entry, recipients, render
from gateway.notify.streams import OrgStreamConsumer

log = logging.getLogger("creditgate.notify.mailer")

__all__ = ["OutboxMailer", "GROUP", "SENT_TTL_S"]

GROUP = "mailer"
SENT_TTL_S = 30 * 86400


class OutboxMailer:
    """The outbox sender of one process; ``run()`` until cancelled."""

    def __init__(self, client: Any, directory: Directory, config: SmtpConfig, *, consumer: str | None = None) -> None:
        self.client = client
        self.directory = directory
        self.config = config
        self.consumer = OrgStreamConsumer(
            client, stream_of=lambda org: OrgKeys(org).outbox, group=GROUP, handler=self.handle,
            poll_interval_s=config.poll_interval_s, claim_idle_s=config.claim_idle_s,
            backoff_s=config.retry_backoff_s, max_backoff_s=config.max_backoff_s, consumer=consumer)

    async def run(self) -> None:
        await self.consumer.run()

    async def handle(self, org_id: str, entry_id: str, fields: dict[str, str]) -> bool:
        note = parse_entry(org_id, entry_id, fields)
        if note is None:
            log.warning("outbox entry %s of %s has an unknown kind %r; skipped", entry_id, org_id, fields.get("kind"))
            return True
        try:
            org = await self.directory.get_org(org_id)
            to = recipients(await self.directory.list_users(org_id))
        except NotFound:
            return True
        except LedgerUnavailable as exc:
            log.warning("outbox: directory unavailable (%s); entry %s of %s waits", exc, entry_id, org_id)
            return False
        if not to:
            log.info("outbox entry %s of %s: no user holds an admin role with an email address", entry_id, org_id)
            return True
        marker = OrgKeys(org_id).outbox_sent(entry_id)
        done = {m.decode() if isinstance(m, bytes) else m for m in await self.client.smembers(marker)}
        todo = [addr for addr in to if addr not in done]
        if not todo:
            return True
        cfg = self.config
        try:
            smtp = aiosmtplib.SMTP(hostname=cfg.host, port=cfg.port, timeout=cfg.timeout_s,
                                   start_tls=cfg.starttls, use_tls=False)
            async with smtp:
                if cfg.username:
                    await smtp.login(cfg.username, cfg.password)
                for addr in todo:
                    await smtp.send_message(render(note, org, sender=cfg.sender, to=addr))
                    await self._mark(marker, addr)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            log.warning("outbox: mail for entry %s of %s not sent yet (%s); will retry", entry_id, org_id, exc)
            return False
        except (RedisError, LedgerUnavailable) as exc:
            log.warning("outbox: could not record mail sent for %s of %s (%s)", entry_id, org_id, exc)
            return False
        log.info("outbox: mailed %s of %s to %d recipients", type(note).__name__, org_id, len(todo))
        return True

    async def _mark(self, marker: str, addr: str) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.sadd(marker, addr)
            pipe.expire(marker, SENT_TTL_S)
            await pipe.execute()
