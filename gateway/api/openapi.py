"""The OpenAPI 3 document of the HTTP API (served at ``/openapi.json``): every route, its auth and shapes."""

from __future__ import annotations

from typing import Any

from gateway import __version__
from gateway.directory import ADMIN_ROLES, TOKEN_ROLES

__all__ = ["openapi_document"]

MONEY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]{1,6})?$", "example": "50.00",
         "description": "Decimal string in the account currency, up to 6 decimals"}
ORG = {"name": "org", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": _json(_ref("Error"), "Malformed request body"),
    "401": _json(_ref("Error"), "Missing, unknown or revoked token"),
    "403": _json(_ref("Error"), "The token's role may not do this"),
    "404": _json(_ref("Error"), "No such resource (or another organization's)"),
    "422": _json(_ref("Error"), "A field is invalid; `error.field` names it"),
    "503": _json(_ref("Error"), "The ledger is unreachable"),
    "413": _json(_ref("Error"), "The request body is larger than [http] max_body_bytes"),
}


def _op(summary: str, ok: dict[str, Any], *, roles: tuple[str, ...] | None = None, org: bool = True,
        body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
        status: str = "200", errors: tuple[str, ...] = ("401", "403", "404", "503")) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok, **{e: ERRORS[e] for e in errors}}}
    if roles is not None:
        op["description"] = "Token roles allowed: " + ", ".join(roles) + "."
        op["security"] = [{"bearer": []}]
        op["x-roles"] = list(roles)  # machine-readable: the hostile-HTTP tests check every route by it
    op["parameters"] = ([ORG] if org else []) + (params or [])
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"].setdefault("400", ERRORS["400"])
        op["responses"].setdefault("413", ERRORS["413"])
        op["responses"].setdefault("422", ERRORS["422"])
    return op


