"""The ``creditgate`` command line as operators use it (SPEC section 9), run as real subprocesses.

Every test runs ``python -m gateway ... --config CFG`` against a real redis-server: the flushed
session server of ``redis_url`` (conftest), or, once, the embedded redis-server the CLI starts itself
in ``data_dir``. Nothing is mocked. Refusals must exit 1 with exactly one ``error: ...`` line on
stderr, print nothing on stdout and change nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import phonenumbers
import psutil
import pytest
import redis
from phonenumbers import PhoneNumberFormat, PhoneNumberType

try:  # tests/ without __init__.py (pytest puts tests/ on sys.path) or as a package
    from _procs import free_port
except ImportError:  # pragma: no cover
    from tests._procs import free_port

REPO = Path(__file__).resolve().parents[1]
HEADER = ("prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,"
          "connection_fee,effective_from")
NO_DATE = "1970-01-01T00:00:00.000Z"  # how a deck version without an effective date is listed

# SPEC section 9, verbatim: the admin role ids `user add --role` accepts.
SPEC_ROLES = (
    "billing_admin", "company_admin", "user_account_admin", "helpdesk_admin", "service_support_admin",
    "device_admin", "application_admin", "license_admin", "cloud_device_admin", "authentication_admin",
    "privileged_authentication_admin", "communications_admin", "communications_support_engineer",
    "communications_support_specialist", "service_admin",
)  # fmt: skip


# -- running the CLI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"creditgate {' '.join(self.args)} -> exit {self.code}\nstdout: {self.out!r}\nstderr: {self.err!r}"

    def json(self) -> Any:
        assert self.code == 0, str(self)
        try:
            return json.loads(self.out)
        except json.JSONDecodeError:
            raise AssertionError(f"stdout is not JSON:\n{self}") from None


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Deterministic: no inherited CREDITGATE_CONFIG, a non-terminal default width, no colours.
    env = {k: v for k, v in os.environ.items() if k not in ("CREDITGATE_CONFIG", "COLUMNS", "LINES")}
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


def run_cli(*args: str, config: Path | None = None, env: dict[str, str] | None = None,
            cwd: Path = REPO, timeout: float = 60) -> Result:
    argv = [sys.executable, "-m", "gateway", *args]
    if config is not None:
        argv += ["--config", str(config)]
    proc = subprocess.run(argv, cwd=cwd, env=_env(env), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return Result(tuple(args), proc.returncode, proc.stdout, proc.stderr)


def refusal_problem(r: Result, *fragments: str) -> str | None:
    """None if ``r`` is a proper refusal (exit 1, no stdout, one ``error:`` line naming ``fragments``)."""
    lines = r.err.splitlines()
    if r.code != 1:
        return f"exit {r.code}, not 1: {r}"
    if r.out:
        return f"printed on stdout: {r}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"stderr is not one 'error: ' line: {r}"
    missing = [f for f in fragments if f not in lines[0]]
    if missing:
        return f"error line lacks {missing}: {r}"
    return None


def assert_refused(r: Result, *fragments: str) -> None:
    problem = refusal_problem(r, *fragments)
    assert problem is None, problem


def write_config(path: Path, *, data_dir: Path, redis_url: str | None) -> Path:
    text = f'data_dir = "{data_dir}"\n'
    if redis_url is not None:
        text += f'[redis]\nurl = "{redis_url}"\n'
    path.write_text(text)
    return path


class Gate:
    """The CLI bound to one configuration file."""

    def __init__(self, cfg: Path, tmp: Path) -> None:
        self.cfg = cfg
        self.tmp = tmp

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return run_cli(*args, config=self.cfg, env=env)

    def ok(self, *args: str) -> Any:
        """Run with --json; it must succeed; the parsed output."""
        return self(*args, "--json").json()

    def many(self, *calls: list[str] | tuple[str, ...]) -> list[Result]:
        """Run independent commands concurrently (each one is a separate process)."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda a: self(*a), calls))

    def org(self, name: str = "Acme Ltd", *extra: str) -> str:
        created = self.ok("org", "create", name, "--country", "GB", "--currency", "GBP", *extra)
        return created["id"]

    def balance(self, org: str) -> dict[str, str]:
        return self.ok("balance", org)


@pytest.fixture
def cg(tmp_path: Path, redis_url: str) -> Gate:
    cfg = write_config(tmp_path / "creditgate.toml", data_dir=tmp_path / "data", redis_url=redis_url)
    return Gate(cfg, tmp_path)


# -- numbers and decks ----------------------------------------------------------------------------


def number_of_type(e164: str, kind: int) -> str:
    parsed = phonenumbers.parse(e164)
    assert phonenumbers.is_valid_number(parsed), f"test data: {e164} is not a valid number"
    assert phonenumbers.number_type(parsed) == kind, f"test data: {e164} is not of type {kind}"
    return e164


