"""The pytest face of the SIPp harness: ``sipp_factory``, runners that are stopped after the test.

Use it from a test module or a conftest by importing the fixture::

    from sipp_fixtures import sipp_factory  # noqa: F401  (a fixture: pytest finds it by name)

    def test_x(sipp_factory):
        uas = sipp_factory(SippScenario.UAS_ANSWER, calls=1).start()
        uac = sipp_factory(SippScenario.UAC_CALL, remote=uas.address, calls=1, injection=[("+441", "+442")])
        assert uac.run() == 0, uac.diagnostics()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

try:  # tests/e2e on sys.path (pytest's rootdir-relative import of this directory), or from the root
    from sipp import Sipp, stop_all
except ImportError:  # pragma: no cover
    from tests.e2e.sipp import Sipp, stop_all

__all__ = ["sipp_factory"]


@pytest.fixture
def sipp_factory(tmp_path: Path) -> Iterator[Callable[..., Sipp]]:
    """Make ``Sipp`` runners (same arguments) with their traces under the test's ``tmp_path``;
    every one of them is stopped (process group SIGTERM, then SIGKILL) when the test ends."""
    runners: list[Sipp] = []

    def make(scenario: Path | str, **kwargs: object) -> Sipp:
        name = str(kwargs.get("name") or Path(str(scenario)).stem)
        kwargs.setdefault("workdir", tmp_path / f"sipp{len(runners)}-{name}")
        runner = Sipp(scenario, **kwargs)  # type: ignore[arg-type]
        runners.append(runner)
        return runner

    try:
        yield make
    finally:
        stop_all(runners)
