"""GET /v1/orgs/{org}/usage over the real server: rows, filters, totals, CSV and an xlsx re-read with openpyxl."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import openpyxl
from _api import Api

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reports"))
from _cdrs import utc, xadd_cdrs  # noqa: E402  (the report tests' CDR maker: the shape settle.lua writes)


async def _seed(api: Api) -> None:
    # 30 calls from 1 Nov 2026, one every 8 hours, users alice, bob and carol in turn.
    await xadd_cdrs(api.svc.client, 30, first=utc(2026, 11, 1, 9), step_s=8 * 3600)


async def test_usage_rows_filters_and_totals(api: Api) -> None:
    await _seed(api)
    status, rows = await api.call("GET", "/v1/orgs/acme/usage?from=2026-11-01&to=2026-11-03", role="read_only")
    assert status == 200 and len(rows) == 8  # 1 Nov from 09:00 (2 calls), 2 and 3 Nov (3 each)
    assert {"user", "caller", "callee", "destination", "class", "start", "answer", "end", "billed_s", "rate",
            "charge", "currency", "paid", "conference_id", "end_reason"} <= set(rows[0])
    status, alice = await api.call("GET", "/v1/orgs/acme/usage?user=alice", role="read_only")
    assert status == 200 and len(alice) == 10 and {r["user"] for r in alice} == {"alice"}
    status, by_user = await api.call("GET", "/v1/orgs/acme/usage?by=user")
    assert status == 200 and sorted(t["user"] for t in by_user) == ["alice", "bob", "carol"]
    assert sum(t["calls"] for t in by_user) == 30
    for query, field in (("by=month", "by"), ("format=pdf", "format"), ("from=2026-11-05&to=2026-11-01", "to")):
        status, err = await api.call("GET", f"/v1/orgs/acme/usage?{query}")
        assert status == 422 and err["error"]["field"] == field, (query, err)


async def test_usage_as_csv_and_xlsx(api: Api) -> None:
    await _seed(api)
    status, text = await api.call("GET", "/v1/orgs/acme/usage?format=csv&to=2026-11-02")
    assert status == 200
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 5 and {r["currency"] for r in table} == {"GBP"}  # 1 and 2 Nov
    assert table[0]["start"] == "2026-11-01T09:00:00.000Z"
    async with api.http.get(api.base + "/v1/orgs/acme/usage?format=xlsx",
                            headers={"Authorization": f"Bearer {api.tokens['org_admin']}"}) as resp:
        assert resp.status == 200 and "spreadsheetml" in resp.headers["Content-Type"]
        data = await resp.read()
    wb = openpyxl.load_workbook(io.BytesIO(data))
    calls = wb.worksheets[0]
    assert calls.max_row == 31  # a header row and the 30 calls
    assert [ws.title for ws in wb.worksheets][1:] == ["By user", "By destination", "By day"]
    header = [c.value for c in calls[1]]
    start = calls.cell(row=2, column=header.index("start") + 1).value
    assert start == utc(2026, 11, 1, 9).replace(tzinfo=None)  # a date cell, not text
    assert isinstance(calls.cell(row=2, column=header.index("charge") + 1).value, (int, float))
