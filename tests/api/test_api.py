"""The HTTP API served by a real aiohttp server on loopback, against a real redis-server.

Every organization route refuses a missing or unknown token (401), another organization's token (404,
as if the organization did not exist) and a role that may not use it (403); each route does what SPEC 9
says with money as decimal strings; errors are ``{"error": {"code", "message"}}`` and never a trace.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from _api import DECK, Api

from gateway.api.openapi import openapi_document

# (method, path, json body, roles that may use it)
ORG_ROUTES = [
    ("GET", "/v1/orgs/acme/balance", None, {"operator", "org_admin", "billing_admin", "read_only"}),
    ("POST", "/v1/orgs/acme/funding", {"amount": "60.00"}, {"operator", "org_admin", "billing_admin"}),
    ("GET", "/v1/orgs/acme/auto-recharge", None, {"operator", "org_admin", "billing_admin", "read_only"}),
    ("PUT", "/v1/orgs/acme/auto-recharge", {"enabled": False}, {"operator", "org_admin", "billing_admin"}),
    ("GET", "/v1/orgs/acme/ledger", None, {"operator", "org_admin", "billing_admin", "read_only"}),
    ("GET", "/v1/orgs/acme/users", None, {"operator", "org_admin", "billing_admin", "read_only"}),
    ("POST", "/v1/orgs/acme/users", {"id": "zed", "number": "+442079460999"}, {"operator", "org_admin"}),
    ("GET", "/v1/orgs/acme/calls", None, {"operator", "org_admin", "billing_admin", "read_only"}),
    ("POST", "/v1/orgs/acme/tokens", {"role": "read_only"}, {"operator", "org_admin"}),
    ("DELETE", "/v1/orgs/acme/tokens/" + "0" * 64, None, {"operator", "org_admin"}),
    ("GET", "/v1/orgs/acme/usage", None, {"operator", "org_admin", "billing_admin", "read_only"}),
    ("POST", "/v1/orgs/acme/dialout/authorize", {"number": "+442079460000"}, {"operator", "org_admin", "bridge"}),
    ("POST", "/v1/orgs/acme/sessions", {"number": "+442079460000"}, {"operator", "org_admin", "bridge"}),
    ("POST", "/v1/orgs/acme/sessions/no-such-session/update", {"sequence": 1}, {"operator", "org_admin", "bridge"}),
    ("POST", "/v1/orgs/acme/sessions/no-such-session/terminate", {"sequence": 1, "used_s": 0},
     {"operator", "org_admin", "bridge"}),
]
# Where the allowed roles' answer is a 404 (nothing by that id), the check is that it is not 401/403.
NOT_FOUND_OK = {"/v1/orgs/acme/tokens/" + "0" * 64, "/v1/orgs/acme/sessions/no-such-session/update",
                "/v1/orgs/acme/sessions/no-such-session/terminate"}
ROLES = ("operator", "org_admin", "billing_admin", "bridge", "read_only")


@pytest.mark.parametrize(("method", "path", "body", "allowed"), ORG_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ORG_ROUTES])
async def test_every_org_route_checks_token_scope_and_role(api: Api, method: str, path: str, body: Any,
                                                          allowed: set[str]) -> None:
    status, err = await api.call(method, path, role=None, json=body)
    assert status == 401 and err["error"]["code"] == "unauthorized"
    status, err = await api.call(method, path, token="cg_not-a-token", json=body)
    assert status == 401
    status, err = await api.call(method, path, role="beta", json=body)  # beta's admin token: acme does not exist
    assert status == 404 and err["error"]["code"] == "not_found"
    for role in ROLES:
        status, out = await api.call(method, path, role=role, json=body)
        if role in allowed:
            assert status in ((200, 201, 404) if path in NOT_FOUND_OK else (200, 201)), (role, out)
            if status == 404:
                assert out["error"]["message"] != f"no organization {'acme'!r}", (role, out)
        else:
            assert status == 403 and out["error"]["code"] == "forbidden", (role, out)


async def test_balance_and_funding_use_decimal_strings(api: Api) -> None:
    assert await api.call("GET", "/v1/orgs/acme/balance") == (
        200, {"balance": "0.00", "reserved": "0.00", "available": "0.00", "currency": "GBP"})
    status, out = await api.call("POST", "/v1/orgs/acme/funding", json={"amount": "75.50", "idempotency_key": "k1"})
    assert (status, out["balance"], out["funded"]) == (201, "75.50", "75.50")
    again = await api.call("POST", "/v1/orgs/acme/funding", json={"amount": "75.50", "idempotency_key": "k1"})
    assert again[1]["balance"] == "75.50"  # the same request retried funds once
    for body, field in (({"amount": 75.5}, "amount"), ({"amount": "12.1234567"}, "amount"),
                        ({"amount": "-5"}, "amount"), ({}, "amount"), ({"amount": "10.00"}, "amount")):
        status, err = await api.call("POST", "/v1/orgs/acme/funding", json=body)
        assert status == 422 and err["error"]["field"] == field, (body, err)
    status, err = await api.call("POST", "/v1/orgs/acme/funding", data=b"{not json",
                                 headers={"Content-Type": "application/json"})
    assert status == 400 and err["error"]["code"] == "bad_request"
    status, err = await api.call("POST", "/v1/orgs/acme/funding", data=b"x" * 70000)
    assert status == 413
    assert (await api.call("GET", "/v1/orgs/acme/balance"))[1]["balance"] == "75.50"


async def test_auto_recharge_on_off_and_validation(api: Api) -> None:
    status, out = await api.call("PUT", "/v1/orgs/acme/auto-recharge", json={"threshold": "10", "amount": "50"})
    assert (status, out) == (200, {"org": "acme", "enabled": True, "threshold": "10.00", "amount": "50.00",
                                   "currency": "GBP"})
    assert (await api.call("GET", "/v1/orgs/acme/auto-recharge"))[1]["threshold"] == "10.00"
    status, err = await api.call("PUT", "/v1/orgs/acme/auto-recharge", json={"threshold": "10", "amount": "5"})
    assert status == 422 and err["error"]["field"] == "amount"  # below the minimum funding
    status, err = await api.call("PUT", "/v1/orgs/acme/auto-recharge", json={"enabled": "yes"})
    assert status == 422 and err["error"]["field"] == "enabled"
    assert (await api.call("PUT", "/v1/orgs/acme/auto-recharge", json={"enabled": False}))[1] == {
        "org": "acme", "enabled": False}
    assert (await api.call("GET", "/v1/orgs/acme/auto-recharge"))[1] == {"org": "acme", "enabled": False}


async def test_ledger_pages_with_a_cursor(api: Api) -> None:
    for i in range(5):
        await api.svc.ledger.fund("acme", 1_000_000 * (i + 1), idempotency_key=f"f{i}")
    status, page = await api.call("GET", "/v1/orgs/acme/ledger?limit=2")
    assert status == 200 and [e["balance"] for e in page["entries"]] == ["1.00", "3.00"]
    seen = [e["amount"] for e in page["entries"]]
    while page["next_cursor"]:
        status, page = await api.call("GET", f"/v1/orgs/acme/ledger?limit=2&cursor={page['next_cursor']}")
        seen += [e["amount"] for e in page["entries"]]
    assert seen == ["1.00", "2.00", "3.00", "4.00", "5.00"]
    for query, field in (("limit=0", "limit"), ("limit=x", "limit"), ("cursor=abc", "cursor"), ("from=yesterdayish", "from")):
        status, err = await api.call("GET", f"/v1/orgs/acme/ledger?{query}")
        assert status == 422 and err["error"]["field"] == field, query


async def test_users_are_listed_and_added_with_clear_errors(api: Api) -> None:
    body = {"id": "alice", "number": "+442079460123", "email": "alice@acme.example", "roles": ["billing_admin"],
            "licence": True, "plan": "domestic"}
    status, user = await api.call("POST", "/v1/orgs/acme/users", json=body)
    assert status == 201 and user["licence"] is True and user["roles"] == ["billing_admin"]
    status, users = await api.call("GET", "/v1/orgs/acme/users")
    assert [u["id"] for u in users] == ["alice"]
    for bad, field in (({**body, "number": "12"}, "number"), ({**body, "roles": ["king"]}, "role"),
                       ({**body, "licence": "yes"}, "licence"), ({**body, "plan": "gold"}, "plan"),
                       ({"number": "+442079460124"}, "id")):
        status, err = await api.call("POST", "/v1/orgs/acme/users", json=bad)
        assert status == 422 and err["error"]["field"] == field, (bad, err)


async def test_tokens_are_created_and_revoked(api: Api) -> None:
    status, out = await api.call("POST", "/v1/orgs/acme/tokens", json={"role": "read_only", "label": "wallboard"})
    assert status == 201
    token = out["token"]
    assert (await api.call("GET", "/v1/orgs/acme/balance", token=token))[0] == 200
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert (await api.call("DELETE", f"/v1/orgs/acme/tokens/{digest}"))[0] == 200
    assert (await api.call("GET", "/v1/orgs/acme/balance", token=token))[0] == 401
    assert (await api.call("DELETE", f"/v1/orgs/acme/tokens/{digest}"))[0] == 404
    status, err = await api.call("POST", "/v1/orgs/acme/tokens", json={"role": "god"})
    assert status == 422 and err["error"]["field"] == "role"


async def test_global_routes_check_their_token(api: Api) -> None:
    for method, path in (("POST", "/v1/rates/decks"), ("GET", "/v1/rates/quote?number=%2B442079460000")):
        assert (await api.call(method, path, role=None))[0] == 401
        assert (await api.call(method, path, token="cg_not-a-token"))[0] == 401
    for role in ROLES:  # uploading decks is the operator's; any token may ask for a quote
        status, _ = await api.call("POST", "/v1/rates/decks", role=role, data=DECK)
        assert status == (201 if role == "operator" else 403), role


async def test_deck_upload_is_for_operators_and_quotes_follow(api: Api) -> None:
    assert (await api.call("POST", "/v1/rates/decks", role="org_admin", data=DECK))[0] == 403
    status, out = await api.call("POST", "/v1/rates/decks", role="operator", data=DECK)
    assert (status, out["imported"]) == (201, 2)
    status, err = await api.call("POST", "/v1/rates/decks", role="operator", data="prefix,nonsense\n1,2\n")
    assert status == 422 and err["error"]["field"] == "deck"
    status, q = await api.call("GET", "/v1/rates/quote?number=%2B442079460000&minutes=3", role="read_only")
    assert status == 200 and q["destination"] == "London" and q["charge"] == "0.19"  # 0.01 + 3 x 0.06
    assert (await api.call("GET", "/v1/rates/quote?number=%2B999", role="bridge"))[0] == 404
    assert (await api.call("GET", "/v1/rates/quote?number=%2B442079460000&minutes=-1"))[0] == 422
    assert (await api.call("GET", "/v1/rates/quote?number=%2B442079460000", role=None))[0] == 401


async def test_health_metrics_and_openapi(api: Api) -> None:
    status, health = await api.call("GET", "/health", role=None)
    assert (status, health) == (200, {"status": "ok", "ledger": "ok"})
    await api.call("GET", "/v1/orgs/acme/balance")
    status, text = await api.call("GET", "/metrics", role=None)
    assert status == 200 and "creditgate_ledger_requests_total" in text
    status, doc = await api.call("GET", "/openapi.json", role=None)
    assert status == 200 and doc == openapi_document()
    # Every route the server has is described, and nothing else.
    served = set()
    for resource in (await _app_routes(api)):
        served.add(resource)
    assert served == set(doc["paths"])
    status, err = await api.call("GET", "/v1/nowhere")
    assert status == 404 and err["error"]["code"] == "not_found"


async def _app_routes(api: Api) -> set[str]:
    from gateway.api import make_app

    app = make_app(api.svc)
    return {r.canonical for r in app.router.resources()}
