"""Fixtures of the rating-core tests: every test that takes ``rc`` runs once per twin (ids ``py``, ``c``).

The ``c`` case fails, never skips, when the extension is not built: CI builds it, so a missing build is a
broken build. It imports the compiled surface directly, so it is tested even under
CREDITGATE_NO_EXTENSIONS=1 (which only decides what ``rating_core`` serves).
"""

from __future__ import annotations

from types import ModuleType

import pytest
from rating_helpers import load_twin


@pytest.fixture(params=["py", "c"])
def rc(request: pytest.FixtureRequest) -> ModuleType:
    """The public surface of one twin: ``rc.RateDeck``, ``rc.charge``, ``rc.max_seconds``, ..."""
    return load_twin(request.param)


@pytest.fixture(scope="session")
def twins() -> tuple[ModuleType, ModuleType]:
    """Both twins, (pure, compiled), for the tests that compare them."""
    return load_twin("py"), load_twin("c")
