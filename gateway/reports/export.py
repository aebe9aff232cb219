"""Write usage rows and totals as JSON, CSV, the Teams PSTN usage CSV, and xlsx, streaming as they come.

Every writer takes the rows as an (async) iterable and writes while it reads, so an export of a
month of a million CDRs holds one page of rows at a time: CSV and JSON are written in chunks of
``CHUNK_ROWS`` lines (``iter_*`` give the chunks, for an HTTP response body; ``write_*`` write them to
a text file), and xlsx uses openpyxl's write-only mode (rows go to a temporary file as they are
appended; the workbook is zipped on save). The totals by user, destination and day are
accumulated on the way (one entry per group) and written after the rows.

Cell conventions. CSV: money as decimal strings (``"12.50"``), times ISO 8601 UTC with ms, the
RFC 4180 dialect of the csv module (CRLF). xlsx: times are date-time cells (UTC; Excel has no time
zones), durations ints, money numbers (exact decimals) in the row currency's number format, a
bold header row with the panes frozen below it, one sheet for the calls and one per grouping.

A text cell that a spreadsheet would run as a formula (``=``, ``@``, a tab, or ``+``/``-`` followed
by anything but digits: a phone number like ``+4420...`` stays as it is) is written with a leading
apostrophe in CSV: caller ids come from the PSTN and must not become formulas (OWASP "CSV injection").
"""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter
from rating_core.money import format_money

from gateway.reports.usage import GROUPINGS, Grouping, Totals, UsageRow, UsageTotal, check_grouping

__all__ = [
    "CSV_COLUMNS",
    "TOTAL_COLUMNS",
    "TEAMS_COLUMNS",
    "CHUNK_ROWS",
    "iter_csv",
    "iter_json",
    "iter_teams_csv",
    "iter_totals_csv",
    "write_csv",
    "write_json",
    "write_teams_csv",
    "write_totals_csv",
    "write_xlsx",
    "XLSX_MAX_ROWS",
    "money_format",
    "SHEET_TITLES",
]

CHUNK_ROWS = 1000

# (header, kind): the report's columns, in order, for CSV and the xlsx "Calls" sheet. Kinds say how
# a value is written: text, time, int, bool, money (int micro-units).
CSV_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "text"), ("call_id", "text"), ("organization", "text"), ("user", "text"), ("direction", "text"),
    ("caller", "text"), ("callee", "text"), ("dialed", "text"), ("destination", "text"), ("prefix", "text"),
    ("class", "text"), ("start", "time"), ("answer", "time"), ("end", "time"), ("settled", "time"),
    ("answered", "bool"), ("duration_s", "int"), ("billed_s", "int"), ("minutes_s", "int"),
    ("rate", "money"), ("connection_fee", "money"), ("charge", "money"), ("uncollected", "money"),
    ("currency", "text"), ("paid", "text"), ("conference_id", "text"), ("end_reason", "text"),
    ("coverage", "text"), ("sip_call_id", "text"), ("sip_status", "int"),
)  # fmt: skip

# The totals' columns after the grouping key (user, destination or day).
TOTAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("currency", "text"), ("calls", "int"), ("answered", "int"), ("billed_s", "int"), ("minutes_s", "int"),
    ("charge", "money"), ("uncollected", "money"),
)  # fmt: skip

# The export of the Microsoft Teams admin center's PSTN usage report (Calling Plans), column for
# column as its documentation lists them ("Exported PSTN usage report", teams-analytics-and-reports/
# pstn-usage-report), so spreadsheets built on that export read this one.
TEAMS_COLUMNS: tuple[str, ...] = (
    "UsageId", "Call ID", "Conference ID", "User Location", "AAD ObjectId", "UPN", "User Display Name",
    "Caller ID", "Call Type", "Number Type", "Domestic/International", "Destination Dialed",
    "Destination Number", "Start Time", "End Time", "Duration Seconds", "Connection Fee", "Charge", "Currency",
    "Capability",
)  # fmt: skip

SHEET_TITLES: dict[str, str] = {"rows": "Calls", "user": "By user", "destination": "By destination",
                                 "day": "By day"}

# UsageId is a GUID in the Teams export: derived from the organization and call id, so that two
# exports of the same call agree.
_USAGE_NS = uuid.UUID("5b0d7c8e-4f0e-4a53-9d3c-6c1f2b0a7e11")
_PHONE_LIKE = re.compile(r"[+-][0-9]*")


