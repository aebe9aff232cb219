"""Large exports stream: 100,000 CDRs go to CSV (10,000 to xlsx) while holding one page at a time.

tracemalloc measures the peak of Python allocations during each export and compares it with what
holding the rows would take (measured on the first 5,000 rows, scaled to all of them). No timing.
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import openpyxl

from gateway.ledger.client import Ledger
from gateway.reports import usage_rows, write_csv, write_xlsx

from _cdrs import ORG, utc, xadd_bulk

N = 100_000


class Sink(io.TextIOBase):
    """A text file that keeps only a count and the last line written."""

    def __init__(self) -> None:
        self.chars = 0
        self.lines = 0

    def write(self, s: str) -> int:
        self.chars += len(s)
        self.lines += s.count("\n")
        return len(s)


async def _held_bytes_per_row(ledger: Ledger) -> float:
    tracemalloc.start()
    try:
        rows = usage_rows(ledger, ORG)
        held = []
        async for r in rows:
            held.append(r)
            if len(held) == 5000:
                break
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(held) == 5000
    return size / len(held)


async def _peak(coro) -> tuple[object, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = await coro
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


async def test_a_large_export_holds_one_page_not_every_row(ledger: Ledger, ledger_client, tmp_path: Path,
                                                           capsys) -> None:
    # 100,000 calls, one every 26 s: a month.
    await xadd_bulk(ledger_client, N, first=utc(2026, 10, 1), step_ms=26_000)
    per_row = await _held_bytes_per_row(ledger)
    holding = per_row * N

    sink = Sink()
    n, csv_peak = await _peak(write_csv(usage_rows(ledger, ORG, start="2026-10-01", end="2026-10-31"), sink))
    assert n == N and sink.lines == N + 1

    with capsys.disabled():
        print(f"\nholding {N:,} rows: {holding / 2**20:,.0f} MiB ({per_row:,.0f} B/row); streaming peak: "
              f"CSV {csv_peak / 2**20:.1f} MiB")
    assert csv_peak < holding / 20
    assert csv_peak < 32 * 2**20


async def test_a_large_xlsx_export_streams_too(ledger: Ledger, ledger_client, tmp_path: Path, capsys) -> None:
    # openpyxl has a fixed cost (the workbook, the zip on save); what must not grow is the cost per
    # row: five times the rows may not cost a tenth of what holding the extra rows would.
    n_rows = 10_000
    await xadd_bulk(ledger_client, n_rows, first=utc(2026, 10, 1), step_ms=60_000)
    per_row = await _held_bytes_per_row(ledger)
    small, small_peak = await _peak(write_xlsx(usage_rows(ledger, ORG, end="2026-10-02T09:20:00Z"),
                                               tmp_path / "small.xlsx"))
    path = tmp_path / "big.xlsx"
    n, peak = await _peak(write_xlsx(usage_rows(ledger, ORG), path))
    assert (small, n) == (2_000, n_rows)
    extra_held = per_row * (n_rows - small)
    with capsys.disabled():
        print(f"\nxlsx streaming peak: {small_peak / 2**20:.1f} MiB for {small:,} rows, {peak / 2**20:.1f} MiB for "
              f"{n:,} rows; holding the {n - small:,} more rows would take {extra_held / 2**20:,.0f} MiB")
    assert peak - small_peak < extra_held / 10
    wb = openpyxl.load_workbook(path, read_only=True)
    assert sum(1 for _ in wb["Calls"].iter_rows(values_only=True)) == n_rows + 1
    wb.close()
