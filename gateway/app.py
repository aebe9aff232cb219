"""Assemble and run one gateway process: Redis, the ledger services, the sweeper, the listeners.

``run_gateway`` is what ``creditgate run`` calls. It starts the embedded redis-server when no
``[redis] url`` is configured, loads the rate deck and follows its changes, and runs the
housekeeping loop that settles reservations whose owner died and retries settlements kept during
a ledger outage. It stops cleanly on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import multiprocessing
import os
import logging
import signal
import time
from typing import Any

from gateway.aio import stop_task
from gateway.api import start_http
from gateway.b2bua.core import B2BUA
from gateway.b2bua.stack import SipStack
from gateway.config import Config
from gateway.directory import DirectoryCache
from gateway.funding import start_funding_tasks
from gateway.gcpolicy import GcPolicy
from gateway.ledger.client import LedgerUnavailable, utc_now_iso
from gateway.ledger.embedded import ensure_redis
from gateway.ledger.keys import GLOBAL
from gateway.services import Services, open_services

__all__ = ["run_gateway", "serve"]

log = logging.getLogger("creditgate")


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the call id when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": utc_now_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        call_id = getattr(record, "call_id", None)
        if call_id:
            entry["call_id"] = call_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level: str, json_logs: bool) -> None:
    # A line per call on the call path: skip what neither format uses (the logging HOWTO's
    # "Optimization"): the caller's file/line/function looked up on the stack, thread and process names.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    if json_logs:
        formatter: logging.Formatter = _JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(formatter)
    logging.basicConfig(level=getattr(logging, level, logging.INFO), handlers=[handler], force=True)


async def start_sip(svc: Services, *, reuse_port: bool = False) -> B2BUA:
    """Listen for SIP on ``[sip] listen`` (UDP and TCP) and put the B2BUA behind it."""
    cfg = svc.config.sip
    stack = SipStack(max_message_bytes=cfg.max_message_bytes, tcp_idle_timeout_s=cfg.tcp_idle_timeout_s)
    host, port = cfg.address
    await stack.start(host, port, reuse_port=reuse_port)
    directory = DirectoryCache(svc.directory)
    directory.watch()
    b2bua = B2BUA(stack, directory=directory, engine=svc.engine, config=cfg, redis=svc.client,
                  digest_secret=await svc.directory.shared_secret(GLOBAL.digest_secret), grants=svc.grants)
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
    http = await start_http(svc, b2bua=b2bua, reuse_port=reuse_port)
    funding = start_funding_tasks(svc)  # auto-recharge purchases and the admins' mail, off the call path
    # Everything built so far lives as long as the process: keep it out of the collector's scans; and
    # no automatic full collections with thousands of live calls (gateway.gcpolicy).
    gc.freeze()
    gc_policy = GcPolicy(interval_s=svc.config.sip.gc_full_interval_s,
                         max_live_calls=svc.config.sip.gc_full_max_live_calls)
    gc_policy.install()
    b2bua.gc_policy = gc_policy
    collector = asyncio.ensure_future(gc_policy.run(lambda: b2bua.live_calls))
    log.info("creditgate ready: ledger at %s (data_dir %s)", svc.url, svc.config.data_dir)
    try:
        await stop.wait()
        log.info("stopping: no new calls; draining %d live calls", b2bua.live_calls)
        await b2bua.drain(svc.config.sip.drain_timeout_s)
    finally:
        # Every step is bounded (gateway.aio.stop_task): SIGTERM must end the process even when a
        # component does not stop, and the log names the one that did not.
        await asyncio.gather(*(stop_task(task, task.get_name()) for task in funding))
        await http.cleanup()
        b2bua.stack.close()
        if isinstance(b2bua.directory, DirectoryCache):
            await b2bua.directory.stop()
        await asyncio.gather(stop_task(housekeeping, "housekeeping"), stop_task(collector, "collector"))
        gc_policy.uninstall()
        await svc.rates.stop()
        if svc.engine.pending_settlements:
            await svc.engine.retry_pending()


def _run_loop(main: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def _serve_process(config: Config, *, reuse_port: bool) -> None:
    """One gateway process: services, SIP, housekeeping, until SIGTERM/SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with open_services(config, pipeline=True) as svc:
            await serve(svc, stop, reuse_port=reuse_port)

    _run_loop(main)


def _worker_main(config: Config, json_logs: bool, index: int) -> None:
    _configure_logging(config.log_level, json_logs)
    log.info("worker %d started (pid %d)", index, os.getpid())
    _serve_process(config, reuse_port=True)


def _supervise(config: Config, workers: int, json_logs: bool) -> None:
    """Run ``workers`` processes sharing the SIP port (SO_REUSEPORT) and one Redis; restart any that
    dies (its reservations are settled by the sweeper of any process once their lease runs out)."""
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    procs: list[Any] = []
    for i in range(workers):
        p = ctx.Process(target=_worker_main, args=(config, json_logs, i), name=f"creditgate-worker-{i}")
        p.start()
        procs.append(p)
    while not stopping:
        time.sleep(0.2)
        for i, p in enumerate(procs):
            if not p.is_alive() and not stopping:
                log.error("worker %d (pid %s) exited with %s: restarting it", i, p.pid, p.exitcode)
                procs[i] = ctx.Process(target=_worker_main, args=(config, json_logs, i), name=f"creditgate-worker-{i}")
                procs[i].start()
    log.info("stopping %d workers", len(procs))
    for p in procs:
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + config.sip.drain_timeout_s + 15
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
        if p.is_alive():
            p.kill()
            p.join()


def run_gateway(config: Config, *, workers: int = 1, json_logs: bool = False) -> int:
    _configure_logging(config.log_level, json_logs)
    if workers == 1:
        _serve_process(config, reuse_port=False)
        log.info("creditgate stopped")
        return 0
    # Several processes: the embedded Redis is started once, here, and shared by every worker.
    embedded = None
    if not config.redis.url:
        url, embedded = ensure_redis(config.data_dir.resolve(), config.redis.appendfsync)
        config = dataclasses.replace(config, redis=dataclasses.replace(config.redis, url=url))
    try:
        _supervise(config, workers, json_logs)
    finally:
        if embedded is not None:
            embedded.stop()
    log.info("creditgate stopped")
    return 0
