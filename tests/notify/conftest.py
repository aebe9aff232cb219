"""Notify fixtures: a real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives, and the services.

``smtp_sink``: a ``_smtp_sink.SmtpSink`` started on a free port, stopped after the test.
``make_services(**sections)``: ``Services`` for a configuration whose ``[redis] url`` is the
flushed test server, closed after the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _smtp_sink import SmtpSink
from gateway.config import Config
from gateway.services import Services, open_services


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
async def make_services(redis_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Services]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**sections: Any) -> Services:
            raw: dict[str, Any] = {"data_dir": str(tmp_path / "data"), "redis": {"url": redis_url, "timeout_s": 5.0}}
            raw.update(sections)
            return await stack.enter_async_context(open_services(Config.from_dict(raw)))

        yield make
