"""Helpers of the rating-core tests: loading a twin and writing small decks."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

HEADER = "prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,connection_fee,effective_from"


def load_twin(name: str) -> ModuleType:
    """The public surface of a twin: ``py`` (always there) or ``c`` (fails the test when not built)."""
    if name == "py":
        return importlib.import_module("rating_core.pure")
    try:
        return importlib.import_module("rating_core._compiled")
    except ImportError as exc:
        pytest.fail(
            f"the compiled rating core is not built ({exc}); run `python setup.py build_ext --inplace`",
            pytrace=False,
        )


def csv_text(*rows: str, header: str = HEADER) -> str:
    """A deck's CSV text: the header then ``rows``, one per line."""
    return "\n".join((header, *rows)) + "\n"
