"""The end-to-end world (imported by tests/e2e/conftest.py and the tests; not named conftest so that
no other directory's conftest can shadow it): a real redis-server, a real `creditgate run`, SIPp as PBX, carrier and bridge.

``world`` starts a gateway on free loopback ports against the test's (emptied) redis-server, seeds it
through the same service layer the CLI uses (organizations, a PBX trunk, a carrier, users, a rate deck,
a toll-free number), and stops the gateway after the test. SIPp peers come from ``sipp_factory`` and
are stopped after the test too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from rating_core import RateDeck

from gateway.config import Config
from gateway.ledger.reconcile import reconcile
from gateway.services import open_services

try:
    from _gateway import GatewayProcess
    from sipp import free_port
except ImportError:  # pragma: no cover
    from tests._gateway import GatewayProcess
    from tests.e2e.sipp import free_port

DECK = """prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,connection_fee,effective_from
+44,United Kingdom,0.10,GBP,60,60,0,
+4420,London,0.06,GBP,1,1,0.01,
+4479,UK Mobile,6.00,GBP,1,1,0,
+1,USA,0.02,GBP,6,6,0,
+1800,US Toll-Free inbound,0.60,GBP,1,1,0,
+971,United Arab Emirates,0.30,GBP,1,1,0,
"""
ALICE = "+442079460123"  # a user of acme with a credits licence
TOLLFREE = "+18005550100"  # acme's toll-free number
UNIT = 1_000_000


@dataclass
class World:
    gw: GatewayProcess
    pbx_port: int  # acme's PBX trunk: SIPp UACs bind here
    carrier_port: int  # the carrier: SIPp UAS answers outbound calls here, SIPp UAC sends toll-free calls from here
    bridge_port: int  # the toll-free number's target
    config: Config = field(init=False)

    def __post_init__(self) -> None:
        self.config = Config.load(self.gw.config)

    @property
    def sip(self) -> tuple[str, int]:
        return ("127.0.0.1", self.gw.sip_port)

    def services(self, body: Callable[[Any], Any]) -> Any:
        """Run ``await body(services)`` against the gateway's Redis, from the test."""

        async def go() -> Any:
            async with open_services(self.config) as svc:
                return await body(svc)

        return asyncio.run(go())

    def fund(self, org: str, micros: int) -> None:
        self.services(lambda svc: svc.ledger.fund(org, micros))

    def balance(self, org: str = "acme") -> Any:
        return self.services(lambda svc: svc.ledger.balance(org))

    def cdrs(self, org: str = "acme") -> list[dict[str, Any]]:
        async def body(svc: Any) -> list[dict[str, Any]]:
            out = []
            for _, rec in await svc.ledger.cdr_entries(org):
                rec = dict(rec)
                rec["meta"] = json.loads(rec.get("meta") or "{}")
                rec["extra"] = json.loads(rec.get("extra") or "{}")
                out.append(rec)
            return out

        return self.services(body)

    def reconciles(self, org: str = "acme") -> bool:
        return self.services(lambda svc: reconcile(svc.ledger, org)).ok

    def wait_settled(self, count: int, org: str = "acme", timeout: float = 10.0) -> list[dict[str, Any]]:
        """The CDRs once ``count`` of them are written and nothing is reserved any more."""
        deadline = time.monotonic() + timeout
        while True:
            cdrs = self.cdrs(org)
            bal = self.balance(org)
            if len(cdrs) >= count and bal.reserved == 0 and bal.live == 0:
                return cdrs
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(cdrs)} CDRs, {bal} after {timeout} s\n{self.gw.log_tail()}")
            time.sleep(0.05)


def wait_answered(uac: Any, timeout: float = 10.0) -> None:
    """Until a SIPp long-call UAC logged its answer (uac_long_call_expect_bye's ``answered`` line)."""
    deadline = time.monotonic() + timeout
    while not uac.log_records("answered"):
        assert time.monotonic() < deadline, uac.diagnostics()
        time.sleep(0.02)


async def _seed(svc: Any, pbx_port: int, carrier_port: int, bridge_port: int) -> None:
    d = svc.directory
    acme, _ = await d.create_org("Acme", country="GB", currency="GBP")
    await d.add_trunk(acme, f"127.0.0.1:{pbx_port}")
    await d.add_carrier("pstn", f"127.0.0.1:{carrier_port}")
    await d.add_user(acme, "alice", number=ALICE, licence=True, plan="none")
    await d.add_user(acme, "dave", number="+442079460124", licence=False, plan="none")
    await d.add_tollfree(acme, TOLLFREE, target=f"sip:bridge@127.0.0.1:{bridge_port}")
    await svc.rates.save(RateDeck.from_csv_text(DECK))


@contextlib.contextmanager
def make_world(directory: Path, redis_url: str, settings: dict[str, dict[str, Any]] | None = None, *,
               log_level: str = "INFO", workers: int = 1) -> Iterator[World]:
    """A seeded world on ``redis_url`` with a running gateway, stopped (and checked to exit 0) after."""
    merged: dict[str, dict[str, Any]] = {"credit": {"debit_interval_s": 2, "sweep_interval_s": 1.0},
                                         "sip": {"drain_timeout_s": 2.0}}
    for section, values in (settings or {}).items():
        merged.setdefault(section, {}).update(values)
    gw = GatewayProcess(directory / "gw", redis_url, settings=merged, log_level=log_level, workers=workers)
    w = World(gw=gw, pbx_port=free_port(), carrier_port=free_port(), bridge_port=free_port())
    w.services(lambda svc: _seed(svc, w.pbx_port, w.carrier_port, w.bridge_port))
    gw.start()
    try:
        while gw.log_text().count("rate deck version 1 loaded") < workers:
            gw.wait_log("rate deck version 1 loaded")
            time.sleep(0.05)
        yield w
    finally:
        code = gw.stop()
        assert code == 0, f"the gateway exited with {code}:\n{gw.log_tail()}"


@pytest.fixture
def world(tmp_path: Path, redis_url: str, request: pytest.FixtureRequest) -> Iterator[World]:
    marker = request.node.get_closest_marker("gateway_settings")
    with make_world(tmp_path, redis_url, marker.args[0] if marker is not None else None) as w:
        yield w
