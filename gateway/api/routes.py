"""The HTTP routes (SPEC 9): thin handlers over the same service layer as the CLI.

Every handler authenticates, checks scope and role (``auth.allow``), validates its input into
typed values (money strings into micro-units, naming the field on error) and calls the service
layer; nothing here decides money.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web

from rating_core import DeckError, RateDeck
from rating_core.errors import MoneyError
from rating_core import UNLIMITED_SECONDS
from rating_core.money import format_money, parse_money

from gateway.admin import balance_view, configure_recharge, ledger_view, recharge_view
from gateway.api.auth import ADMIN, ANY, BRIDGE, MONEY, OPERATOR, READ, SVC, ApiError, Principal, allow, authenticate
from gateway.credit.control import start_session, terminate_session, update_session
from gateway.credit.errors import CreditRefused
from gateway.credit.quote import quote as make_quote
from gateway.directory import TOKEN_ROLES, Org
from gateway.errors import InvalidInput
from gateway.funding import fund_once
from gateway import reports
from gateway.reports import aggregate, check_grouping, live_calls, usage_rows
from gateway.ledger.client import Ledger
from gateway.services import Services, redis_client
from gateway.timeutil import parse_when, stream_id

__all__ = ["routes"]

routes = web.RouteTableDef()
MAX_LEDGER_PAGE = 1000
_CURSOR = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20})?", re.ASCII)  # a Redis stream entry id


def _svc(request: web.Request) -> Services:
    return request.app[SVC]


async def _principal(request: web.Request) -> Principal:
    return await authenticate(request, _svc(request).directory)


async def _org(request: web.Request, roles: frozenset[str]) -> tuple[Services, Org]:
    principal = await _principal(request)
    org_id = request.match_info["org"]
    allow(principal, roles, org_id)
    return _svc(request), await _svc(request).directory.get_org(org_id)


# Money as the document says it (SPEC 9): digits, optionally a point and 1 to 6 more; nothing else, not
# even the sign or surrounding blanks parse_money tolerates from an operator's command line.
_MONEY_TEXT = re.compile(r"[0-9]+(?:\.[0-9]{1,6})?", re.ASCII)


def _encodable(value: Any) -> bool:
    """Whether every string in a parsed JSON value is valid Unicode (JSON admits lone surrogates as
    escapes, which can then be neither stored nor sent on)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's decoder would accept them


