"""Notify fixtures: a real SMTP server (aiosmtpd) on 127.0.0.1 that keeps what it receives, and the services.

``smtp_sink``: a ``_smtp_sink.SmtpSink`` started on a free port, stopped after the test.
``make_services`` comes from tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from _smtp_sink import SmtpSink


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()