def _typed(row: UsageRow) -> tuple[Any, ...]:
    """The row's values in ``CSV_COLUMNS`` order, typed (datetimes, ints, money as micro-units)."""
    return (
        row.id, row.call_id, row.organization, row.user, row.direction, row.caller, row.callee, row.dialed,
        row.destination, row.prefix, row.number_class, row.start, row.answer, row.end, row.settled,
        row.answered, row.duration_s, row.billed_s, row.minutes_s, row.rate, row.connection_fee, row.charge,
        row.uncollected, row.currency, row.paid, row.conference_id, row.end_reason, row.coverage,
        row.sip_call_id, row.sip_status,
    )  # fmt: skip


def _iso(t: datetime | None) -> str:
    if t is None:
        return ""
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _safe_text(v: str) -> str:
    if v and (v[0] in "=@\t\r" or (v[0] in "+-" and not _PHONE_LIKE.fullmatch(v))):
        return "'" + v
    return v


_KINDS = tuple(kind for _, kind in CSV_COLUMNS)


def _csv_values(row: UsageRow) -> list[Any]:
    out: list[Any] = []
    for kind, v in zip(_KINDS, _typed(row)):
        if v is None:
            out.append("")
        elif kind == "text":
            out.append(_safe_text(v))
        elif kind == "time":
            out.append(_iso(v))
        elif kind == "money":
            out.append(format_money(v))
        elif kind == "bool":
            out.append("true" if v else "false")
        else:
            out.append(v)
    return out


async def _each(rows: AsyncIterable[UsageRow] | Iterable[UsageRow]) -> AsyncIterator[UsageRow]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row


async def _csv_chunks(header: Iterable[str], rows: AsyncIterable[UsageRow] | Iterable[UsageRow],
                      values: Any, totals: Totals | None) -> AsyncIterator[str]:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    n = 0
    async for row in _each(rows):
        w.writerow(values(row))
        if totals is not None:
            totals.add(row)
        n += 1
        if n % CHUNK_ROWS == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def iter_csv(rows: AsyncIterable[UsageRow] | Iterable[UsageRow], *, totals: Totals | None = None
             ) -> AsyncIterator[str]:
    """The usage CSV (``CSV_COLUMNS``) in chunks of text; feeds ``totals`` on the way if given."""
    return _csv_chunks([h for h, _ in CSV_COLUMNS], rows, _csv_values, totals)


_CALL_TYPES = {"outbound": "user_out", "dialout": "conf_out"}
_DOMESTIC = {"domestic_fixed", "domestic_mobile", "toll_free", "premium_rate", "emergency"}


def _teams_values(row: UsageRow, user_location: str, display_names: Mapping[str, str]) -> list[Any]:
    if row.direction == "inbound_tollfree":
        call_type = "conf_in" if row.conference_id else "ucap_in"
    elif row.direction == "outbound" and row.conference_id:
        call_type = "user_out_conf"
    else:
        call_type = _CALL_TYPES.get(row.direction, row.direction)
    scope = ("International" if row.number_class == "international"
             else "Domestic" if row.number_class in _DOMESTIC else "")
    number_type = "toll_free" if row.direction == "inbound_tollfree" else ("user" if row.user else "service")
    # Teams's start is when the call was connected (its duration is the connected time).
    started = row.answer if row.answer is not None else row.start
    return [
        str(uuid.uuid5(_USAGE_NS, f"{row.organization}/{row.call_id}")),
        _safe_text(row.sip_call_id or row.call_id),
        _safe_text(row.conference_id),
        user_location,
        "",
        _safe_text(row.user),
        _safe_text(display_names.get(row.user, "")),
        # "Number that received the call for inbound calls or the number dialed for outbound calls".
        _safe_text(row.callee),
        call_type,
        number_type,
        scope,
        _safe_text(row.destination),
        _safe_text(row.callee),
        _iso(started),
        _iso(row.end),
        row.duration_s if row.answered is not False else 0,
        format_money(row.fee_charged),
        format_money(row.charge),
        row.currency,
        row.paid,
    ]


