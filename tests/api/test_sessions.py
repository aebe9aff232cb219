"""Credit-control sessions over HTTP (the RFC 4006 model): initial, updates to a final grant, terminate with
the exact charge and a CDR; every request idempotent on its sequence number."""

from __future__ import annotations

import pytest
from _api import Api

from rating_core import RateDeck

# USA: 0.10/min, 30 s then 6 s steps, 0.01 fee. The gateway's debit interval is its default 60 s.
DECK = """prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,connection_fee,effective_from
+1,USA,0.10,GBP,30,6,0.01,
"""


@pytest.fixture
async def funded(api: Api) -> Api:
    await api.svc.rates.save(RateDeck.from_csv_text(DECK))
    acme = await api.svc.directory.get_org("acme")
    await api.svc.directory.add_user(acme, "alice", number="+442079460001", licence=True, plan="none")
    await api.svc.ledger.fund("acme", 250_000)  # 0.25: the fee and 144 s
    return api


async def test_session_runs_to_its_final_grant_and_is_charged_exactly(funded: Api) -> None:
    api = funded
    start = {"session_id": "sw-0001-abcdef", "number": "+12125550123", "user": "alice"}
    status, g = await api.call("POST", "/v1/orgs/acme/sessions", role="bridge", json=start)
    assert status == 201, g
    assert (g["authorized"], g["granted_s"], g["final"], g["paid_by"], g["rate"]) == (True, 60, False, "credits", "0.10")
    assert g["max_duration_s"] == 144
    replay = await api.call("POST", "/v1/orgs/acme/sessions", role="bridge", json=start)
    assert replay == (201, g)  # the same initial request: the same answer, nothing held twice
    assert (await api.svc.ledger.balance("acme")).reserved == 110_000
    status, u1 = await api.call("POST", "/v1/orgs/acme/sessions/sw-0001-abcdef/update", role="bridge",
                                json={"sequence": 1})
    assert (status, u1["granted_s"], u1["final"]) == (200, 120, False)
    assert (await api.call("POST", "/v1/orgs/acme/sessions/sw-0001-abcdef/update", role="bridge",
                           json={"sequence": 1}))[1] == u1
    status, err = await api.call("POST", "/v1/orgs/acme/sessions/sw-0001-abcdef/update", role="bridge",
                                 json={"sequence": 5})
    assert status == 422 and err["error"]["field"] == "sequence"
    status, u2 = await api.call("POST", "/v1/orgs/acme/sessions/sw-0001-abcdef/update", role="bridge",
                                json={"sequence": 2})
    assert (u2["granted_s"], u2["final"]) == (144, True)  # only the whole 6 s steps the money covers
    status, end = await api.call("POST", "/v1/orgs/acme/sessions/sw-0001-abcdef/terminate", role="bridge",
                                 json={"sequence": 3, "used_s": 131})
    # 131 s: 30 s then 17 steps of 6 s = 132 s billed; 0.01 + 132 x 0.10 / 60 = 0.23.
    assert status == 200 and (end["charge"], end["billed_s"], end["balance"]) == ("0.23", 132, "0.02")
    again = await api.call("POST", "/v1/orgs/acme/sessions/sw-0001-abcdef/terminate", role="bridge",
                           json={"sequence": 3, "used_s": 131})
    assert again == (200, end)
    cdrs = await api.svc.ledger.cdr_entries("acme")
    assert len(cdrs) == 1 and cdrs[0][1]["charge"] == "230000" and cdrs[0][1]["end_reason"] == "normal"
    bal = await api.svc.ledger.balance("acme")
    assert (bal.balance, bal.reserved) == (20_000, 0)


async def test_session_refusals_and_errors(funded: Api) -> None:
    api = funded
    status, g = await api.call("POST", "/v1/orgs/acme/sessions", role="bridge",
                               json={"number": "+12125550123", "user": "nobody"})
    assert status == 404
    status, g = await api.call("POST", "/v1/orgs/acme/sessions", role="bridge", json={"number": "12", "user": "alice"})
    assert status == 200 and g["authorized"] is False and g["status"] in (404, 484)
    status, err = await api.call("POST", "/v1/orgs/acme/sessions/unknown-session/update", role="bridge",
                                 json={"sequence": 1})
    assert status == 404
    status, err = await api.call("POST", "/v1/orgs/acme/sessions", role="bridge",
                                 json={"session_id": "bad id!", "number": "+12125550123"})
    assert status == 422 and err["error"]["field"] == "session_id"
    status, err = await api.call("POST", "/v1/orgs/acme/sessions/sw-x/terminate", role="read_only",
                                 json={"sequence": 1, "used_s": 1})
    assert status == 403


async def test_unfunded_session_is_refused_with_the_sip_status(api: Api) -> None:
    await api.svc.rates.save(RateDeck.from_csv_text(DECK))
    acme = await api.svc.directory.get_org("acme")
    await api.svc.directory.add_user(acme, "alice", number="+442079460001", licence=True, plan="none")
    status, g = await api.call("POST", "/v1/orgs/acme/sessions", role="bridge",
                               json={"number": "+12125550123", "user": "alice"})
    assert status == 200 and (g["authorized"], g["status"], g["code"]) == (False, 402, "no_credit")
