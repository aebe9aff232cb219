"""Shared settings of the benchmarks: smoke mode, and the real redis-server fixtures of the tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SMOKE = os.environ.get("CREDITGATE_BENCH_SMOKE") == "1"

pytest_plugins = ["tests.conftest"]
