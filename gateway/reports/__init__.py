"""Reports: live calls, CDRs and the PSTN usage report (rows, totals, and their exports).

The export writers (``gateway.reports.export``) load openpyxl, a third of a second of imports: they
are re-exported here lazily, so that a process that only lists live calls never pays for it.
"""

from __future__ import annotations

from typing import Any

from gateway.reports.live import live_calls
from gateway.reports.usage import (
    GROUPINGS,
    Totals,
    UsageRow,
    UsageRows,
    UsageTotal,
    aggregate,
    check_grouping,
    parse_range,
    row_from_cdr,
    usage_rows,
)

_EXPORTS = (
    "CSV_COLUMNS",
    "TEAMS_COLUMNS",
    "TOTAL_COLUMNS",
    "iter_csv",
    "iter_json",
    "iter_teams_csv",
    "iter_totals_csv",
    "write_csv",
    "write_json",
    "write_teams_csv",
    "write_totals_csv",
    "write_xlsx",
)

__all__ = [
    "live_calls",
    "GROUPINGS",
    "Totals",
    "UsageRow",
    "UsageRows",
    "UsageTotal",
    "aggregate",
    "check_grouping",
    "parse_range",
    "row_from_cdr",
    "usage_rows",
    *_EXPORTS,
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from gateway.reports import export

        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
