"""The API tests' world (imported by tests/api/conftest.py and the tests): a real aiohttp server on a free loopback port over a real redis-server,
with two organizations and a token of every role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.api import start_http
from gateway.config import Config
from gateway.services import Services, open_services

try:
    from _procs import free_port
except ImportError:  # pragma: no cover
    from tests._procs import free_port

DECK = """prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,connection_fee,effective_from
+44,United Kingdom,0.10,GBP,60,60,0,
+4420,London,0.06,GBP,1,1,0.01,
"""


@dataclass
class Api:
    base: str
    http: aiohttp.ClientSession
    svc: Services
    tokens: dict[str, str]  # role -> token of acme; "beta" -> org_admin of beta

    async def call(self, method: str, path: str, *, token: str | None = None, role: str | None = "org_admin",
                   **kw: Any) -> tuple[int, Any]:
        headers = kw.pop("headers", {})
        tok = token if token is not None else (self.tokens[role] if role else None)
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        async with self.http.request(method, self.base + path, headers=headers, **kw) as resp:
            ctype = resp.headers.get("Content-Type", "")
            body = await resp.json() if "json" in ctype else await resp.text()
            return resp.status, body


@pytest.fixture
async def api(tmp_path: Path, redis_url: str) -> AsyncIterator[Api]:
    port = free_port()
    config = Config.from_dict({"data_dir": str(tmp_path / "data"), "redis": {"url": redis_url},
                               "http": {"listen": f"127.0.0.1:{port}", "max_body_bytes": 65536}})
    async with open_services(config) as svc:
        acme, admin = await svc.directory.create_org("Acme", country="GB", currency="GBP")
        beta, beta_admin = await svc.directory.create_org("Beta", country="US", currency="USD")
        tokens = {"org_admin": admin, "beta": beta_admin}
        for role in ("operator", "billing_admin", "bridge", "read_only"):
            tokens[role] = await svc.directory.create_token(acme.id, role)
        runner: web.AppRunner = await start_http(svc)
        try:
            async with aiohttp.ClientSession() as http:
                yield Api(base=f"http://127.0.0.1:{port}", http=http, svc=svc, tokens=tokens)
        finally:
            await runner.cleanup()
