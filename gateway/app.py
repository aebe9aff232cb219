"""Assemble and run one gateway process: Redis, the ledger services, the sweeper, the listeners.

``run_gateway`` is what ``creditgate run`` calls. It starts the embedded redis-server when no
``[redis] url`` is configured, loads the rate deck and follows its changes, and runs the
housekeeping loop that settles reservations whose owner died and retries settlements kept during
a ledger outage. It stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import time

from gateway.b2bua.core import B2BUA
from gateway.b2bua.stack import SipStack
from gateway.config import Config
from gateway.ledger.client import LedgerUnavailable
from gateway.ledger.keys import GLOBAL
from gateway.services import Services, open_services

__all__ = ["run_gateway", "serve"]

log = logging.getLogger("creditgate")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the call id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", None)
        if call_id:
            entry["call_id"] = call_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level: str, json_logs: bool) -> None:
    handler = logging.StreamHandler()
    if json_logs:
        formatter: logging.Formatter = _JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=getattr(logging, level, logging.INFO), handlers=[handler], force=True)


async def _digest_secret(svc: Services) -> bytes:
    """The digest nonce secret every gateway process shares (created once, kept in Redis)."""
    await svc.client.set(GLOBAL.digest_secret, secrets.token_hex(32), nx=True)
    value = await svc.client.get(GLOBAL.digest_secret)
    return bytes.fromhex(value.decode() if isinstance(value, bytes) else value)


async def start_sip(svc: Services, *, reuse_port: bool = False) -> B2BUA:
    """Listen for SIP on ``[sip] listen`` (UDP and TCP) and put the B2BUA behind it."""
    cfg = svc.config.sip
    stack = SipStack(max_message_bytes=cfg.max_message_bytes, tcp_idle_timeout_s=cfg.tcp_idle_timeout_s)
    host, port = cfg.address
    await stack.start(host, port, reuse_port=reuse_port)
    b2bua = B2BUA(stack, directory=svc.directory, engine=svc.engine, config=cfg, redis=svc.client,
                  digest_secret=await _digest_secret(svc))
    log.info("SIP listening on %s:%d (udp, tcp)", stack.host, stack.port)
    return b2bua


async def serve(svc: Services, stop: asyncio.Event, *, reuse_port: bool = False) -> None:
    """Run the process's long-lived tasks until ``stop`` is set, then drain the live calls."""
    try:
        await svc.rates.load()
    except LedgerUnavailable as exc:
        log.error("rate deck not loaded: %s", exc)
    svc.rates.watch()
    housekeeping = asyncio.ensure_future(svc.engine.run_housekeeping(svc.config.credit.sweep_interval_s))
    b2bua = await start_sip(svc, reuse_port=reuse_port)
    log.info("creditgate ready: ledger at %s (data_dir %s)", svc.url, svc.config.data_dir)
    try:
        await stop.wait()
        log.info("stopping: no new calls; draining %d live calls", b2bua.live_calls)
        await b2bua.drain(svc.config.sip.drain_timeout_s)
    finally:
        b2bua.stack.close()
        housekeeping.cancel()
        await asyncio.gather(housekeeping, return_exceptions=True)
        await svc.rates.stop()
        if svc.engine.pending_settlements:
            await svc.engine.retry_pending()


def run_gateway(config: Config, *, workers: int = 1, json_logs: bool = False) -> int:
    _configure_logging(config.log_level, json_logs)
    if workers != 1:
        log.error("--workers %d: only one process is supported by this version", workers)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with open_services(config, pipeline=True) as svc:
            await serve(svc, stop)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    log.info("creditgate stopped")
    return 0
