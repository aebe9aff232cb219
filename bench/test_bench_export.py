"""Usage report exports: CDRs per second from a real redis-server stream to CSV and to xlsx.

N CDRs shaped like settle.lua's (meta and extra as the engine and the B2BUA write them) are put in
one organization's stream, then the report reads them page by page (XRANGE), turns each into a
typed row and writes it: CSV to a file, and an xlsx workbook (openpyxl write-only: the rows sheet
and the three totals sheets). Prints CDRs/s for each and the CPU share of this process (the
exporter is single-threaded Python; Redis does little).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import uvloop

from bench.conftest import SMOKE
from gateway.ledger.client import Ledger
from gateway.reports import usage_rows, write_csv, write_xlsx
from gateway.services import redis_client
from tests.reports._cdrs import ORG, xadd_bulk

N = 2_000 if SMOKE else 200_000


async def _fill(url: str) -> None:
    client = redis_client(url, timeout_s=60.0)
    try:
        # A call every 13 s: 200,000 calls are a month.
        await xadd_bulk(client, N, first=datetime(2026, 10, 1, tzinfo=timezone.utc), step_ms=13_000)
        assert await client.xlen(f"cg:{{{ORG}}}:cdr") == N
    finally:
        await client.aclose()


async def _export(url: str, kind: str, path: Path) -> tuple[int, float, float]:
    client = redis_client(url, timeout_s=60.0)
    ledger = Ledger(client)
    try:
        rows = usage_rows(ledger, ORG, start="2026-10-01", end="2026-12-31")
        cpu = time.process_time()
        start = time.perf_counter()
        if kind == "csv":
            with path.open("w", newline="", encoding="utf-8") as fh:
                n = await write_csv(rows, fh)
        else:
            n = await write_xlsx(rows, path)
        return n, time.perf_counter() - start, time.process_time() - cpu
    finally:
        await ledger.close()
        await client.aclose()


@pytest.fixture
def filled(redis_url: str) -> str:
    uvloop.run(_fill(redis_url))
    return redis_url


@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_export_cdrs_per_second(benchmark, filled: str, kind: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / f"usage.{kind}"
    n, wall, cpu = benchmark.pedantic(lambda: uvloop.run(_export(filled, kind, path)), rounds=1, iterations=1)
    with capsys.disabled():
        print(f"\nexport {kind}: {n / wall:,.0f} CDRs/s ({n:,} CDRs in {wall:.1f} s, "
              f"{path.stat().st_size / n:,.0f} bytes/CDR, python CPU {cpu / wall:.0%} of wall)")
    assert n == N
