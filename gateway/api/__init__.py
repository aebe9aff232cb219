"""The HTTP API for administrators and conference bridges (aiohttp, bearer tokens, OpenAPI, metrics)."""

from gateway.api.app import make_app, start_http

__all__ = ["make_app", "start_http"]
