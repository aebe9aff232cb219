"""Conference dial-out end to end: the bridge asks the HTTP API, gets a grant, dials through the gateway
carrying it in X-Creditgate-Grant, and the call is billed against that reservation; a grant is used once,
and one nobody used is released at no charge when it expires."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from _world import ALICE, UNIT, World

try:
    from sipp import SCENARIO_DIR, Sipp, expect_status_scenario, free_port
except ImportError:  # pragma: no cover
    from tests.e2e.sipp import SCENARIO_DIR, Sipp, expect_status_scenario, free_port

pytestmark = pytest.mark.e2e

DUBAI = "+97142345678"  # outside the conferencing subscription's zone A: credits pay (0.30/min per second)


def _with_grant(scenario: Path, directory: Path) -> Path:
    """The scenario with ``X-Creditgate-Grant: [grant]`` in its INVITE (the first request it sends)."""
    text = scenario.read_text(encoding="iso-8859-1")
    at = text.index("Max-Forwards: 70\n")
    out = directory / f"grant_{scenario.name}"
    out.write_text(text[:at] + "X-Creditgate-Grant: [grant]\n      " + text[at:], encoding="iso-8859-1")
    return out


def _setup(world: World) -> tuple[int, str]:
    port = free_port()

    async def body(svc: Any) -> str:
        acme = await svc.directory.get_org("acme")
        await svc.directory.add_trunk(acme, f"127.0.0.1:{port}", kind="bridge")
        return await svc.directory.create_token("acme", "bridge", label="conference bridge")

    return port, world.services(body)


def _authorize(world: World, token: str, number: str = DUBAI) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{world.gw.http_port}/v1/orgs/acme/dialout/authorize",
                                 json={"number": number, "user": "alice", "conference_id": "conf-42"},
                                 headers={"Authorization": f"Bearer {token}"}) as resp:
                return resp.status, await resp.json()

    return asyncio.run(go())


def test_granted_dialout_is_billed_against_its_reservation_once(world: World, sipp_factory: Callable[..., Sipp],
                                                                tmp_path: Path) -> None:
    world.fund("acme", 100 * UNIT)
    bridge_port, token = _setup(world)
    status, out = _authorize(world, token)
    assert status == 201 and out["authorized"] is True, out
    assert (out["class"], out["rate"], out["number"], out["paid_by"]) == ("international", "0.30", DUBAI, "credits")
    assert world.balance().reserved > 0  # the first chunk is held from the moment of the grant
    carrier = sipp_factory(Path(SCENARIO_DIR / "uas_answer.xml"), local_port=world.carrier_port, calls=1,
                           timeout_s=30).start()
    dial = sipp_factory(_with_grant(SCENARIO_DIR / "uac_call.xml", tmp_path), remote=world.sip, local_port=bridge_port,
                        calls=1, timeout_s=30, duration_ms=1000, injection=[(ALICE, DUBAI)],
                        keys={"grant": out["grant"]})
    assert dial.run() == 0, dial.diagnostics()
    assert carrier.wait(10) == 0, carrier.diagnostics()
    (cdr,) = world.wait_settled(1)
    assert cdr["meta"]["conference_id"] == "conf-42" and cdr["meta"]["direction"] == "dialout"
    assert cdr["end_reason"] == "normal" and int(cdr["charge"]) > 0
    # The same grant again: refused, nothing reaches the carrier, nothing more is held.
    replay = sipp_factory(_with_grant(expect_status_scenario(403, directory=tmp_path), tmp_path), remote=world.sip,
                          local_port=bridge_port, calls=1, timeout_s=20, injection=[(ALICE, DUBAI)],
                          keys={"grant": out["grant"]})
    assert replay.run() == 0, replay.diagnostics()
    bal = world.balance()
    assert bal.reserved == 0 and bal.balance == 100 * UNIT - int(cdr["charge"])
    assert world.reconciles()


@pytest.mark.gateway_settings({"credit": {"grant_ttl_s": 1, "sweep_interval_s": 0.5}})
def test_unused_grant_is_released_at_no_charge_when_it_expires(world: World) -> None:
    world.fund("acme", 100 * UNIT)
    _, token = _setup(world)
    status, out = _authorize(world, token)
    assert status == 201 and world.balance().reserved > 0
    (cdr,) = world.wait_settled(1, timeout=15)
    assert (cdr["end_reason"], cdr["charge"], cdr["answered"]) == ("grant_expired", "0", "0")
    bal = world.balance()
    assert (bal.balance, bal.reserved) == (100 * UNIT, 0)
    assert world.reconciles()


def test_refused_dialout_gets_no_grant(world: World) -> None:
    _, token = _setup(world)
    status, out = _authorize(world, token)  # no money
    assert status == 200 and out["authorized"] is False and out["grant"] is None and out["status"] == 402
    status, out = _authorize(world, token, number="+999")
    assert out["authorized"] is False and out["status"] == 404
    assert world.balance().reserved == 0  # nothing was reserved for either
