"""gateway/reports/export.py: the CSV, Teams CSV, JSON and xlsx files, read back and checked cell by cell."""

from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import openpyxl
import pytest

from gateway.ledger.client import Ledger
from gateway.reports import (
    CSV_COLUMNS,
    TEAMS_COLUMNS,
    aggregate,
    iter_csv,
    usage_rows,
    write_csv,
    write_json,
    write_teams_csv,
    write_totals_csv,
    write_xlsx,
)
from gateway.reports.export import money_format
from gateway.reports.usage import UsageRow

from _cdrs import ORG, UNIT, call, utc, xadd_cdrs

# The Teams admin center's "Exported PSTN usage report" columns, in order, as its documentation
# (learn.microsoft.com/microsoftteams/teams-analytics-and-reports/pstn-usage-report) lists them.
TEAMS_HEADER = [
    "UsageId", "Call ID", "Conference ID", "User Location", "AAD ObjectId", "UPN", "User Display Name", "Caller ID",
    "Call Type", "Number Type", "Domestic/International", "Destination Dialed", "Destination Number", "Start Time",
    "End Time", "Duration Seconds", "Connection Fee", "Charge", "Currency", "Capability",
]  # fmt: skip


async def real_calls(ledger: Ledger) -> list[UsageRow]:
    """Three calls through the ledger's scripts: credits, an included conference dial-out, a cancel."""
    await ledger.fund(ORG, 10 * UNIT)
    t0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    await call(ledger, "c1", start=t0, ring_s=2, duration_s=75)
    from gateway.ledger.client import RateTerms

    await call(ledger, "c2", start=t0 + timedelta(minutes=5), duration_s=30, pays="included", terms=RateTerms(),
               user="bob", direction="dialout", conference_id="conf-42", number_class="domestic_mobile",
               destination="United Kingdom - Mobile", callee="+447700900123")
    await call(ledger, "c3", start=t0 + timedelta(minutes=9), answered=False, end_reason="cancelled")
    return [r async for r in usage_rows(ledger, ORG)]


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def test_csv_has_a_header_and_one_line_per_call_with_money_as_decimals(ledger: Ledger) -> None:
    rows = await real_calls(ledger)
    out = io.StringIO(newline="")
    assert await write_csv(usage_rows(ledger, ORG), out) == 3
    text = out.getvalue()
    assert text.endswith("\r\n")  # RFC 4180
    lines = read_csv(text)
    assert lines[0] == [h for h, _ in CSV_COLUMNS]
    assert len(lines) == 4
    c1 = dict(zip(lines[0], lines[1]))
    r = rows[0]
    assert c1 == {
        "id": r.id, "call_id": "c1", "organization": ORG, "user": "alice", "direction": "outbound",
        "caller": "+442071234567", "callee": "+33142685300", "dialed": "0033142685300", "destination": "France",
        "prefix": "33", "class": "international",
        "start": r.start.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "answer": (r.start + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "end": (r.start + timedelta(seconds=77)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "settled": r.settled.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "answered": "true", "duration_s": "75", "billed_s": "78", "minutes_s": "0", "rate": "0.10",
        "connection_fee": "0.01", "charge": "0.14", "uncollected": "0.00", "currency": "GBP", "paid": "credits",
        "conference_id": "", "end_reason": "normal", "coverage": "credits", "sip_call_id": "c1@pbx.example",
        "sip_status": "200",
    }  # fmt: skip
    c3 = dict(zip(lines[0], lines[3]))
    assert (c3["answered"], c3["answer"], c3["charge"], c3["end_reason"]) == ("false", "", "0.00", "cancelled")


async def test_csv_neutralizes_cells_a_spreadsheet_would_run_as_formulas(ledger: Ledger, ledger_client) -> None:
    await xadd_cdrs(ledger_client, 1, first=utc(2026, 11, 1), step_s=60, users=('=HYPERLINK("http://x")',))
    out = io.StringIO(newline="")
    await write_csv(usage_rows(ledger, ORG), out)
    line = dict(zip(*read_csv(out.getvalue())))
    assert line["user"] == '\'=HYPERLINK("http://x")'
    assert line["callee"] == "+33142680000"  # a phone number stays as it is


async def test_teams_csv_has_the_teams_export_columns_filled_from_the_cdr(ledger: Ledger) -> None:
    rows = await real_calls(ledger)
    assert list(TEAMS_COLUMNS) == TEAMS_HEADER
    out = io.StringIO(newline="")
    n = await write_teams_csv(usage_rows(ledger, ORG), out, user_location="GB", display_names={"alice": "Alice A"})
    lines = read_csv(out.getvalue())
    assert n == 3 and lines[0] == TEAMS_HEADER
    c1, c2, c3 = (dict(zip(TEAMS_HEADER, line)) for line in lines[1:])
    r1 = rows[0]
    assert uuid.UUID(c1["UsageId"]).version == 5
    assert c1 == {
        "UsageId": c1["UsageId"], "Call ID": "c1@pbx.example", "Conference ID": "", "User Location": "GB",
        "AAD ObjectId": "", "UPN": "alice", "User Display Name": "Alice A", "Caller ID": "+33142685300",
        "Call Type": "user_out", "Number Type": "user", "Domestic/International": "International",
        "Destination Dialed": "France", "Destination Number": "+33142685300",
        "Start Time": (r1.start + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "End Time": (r1.start + timedelta(seconds=77)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "Duration Seconds": "75", "Connection Fee": "0.01", "Charge": "0.14", "Currency": "GBP",
        "Capability": "credits",
    }  # fmt: skip
    assert (c2["Call Type"], c2["Conference ID"], c2["Domestic/International"], c2["Capability"]) == (
        "conf_out", "conf-42", "Domestic", "included")
    assert (c2["Connection Fee"], c2["Charge"], c2["User Display Name"]) == ("0.00", "0.00", "")
    assert (c3["Duration Seconds"], c3["Charge"]) == ("0", "0.00")
    # The same call gets the same UsageId in every export.
    again = io.StringIO(newline="")
    await write_teams_csv(usage_rows(ledger, ORG), again)
    assert read_csv(again.getvalue())[1][0] == c1["UsageId"]


async def test_json_is_an_array_of_row_objects(ledger: Ledger) -> None:
    rows = await real_calls(ledger)
    out = io.StringIO()
    assert await write_json(usage_rows(ledger, ORG), out) == 3
    data = json.loads(out.getvalue())
    assert data == [r.to_dict() for r in rows]
    empty = io.StringIO()
    assert await write_json([], empty) == 0 and json.loads(empty.getvalue()) == []


async def test_totals_csv(ledger: Ledger, ledger_client) -> None:
    await xadd_cdrs(ledger_client, 4, first=utc(2026, 11, 1), step_s=60, users=("alice", "bob"))
    out = io.StringIO(newline="")
    await write_totals_csv(await aggregate(usage_rows(ledger, ORG), "user"), "user", out)
    assert read_csv(out.getvalue()) == [
        ["user", "currency", "calls", "answered", "billed_s", "minutes_s", "charge", "uncollected"],
        ["alice", "GBP", "2", "2", "132", "0", "0.30", "0.00"],
        ["bob", "GBP", "2", "2", "132", "0", "0.30", "0.00"],
    ]


async def test_csv_comes_in_chunks_as_the_stream_is_read(ledger: Ledger, ledger_client) -> None:
    await xadd_cdrs(ledger_client, 2500, first=utc(2026, 11, 1), step_s=60)
    chunks = [c async for c in iter_csv(usage_rows(ledger, ORG, page=300))]
    assert len(chunks) == 3  # a chunk every 1,000 rows, then the rest
    assert sum(c.count("\r\n") for c in chunks) == 2501


def test_money_number_format_carries_the_currency() -> None:
    assert money_format("GBP") == "[$GBP] #,##0.00####"
    assert money_format("") == "#,##0.00####"
    assert money_format('"];x') == "#,##0.00####"


async def test_xlsx_has_typed_cells_a_frozen_header_and_a_sheet_per_grouping(ledger: Ledger, tmp_path: Path) -> None:
    rows = await real_calls(ledger)
    path = tmp_path / "usage.xlsx"
    assert await write_xlsx(usage_rows(ledger, ORG), path) == 3
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Calls", "By user", "By destination", "By day"]
    ws = wb["Calls"]
    assert ws.freeze_panes == "A2"
    header = [c.value for c in ws[1]]
    assert header == [h for h, _ in CSV_COLUMNS]
    assert all(c.font.b for c in ws[1])
    assert ws.max_row == 4
    col = {name: i for i, name in enumerate(header)}
    c1 = ws[2]
    r1 = rows[0]

    def cell(name: str):
        return c1[col[name]]

    for name, value in [("id", r1.id), ("call_id", "c1"), ("organization", ORG), ("user", "alice"),
                        ("callee", "+33142685300"), ("destination", "France"), ("class", "international"),
                        ("currency", "GBP"), ("paid", "credits"), ("end_reason", "normal"), ("conference_id", None)]:
        assert cell(name).value == value, name
        assert cell(name).data_type in ("s", "n"), name
    # Times are date-time cells (UTC, no zone: Excel has none).
    for name, t in [("start", r1.start), ("answer", r1.answer), ("end", r1.end), ("settled", r1.settled)]:
        assert cell(name).is_date, name
        assert cell(name).value == t.replace(tzinfo=None), name
        assert cell(name).number_format == "yyyy-mm-dd hh:mm:ss", name
    # Durations are integers.
    for name, v in [("duration_s", 75), ("billed_s", 78), ("minutes_s", 0), ("sip_status", 200)]:
        assert cell(name).value == v and type(cell(name).value) is int, name
    assert cell("answered").value is True
    # Money: numbers in the currency's format.
    for name, v in [("rate", 0.10), ("connection_fee", 0.01), ("charge", 0.14), ("uncollected", 0)]:
        assert cell(name).data_type == "n", name
        assert cell(name).value == pytest.approx(v), name
        assert cell(name).number_format == "[$GBP] #,##0.00####", name
    c3 = ws[4]
    assert c3[col["answer"]].value is None and c3[col["answered"]].value is False
    assert c3[col["charge"]].value == 0

    by_user = wb["By user"]
    assert by_user.freeze_panes == "A2"
    assert [[c.value for c in r] for r in by_user.iter_rows()] == [
        ["user", "currency", "calls", "answered", "billed_s", "minutes_s", "charge", "uncollected"],
        ["alice", "GBP", 2, 1, 78, 0, pytest.approx(0.14), 0],
        ["bob", "GBP", 1, 1, 30, 0, 0, 0],
    ]
    assert by_user["G2"].number_format == "[$GBP] #,##0.00####"
    by_dest = wb["By destination"]
    assert [r[0].value for r in by_dest.iter_rows(min_row=2)] == ["France", "United Kingdom - Mobile"]
    by_day = wb["By day"]
    assert by_day["A1"].value == "day"
    assert by_day["A2"].is_date and by_day["A2"].number_format == "yyyy-mm-dd"
    assert by_day["A2"].value == datetime.combine(r1.start.date(), datetime.min.time())
    assert by_day["C2"].value == 3 or by_day.max_row == 3  # the calls may straddle midnight UTC
    assert sum(r[2].value for r in by_day.iter_rows(min_row=2)) == 3


async def test_xlsx_of_no_calls_is_a_workbook_with_headers_only(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "empty.xlsx"
    out = path.open("wb")
    try:
        assert await write_xlsx(usage_rows(ledger, ORG), out, groupings=("day",)) == 0
    finally:
        out.close()
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Calls", "By day"]
    assert wb["Calls"].max_row == 1 and wb["By day"].max_row == 1


async def test_xlsx_strips_characters_a_cell_cannot_hold(ledger: Ledger, ledger_client, tmp_path: Path) -> None:
    await xadd_cdrs(ledger_client, 1, first=utc(2026, 11, 1), step_s=60, users=("bad\x00\x07user",))
    path = tmp_path / "u.xlsx"
    await write_xlsx(usage_rows(ledger, ORG), path)
    ws = openpyxl.load_workbook(path)["Calls"]
    assert ws["D2"].value == "baduser"
    assert ws["L2"].value == datetime(2026, 11, 1)
    assert isinstance(ws["L2"].value, date)


async def test_xlsx_continues_on_a_new_sheet_when_one_is_full(ledger: Ledger, ledger_client, tmp_path: Path) -> None:
    await xadd_cdrs(ledger_client, 7, first=utc(2026, 11, 1), step_s=60)
    path = tmp_path / "split.xlsx"
    assert await write_xlsx(usage_rows(ledger, ORG), path, sheet_rows=3) == 7
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Calls", "Calls 2", "Calls 3", "By user", "By destination", "By day"]
    assert [wb[name].max_row for name in wb.sheetnames[:3]] == [4, 4, 2]  # a header on each
    assert wb["Calls 2"]["B2"].value == "v3" and wb["Calls 3"].freeze_panes == "A2"
    assert wb["By day"]["C2"].value == 7
