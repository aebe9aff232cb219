"""Bearer tokens for the HTTP API: each scoped to one organization and one role (SPEC 7, 9).

A token names its organization; a request for another organization's resources is answered 404, as
if they did not exist (a token must not learn which organizations there are). The role decides what
the token may do; ``ROLES_*`` below are the sets each route accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.directory import Directory

__all__ = ["Principal", "authenticate", "READ", "MONEY", "ADMIN", "BRIDGE", "ANY", "OPERATOR"]

READ = frozenset({"operator", "org_admin", "billing_admin", "read_only"})
MONEY = frozenset({"operator", "org_admin", "billing_admin"})
ADMIN = frozenset({"operator", "org_admin"})
BRIDGE = frozenset({"operator", "org_admin", "bridge"})
OPERATOR = frozenset({"operator"})
ANY = frozenset({"operator", "org_admin", "billing_admin", "bridge", "read_only"})


SVC: web.AppKey[Any] = web.AppKey("svc", object)


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    org: str
    role: str


class ApiError(web.HTTPException):
    """An error answered as ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(headers=headers)
        self.code = code
        self.message = message
        self.field = field


async def authenticate(request: web.Request, directory: Directory) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "a bearer token is required",
                       headers={"WWW-Authenticate": 'Bearer realm="creditgate"'})
    info = await directory.token_info(token.strip())
    if info is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token",
                       headers={"WWW-Authenticate": 'Bearer realm="creditgate", error="invalid_token"'})
    return Principal(org=str(info["org"]), role=str(info["role"]))


def allow(principal: Principal, roles: frozenset[str], org: str | None = None) -> None:
    """404 for another organization's resources, 403 for a role that may not do this."""
    if org is not None and principal.org != org:
        raise ApiError(404, "not_found", f"no organization {org!r}")
    if principal.role not in roles:
        raise ApiError(403, "forbidden", f"a {principal.role} token may not do this")


__all__ += ["ApiError", "allow", "SVC"]