def iter_teams_csv(rows: AsyncIterable[UsageRow] | Iterable[UsageRow], *, user_location: str = "",
                   display_names: Mapping[str, str] | None = None) -> AsyncIterator[str]:
    """The rows as the Teams PSTN usage export (``TEAMS_COLUMNS``), in chunks of text.

    Filled from what creditgate knows: UsageId (a GUID stable per call), Call ID (the SIP Call-ID),
    Conference ID, User Location (``user_location``: the organization's country), UPN (the user id),
    User Display Name (``display_names`` by user id), Caller ID and Destination Number (the E.164
    callee), Call Type (user_out, user_out_conf, conf_out, conf_in, ucap_in), Number Type,
    Domestic/International (from the number class), Destination Dialed (the deck's destination),
    Start Time (answer, else start), End Time, Duration Seconds (connected), Connection Fee (charged),
    Charge, Currency, Capability (what paid: credits, plan, plan+credits, included). AAD ObjectId
    stays empty.
    """
    names = display_names or {}
    return _csv_chunks(TEAMS_COLUMNS, rows, lambda r: _teams_values(r, user_location, names), None)


def iter_totals_csv(totals: Iterable[UsageTotal], by: str) -> AsyncIterator[str]:
    """Totals (of one grouping) as CSV: the grouping key, then ``TOTAL_COLUMNS``."""
    grouping = check_grouping(by) or "user"

    async def gen() -> AsyncIterator[str]:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow([grouping, *(h for h, _ in TOTAL_COLUMNS)])
        for t in totals:
            w.writerow([_safe_text(t.key), t.currency, t.calls, t.answered, t.billed_s, t.minutes_s,
                        format_money(t.charge), format_money(t.uncollected)])
        yield buf.getvalue()

    return gen()


async def iter_json(rows: AsyncIterable[UsageRow] | Iterable[UsageRow], *, totals: Totals | None = None
                    ) -> AsyncIterator[str]:
    """A JSON array of ``UsageRow.to_dict()`` objects, one per line, in chunks of text."""
    parts = ["["]
    first = True
    n = 0
    async for row in _each(rows):
        parts.append(("\n" if first else ",\n") + json.dumps(row.to_dict(), separators=(",", ":")))
        first = False
        if totals is not None:
            totals.add(row)
        n += 1
        if n % CHUNK_ROWS == 0:
            yield "".join(parts)
            parts = []
    parts.append("\n]\n" if not first else "]\n")
    yield "".join(parts)


async def _write(chunks: AsyncIterator[str], out: TextIO) -> None:
    async for chunk in chunks:
        out.write(chunk)


async def write_csv(rows: AsyncIterable[UsageRow] | Iterable[UsageRow], out: TextIO, *,
                    totals: Totals | None = None) -> int:
    """Write the usage CSV to ``out`` (opened with ``newline=""``); returns the number of rows."""
    counter = _Counter(rows)
    await _write(iter_csv(counter, totals=totals), out)
    return counter.n


async def write_teams_csv(rows: AsyncIterable[UsageRow] | Iterable[UsageRow], out: TextIO, *,
                          user_location: str = "", display_names: Mapping[str, str] | None = None) -> int:
    """Write the Teams-compatible CSV (``iter_teams_csv``) to ``out``; returns the number of rows."""
    counter = _Counter(rows)
    await _write(iter_teams_csv(counter, user_location=user_location, display_names=display_names), out)
    return counter.n


async def write_totals_csv(totals: Iterable[UsageTotal], by: str, out: TextIO) -> None:
    await _write(iter_totals_csv(totals, by), out)


async def write_json(rows: AsyncIterable[UsageRow] | Iterable[UsageRow], out: TextIO, *,
                     totals: Totals | None = None) -> int:
    """Write the rows as a JSON array (``iter_json``) to ``out``; returns the number of rows."""
    counter = _Counter(rows)
    await _write(iter_json(counter, totals=totals), out)
    return counter.n


class _Counter:
    """Counts the rows a writer consumed."""

    def __init__(self, rows: AsyncIterable[UsageRow] | Iterable[UsageRow]) -> None:
        self.rows = rows
        self.n = 0

    async def __aiter__(self) -> AsyncIterator[UsageRow]:
        async for row in _each(self.rows):
            self.n += 1
            yield row


# -- xlsx ---------------------------------------------------------------------------------------

_TIME_FORMAT = "yyyy-mm-dd hh:mm:ss"
_DAY_FORMAT = "yyyy-mm-dd"
_WIDTHS = {"text": 16, "time": 20, "day": 12, "int": 10, "bool": 9, "money": 16}


def money_format(currency: str) -> str:
    """Excel number format of an amount in ``currency``: the ISO code, then 2 to 6 decimals."""
    code = currency if re.fullmatch(r"[A-Z]{3}", currency or "") else ""
    return f"[${code}] #,##0.00####" if code else "#,##0.00####"


def _money(micros: int) -> Decimal:
    # Exact: the decimal text goes into the file as it is (Excel reads it as a double).
    return Decimal(micros).scaleb(-6)