def gb_fixed(n: int) -> str:
    """+44 20 7946 0nnn: the London range reserved for drama, a valid fixed-line number."""
    return number_of_type(f"+44207946{n:04d}", PhoneNumberType.FIXED_LINE)


def gb_tollfree(last_digit: int | None = None) -> str:
    example = phonenumbers.format_number(
        phonenumbers.example_number_for_type("GB", PhoneNumberType.TOLL_FREE), PhoneNumberFormat.E164)
    number = example if last_digit is None else example[:-1] + str(last_digit)
    return number_of_type(number, PhoneNumberType.TOLL_FREE)


MANCHESTER = number_of_type("+441614960000", PhoneNumberType.FIXED_LINE)  # matches only prefix 44
LONDON = gb_fixed(0)  # matches prefix 4420
PARIS = number_of_type("+33140000000", PhoneNumberType.FIXED_LINE)  # no rate in the decks below


def write_deck(path: Path, *rows: str) -> Path:
    path.write_text(HEADER + "\n" + "".join(r + "\n" for r in rows))
    return path


BASE_ROWS = (
    "44,United Kingdom,0.02,GBP,60,60,0,",
    "4420,London,0.10,GBP,30,6,0.05,",
)


def quote_uk(minutes: int, rate: str, charge: str, number: str = MANCHESTER) -> dict[str, Any]:
    return {"number": number, "class": "domestic_fixed", "prefix": "+44", "destination": "United Kingdom",
            "rate": rate, "currency": "GBP", "increments": "60/60", "connection_fee": "0.00",
            "minutes": minutes, "charge": charge}


# -- help and options -------------------------------------------------------------------------------

SPEC_TOP_COMMANDS = ("run", "org", "trunk", "carrier", "user", "tollfree", "fund", "recharge", "balance",
                     "rates", "calls", "ledger", "reconcile")
SPEC_LEAF_COMMANDS = (
    ("run",), ("org", "create"), ("trunk", "add"), ("carrier", "add"), ("user", "add"), ("tollfree", "add"),
    ("fund",), ("recharge", "set"), ("recharge", "off"), ("balance",), ("rates", "import"),
    ("rates", "quote"), ("calls",), ("ledger",), ("reconcile",),
)


def _listed_commands(help_text: str) -> set[str]:
    names = set()
    for line in help_text.splitlines():
        cells = line.strip("│ ").split()
        if cells and line.lstrip().startswith("│ ") and cells[0].isidentifier():
            names.add(cells[0])
    return names


def test_help_lists_every_spec_command() -> None:
    r = run_cli("--help", env={"COLUMNS": "200"})
    assert r.code == 0, str(r)
    listed = _listed_commands(r.out)
    assert sorted(set(SPEC_TOP_COMMANDS) - listed) == [], r.out
    # no arguments at all shows the same help instead of doing anything
    bare = run_cli(env={"COLUMNS": "200"})
    assert set(SPEC_TOP_COMMANDS) <= _listed_commands(bare.out + bare.err), str(bare)