async def _json_object(request: web.Request) -> dict[str, Any]:
    # JSON bodies are small: their own bound, below the one for rate decks ([http] max_body_bytes),
    # keeps a hostile body from costing the event loop more than a few milliseconds to decode.
    limit = _svc(request).config.http.max_json_bytes
    too_large = ApiError(413, "too_large", f"a JSON body may be at most {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    raw = await request.read()  # a chunked body: bounded by [http] max_body_bytes, then checked here
    if len(raw) > limit:
        raise too_large
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors;
        # RecursionError: nesting deeper than the decoder's recursion limit
        raise ApiError(400, "bad_request", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    if not _encodable(body):
        raise ApiError(400, "bad_request", "the body holds text that is not valid Unicode")
    return body


def _money(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise InvalidInput("is required (a decimal string such as \"50.00\")", name)
        return None
    if not isinstance(value, str):
        raise InvalidInput("must be a decimal string such as \"50.00\", not a number", name)
    if not _MONEY_TEXT.fullmatch(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise InvalidInput(f"{shown!r} is not a decimal string such as \"50.00\" (digits, at most 6 decimals)",
                           name)
    try:
        return parse_money(value)
    except MoneyError as exc:
        raise InvalidInput(str(exc), name) from None


def _string(body: dict[str, Any], name: str, *, required: bool = True, default: str = "") -> str:
    value = body.get(name, None)
    if value is None:
        if required:
            raise InvalidInput("is required", name)
        return default
    if not isinstance(value, str):
        raise InvalidInput("must be a string", name)
    return value


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise InvalidInput("must be true or false", name)
    return value


# -- organizations ----------------------------------------------------------------------------


@routes.get("/v1/orgs/{org}/balance")
async def get_balance(request: web.Request) -> web.Response:
    svc, org = await _org(request, READ)
    return web.json_response(await balance_view(svc, org))


@routes.post("/v1/orgs/{org}/funding")
async def post_funding(request: web.Request) -> web.Response:
    svc, org = await _org(request, MONEY)
    body = await _json_object(request)
    amount = _money(body, "amount")
    assert amount is not None
    key = _string(body, "idempotency_key", required=False)
    if len(key) > 128:
        raise InvalidInput("must be at most 128 characters", "idempotency_key")
    return web.json_response(await fund_once(svc, org, amount, idempotency_key=key), status=201)


@routes.get("/v1/orgs/{org}/auto-recharge")
async def get_auto_recharge(request: web.Request) -> web.Response:
    svc, org = await _org(request, READ)
    settings = await svc.directory.recharge_settings(org)
    if settings is None:
        return web.json_response({"org": org.id, "enabled": False})
    return web.json_response(recharge_view(org, *settings))


@routes.put("/v1/orgs/{org}/auto-recharge")
async def put_auto_recharge(request: web.Request) -> web.Response:
    svc, org = await _org(request, MONEY)
    body = await _json_object(request)
    enabled = _bool(body, "enabled", True)
    result = await configure_recharge(svc, org, threshold=_money(body, "threshold", required=enabled),
                                      amount=_money(body, "amount", required=enabled), enabled=enabled)
    return web.json_response(result)


@routes.get("/v1/orgs/{org}/ledger")
async def get_ledger(request: web.Request) -> web.Response:
    """Paged: ``limit`` entries from ``cursor`` (the id after which to go on) or from ``from``."""
    svc, org = await _org(request, READ)
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise InvalidInput("must be an integer", "limit") from None
    if not 1 <= limit <= MAX_LEDGER_PAGE:
        raise InvalidInput(f"must be 1 to {MAX_LEDGER_PAGE}", "limit")
    # Nothing is older than the epoch: an earlier bound is the epoch (a stream id is never negative).
    start = stream_id(max(parse_when(q["from"], field="from"), 0.0) if q.get("from") else None)
    until = parse_when(q["to"], end=True, field="to") if q.get("to") else None
    end = stream_id(until, end=True)
    cursor = q.get("cursor")
    if cursor:
        if not _CURSOR.fullmatch(cursor) or any(int(part) >= 2**64 for part in cursor.split("-")):
            raise InvalidInput("is not a ledger entry id", "cursor")
        start = "(" + cursor
    if until is not None and until <= 0:
        return web.json_response({"entries": [], "next_cursor": None})  # ends before anything began
    rows = await ledger_view(svc, org, start=start, end=end, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return web.json_response({"entries": rows, "next_cursor": rows[-1]["id"] if more and rows else None})


@routes.get("/v1/orgs/{org}/users")
async def get_users(request: web.Request) -> web.Response:
    svc, org = await _org(request, READ)
    return web.json_response([u.to_dict() for u in await svc.directory.list_users(org.id)])


@routes.post("/v1/orgs/{org}/users")
async def post_user(request: web.Request) -> web.Response:
    svc, org = await _org(request, ADMIN)
    body = await _json_object(request)
    roles = body.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise InvalidInput("must be a list of role ids", "roles")
    country = body.get("country")
    if country is not None and not isinstance(country, str):
        raise InvalidInput("must be a country code", "country")
    user = await svc.directory.add_user(
        org, _string(body, "id"), number=_string(body, "number"), email=_string(body, "email", required=False),
        roles=roles, licence=_bool(body, "licence", False), plan=_string(body, "plan", required=False, default="none"),
        country=country)
    return web.json_response(user.to_dict(), status=201)


@routes.get("/v1/orgs/{org}/calls")
async def get_calls(request: web.Request) -> web.Response:
    svc, org = await _org(request, READ)
    return web.json_response(await live_calls(svc.ledger, org))


@routes.get("/v1/orgs/{org}/usage")
async def get_usage(request: web.Request) -> web.StreamResponse:
    """The PSTN usage report (SPEC 6): calls or totals (``by``), as JSON, CSV or xlsx, streamed."""
    svc, org = await _org(request, READ)
    q = request.query
    fmt = q.get("format", "json")
    if fmt not in ("json", "csv", "xlsx"):
        raise InvalidInput("must be json, csv or xlsx", "format")
    by = check_grouping(q.get("by") or None)
    user = q.get("user") or None
    rows = usage_rows(svc.ledger, org.id, start=q.get("from") or None, end=q.get("to") or None, user=user,
                      page=200)  # validated now: a bad range is a 422 before any byte is sent
    if fmt == "xlsx":
        return await _usage_xlsx(request, svc, org, start=q.get("from") or None, end=q.get("to") or None, user=user)
    if by is not None:
        totals = await aggregate(rows, by)
        if fmt == "json":
            return web.json_response([t.to_dict() for t in totals])
        return await _stream(request, reports.iter_totals_csv(totals, by), "text/csv", f"usage-{org.id}-by-{by}.csv")
    if fmt == "json":
        return await _stream(request, reports.iter_json(rows), "application/json", None)
    return await _stream(request, reports.iter_csv(rows), "text/csv", f"usage-{org.id}.csv")


async def _stream(request: web.Request, chunks: Any, content_type: str, filename: str | None) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": f"{content_type}; charset=utf-8"})
    if filename:
        resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    first = await anext(chunks, None)  # a failure before the first byte is still an error answer
    await resp.prepare(request)
    if first is not None:
        await resp.write(first.encode())
        async for chunk in chunks:
            await resp.write(chunk.encode())
    await resp.write_eof()
    return resp


async def _usage_xlsx(request: web.Request, svc: Services, org: Org, *, start: str | None, end: str | None,
                      user: str | None) -> web.StreamResponse:
    """openpyxl writes about a thousand rows a second: the workbook is built in a thread with an event
    loop and a Redis connection of its own (the calls' loop never waits for it), then sent as a file."""

    def build(path: Path) -> None:
        async def go() -> None:
            client = redis_client(svc.url, cluster=svc.config.redis.cluster, timeout_s=svc.config.redis.timeout_s)
            try:
                await reports.write_xlsx(usage_rows(Ledger(client), org.id, start=start, end=end, user=user), path)
            finally:
                await client.aclose()

        asyncio.run(go())

    with tempfile.TemporaryDirectory(prefix="creditgate-usage-") as tmp:
        path = Path(tmp) / f"usage-{org.id}.xlsx"
        await asyncio.to_thread(build, path)
        resp = web.FileResponse(path, headers={
            "Content-Type": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "Content-Disposition": f'attachment; filename="usage-{org.id}.xlsx"'})
        await resp.prepare(request)
        await resp.write_eof()
        return resp


@routes.post("/v1/orgs/{org}/tokens")
async def post_token(request: web.Request) -> web.Response:
    svc, org = await _org(request, ADMIN)
    body = await _json_object(request)
    role = _string(body, "role")
    if role not in TOKEN_ROLES:
        raise InvalidInput(f"must be one of {', '.join(TOKEN_ROLES)}", "role")
    token = await svc.directory.create_token(org.id, role, label=_string(body, "label", required=False)[:200])
    return web.json_response({"org": org.id, "role": role, "token": token}, status=201)


@routes.delete("/v1/orgs/{org}/tokens/{token_hash}")
async def delete_token(request: web.Request) -> web.Response:
    svc, org = await _org(request, ADMIN)
    if not await svc.directory.revoke_token(org.id, request.match_info["token_hash"]):
        raise ApiError(404, "not_found", "no such token for this organization")
    return web.json_response({"org": org.id, "revoked": True})


@routes.post("/v1/orgs/{org}/dialout/authorize")
async def post_dialout_authorize(request: web.Request) -> web.Response:
    """May the bridge dial this number for this user and conference? A grant reserving the first chunk."""
    svc, org = await _org(request, BRIDGE)
    body = await _json_object(request)
    number = _string(body, "number")
    user_id = _string(body, "user", required=False)
    user = await svc.directory.get_user(org.id, user_id) if user_id else None
    conference_id = _string(body, "conference_id", required=False)[:128]
    try:
        token, auth = await svc.grants.issue(org, number=number, user=user, conference_id=conference_id)
    except CreditRefused as exc:
        r = exc.refusal
        return web.json_response({"authorized": False, "grant": None, "max_duration_s": None, "rate": None,
                                  "class": None, "reason": r.reason, "code": r.code, "status": r.status})
    unlimited = auth.max_duration_s >= UNLIMITED_SECONDS
    rate = auth.rate
    return web.json_response({
        "authorized": True, "grant": token, "max_duration_s": None if unlimited else auth.max_duration_s,
        "rate": format_money(rate.rate_per_min) if rate is not None and auth.paid_by == "credits" else None,
        "class": auth.destination.number_class.value, "reason": auth.decision.reason or auth.paid_by,
        "paid_by": auth.paid_by, "number": auth.destination.number, "expires_in_s": svc.grants.ttl_s,
        "currency": org.currency}, status=201)


# -- credit-control sessions (RFC 4006 over HTTP) ------------------------------------------------


def _int(body: dict[str, Any], name: str, *, low: int = 0, high: int = 10**9) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"must be an integer {low} to {high}", name)
    return value


@routes.post("/v1/orgs/{org}/sessions")
async def post_session(request: web.Request) -> web.Response:
    svc, org = await _org(request, BRIDGE)
    body = await _json_object(request)
    session_id = _string(body, "session_id", required=False) or secrets.token_hex(12)
    result = await start_session(svc, org, session_id=session_id, number=_string(body, "number"),
                                 user_id=_string(body, "user", required=False) or None,
                                 conference_id=_string(body, "conference_id", required=False)[:128],
                                 direction=_string(body, "direction", required=False, default="outbound"))
    return web.json_response(result, status=201 if result["authorized"] else 200)


@routes.post("/v1/orgs/{org}/sessions/{session}/update")
async def post_session_update(request: web.Request) -> web.Response:
    svc, org = await _org(request, BRIDGE)
    body = await _json_object(request)
    return web.json_response(await update_session(svc, org, request.match_info["session"],
                                                  sequence=_int(body, "sequence", low=1)))


@routes.post("/v1/orgs/{org}/sessions/{session}/terminate")
async def post_session_terminate(request: web.Request) -> web.Response:
    svc, org = await _org(request, BRIDGE)
    body = await _json_object(request)
    return web.json_response(await terminate_session(
        svc, org, request.match_info["session"], sequence=_int(body, "sequence", low=1),
        used_s=_int(body, "used_s", high=10**8), answered=_bool(body, "answered", True),
        reason=_string(body, "reason", required=False, default="normal")))


# -- rates --------------------------------------------------------------------------------------


@routes.post("/v1/rates/decks")
async def post_deck(request: web.Request) -> web.Response:
    """Import a rate deck (CSV body, SPEC 9 header); ``?effective=DATE`` dates rows without one."""
    principal = await _principal(request)
    allow(principal, OPERATOR)
    effective = request.query.get("effective")
    try:
        text = await request.text()
    except UnicodeDecodeError:
        raise ApiError(400, "bad_request", "the deck must be UTF-8 CSV text") from None
    try:
        deck = RateDeck.from_csv_text(text, effective=parse_when(effective, field="effective") if effective else None)
    except DeckError as exc:
        raise InvalidInput(str(exc), "deck") from None
    merged = await _svc(request).rates.import_deck(deck)
    return web.json_response({"imported": len(deck), "rates": len(merged)}, status=201)


@routes.get("/v1/rates/quote")
async def get_quote(request: web.Request) -> web.Response:
    principal = await _principal(request)
    allow(principal, ANY)
    number = request.query.get("number", "")
    if not number:
        raise InvalidInput("is required", "number")
    try:
        minutes = int(request.query.get("minutes", "1"))
    except ValueError:
        raise InvalidInput("must be an integer", "minutes") from None
    if not 0 <= minutes <= 100_000:
        raise InvalidInput("must be 0 to 100000", "minutes")
    svc = _svc(request)
    deck = await svc.rates.load()
    if deck is None:
        raise ApiError(404, "not_found", "no rate deck loaded")
    country = request.query.get("country") or None  # E.164 numbers are classified from their own country
    try:
        quote = make_quote(deck, number, minutes=minutes, country=country)
    except CreditRefused as exc:
        raise ApiError(404, "not_rated", exc.refusal.reason) from None
    return web.json_response(quote.to_dict())
