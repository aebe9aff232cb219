"""Hostile HTTP against the live API (issue 8, part 6): a real aiohttp server over a real redis-server.

Every route of the OpenAPI document, taken from the document itself (so a new route is covered the
day it is added): no token, a bad token and another organization's token are refused (401, 401,
404), and each token role gets exactly what the route's ``x-roles`` say (anything else: 403).
Bodies over ``[http] max_body_bytes`` get 413; malformed JSON, JSON of the wrong shape, fields of the
wrong type and hostile money strings get a 4xx in the ``{"error": {"code", "message"}}`` shape, never a
500 and never a trace; no money moves while any of it is tried.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _api import Api

from gateway.api.openapi import openapi_document

DOC = openapi_document()
ROLES = ("operator", "org_admin", "billing_admin", "bridge", "read_only")
LIMIT = 65536  # the api fixture's [http] max_body_bytes

# A plausible value for each path parameter, so that the route (not the router) answers.
PATH_VALUES = {"org": "acme", "token_hash": "0" * 64, "session": "no-such-session"}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    ops = []
    for path, methods in DOC["paths"].items():
        for method, op in methods.items():
            ops.append((method.upper(), path, op))
    return ops


OPERATIONS = _operations()
SECURED = [(m, p, op) for m, p, op in OPERATIONS if "x-roles" in op]
WITH_BODY = [(m, p, op) for m, p, op in OPERATIONS if "requestBody" in op]
JSON_BODY = [(m, p, op) for m, p, op in WITH_BODY if "application/json" in op["requestBody"]["content"]]


def _path(path: str, **override: str) -> str:
    values = {**PATH_VALUES, **override}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def _example_body(op: dict[str, Any]) -> Any:
    """A small valid-looking body for the operation (enough to get past parsing to the checks)."""
    content = op.get("requestBody", {}).get("content", {})
    if "text/csv" in content:
        return None
    ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
    schema = DOC["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else {}
    if "example" in schema:
        return schema["example"]
    body: dict[str, Any] = {}
    for name in schema.get("required", []):
        prop = schema["properties"][name]
        body[name] = prop.get("example") or {"string": "x", "integer": 1, "boolean": True}.get(prop.get("type", ""), "x")
    return body


def _assert_error_shape(status: int, body: Any, *, expected: int | tuple[int, ...] | None = None) -> None:
    """A 4xx (or the expected status) with the documented error shape, and nothing of our insides."""
    text = str(body)
    assert "Traceback" not in text and 'File "' not in text, text[:500]
    assert 400 <= status < 500, (status, text[:300])
    if expected is not None:
        assert status in ((expected,) if isinstance(expected, int) else expected), (status, text[:300])
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), text[:300]
    assert isinstance(body["error"].get("code"), str) and isinstance(body["error"].get("message"), str)


@pytest.fixture
async def funded(api: Api) -> AsyncIterator[Api]:
    await api.svc.ledger.fund("acme", 100_000_000, idempotency_key="start")
    yield api
    bal = await api.svc.ledger.balance("acme")
    # Whatever was thrown at the API, no money moved that the test did not move itself.
    assert (bal.balance, bal.reserved) == (100_000_000, 0), bal


# -- token scope and role on every route, from the document ---------------------------------------


def test_every_documented_route_is_secured_or_public_on_purpose() -> None:
    public = {(m, p) for m, p, op in OPERATIONS if "x-roles" not in op}
    assert public == {("GET", "/health"), ("GET", "/metrics"), ("GET", "/openapi.json")}
    for _, _, op in SECURED:
        assert set(op["x-roles"]) <= set(ROLES) and op["x-roles"]


@pytest.mark.parametrize(("method", "path", "op"), SECURED, ids=[f"{m} {p}" for m, p, _ in SECURED])
async def test_every_route_checks_token_scope_and_role(api: Api, method: str, path: str, op: dict[str, Any]) -> None:
    body = _example_body(op)
    kw: dict[str, Any] = {"json": body} if body is not None else {"data": "prefix\n"}
    url = _path(path)
    for token, role in ((None, None), ("cg_not-a-token", None), ("Bearer", None)):
        status, err = await api.call(method, url, token=token, role=role, **kw)
        _assert_error_shape(status, err, expected=401)
    if "{org}" in path:
        # acme's path with beta's token, and beta's path with acme's: as if the organization did not exist.
        status, err = await api.call(method, url, role="beta", **kw)
        _assert_error_shape(status, err, expected=404)
        for role in ROLES:
            status, err = await api.call(method, _path(path, org="beta"), role=role, **kw)
            _assert_error_shape(status, err, expected=404)
        status, err = await api.call(method, _path(path, org="ACME"), role="org_admin", **kw)
        _assert_error_shape(status, err, expected=404)
    for role in ROLES:
        status, out = await api.call(method, url, role=role, **kw)
        if role in op["x-roles"]:
            assert status not in (401, 403), (role, status, out)
            assert status < 500, (role, status, out)
        else:
            _assert_error_shape(status, out, expected=403)
    # Nothing acme's tokens did reached beta: not a cent, not a ledger entry.
    bal = await api.svc.ledger.balance("beta")
    assert (bal.balance, bal.reserved, bal.funded) == (0, 0, 0)


async def test_odd_authorization_headers_are_401_never_500(api: Api) -> None:
    for value in ("", "Bearer", "Bearer ", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Digest username=x",
                  "bearer " + "x" * 4000, "Bearer \u00e9\u00e9", "Bearer cg_" + "%00" * 10, "Token abc"):
        async with api.http.get(api.base + "/v1/orgs/acme/balance",
                                headers={"Authorization": value.encode("utf-8").decode("latin-1")}) as resp:
            body = await resp.json(content_type=None)
            _assert_error_shape(resp.status, body, expected=401)


# -- sizes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "op"), WITH_BODY, ids=[f"{m} {p}" for m, p, _ in WITH_BODY])
async def test_bodies_over_the_limit_get_413(funded: Api, method: str, path: str, op: dict[str, Any]) -> None:
    api = funded
    role = op["x-roles"][0]
    big = b'{"amount": "' + b"1" * LIMIT + b'"}'
    status, err = await api.call(method, _path(path), role=role, data=big,
                                 headers={"Content-Type": "application/json"})
    _assert_error_shape(status, err, expected=413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bound holds for a chunked body too
        for _ in range(LIMIT // 4096 + 2):
            yield b" " * 4096

    status, err = await api.call(method, _path(path), role=role, data=chunks(),
                                 headers={"Content-Type": "application/json"})
    _assert_error_shape(status, err, expected=413)


# -- malformed and mistyped JSON ----------------------------------------------------------------------

MALFORMED = [b"", b"{", b"{not json", b'{"amount": }', b"\xff\xfe{}", b"[]", b"null", b"true", b"123", b'"text"',
             b"[" * 100_00 + b"]" * 100_00, b'{"a":' * 5000 + b"1" + b"}" * 5000, b'{"amount": NaN}',
             b'{"amount": Infinity}', b'{"amount": "1"}{"amount": "2"}']


@pytest.mark.parametrize(("method", "path", "op"), JSON_BODY, ids=[f"{m} {p}" for m, p, _ in JSON_BODY])
async def test_malformed_json_is_a_clear_4xx(funded: Api, method: str, path: str, op: dict[str, Any]) -> None:
    api = funded
    role = op["x-roles"][0]
    for raw in MALFORMED:
        status, err = await api.call(method, _path(path), role=role, data=raw,
                                     headers={"Content-Type": "application/json"})
        _assert_error_shape(status, err, expected=(400, 422))


WRONG_TYPES: list[Any] = [None, 0, -1, 1.5, 10**30, True, [], ["x"], {}, {"$gt": ""}, "", "x" * 5000, "\x00", "\ud800"]


@pytest.mark.parametrize(("method", "path", "op"), JSON_BODY, ids=[f"{m} {p}" for m, p, _ in JSON_BODY])
async def test_every_field_of_the_wrong_type_is_a_clear_4xx(api: Api, method: str, path: str,
                                                            op: dict[str, Any]) -> None:
    """Each documented property of the body, in turn, set to values of every wrong type."""
    role = op["x-roles"][0]
    base = _example_body(op)
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    for field in DOC["components"]["schemas"][ref].get("properties", {}):
        for value in WRONG_TYPES:
            body = {**base, field: value}
            data = _json_bytes(body)
            status, out = await api.call(method, _path(path), role=role, data=data,
                                         headers={"Content-Type": "application/json"})
            assert status < 500, (field, value, status, out)
            if status >= 400:
                _assert_error_shape(status, out)


def _json_bytes(body: Any) -> bytes:
    import json

    return json.dumps(body, ensure_ascii=True).encode()


# -- money strings --------------------------------------------------------------------------------

HOSTILE_MONEY = ["1e3", "1E3", "-5", "-0.01", "0.0000001", "NaN", "nan", "Infinity", "-Infinity", "inf", "1,000",
                 "1 000", "99999999999999999999999999", "9" * 5000, "0x10", "１２", "٣", "12.", ".5", "+-1", "--1",
                 "", " ", "12.50.1", "1_000", "50\x00", "50\n", "50e0", "5O", 50, 50.0, 1e3, None, [],
                 {"amount": "50"}, True]


@pytest.mark.parametrize(("method", "path", "fields"), [
    ("POST", "/v1/orgs/acme/funding", ("amount",)),
    ("PUT", "/v1/orgs/acme/auto-recharge", ("threshold", "amount")),
])
async def test_hostile_money_strings_are_422_and_move_nothing(funded: Api, method: str, path: str,
                                                              fields: tuple[str, ...]) -> None:
    api = funded
    good = {"amount": "60.00", "threshold": "10.00"}
    for field in fields:
        for value in HOSTILE_MONEY:
            body = {**{f: good[f] for f in fields}, field: value}
            status, err = await api.call(method, path, role="billing_admin", data=_json_bytes(body),
                                         headers={"Content-Type": "application/json"})
            _assert_error_shape(status, err, expected=422)
            assert err["error"].get("field") == field, (value, err)
    assert (await api.call("GET", "/v1/orgs/acme/auto-recharge"))[1] == {"org": "acme", "enabled": False}
    for value in ("0", "0.00", "0.000001", "49.999999"):  # well formed, below the minimum funding
        status, err = await api.call("POST", "/v1/orgs/acme/funding", json={"amount": value})
        _assert_error_shape(status, err, expected=422)


# -- query strings, unknown routes and methods ----------------------------------------------------


async def test_hostile_query_strings_are_4xx(api: Api) -> None:
    for path in ("/v1/orgs/acme/ledger?limit=99999999999999999999", "/v1/orgs/acme/ledger?limit=-1",
                 "/v1/orgs/acme/ledger?limit=1e3", "/v1/orgs/acme/ledger?cursor=1-2-3",
                 "/v1/orgs/acme/ledger?cursor=" + "9" * 300, "/v1/orgs/acme/ledger?cursor=99999999999999999999-0",
                 "/v1/orgs/acme/ledger?from=2026-13-45", "/v1/orgs/acme/usage?from=yesterday",
                 "/v1/orgs/acme/usage?by=everything", "/v1/orgs/acme/usage?format=pdf",
                 "/v1/rates/quote?number=%2B442079460000&minutes=1e3",
                 "/v1/rates/quote?number=%2B442079460000&minutes=99999999999999999999",
                 "/v1/rates/quote?number=" + "9" * 2000, "/v1/rates/quote?number=%00", "/v1/rates/quote"):
        status, err = await api.call("GET", path)
        _assert_error_shape(status, err)


async def test_odd_but_valid_query_strings_are_answered_not_failed(api: Api) -> None:
    """Dates before the epoch, far in the future, reversed ranges: an empty answer, never a 5xx."""
    for path in ("/v1/orgs/acme/ledger?from=1900-01-01", "/v1/orgs/acme/ledger?from=0001-01-01T00:00&to=1969-12-31",
                 "/v1/orgs/acme/ledger?from=" + "1" * 500, "/v1/orgs/acme/ledger?from=9999-12-31",
                 "/v1/orgs/acme/ledger?from=2026-01-02&to=2026-01-01", "/v1/orgs/acme/usage?from=1900-01-01",
                 "/v1/orgs/acme/usage?from=2026-01-02&to=2026-01-01", "/v1/orgs/acme/usage?from=0001-01-01&by=day"):
        status, out = await api.call("GET", path)
        assert status < 500, (path[:80], status, out)
        if status >= 400:
            _assert_error_shape(status, out)


async def test_unknown_routes_and_methods_answer_in_the_error_shape(api: Api) -> None:
    for method, path, expected in (("GET", "/v1/nowhere", 404), ("GET", "/v1/orgs/acme", 404),
                                   ("GET", "/v1/orgs/acme/balance/../../../etc/passwd", 404),
                                   ("DELETE", "/v1/orgs/acme/balance", 405), ("PATCH", "/v1/orgs/acme/funding", 405),
                                   ("GET", "/v1/orgs/" + "a" * 5000 + "/balance", 404)):
        status, err = await api.call(method, path)
        _assert_error_shape(status, err, expected=expected)


async def test_malformed_http_framing_is_refused_400_without_a_trace_and_the_server_goes_on(
        api: Api, caplog: pytest.LogCaptureFixture) -> None:
    # Requests aiohttp's HTTP parser refuses before any route runs: a bad Content-Length, a header
    # line without a colon, a control character in a header value. Each is answered 400 in the error
    # shape; none may crash the server, leak a trace (to the client or, one traceback per request,
    # into the log) or move money.
    import asyncio
    import logging

    caplog.set_level(logging.INFO, logger="aiohttp.server")
    from urllib.parse import urlsplit

    target = urlsplit(api.base)
    token = api.tokens["org_admin"]
    before = (await api.svc.ledger.balance("acme")).balance
    messages: list[str] = []
    for head in (b"Content-Length: XPwjbnt{\r\n", b"Content-Length: 5\r\nContent-Length: 7\r\n",
                 b"NoColonHere\r\n", b"X-Evil: a\x01b\r\n"):
        reader, writer = await asyncio.open_connection(target.hostname, target.port)
        try:
            writer.write(b"POST /v1/orgs/acme/funding HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
                         + b"\r\nContent-Type: application/json\r\n" + head + b"\r\n" + b'{"amount": "100"}')
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(65536), 5)
        finally:
            writer.close()
        head_part, _, body = answer.partition(b"\r\n\r\n")
        status_line = head_part.split(b"\r\n", 1)[0]
        assert re.match(rb"HTTP/1\.[01] 400 ", status_line), (head, answer[:200])
        assert b"Traceback" not in answer and b'File "' not in answer, answer
        # in the API's error shape, like every other error (SPEC 9)
        assert re.search(rb"(?im)^content-type: application/json", head_part), head_part
        error = json.loads(body)["error"]
        assert error["code"] == "bad_request" and error["message"].startswith("malformed HTTP request"), error
        assert error["message"].isprintable() and len(error["message"]) <= 150, error
        messages.append(error["message"])
    assert (await api.svc.ledger.balance("acme")).balance == before
    assert not any("XPwjbnt" in m or "X-Evil" in m for m in messages), messages  # the fault, not the bytes
    status, body = await api.call("GET", "/v1/orgs/acme/balance")
    assert status == 200 and "balance" in body
    server = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(server) == 4 and all(r.levelname == "WARNING" and r.exc_info is None for r in server), server
    assert all(r.getMessage().startswith("refused a malformed HTTP request from 127.0.0.1: 400 ") for r in server)
