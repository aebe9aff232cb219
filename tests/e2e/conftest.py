"""Fixtures of the end-to-end tests: ``world`` and ``sipp_factory`` (defined in _world.py and sipp_fixtures.py)."""

from _world import world  # noqa: F401  (fixtures: pytest finds them by name)
from sipp_fixtures import sipp_factory  # noqa: F401
