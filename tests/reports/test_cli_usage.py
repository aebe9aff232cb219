"""``creditgate usage`` as operators run it: ``python -m gateway usage ... --config CFG`` against the
test redis-server, with CDRs the ledger's scripts wrote (and a few written straight into the stream)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import openpyxl
import pytest
import redis

from gateway.ledger.keys import OrgKeys

from _cdrs import ORG, cdr_fields, utc

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self):
        assert self.code == 0, (self.code, self.out, self.err)
        return json.loads(self.out)


@pytest.fixture
def cli(tmp_path: Path, redis_url: str):
    cfg = tmp_path / "creditgate.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[redis]\nurl = "{redis_url}"\n')

    def run(*args: str) -> Result:
        env = {k: v for k, v in os.environ.items() if k not in ("CREDITGATE_CONFIG", "COLUMNS", "LINES")}
        env["NO_COLOR"] = "1"
        p = subprocess.run([sys.executable, "-m", "gateway", *args, "--config", str(cfg)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        return Result(p.returncode, p.stdout, p.stderr)

    return run


@pytest.fixture
def acme(cli, redis_url: str) -> str:
    """The organization 'acme' with six calls: three users, two days, two destinations."""
    assert cli("org", "create", "acme", "--country", "GB", "--currency", "GBP", "--json").json()["id"] == ORG
    r = redis.Redis.from_url(redis_url)
    try:
        for i, (user, day, dest) in enumerate([("alice", 1, "France"), ("bob", 1, "France"), ("alice", 2, "Germany"),
                                               ("carol", 2, "France"), ("alice", 3, "France"), ("bob", 3, "Spain")]):
            f = cdr_fields(i, utc(2026, 11, day, 9, i), user=user, destination=dest)
            r.xadd(OrgKeys(ORG).cdrs, f, id=f"{int(utc(2026, 11, day, 10, i).timestamp() * 1000)}-0")
    finally:
        r.close()
    return ORG


def refused(r: Result, *fragments: str) -> bool:
    lines = r.err.splitlines()
    return (r.code == 1 and not r.out and len(lines) == 1 and lines[0].startswith("error: ")
            and all(f in lines[0] for f in fragments))


def test_usage_lists_every_call_as_json(cli, acme) -> None:
    rows = cli("usage", acme, "--json").json()
    assert [r["call_id"] for r in rows] == [f"v{i}" for i in range(6)]
    assert rows[0]["user"] == "alice" and rows[0]["charge"] == "0.15" and rows[0]["start"] == "2026-11-01T09:00:00.000Z"
    assert set(rows[0]) >= {"organization", "user", "direction", "caller", "callee", "destination", "class", "start",
                            "answer", "end", "billed_s", "rate", "charge", "currency", "paid", "conference_id",
                            "end_reason"}


def test_usage_filters_by_date_and_user(cli, acme) -> None:
    rows = cli("usage", acme, "--from", "2026-11-02", "--to", "2026-11-03", "--user", "alice", "--json").json()
    assert [(r["call_id"], r["user"]) for r in rows] == [("v2", "alice"), ("v4", "alice")]
    assert cli("usage", "acme", "--from", "2026-11-04", "--json").json() == []


@pytest.mark.parametrize(("by", "expected"), [
    ("user", [("alice", 3, "0.45"), ("bob", 2, "0.30"), ("carol", 1, "0.15")]),
    ("destination", [("France", 4, "0.60"), ("Germany", 1, "0.15"), ("Spain", 1, "0.15")]),
    ("day", [("2026-11-01", 2, "0.30"), ("2026-11-02", 2, "0.30"), ("2026-11-03", 2, "0.30")]),
])  # fmt: skip
def test_usage_totals(cli, acme, by, expected) -> None:
    totals = cli("usage", acme, "--by", by, "--json").json()
    assert [(t[by], t["calls"], t["charge"]) for t in totals] == expected
    assert {t["currency"] for t in totals} == {"GBP"}


def test_usage_table_on_a_terminal(cli, acme) -> None:
    r = cli("usage", acme, "--user", "bob")
    assert r.code == 0, r
    assert "v1" in r.out and "v5" in r.out and "v0" not in r.out
    assert "2 calls; charged 0.30 GBP" in r.out
    r = cli("usage", acme, "--by", "day")
    assert r.code == 0 and "2026-11-03" in r.out


def test_usage_writes_csv_xlsx_and_teams_csv_files(cli, acme, tmp_path: Path) -> None:
    out = tmp_path / "u.csv"
    summary = cli("usage", acme, "--csv", str(out), "--json").json()
    assert summary == {"org": ORG, "from": None, "to": None, "user": None, "file": str(out), "format": "csv",
                       "calls": 6}
    lines = list(csv.reader(out.open(newline="")))
    assert lines[0][:3] == ["id", "call_id", "organization"] and len(lines) == 7

    totals = tmp_path / "t.csv"
    s = cli("usage", acme, "--by", "user", "--csv", str(totals), "--json").json()
    assert (s["calls"], s["groups"], s["by"]) == (6, 3, "user")
    assert list(csv.reader(totals.open(newline="")))[1][:3] == ["alice", "GBP", "3"]

    book = tmp_path / "u.xlsx"
    s = cli("usage", acme, "--from", "2026-11-02", "--xlsx", str(book), "--json").json()
    assert s["calls"] == 4 and s["from"] == "2026-11-02T00:00:00.000Z"
    wb = openpyxl.load_workbook(book)
    assert wb.sheetnames == ["Calls", "By user", "By destination", "By day"]
    assert wb["Calls"].max_row == 5 and wb["By day"].max_row == 3

    teams = tmp_path / "teams.csv"
    r = cli("usage", acme, "--teams-csv", str(teams))
    assert r.code == 0 and "wrote 6 calls" in r.out
    header, first = list(csv.reader(teams.open(newline="")))[:2]
    assert header[:4] == ["UsageId", "Call ID", "Conference ID", "User Location"]
    assert first[3] == "GB"  # the organization's country
    assert not list(tmp_path.glob("*.partial"))


def test_usage_csv_to_stdout(cli, acme) -> None:
    r = cli("usage", acme, "--csv", "-", "--user", "carol")
    assert r.code == 0
    lines = list(csv.reader(io.StringIO(r.out)))
    assert len(lines) == 2 and lines[1][1] == "v3"


@pytest.mark.parametrize(("args", "fragments"), [
    (("--by", "month"), ("by", "month")),
    (("--from", "yesterday"), ("from",)),
    (("--from", "2026-11-03", "--to", "2026-11-01"), ("to",)),
    (("--csv", "a.csv", "--xlsx", "a.xlsx"), ("--csv", "--xlsx")),
    (("--teams-csv", "t.csv", "--by", "user"), ("--teams-csv",)),
    (("--xlsx", "-"), ("--xlsx",)),
])  # fmt: skip
def test_usage_refuses_bad_input_with_one_line(cli, acme, args, fragments, tmp_path: Path) -> None:
    r = cli("usage", acme, *args)
    assert refused(r, *fragments), r
    assert not (REPO / "a.csv").exists() and not (REPO / "t.csv").exists()


def test_usage_of_an_unknown_organization(cli, redis_url) -> None:
    assert refused(cli("usage", "nobody"), "nobody")