def openapi_document() -> dict[str, Any]:
    read = ("operator", "org_admin", "billing_admin", "read_only")
    money = ("operator", "org_admin", "billing_admin")
    admin = ("operator", "org_admin")
    q = {"in": "query", "required": False}
    return {
        "openapi": "3.0.3",
        "info": {"title": "creditgate", "version": __version__,
                 "description": "Prepaid communications credits for SIP calls: balances, funding, ledger, "
                                "users, live calls and rates. Money is a decimal string in the account "
                                "currency; times are ISO 8601 UTC; numbers are E.164."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                   "field": {"type": "string"}}}}},
                "Money": MONEY,
                "Balance": {"type": "object", "required": ["balance", "reserved", "available", "currency"],
                            "properties": {"balance": MONEY, "reserved": MONEY, "available": MONEY,
                                           "currency": {"type": "string"}}},
                "FundingRequest": {"type": "object", "required": ["amount"], "properties": {
                    "amount": MONEY, "idempotency_key": {"type": "string", "maxLength": 128}}},
                "Funding": {"type": "object", "required": ["org", "funded", "balance", "currency"],
                            "properties": {"org": {"type": "string"}, "funded": MONEY, "balance": MONEY,
                                           "currency": {"type": "string"}}},
                "AutoRechargeRequest": {"type": "object", "properties": {
                    "enabled": {"type": "boolean", "default": True}, "threshold": MONEY, "amount": MONEY}},
                "AutoRecharge": {"type": "object", "required": ["org", "enabled"], "properties": {
                    "org": {"type": "string"}, "enabled": {"type": "boolean"}, "threshold": MONEY,
                    "amount": MONEY, "currency": {"type": "string"}}},
                "LedgerEntry": {"type": "object", "required": ["id", "ts", "type", "amount", "balance"],
                                "properties": {"id": {"type": "string"}, "ts": {"type": "string"},
                                               "type": {"type": "string"},
                                               "amount": {"type": "string", "description": "signed decimal"},
                                               "balance": MONEY, "call": {"type": "string", "nullable": True},
                                               "note": {"type": "string"}}},
                "LedgerPage": {"type": "object", "required": ["entries", "next_cursor"], "properties": {
                    "entries": {"type": "array", "items": _ref("LedgerEntry")},
                    "next_cursor": {"type": "string", "nullable": True}}},
                "User": {"type": "object", "required": ["org", "id", "number"], "properties": {
                    "org": {"type": "string"}, "id": {"type": "string"}, "number": {"type": "string"},
                    "email": {"type": "string"}, "roles": {"type": "array", "items": {"type": "string"}},
                    "licence": {"type": "boolean"}, "plan": {"type": "string"}, "country": {"type": "string"}}},
                "UserCreate": {"type": "object", "required": ["id", "number"], "properties": {
                    "id": {"type": "string"}, "number": {"type": "string", "example": "+442079460123"},
                    "email": {"type": "string"},
                    "roles": {"type": "array", "items": {"type": "string", "enum": list(ADMIN_ROLES)}},
                    "licence": {"type": "boolean"}, "plan": {"type": "string"}, "country": {"type": "string"}}},
                "LiveCall": {"type": "object", "properties": {
                    "call_id": {"type": "string"}, "state": {"type": "string"}, "user": {"type": "string"},
                    "caller": {"type": "string"}, "callee": {"type": "string"}, "class": {"type": "string"},
                    "destination": {"type": "string"}, "direction": {"type": "string"},
                    "conference_id": {"type": "string"}, "paid_by": {"type": "string"},
                    "granted_s": {"type": "integer"}, "held": MONEY, "charged_so_far": MONEY,
                    "currency": {"type": "string"}}},
                "TokenRequest": {"type": "object", "required": ["role"], "properties": {
                    "role": {"type": "string", "enum": list(TOKEN_ROLES)}, "label": {"type": "string"}}},
                "Token": {"type": "object", "required": ["org", "role", "token"], "properties": {
                    "org": {"type": "string"}, "role": {"type": "string"}, "token": {"type": "string"}}},
                "Quote": {"type": "object", "additionalProperties": True},
                "DialoutRequest": {"type": "object", "required": ["number"], "properties": {
                    "number": {"type": "string", "example": "+12125550123"}, "user": {"type": "string"},
                    "conference_id": {"type": "string"}}},
                "DialoutResult": {"type": "object", "required": ["authorized", "grant", "max_duration_s", "rate",
                                                                 "class", "reason"], "properties": {
                    "authorized": {"type": "boolean"}, "grant": {"type": "string", "nullable": True},
                    "max_duration_s": {"type": "integer", "nullable": True},
                    "rate": {"type": "string", "nullable": True}, "class": {"type": "string", "nullable": True},
                    "reason": {"type": "string"}, "paid_by": {"type": "string"}, "number": {"type": "string"},
                    "expires_in_s": {"type": "integer"}, "currency": {"type": "string"},
                    "code": {"type": "string"}, "status": {"type": "integer"}}},
                "SessionStart": {"type": "object", "required": ["number"], "properties": {
                    "session_id": {"type": "string", "pattern": "^[A-Za-z0-9._~-]{8,100}$",
                                   "description": "yours (idempotency), or one is made"},
                    "number": {"type": "string", "example": "+12125550123"}, "user": {"type": "string"},
                    "conference_id": {"type": "string"},
                    "direction": {"type": "string", "enum": ["outbound", "dialout"], "default": "outbound"}},
                    "example": {"session_id": "sw-0001-abcdef", "number": "+12125550123", "user": "alice"}},
                "SessionGrant": {"type": "object", "properties": {
                    "authorized": {"type": "boolean"}, "session_id": {"type": "string"},
                    "granted_s": {"type": "integer", "nullable": True,
                                  "description": "paid through this many seconds from answer; null: no limit"},
                    "final": {"type": "boolean", "description": "no further grant will come: end the call at granted_s"},
                    "held": MONEY, "currency": {"type": "string"}, "sequence": {"type": "integer"},
                    "max_duration_s": {"type": "integer", "nullable": True}, "paid_by": {"type": "string"},
                    "class": {"type": "string"}, "number": {"type": "string"},
                    "rate": {"type": "string", "nullable": True}, "reason": {"type": "string"},
                    "code": {"type": "string"}, "status": {"type": "integer"}},
                    "example": {"authorized": True, "session_id": "sw-0001-abcdef", "granted_s": 60, "final": False,
                                "held": "0.02", "currency": "GBP", "sequence": 0, "max_duration_s": 2994,
                                "paid_by": "credits", "class": "international", "number": "+12125550123",
                                "rate": "0.02"}},
                "SessionUpdate": {"type": "object", "required": ["sequence"], "properties": {
                    "sequence": {"type": "integer", "minimum": 1, "description": "1 for the first update, then 2, ..."}},
                    "example": {"sequence": 1}},
                "SessionTerminate": {"type": "object", "required": ["sequence", "used_s"], "properties": {
                    "sequence": {"type": "integer", "minimum": 1}, "used_s": {"type": "integer", "minimum": 0},
                    "answered": {"type": "boolean", "default": True}, "reason": {"type": "string", "default": "normal"}},
                    "example": {"sequence": 2, "used_s": 75}},
                "SessionResult": {"type": "object", "properties": {
                    "session_id": {"type": "string"}, "charge": MONEY, "billed_s": {"type": "integer"},
                    "balance": MONEY, "currency": {"type": "string"}},
                    "example": {"session_id": "sw-0001-abcdef", "charge": "0.03", "billed_s": 78, "balance": "49.97",
                                "currency": "GBP"}},
            },
        },
        "paths": {
            "/health": {"get": {"summary": "Liveness and ledger reachability", "parameters": [], "responses": {
                "200": _json({"type": "object"}), "503": _json({"type": "object"}, "Ledger unreachable")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "parameters": [], "responses": {
                "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "parameters": [],
                                      "responses": {"200": _json({"type": "object"})}}},
            "/v1/orgs/{org}/balance": {"get": _op("Balance, reservations of live calls, available", _json(_ref("Balance")), roles=read)},
            "/v1/orgs/{org}/funding": {"post": _op(
                "Fund the balance once (at least the minimum funding); a purchase through the payment "
                "provider when one is configured", _json(_ref("Funding"), "Funded"), roles=money,
                body=_ref("FundingRequest"), status="201")
                | {"responses": {"201": _json(_ref("Funding"), "Funded"), **ERRORS,
                                 "402": _json(_ref("Error"), "The payment provider declined"),
                                 "501": _json(_ref("Error"), "No such payment provider configured"),
                                 "502": _json(_ref("Error"), "The payment provider failed"),
                                 "503": _json(_ref("Error"), "The ledger or the payment provider is unreachable")}}},
            "/v1/orgs/{org}/auto-recharge": {
                "get": _op("Auto-recharge settings", _json(_ref("AutoRecharge")), roles=read),
                "put": _op("Turn auto-recharge on (threshold, amount) or off (enabled: false)",
                           _json(_ref("AutoRecharge")), roles=money, body=_ref("AutoRechargeRequest"))},
            "/v1/orgs/{org}/ledger": {"get": _op(
                "Audit ledger: every balance change with the running balance, oldest first, paged",
                _json(_ref("LedgerPage")), roles=read, errors=("401", "403", "404", "422", "503"), params=[
                    {**q, "name": "from", "schema": {"type": "string"}, "description": "date or ISO time"},
                    {**q, "name": "to", "schema": {"type": "string"}},
                    {**q, "name": "limit", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    {**q, "name": "cursor", "schema": {"type": "string"}, "description": "next_cursor of the previous page"}])},
            "/v1/orgs/{org}/users": {
                "get": _op("Users with their licence, plan and roles",
                           _json({"type": "array", "items": _ref("User")}), roles=read),
                "post": _op("Add or update a user", _json(_ref("User"), "Created"), roles=admin,
                            body=_ref("UserCreate"), status="201")},
            "/v1/orgs/{org}/usage": {"get": _op(
                "PSTN usage report: every call started in the range (or totals by user, destination or day)",
                {"description": "JSON rows or totals; CSV or xlsx as a file", "content": {
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                    "text/csv": {"schema": {"type": "string"}},
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
                        "schema": {"type": "string", "format": "binary"}}}},
                roles=read, errors=("401", "403", "404", "422", "503"), params=[
                    {**q, "name": "from", "schema": {"type": "string", "format": "date"}},
                    {**q, "name": "to", "schema": {"type": "string", "format": "date"}},
                    {**q, "name": "user", "schema": {"type": "string"}},
                    {**q, "name": "by", "schema": {"type": "string", "enum": ["user", "destination", "day"]}},
                    {**q, "name": "format", "schema": {"type": "string", "enum": ["json", "csv", "xlsx"],
                                                      "default": "json"}}])},
            "/v1/orgs/{org}/calls": {"get": _op("Live calls", _json({"type": "array", "items": _ref("LiveCall")}), roles=read)},
            "/v1/orgs/{org}/tokens": {"post": _op("Create an API token (shown once, stored hashed)",
                                                  _json(_ref("Token"), "Created"), roles=admin,
                                                  body=_ref("TokenRequest"), status="201")},
            "/v1/orgs/{org}/tokens/{token_hash}": {"delete": _op(
                "Revoke a token", _json({"type": "object"}), roles=admin,
                params=[{"name": "token_hash", "in": "path", "required": True, "schema": {"type": "string"},
                         "description": "the token or its sha256 hex"}])},
            "/v1/orgs/{org}/dialout/authorize": {"post": _op(
                "May a bridge dial this number for this user and conference? A short-lived signed grant that "
                "reserves the first chunk; the bridge's INVITE carries it in X-Creditgate-Grant",
                _json(_ref("DialoutResult"), "Authorized (201) or refused (200, authorized false)"),
                roles=("operator", "org_admin", "bridge"), body=_ref("DialoutRequest"), status="201")},
            "/v1/orgs/{org}/sessions": {"post": _op(
                "Credit-control session, initial request: authorize and grant the first chunk",
                _json(_ref("SessionGrant"), "Authorized (201) or refused (200, authorized false)"),
                roles=("operator", "org_admin", "bridge"), body=_ref("SessionStart"), status="201")
                | {"description": "Token roles allowed: operator, org_admin, bridge. Worked example: start "
                                  "{session_id: sw-0001-abcdef, number: +12125550123} -> granted_s 60; at about 55 s "
                                  "update {sequence: 1} -> granted_s 120; the call ends at 75 s: terminate "
                                  "{sequence: 2, used_s: 75} -> the exact charge of 75 s by the deck's increments "
                                  "and a CDR. Replaying any request with the same sequence returns the first answer."}},
            "/v1/orgs/{org}/sessions/{session}/update": {"post": _op(
                "Commit the chunk used and grant the next (final: the seconds left)", _json(_ref("SessionGrant")),
                roles=("operator", "org_admin", "bridge"), body=_ref("SessionUpdate"),
                params=[{"name": "session", "in": "path", "required": True, "schema": {"type": "string"}}])},
            "/v1/orgs/{org}/sessions/{session}/terminate": {"post": _op(
                "Settle: charge the exact price of the seconds used and write the CDR", _json(_ref("SessionResult")),
                roles=("operator", "org_admin", "bridge"), body=_ref("SessionTerminate"),
                params=[{"name": "session", "in": "path", "required": True, "schema": {"type": "string"}}])},
            "/v1/rates/decks": {"post": {
                "summary": "Import a rate deck (CSV with the SPEC header); rows without a date take ?effective",
                "description": "Token roles allowed: operator.", "security": [{"bearer": []}], "x-roles": ["operator"],
                "parameters": [{**q, "name": "effective", "schema": {"type": "string", "format": "date"}}],
                "requestBody": {"required": True, "content": {"text/csv": {"schema": {"type": "string"}}}},
                "responses": {"201": _json({"type": "object"}, "Imported"),
                              **{e: ERRORS[e] for e in ("400", "401", "403", "413", "422", "503")}}}},
            "/v1/rates/quote": {"get": _op(
                "What a call to a number costs for N minutes", _json(_ref("Quote")), org=False,
                roles=tuple(TOKEN_ROLES), errors=("401", "404", "422", "503"), params=[
                    {"name": "number", "in": "query", "required": True,
                     "schema": {"type": "string", "pattern": r"^\+?[0-9]{2,20}$"}},
                    {**q, "name": "minutes", "schema": {"type": "integer", "minimum": 0, "maximum": 100000, "default": 1}},
                    {**q, "name": "country", "schema": {"type": "string", "pattern": "^[A-Z]{2}$"},
                     "description": "for a nationally dialed number"}])},
        },
    }
