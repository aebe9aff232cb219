"""Fixtures of the API tests: ``api`` (defined in _api.py)."""

from _api import api  # noqa: F401  (a fixture: pytest finds it by name)