def test_every_spec_command_takes_config_and_json() -> None:
    """SPEC 9: 'every command takes --config FILE and --json'."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run_cli(*c, "--help", env={"COLUMNS": "200"}), SPEC_LEAF_COMMANDS))
    missing = {
        " ".join(cmd): [opt for opt in ("--config", "--json") if opt not in r.out]
        for cmd, r in zip(SPEC_LEAF_COMMANDS, results)
    }
    assert {k: v for k, v in missing.items() if v} == {}
    assert [r.code for r in results] == [0] * len(results)


# -- organizations ------------------------------------------------------------------------------


def test_org_create_prints_id_and_token_and_refuses_bad_input(cg: Gate) -> None:
    created = cg.ok("org", "create", "Acme Ltd", "--country", "GB", "--currency", "GBP")
    assert set(created) == {"id", "token"}
    assert created["id"] == "acme-ltd"
    assert created["token"].startswith("cg_") and len(created["token"]) > 20

    regional = cg.ok("org", "create", "Dublin Branch", "--country", "IE", "--currency", "EUR",
                     "--billing-region", "GB")
    assert regional["id"] == "dublin-branch"
    assert regional["token"] != created["token"]

    duplicate, same_name_other_case, bad_country, bad_currency, bad_region = cg.many(
        ["org", "create", "Acme Ltd", "--country", "GB", "--currency", "GBP", "--json"],
        ["org", "create", "ACME LTD", "--country", "GB", "--currency", "GBP", "--json"],
        ["org", "create", "Nowhere", "--country", "ZZ", "--currency", "GBP", "--json"],
        ["org", "create", "Funny Money", "--country", "GB", "--currency", "ABC", "--json"],
        ["org", "create", "Bad Region", "--country", "GB", "--currency", "GBP", "--billing-region", "QQ"],
    )
    assert_refused(duplicate, "exists")
    assert_refused(same_name_other_case, "exists")
    assert_refused(bad_country, "country", "ZZ")
    assert_refused(bad_currency, "currency", "ABC")
    assert_refused(bad_region, "QQ")

    orgs = cg.ok("org", "list")
    assert [(o["id"], o["name"], o["country"], o["currency"], o["billing_region"]) for o in orgs] == [
        ("acme-ltd", "Acme Ltd", "GB", "GBP", "GB"),
        ("dublin-branch", "Dublin Branch", "IE", "EUR", "GB"),
    ]

    human = cg("org", "create", "Plain Output", "--country", "GB", "--currency", "GBP")
    assert human.code == 0, str(human)
    lines = human.out.splitlines()
    assert lines[0] == "id: plain-output"
    assert lines[1].startswith("token: cg_")


def test_balance_json_has_exactly_the_contract_keys(cg: Gate) -> None:
    org = cg.org()
    assert cg.balance(org) == {"balance": "0.00", "reserved": "0.00", "available": "0.00", "currency": "GBP"}
    # the organization's name works as well as its id; without --json the same values as lines
    by_name, human = cg.many(["balance", "Acme Ltd", "--json"], ["balance", org])
    assert by_name.json() == {"balance": "0.00", "reserved": "0.00", "available": "0.00", "currency": "GBP"}
    assert human.code == 0, str(human)
    assert human.out.splitlines() == ["balance: 0.00", "reserved: 0.00", "available: 0.00", "currency: GBP"]


# -- funding ------------------------------------------------------------------------------------


def test_fund_minimum_and_success(cg: Gate) -> None:
    org = cg.org()
    assert_refused(cg("fund", org, "49.99", "--json"), "at least 50.00 GBP")
    assert cg.balance(org)["balance"] == "0.00"

    assert cg.ok("fund", org, "100") == {"org": org, "funded": "100.00", "balance": "100.00", "currency": "GBP"}
    assert cg.ok("fund", org, "50") == {"org": org, "funded": "50.00", "balance": "150.00", "currency": "GBP"}
    assert cg.balance(org) == {"balance": "150.00", "reserved": "0.00", "available": "150.00", "currency": "GBP"}


MALFORMED_AMOUNTS = ("abc", "-5", "1.1234567", "1e3", "", "100,00", "50 GBP")


def test_fund_malformed_amount_refused_and_nothing_changes(cg: Gate) -> None:
    org = cg.org()
    results = cg.many(*(["fund", org, amount, "--json"] for amount in MALFORMED_AMOUNTS))
    problems = {amount: refusal_problem(r, "amount") for amount, r in zip(MALFORMED_AMOUNTS, results)}
    assert {k: v for k, v in problems.items() if v} == {}
    assert cg.balance(org)["balance"] == "0.00"
    assert cg.ok("ledger", org) == []


def test_min_funding_option_on_org_create(cg: Gate) -> None:
    org = cg.org("Small Co", "--min-funding", "5")
    assert cg.ok("org", "list")[0]["min_funding"] == "5.00"
    below, at_minimum = cg("fund", org, "4.99", "--json"), cg("fund", org, "5", "--json")
    assert_refused(below, "at least 5.00 GBP")
    assert at_minimum.json()["balance"] == "5.00"
    assert_refused(cg("org", "create", "Other Co", "--country", "GB", "--currency", "GBP",
                      "--min-funding", "abc"), "min_funding")
    assert [o["id"] for o in cg.ok("org", "list")] == ["small-co"]


def test_unknown_org_refused_by_every_org_command(cg: Gate) -> None:
    commands = {
        "fund": ["fund", "nope", "100"],
        "balance": ["balance", "nope"],
        "ledger": ["ledger", "nope"],
        "calls": ["calls", "nope"],
        "reconcile": ["reconcile", "nope"],
        "recharge set": ["recharge", "set", "nope", "--threshold", "10", "--amount", "50"],
        "recharge off": ["recharge", "off", "nope"],
        "trunk add": ["trunk", "add", "nope", "--address", "127.0.0.1"],
        "user add": ["user", "add", "nope", "alice", "--number", gb_fixed(1)],
        "tollfree add": ["tollfree", "add", "nope", gb_tollfree(), "--target", "sip:bridge@127.0.0.1:5090"],
        "token create": ["token", "create", "nope", "--role", "bridge"],
    }
    results = cg.many(*([*args, "--json"] for args in commands.values()))
    problems = {name: refusal_problem(r, "no organization 'nope'") for name, r in zip(commands, results)}
    assert {k: v for k, v in problems.items() if v} == {}


# -- trunks, carriers, users, toll-free -----------------------------------------------------------


def test_trunk_add(cg: Gate) -> None:
    org, other = cg.org(), cg.org("Other Co")
    pbx, bridge = cg.many(
        ["trunk", "add", org, "--address", "127.0.0.1:5070", "--json"],
        ["trunk", "add", org, "--address", "127.0.0.2", "--username", "u1", "--password", "s3cret",
         "--kind", "bridge", "--json"],
    )
    assert pbx.json() == {"id": "acme-ltd/127.0.0.1:5070", "org": org, "address": "127.0.0.1:5070",
                          "kind": "pbx", "username": None}
    assert bridge.json() == {"id": "acme-ltd/127.0.0.2:*/u1", "org": org, "address": "127.0.0.2",
                             "kind": "bridge", "username": "u1"}
    assert "s3cret" not in bridge.out

    refusals = {
        "bad kind": (["trunk", "add", org, "--address", "127.0.0.3", "--kind", "softswitch"], "kind"),
        "user without password": (["trunk", "add", org, "--address", "127.0.0.3", "--username", "u"],
                                  "username and password"),
        "host name": (["trunk", "add", org, "--address", "pbx.example.com"], "not an IP address"),
        "bad port": (["trunk", "add", org, "--address", "127.0.0.3:70000"], "port"),
        "taken by another org": (["trunk", "add", other, "--address", "127.0.0.1:5070"], "another organization"),
    }
    results = cg.many(*([*args, "--json"] for args, _ in refusals.values()))
    problems = {name: refusal_problem(r, frag) for (name, (_, frag)), r in zip(refusals.items(), results)}
    assert {k: v for k, v in problems.items() if v} == {}


def test_carrier_add_requires_a_port(cg: Gate) -> None:
    ok, no_port, bad_host, bad_port = cg.many(
        ["carrier", "add", "carrier1", "--address", "127.0.0.1:5080", "--json"],
        ["carrier", "add", "carrier2", "--address", "127.0.0.1", "--json"],
        ["carrier", "add", "carrier3", "--address", "sip.example.com:5060", "--json"],
        ["carrier", "add", "carrier4", "--address", "127.0.0.1:0", "--json"],
    )
    assert ok.json() == {"name": "carrier1", "address": "127.0.0.1:5080"}
    assert_refused(no_port, "needs a port")
    assert_refused(bad_host, "not an IP address")
    assert_refused(bad_port, "port")


def test_user_add(cg: Gate) -> None:
    org = cg.org()
    alice = cg.ok("user", "add", org, "alice", "--number", gb_fixed(1), "--email", "alice@example.com",
                  "--role", "billing_admin", "--role", "company_admin", "--licence", "--plan", "domestic")
    assert alice == {"org": org, "id": "alice", "number": gb_fixed(1), "email": "alice@example.com",
                     "roles": ["billing_admin", "company_admin"], "licence": True, "plan": "domestic",
                     "country": "GB"}
    every_role = [arg for role in SPEC_ROLES for arg in ("--role", role)]
    boss, plain = cg.many(
        ["user", "add", org, "boss", "--number", gb_fixed(2), *every_role, "--json"],
        ["user", "add", org, "plain", "--number", gb_fixed(3), "--json"],
    )
    assert boss.json()["roles"] == list(SPEC_ROLES)
    assert plain.json() == {"org": org, "id": "plain", "number": gb_fixed(3), "email": "", "roles": [],
                            "licence": False, "plan": "none", "country": "GB"}

    refusals = {
        "national form": (["--number", "02079460004"], "E.164"),
        "too short": (["--number", "+4420794"], "not a valid number"),
        "not a number": (["--number", "+44abc"], "number"),
        "unknown role": (["--number", gb_fixed(4), "--role", "superuser"], "unknown role 'superuser'"),
        "unknown plan": (["--number", gb_fixed(4), "--plan", "gold"], "gold"),
        "bad email": (["--number", gb_fixed(4), "--email", "not-an-email"], "email"),
        "number of another user": (["--number", gb_fixed(1)], "already belongs"),
    }
    results = cg.many(*(["user", "add", org, "bob", *args, "--json"] for args, _ in refusals.values()))
    problems = {name: refusal_problem(r, frag) for (name, (_, frag)), r in zip(refusals.items(), results)}
    assert {k: v for k, v in problems.items() if v} == {}
    assert [u["id"] for u in cg.ok("user", "list", org)] == ["alice", "boss", "plain"]


def test_tollfree_add(cg: Gate) -> None:
    org, other = cg.org(), cg.org("Other Co")
    tf = gb_tollfree()
    assert cg.ok("tollfree", "add", org, tf, "--target", "sip:bridge@127.0.0.1:5090") == {
        "number": tf, "org": org, "target": "sip:bridge@127.0.0.1:5090"}
    fixed, http_target, bare_target, taken = cg.many(
        ["tollfree", "add", org, gb_fixed(5), "--target", "sip:bridge@127.0.0.1:5090", "--json"],
        ["tollfree", "add", org, gb_tollfree(8), "--target", "http://127.0.0.1:5090/", "--json"],
        ["tollfree", "add", org, gb_tollfree(8), "--target", "bridge@127.0.0.1", "--json"],
        ["tollfree", "add", other, tf, "--target", "sip:bridge@127.0.0.1:5091", "--json"],
    )
    assert_refused(fixed, "not a toll-free number")
    assert_refused(http_target, "sip:")
    assert_refused(bare_target, "sip:")
    assert_refused(taken, "another organization")


# -- rates ----------------------------------------------------------------------------------------


def test_rates_import_and_quote(cg: Gate) -> None:
    deck = write_deck(cg.tmp / "deck.csv", *BASE_ROWS)
    assert_refused(cg("rates", "quote", MANCHESTER, "--json"), "no rate deck")
    assert cg.ok("rates", "import", str(deck)) == {"rates": 2, "versions": [NO_DATE], "deck_version": 1}

    uk, london, national, paris, national_no_country = cg.many(
        ["rates", "quote", MANCHESTER, "--minutes", "3", "--json"],
        ["rates", "quote", LONDON, "--minutes", "3", "--json"],
        ["rates", "quote", "020 7946 0000", "--country", "GB", "--minutes", "3", "--json"],
        ["rates", "quote", PARIS, "--minutes", "3", "--json"],
        ["rates", "quote", "02079460000", "--json"],
    )
    assert uk.json() == quote_uk(3, "0.02", "0.06")
    london_quote = {"number": LONDON, "class": "domestic_fixed", "prefix": "+4420", "destination": "London",
                    "rate": "0.10", "currency": "GBP", "increments": "30/6", "connection_fee": "0.05",
                    "minutes": 3, "charge": "0.35"}
    assert london.json() == london_quote
    assert national.json() == london_quote
    assert_refused(paris, f"no rate for {PARIS}", "unknown destination")
    assert_refused(national_no_country, "E.164")

    # default is one minute; 30/6 with a fee: 0.10 + 0.05
    assert cg.ok("rates", "quote", LONDON)["charge"] == "0.15"


def test_rates_import_bad_csv_names_the_line_and_keeps_the_deck(cg: Gate) -> None:
    good = write_deck(cg.tmp / "good.csv", *BASE_ROWS)
    assert cg.ok("rates", "import", str(good))["deck_version"] == 1

    wrong_header = cg.tmp / "header.csv"
    wrong_header.write_text(HEADER.replace("destination", "dest") + "\n44,United Kingdom,0.90,GBP,60,60,0,\n")
    bad_line = write_deck(cg.tmp / "line.csv", "44,United Kingdom,0.90,GBP,60,60,0,",
                          "33,France,abc,EUR,60,60,0,")
    bad_increment = write_deck(cg.tmp / "incr.csv", "44,United Kingdom,0.90,GBP,60,60,0,",
                               "49,Germany,0.05,EUR,60,60,0,", "1,USA,0.01,USD,0,60,0,")
    results = [cg("rates", "import", str(f), "--json") for f in (wrong_header, bad_line, bad_increment)]
    missing = cg("rates", "import", str(cg.tmp / "missing.csv"), "--json")
    assert_refused(results[0], "line 1", "header")
    assert_refused(results[1], "line 3", "rate_per_min")
    assert_refused(results[2], "line 4", "initial_increment_s")
    assert_refused(missing, "missing.csv")

    assert cg.ok("rates", "quote", MANCHESTER, "--minutes", "3") == quote_uk(3, "0.02", "0.06")
    # none of the refused imports stored a version: the next import is version 2
    assert cg.ok("rates", "import", str(good))["deck_version"] == 2


def test_rates_import_future_effective_schedules_without_changing_today(cg: Gate) -> None:
    assert cg.ok("rates", "import", str(write_deck(cg.tmp / "d1.csv", *BASE_ROWS)))["deck_version"] == 1
    dearer = write_deck(cg.tmp / "d2.csv", "44,United Kingdom,0.50,GBP,60,60,0,")

    scheduled = cg.ok("rates", "import", str(dearer), "--effective", "2099-01-01")
    assert scheduled == {"rates": 1, "versions": [NO_DATE, "2099-01-01T00:00:00.000Z"], "deck_version": 2}
    assert cg.ok("rates", "quote", MANCHESTER, "--minutes", "3") == quote_uk(3, "0.02", "0.06")

    # dated in the past, the same file takes effect at once; London keeps its own longer prefix
    now = cg.ok("rates", "import", str(dearer), "--effective", "2020-01-01")
    assert now["versions"] == [NO_DATE, "2020-01-01T00:00:00.000Z", "2099-01-01T00:00:00.000Z"]
    uk, london = cg.many(["rates", "quote", MANCHESTER, "--minutes", "3", "--json"],
                         ["rates", "quote", LONDON, "--minutes", "3", "--json"])
    assert uk.json() == quote_uk(3, "0.50", "1.50")
    assert london.json()["charge"] == "0.35"
    assert_refused(cg("rates", "import", str(dearer), "--effective", "someday"), "effective")


def test_rates_quote_with_deck_file_needs_no_redis(tmp_path: Path) -> None:
    deck = write_deck(tmp_path / "deck.csv", *BASE_ROWS)
    closed = write_config(tmp_path / "closed.toml", data_dir=tmp_path / "data",
                          redis_url=f"redis://127.0.0.1:{free_port()}/0")
    no_config_dir = tmp_path / "cwd"
    no_config_dir.mkdir()
    bad_deck = write_deck(tmp_path / "bad.csv", "44,United Kingdom,0.02,GBP,60,60,0,", "4420,London,x,GBP,30,6,0,")
    with ThreadPoolExecutor(max_workers=4) as pool:
        f_closed = pool.submit(run_cli, "rates", "quote", MANCHESTER, "--minutes", "3", "--deck", str(deck),
                               "--json", config=closed)
        f_none = pool.submit(run_cli, "rates", "quote", LONDON, "--minutes", "3", "--deck", str(deck), "--json",
                             cwd=no_config_dir)
        f_bad = pool.submit(run_cli, "rates", "quote", MANCHESTER, "--deck", str(bad_deck), "--json",
                            config=closed)
        f_down = pool.submit(run_cli, "rates", "quote", MANCHESTER, "--json", config=closed)
        f_balance = pool.submit(run_cli, "balance", "acme", "--json", config=closed)
    assert f_closed.result().json() == quote_uk(3, "0.02", "0.06")
    assert f_none.result().json()["charge"] == "0.35"
    assert not (no_config_dir / ".creditgate").exists()  # no embedded Redis was started for it
    assert_refused(f_bad.result(), "line 3")
    # without --deck the same commands need Redis, and say so in one line
    assert_refused(f_down.result(), "unreachable")
    assert_refused(f_balance.result(), "unreachable")


def test_concurrent_rate_imports_keep_every_version(cg: Gate) -> None:
    """Two operators scheduling decks at once: each import is merged, none is lost."""
    big = cg.tmp / "big.csv"
    big.write_text(HEADER + "\n" + "".join(f"{100000 + i},Dest {i},0.01,GBP,60,60,0,\n" for i in range(50_000)))
    assert cg.ok("rates", "import", str(big))["deck_version"] == 1
    small = write_deck(cg.tmp / "small.csv", "44,United Kingdom,0.50,GBP,60,60,0,")
    years = ("2031", "2032", "2033", "2034")
    results = cg.many(*(["rates", "import", str(small), "--effective", f"{y}-01-01", "--json"] for y in years))
    assert [r.code for r in results] == [0] * len(years), [str(r) for r in results]
    final = cg.ok("rates", "import", str(small), "--effective", "2035-01-01")
    assert final["versions"] == [NO_DATE, *(f"{y}-01-01T00:00:00.000Z" for y in (*years, "2035"))]
    assert final["deck_version"] == 6


# -- ledger, recharge, calls, reconcile ---------------------------------------------------------------


def test_ledger_lists_fundings_with_running_balances_and_filters(cg: Gate) -> None:
    org = cg.org()
    before = datetime.now(timezone.utc)
    cg.ok("fund", org, "100")
    cg.ok("fund", org, "60.5")
    after = datetime.now(timezone.utc)

    entries = cg.ok("ledger", org)
    assert [(e["type"], e["amount"], e["balance"], e["call"], e["note"]) for e in entries] == [
        ("fund", "100.00", "100.00", None, "manual top-up"),
        ("fund", "60.50", "160.50", None, "manual top-up"),
    ]
    assert len({e["id"] for e in entries}) == 2
    stamps = [datetime.fromisoformat(e["ts"]) for e in entries]
    assert all(e["ts"].endswith("Z") for e in entries)
    assert before - timedelta(seconds=1) <= stamps[0] <= stamps[1] <= after + timedelta(seconds=1)

    first_day, last_day = date.fromisoformat(entries[0]["ts"][:10]), date.fromisoformat(entries[1]["ts"][:10])
    past, from_day, to_day, window, future, bad = cg.many(
        ["ledger", org, "--to", (first_day - timedelta(days=1)).isoformat(), "--json"],
        ["ledger", org, "--from", first_day.isoformat(), "--json"],
        ["ledger", org, "--to", last_day.isoformat(), "--json"],  # a date is the whole day
        ["ledger", org, "--from", "2000-01-01", "--to", last_day.isoformat(), "--json"],
        ["ledger", org, "--from", (last_day + timedelta(days=1)).isoformat(), "--json"],
        ["ledger", org, "--from", "yesterday-ish", "--json"],
    )
    assert past.json() == []
    assert from_day.json() == entries
    assert to_day.json() == entries
    assert window.json() == entries
    assert future.json() == []
    assert_refused(bad, "from")


def test_recharge_set_and_off(cg: Gate) -> None:
    org = cg.org()
    assert cg.ok("recharge", "set", org, "--threshold", "10", "--amount", "50") == {
        "org": org, "enabled": True, "threshold": "10.00", "amount": "50.00", "currency": "GBP"}
    small, negative, garbage = cg.many(
        ["recharge", "set", org, "--threshold", "10", "--amount", "49.99", "--json"],
        ["recharge", "set", org, "--threshold", "-1", "--amount", "50", "--json"],
        ["recharge", "set", org, "--threshold", "ten", "--amount", "50", "--json"],
    )
    assert_refused(small, "at least 50.00 GBP")
    assert_refused(negative, "threshold")
    assert_refused(garbage, "threshold")
    assert cg.ok("recharge", "off", org) == {"org": org, "enabled": False}
    assert cg.ok("recharge", "off", org) == {"org": org, "enabled": False}  # idempotent


def test_calls_empty_without_live_calls(cg: Gate) -> None:
    org = cg.org()
    assert cg.ok("calls", org) == []


def test_reconcile_fresh_and_funded_books(cg: Gate) -> None:
    org = cg.org()
    fresh = cg.ok("reconcile", org)
    assert (fresh["ok"], fresh["balance"], fresh["audit_sum"], fresh["audit_entries"], fresh["problems"]) == (
        True, "0.00", "0.00", 0, [])
    cg.ok("fund", org, "100")
    funded, human = cg.many(["reconcile", org, "--json"], ["reconcile", org])
    report = funded.json()
    assert (report["ok"], report["balance"], report["audit_sum"], report["audit_entries"], report["funded"],
            report["problems"]) == (True, "100.00", "100.00", 1, "100.00", [])
    assert human.code == 0, str(human)
    assert human.out.splitlines()[-1] == "books reconcile"


def _lose_audit_trail(redis_url: str, org: str) -> None:
    """Delete the organization's audit ledger behind the CLI's back (as a bad manual edit would)."""
    from gateway.ledger.keys import OrgKeys

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.delete(OrgKeys(org).audit) == 1
    finally:
        client.close()


def test_reconcile_exits_1_on_a_difference_named_in_decimals(cg: Gate, redis_url: str) -> None:
    org = cg.org()
    cg.ok("fund", org, "100")
    _lose_audit_trail(redis_url, org)
    as_json, human = cg.many(["reconcile", org, "--json"], ["reconcile", org])
    assert as_json.code == 1, str(as_json)
    report = json.loads(as_json.out)
    assert (report["ok"], report["balance"], report["audit_sum"], report["audit_entries"]) == (
        False, "100.00", "0.00", 0)
    assert len(report["problems"]) == 1, report["problems"]
    assert human.code == 1, str(human)
    assert human.out.splitlines()[-1] == "books do NOT reconcile"
    assert sum(line.startswith("DIFFERENCE: ") for line in human.out.splitlines()) == 1, human.out
    # SPEC 9: money crosses every interface as a decimal string, never as micro-units
    [problem] = report["problems"]
    assert "100.00" in problem, problem
    assert "100000000" not in problem, problem


# -- tokens ---------------------------------------------------------------------------------------


def test_token_create_and_revoke(cg: Gate) -> None:
    created = cg.ok("org", "create", "Acme Ltd", "--country", "GB", "--currency", "GBP")
    org, admin_token = created["id"], created["token"]
    other = cg.org("Other Co")

    bridge, spare, bad_role = cg.many(
        ["token", "create", org, "--role", "bridge", "--json"],
        ["token", "create", org, "--role", "read_only", "--label", "dashboard", "--json"],
        ["token", "create", org, "--role", "emperor", "--json"],
    )
    token = bridge.json()
    assert set(token) == {"org", "role", "token"}
    assert (token["org"], token["role"]) == (org, "bridge")
    assert token["token"].startswith("cg_")
    assert len({token["token"], spare.json()["token"], admin_token}) == 3
    assert_refused(bad_role, "emperor")

    assert_refused(cg("token", "revoke", other, token["token"], "--json"), "no such token")
    assert cg.ok("token", "revoke", org, token["token"]) == {"org": org, "revoked": True}
    assert_refused(cg("token", "revoke", org, token["token"], "--json"), "no such token")
    # by its sha256, and the first admin token org create printed is a real token of that org
    digest = hashlib.sha256(spare.json()["token"].encode()).hexdigest()
    by_hash, admin = cg.many(["token", "revoke", org, digest, "--json"],
                             ["token", "revoke", org, admin_token, "--json"])
    assert by_hash.json() == {"org": org, "revoked": True}
    assert admin.json() == {"org": org, "revoked": True}


# -- --config / --json on every organization command ------------------------------------------------


def test_every_org_command_prints_json(cg: Gate) -> None:
    org = cg.org()
    commands: dict[str, tuple[list[str], type, str | None]] = {
        "balance": (["balance", org], dict, None),
        "ledger": (["ledger", org], list, None),
        "calls": (["calls", org], list, None),
        "reconcile": (["reconcile", org], dict, "org"),
        "fund": (["fund", org, "50"], dict, "org"),
        "recharge set": (["recharge", "set", org, "--threshold", "10", "--amount", "50"], dict, "org"),
        "recharge off": (["recharge", "off", org], dict, "org"),
        "trunk add": (["trunk", "add", org, "--address", "127.0.0.9"], dict, "org"),
        "user add": (["user", "add", org, "carol", "--number", gb_fixed(9)], dict, "org"),
        "user list": (["user", "list", org], list, None),
        "tollfree add": (["tollfree", "add", org, gb_tollfree(), "--target", "sip:b@127.0.0.1"], dict, "org"),
        "token create": (["token", "create", org, "--role", "read_only"], dict, "org"),
        "org set": (["org", "set", org, "--max-concurrent-calls", "2"], dict, "id"),
    }
    results = cg.many(*([*args, "--json"] for args, _, _ in commands.values()))
    problems = {}
    for (name, (_, kind, key)), r in zip(commands.items(), results):
        try:
            data = r.json()
        except AssertionError as exc:
            problems[name] = str(exc)
            continue
        if not isinstance(data, kind) or (key is not None and data.get(key) != org):
            problems[name] = f"unexpected JSON {data!r}"
    assert problems == {}


# -- configuration ----------------------------------------------------------------------------------


def test_creditgate_config_env_var_is_used_without_config(tmp_path: Path, redis_url: str) -> None:
    cfg = write_config(tmp_path / "env.toml", data_dir=tmp_path / "data", redis_url=redis_url)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    created = run_cli("org", "create", "Env Co", "--country", "GB", "--currency", "GBP", "--json",
                      env={"CREDITGATE_CONFIG": str(cfg)}, cwd=cwd)
    assert created.json()["id"] == "env-co"
    assert not (cwd / ".creditgate").exists()  # not the built-in default data_dir

    with ThreadPoolExecutor(max_workers=4) as pool:
        f_explicit = pool.submit(run_cli, "balance", "env-co", "--json", config=cfg, cwd=cwd)
        f_wins = pool.submit(run_cli, "balance", "env-co", "--json", config=cfg, cwd=cwd,
                             env={"CREDITGATE_CONFIG": str(tmp_path / "nowhere.toml")})
        f_missing = pool.submit(run_cli, "balance", "env-co", "--json", cwd=cwd,
                                env={"CREDITGATE_CONFIG": str(tmp_path / "nowhere.toml")})
    assert f_explicit.result().json()["currency"] == "GBP"
    assert f_wins.result().json()["currency"] == "GBP"  # --config beats the variable
    assert_refused(f_missing.result(), "nowhere.toml", "does not exist")


def test_bad_config_file_refused_in_one_line(tmp_path: Path) -> None:
    unknown_key = tmp_path / "unknown.toml"
    unknown_key.write_text('data_dir = "data"\n[redis]\nurll = "redis://127.0.0.1:1"\n')
    broken = tmp_path / "broken.toml"
    broken.write_text('data_dir = "data\n')
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run_cli("balance", "x", "--json", config=c, cwd=tmp_path),
                                (unknown_key, broken, tmp_path / "absent.toml")))
    assert_refused(results[0], "urll")
    assert_refused(results[1], "broken.toml")
    assert_refused(results[2], "absent.toml")
    assert not (tmp_path / "data").exists()


# -- the embedded Redis ---------------------------------------------------------------------------


def _redis_servers_under(directory: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline", "cwd"]):
        try:
            name = proc.info["name"] or ""
            cmdline = " ".join(proc.info["cmdline"] or [])
            cwd = proc.info["cwd"]
        except psutil.Error:
            continue
        if ("redis-server" in name or "redis-server" in cmdline) and cwd and Path(cwd).is_relative_to(directory):
            found.append(proc)
    return found


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_embedded_redis_started_per_command_and_data_persists(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cfg = write_config(tmp_path / "embedded.toml", data_dir=data, redis_url=None)
    try:
        created = run_cli("org", "create", "Embedded Co", "--country", "GB", "--currency", "GBP", "--json",
                          config=cfg)
        assert created.json()["id"] == "embedded-co"
        assert _redis_servers_under(tmp_path) == []
        conf = (data / "redis" / "redis.conf").read_text()
        port = int(next(line.split()[1] for line in conf.splitlines() if line.startswith("port ")))
        assert not _port_open(port)
        assert not (data / "redis.json").exists()

        funded = run_cli("fund", "embedded-co", "75", "--json", config=cfg)
        assert funded.json()["balance"] == "75.00"
        refused = run_cli("fund", "no-such-org", "75", "--json", config=cfg)
        assert_refused(refused, "no organization")
        assert run_cli("balance", "embedded-co", "--json", config=cfg).json() == {
            "balance": "75.00", "reserved": "0.00", "available": "75.00", "currency": "GBP"}
        assert _redis_servers_under(tmp_path) == []
        assert not (data / "redis.json").exists()
    finally:
        for proc in _redis_servers_under(tmp_path):  # only servers our own CLI runs started
            proc.kill()