def _clean(v: str) -> str:
    # Control characters cannot be stored in an xlsx cell at all.
    return ILLEGAL_CHARACTERS_RE.sub("", v)


class _Sheet:
    """One write-only sheet: a bold header, frozen panes below it, typed cells reused row after row."""

    def __init__(self, wb: Workbook, title: str, columns: tuple[tuple[str, str], ...]) -> None:
        self.ws = wb.create_sheet(title)
        self.kinds = tuple(kind for _, kind in columns)
        self.ws.freeze_panes = "A2"
        for i, (_, kind) in enumerate(columns, start=1):
            self.ws.column_dimensions[get_column_letter(i)].width = _WIDTHS[kind]
        bold = Font(bold=True)
        header = []
        for name, _ in columns:
            c = WriteOnlyCell(self.ws, value=name)
            c.font = bold
            header.append(c)
        self.ws.append(header)
        # Cells that carry a number format are made once and refilled for every row: a write-only
        # sheet serializes a row when it is appended, and a new styled cell per value costs more
        # than everything else here.
        self.cells: list[WriteOnlyCell | None] = []
        for kind in self.kinds:
            if kind == "time":
                c = WriteOnlyCell(self.ws)
                c.number_format = _TIME_FORMAT
                self.cells.append(c)
            elif kind in ("money", "day"):
                self.cells.append(WriteOnlyCell(self.ws))
            else:
                self.cells.append(None)
        self._money_formats: dict[str, str] = {}
        self.rows = 0

    def append(self, values: Iterable[Any], currency: str) -> None:
        out: list[Any] = []
        fmt = self._money_formats.get(currency)
        if fmt is None:
            fmt = self._money_formats[currency] = money_format(currency)
        for kind, cell, v in zip(self.kinds, self.cells, values):
            if v is None or v == "":
                out.append(None)
            elif cell is None:
                out.append(_clean(v) if kind == "text" else v)
            elif kind == "time":
                cell.value = v.replace(tzinfo=None)
                out.append(cell)
            elif kind == "money":
                cell.value = _money(v)
                cell.number_format = fmt
                out.append(cell)
            else:  # day
                cell.value = v
                cell.number_format = _DAY_FORMAT
                out.append(cell)
        self.ws.append(out)
        self.rows += 1


_CURRENCY_INDEX = [h for h, _ in CSV_COLUMNS].index("currency")
# Data rows of one worksheet: Excel's 1,048,576 rows less the header.
XLSX_MAX_ROWS = 1_048_575


async def write_xlsx(
    rows: AsyncIterable[UsageRow] | Iterable[UsageRow],
    out: str | Path | BinaryIO | IO[bytes],
    *,
    groupings: Iterable[Grouping] = GROUPINGS,
    sheet_rows: int = XLSX_MAX_ROWS,
) -> int:
    """Write an xlsx workbook to ``out`` (a path or a binary file); returns the number of rows.

    Sheets: "Calls" (``CSV_COLUMNS``, typed cells; past ``sheet_rows`` calls, the next ones go on
    "Calls 2", "Calls 3", ...: a worksheet holds at most 1,048,576 rows), then "By user",
    "By destination", "By day" (or the ``groupings`` asked for): the key, then ``TOTAL_COLUMNS``;
    days are date cells.
    """
    wanted = tuple(check_grouping(g) for g in groupings)
    totals = Totals(tuple(g for g in wanted if g is not None))
    per_sheet = max(1, min(int(sheet_rows), XLSX_MAX_ROWS))
    wb = Workbook(write_only=True)
    calls = _Sheet(wb, SHEET_TITLES["rows"], CSV_COLUMNS)
    n = 0
    async for row in _each(rows):
        if calls.rows == per_sheet:
            calls = _Sheet(wb, f"{SHEET_TITLES['rows']} {n // per_sheet + 1}", CSV_COLUMNS)
        values = _typed(row)
        calls.append(values, values[_CURRENCY_INDEX])
        totals.add(row)
        n += 1
    for by in totals.groupings:
        key_kind = "day" if by == "day" else "text"
        sheet = _Sheet(wb, SHEET_TITLES[by], ((by, key_kind), *TOTAL_COLUMNS))
        for t in totals.result(by):
            key: Any = datetime.strptime(t.key, "%Y-%m-%d").date() if by == "day" else t.key
            sheet.append((key, t.currency, t.calls, t.answered, t.billed_s, t.minutes_s, t.charge, t.uncollected),
                         t.currency)
    wb.save(out)
    return n
