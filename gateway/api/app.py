"""The aiohttp application: routes, bearer auth, JSON errors, health, metrics and the OpenAPI document.

Errors always leave as ``{"error": {"code": ..., "message": ...}}`` with a 4xx/5xx status (SPEC 9);
an unexpected exception is logged with its trace and answered 500 with no detail, so nothing of the
process's insides reaches a client. Request bodies are bounded by ``[http] max_body_bytes``. A
request aiohttp's HTTP parser refuses (400 before any route) is answered in the same shape and logged
as one WARNING line.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from redis.exceptions import RedisError

from gateway.api.auth import SVC, ApiError
from gateway.api.metrics import Metrics
from gateway.api.openapi import openapi_document
from gateway.api.routes import routes
from gateway.errors import ConfigError, CreditgateError, InvalidInput, NotFound
from gateway.funding.providers import PaymentError
from gateway.ledger.client import LedgerUnavailable

__all__ = ["make_app", "start_http"]

log = logging.getLogger("creditgate.api")

METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, *, field: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message}
    if field:
        err["field"] = field
    return web.json_response({"error": err}, status=status, headers=headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status_code, exc.code, exc.message, field=exc.field,
                      headers={k: v for k, v in exc.headers.items() if k.lower() == "www-authenticate"})
    except InvalidInput as exc:
        status = exc.status_hint if 400 <= exc.status_hint < 500 else 422
        return _error(status, "invalid" if status == 422 else "refused", str(exc), field=exc.field)
    except PaymentError as exc:  # the payment provider declined with an error, or did not answer
        return _error(exc.status_hint, "payment_provider", str(exc),
                      headers={"Retry-After": "30"} if exc.status_hint == 503 else None)
    except NotFound as exc:
        return _error(404, "not_found", str(exc))
    except (LedgerUnavailable, RedisError):
        return _error(503, "unavailable", "the ledger is unreachable; try again", headers={"Retry-After": "5"})
    except ConfigError as exc:
        return _error(501, "not_configured", str(exc))
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "too_large", "the request body is too large")
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}  # RFC 9110: 405 names them
            return _error(exc.status, code, exc.reason, headers=kept or None)
        raise
    except CreditgateError as exc:
        status = getattr(exc, "status_hint", None)
        if isinstance(status, int) and 400 <= status < 500:
            return _error(status, "refused", str(exc))
        log.exception("request %s %s failed", request.method, request.path)
        return _error(500, "internal", "internal error")
    except Exception:  # noqa: BLE001 - never a trace to the client
        log.exception("request %s %s failed", request.method, request.path)
        return _error(500, "internal", "internal error")


async def _health(request: web.Request) -> web.Response:
    svc = request.app[SVC]
    try:
        await svc.client.ping()
        ledger = "ok"
    except (RedisError, OSError):
        ledger = "unreachable"
    status = 200 if ledger == "ok" else 503
    return web.json_response({"status": "ok" if status == 200 else "degraded", "ledger": ledger}, status=status)


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


def make_app(svc: Any, *, b2bua: Any = None) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=svc.config.http.max_body_bytes)
    app[SVC] = svc
    app[METRICS] = Metrics(svc, b2bua)
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_routes(routes)
    return app


class _MalformedHttpFilter(logging.Filter):
    """aiohttp logs a request its HTTP parser refuses (answered 400 before any route runs) at ERROR
    with a traceback: any client could fill the log with them. Such a record becomes one WARNING line
    naming the client and the fault; other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and getattr(exc, "code", 500) < 500:
            peer = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            reason = " ".join(str(exc.message).split())[:200]
            record.msg, record.args = "refused a malformed HTTP request from %s: %s %s", (peer, exc.code, reason)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_MALFORMED = _MalformedHttpFilter()
HTTP_SHUTDOWN_S = 5.0

_PRINTABLE = re.compile(r"[^ -~]")


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering what happens before any route runs (its HTTP parser
    refusing a request, a failure outside the middleware) in the API's error shape instead of its
    own text/plain body, so every error a client sees is ``{"error": {...}}`` (SPEC 9)."""

    __slots__ = ()

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # aiohttp's own: logs (see _MalformedHttpFilter) and raises if a response has begun already.
        super().handle_error(request, status, exc, message)
        if 400 <= status < 500:
            # The parser's first line names the fault; the lines after it echo the client's bytes.
            reason = str(exc.message).strip().split("\n", 1)[0] if isinstance(exc, HttpProcessingError) else ""
            reason = " ".join(_PRINTABLE.sub("?", reason).split()).rstrip(" :")[:120]
            code, text = "bad_request", f"malformed HTTP request{': ' + reason if reason else ''}"
        elif status == 504:
            code, text = "timeout", "the request took too long"
        else:
            code, text = "internal", "internal error"
        response = _error(status, code, text)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    """The low-level server that gives each connection a ``_JsonErrorHandler``."""

    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = _JsonErrorHandler  # same slots: only handle_error differs
        return handler


async def start_http(svc: Any, *, b2bua: Any = None, reuse_port: bool = False) -> web.AppRunner:
    """Serve the API on ``[http] listen``; the caller ``await runner.cleanup()`` to stop."""
    server_log = logging.getLogger("aiohttp.server")
    if _MALFORMED not in server_log.filters:
        server_log.addFilter(_MALFORMED)
    host, port = svc.config.http.address
    # shutdown_timeout: how long a stopping process lets requests in flight finish (aiohttp's default, 60 s,
    # would hold SIGTERM for a minute behind one slow client).
    runner = web.AppRunner(make_app(svc, b2bua=b2bua), access_log=None, handle_signals=False,
                           shutdown_timeout=HTTP_SHUTDOWN_S)
    await runner.setup()
    if type(runner.server) is web.Server:
        runner.server.__class__ = _JsonErrorServer  # the same server, answering parser errors as JSON
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None, backlog=512)
    await site.start()
    log.info("HTTP API listening on %s:%d", host, port)
    return runner
