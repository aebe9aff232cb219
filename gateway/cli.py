"""The ``creditgate`` command line: everything an administrator does (SPEC section 9).

Every command takes ``--config FILE`` and ``--json``. Commands work whether or not the gateway
is running: they reach the same Redis (the running gateway's embedded one, or one they start for
the duration of the command). Bad input exits 1 with a one-line reason and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from rating_core import RateDeck
from rating_core.errors import CreditgateError
from rating_core.money import format_money, parse_money

from gateway.config import Config
from gateway.credit.errors import CreditRefused
from gateway.credit.quote import quote as make_quote
from gateway.directory import TOKEN_ROLES
from gateway.errors import InvalidInput
from gateway.ledger.reconcile import reconcile as reconcile_books
from gateway.services import Services, open_services
from gateway.timeutil import iso, parse_when, stream_id

__all__ = ["app", "main"]

app = typer.Typer(
    name="creditgate",
    help="SIP call-control gateway that enforces prepaid communications credits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
org_app = typer.Typer(help="Organizations.", no_args_is_help=True)
trunk_app = typer.Typer(help="SIP trunks (PBXs and conference bridges) of an organization.", no_args_is_help=True)
carrier_app = typer.Typer(help="PSTN carriers: where outbound calls go, where inbound calls come from.",
                          no_args_is_help=True)
user_app = typer.Typer(help="Users: calling identity, admin roles, credit licence, calling plan.",
                       no_args_is_help=True)
tollfree_app = typer.Typer(help="Toll-free numbers of an organization.", no_args_is_help=True)
recharge_app = typer.Typer(help="Auto-recharge below a threshold.", no_args_is_help=True)
rates_app = typer.Typer(help="Rate decks and quotes.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (one organization, one role each).", no_args_is_help=True)
app.add_typer(org_app, name="org")
app.add_typer(trunk_app, name="trunk")
app.add_typer(carrier_app, name="carrier")
app.add_typer(user_app, name="user")
app.add_typer(tollfree_app, name="tollfree")
app.add_typer(recharge_app, name="recharge")
app.add_typer(rates_app, name="rates")
app.add_typer(token_app, name="token")

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option("--config", help="TOML configuration file (default: $CREDITGATE_CONFIG, else built-in defaults)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
FromOpt = Annotated[Optional[str], typer.Option("--from", help="Start (ISO date or time, UTC).")]
ToOpt = Annotated[Optional[str], typer.Option("--to", help="End (ISO date: the whole day; or time, UTC).")]

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _fail(message: str, code: int = 1) -> None:
    err.print(f"error: {message}", markup=False)
    raise _Exit(code)


def _run(config: Path | None, body: Callable[[Services], Awaitable[Any]]) -> Any:
    """Load the configuration, open the services, run ``body``; errors become one line and exit 1."""
    try:
        cfg = Config.load(config)

        async def go() -> Any:
            async with open_services(cfg) as svc:
                return await body(svc)

        return asyncio.run(go())
    except _Exit as exc:
        raise typer.Exit(exc.code) from None
    except CreditRefused as exc:
        err.print(f"error: {exc.refusal.reason}", markup=False)
        raise typer.Exit(1) from None
    except CreditgateError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None


def _emit(as_json: bool, data: Any, human: Callable[[], None] | str | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    elif callable(human):
        human()
    elif human is not None:
        out.print(human, markup=False)
    else:
        for key, value in (data.items() if isinstance(data, dict) else []):
            out.print(f"{key}: {value}", markup=False)


def _money_arg(text: str, name: str) -> int:
    try:
        return parse_money(text)
    except CreditgateError as exc:
        raise InvalidInput(str(exc), name) from None


# -- run ------------------------------------------------------------------------------------


@app.command()
def run(
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Gateway processes sharing the ports.")] = 1,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Write the log as JSON lines.")] = False,
) -> None:
    """Run the gateway: SIP on UDP and TCP, the HTTP API, and the embedded Redis unless a Redis URL is configured."""
    from gateway.app import run_gateway

    try:
        cfg = Config.load(config)
        code = run_gateway(cfg, workers=workers, json_logs=as_json)
    except CreditgateError as exc:
        err.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


# -- organizations ----------------------------------------------------------------------------


@org_app.command("create")
def org_create(
    name: Annotated[str, typer.Argument(help="Organization name.")],
    country: Annotated[str, typer.Option("--country", help="ISO country code of its dial plan, e.g. GB.")],
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 account currency, e.g. GBP.")],
    billing_region: Annotated[Optional[str], typer.Option("--billing-region", help="Billing-address region.")] = None,
    min_funding: Annotated[Optional[str], typer.Option("--min-funding", help="Smallest one-time funding.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an organization; prints its id and its first admin token (shown once)."""

    async def body(svc: Services) -> None:
        minimum = _money_arg(min_funding, "min_funding") if min_funding else svc.config.credit.min_funding_micros
        org, token = await svc.directory.create_org(name, country=country, currency=currency,
                                                    billing_region=billing_region, min_funding=minimum)
        _emit(as_json, {"id": org.id, "token": token}, f"id: {org.id}\ntoken: {token}")

    _run(config, body)


@org_app.command("list")
def org_list(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List organizations."""

    async def body(svc: Services) -> None:
        orgs = [o.public() for o in await svc.directory.list_orgs()]

        def table() -> None:
            t = Table("id", "name", "country", "currency", "billing region")
            for o in orgs:
                t.add_row(o["id"], o["name"], o["country"], o["currency"], o["billing_region"])
            out.print(t)

        _emit(as_json, orgs, table)

    _run(config, body)


@org_app.command("set")
def org_set(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    max_concurrent_calls: Annotated[Optional[int], typer.Option("--max-concurrent-calls", min=0)] = None,
    daily_spend_limit: Annotated[Optional[str], typer.Option("--daily-spend-limit", help="0 for none.")] = None,
    block_class: Annotated[Optional[list[str]], typer.Option("--block-class", help="Number class to refuse.")] = None,
    block_prefix: Annotated[Optional[list[str]], typer.Option("--block-prefix", help="E.164 prefix to refuse.")] = None,
    outside_line: Annotated[Optional[str], typer.Option("--outside-line", help="Outside-line digit, '' for none.")] = None,
    extension_length: Annotated[Optional[list[int]], typer.Option("--extension-length")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change an organization's limits, blocked destinations and dial plan."""
    from dialplans import DialPlan, DialplanError, NumberClass

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        changes: dict[str, Any] = {}
        if max_concurrent_calls is not None:
            changes["max_concurrent_calls"] = max_concurrent_calls
        if daily_spend_limit is not None:
            changes["daily_spend_limit"] = _money_arg(daily_spend_limit, "daily_spend_limit")
        if block_class is not None:
            known = {c.value for c in NumberClass}
            for c in block_class:
                if c not in known or c == "emergency":
                    raise InvalidInput(f"cannot block class {c!r}", "block_class")
            changes["blocked_classes"] = tuple(block_class)
        if block_prefix is not None:
            for p in block_prefix:
                if not p.lstrip("+").isdigit():
                    raise InvalidInput(f"{p!r} is not a number prefix", "block_prefix")
            changes["blocked_prefixes"] = tuple(p.lstrip("+") for p in block_prefix)
        if outside_line is not None or extension_length is not None:
            plan = o.plan.to_dict()
            if outside_line is not None:
                plan["outside_line"] = outside_line
            if extension_length is not None:
                plan["extension_lengths"] = list(extension_length)
            try:
                changes["dialplan"] = DialPlan.from_dict(plan).to_dict()
            except DialplanError as exc:
                raise InvalidInput(str(exc), "dialplan") from None
        new = await svc.directory.update_org(o, **changes)
        _emit(as_json, new.public())

    _run(config, body)


# -- trunks, carriers, users, toll-free ---------------------------------------------------------


@trunk_app.command("add")
def trunk_add(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    address: Annotated[str, typer.Option("--address", help="Source IP[:port] of the PBX or bridge.")],
    username: Annotated[Optional[str], typer.Option("--username", help="Digest user name.")] = None,
    password: Annotated[Optional[str], typer.Option("--password", help="Digest password.")] = None,
    kind: Annotated[str, typer.Option("--kind", help="pbx or bridge.")] = "pbx",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Trust a PBX or conference bridge of an organization by source address (and digest)."""

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        trunk = await svc.directory.add_trunk(o, address, kind=kind, username=username or "",
                                              password=password or "")
        _emit(as_json, trunk.public())

    _run(config, body)


@carrier_app.command("add")
def carrier_add(
    name: Annotated[str, typer.Argument(help="Carrier name.")],
    address: Annotated[str, typer.Option("--address", help="IP:port where outbound calls are sent.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a PSTN carrier."""

    async def body(svc: Services) -> None:
        c = await svc.directory.add_carrier(name, address)
        _emit(as_json, {"name": c.name, "address": c.address})

    _run(config, body)


@user_app.command("add")
def user_add(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    user: Annotated[str, typer.Argument(help="User id (e.g. alice or alice@example.com).")],
    number: Annotated[str, typer.Option("--number", help="The user's E.164 number (calling identity).")],
    email: Annotated[Optional[str], typer.Option("--email")] = None,
    role: Annotated[Optional[list[str]], typer.Option("--role", help="Admin role id; repeat for more.")] = None,
    licence: Annotated[bool, typer.Option("--licence", help="Holds a communications-credits licence.")] = False,
    plan: Annotated[str, typer.Option("--plan", help="Calling plan id.")] = "none",
    country: Annotated[Optional[str], typer.Option("--country", help="Usage location (default: org country).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add or update a user."""

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        u = await svc.directory.add_user(o, user, number=number, email=email or "", roles=role or [],
                                         licence=licence, plan=plan, country=country)
        _emit(as_json, u.to_dict())

    _run(config, body)


@user_app.command("list")
def user_list(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the users of an organization."""

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        users = [u.to_dict() for u in await svc.directory.list_users(o.id)]

        def table() -> None:
            t = Table("user", "number", "email", "licence", "plan", "roles")
            for u in users:
                t.add_row(u["id"], u["number"], u["email"], "yes" if u["licence"] else "no", u["plan"],
                          ", ".join(u["roles"]))
            out.print(t)

        _emit(as_json, users, table)

    _run(config, body)


@tollfree_app.command("add")
def tollfree_add(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    number: Annotated[str, typer.Argument(help="Toll-free number in E.164 form.")],
    target: Annotated[str, typer.Option("--target", help="sip: URI of the bridge, attendant or queue.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Route a toll-free number to a target of an organization (billed to it)."""

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        tf = await svc.directory.add_tollfree(o, number, target=target)
        _emit(as_json, {"number": tf.number, "org": tf.org, "target": tf.target})

    _run(config, body)


# -- money ----------------------------------------------------------------------------------


# A negative amount ("-5") must reach the money parser (and be refused there), not be taken
# for an unknown option.
@app.command(context_settings={"ignore_unknown_options": True})
def fund(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    amount: Annotated[str, typer.Argument(help="Amount in the account currency, e.g. 100.00.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add funds to an organization's balance (at least its minimum funding); a purchase if a payment provider is set."""
    from gateway.funding import fund_once

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        result = await fund_once(svc, o, _money_arg(amount, "amount"))
        _emit(as_json, result)

    _run(config, body)


@recharge_app.command("set")
def recharge_set(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    threshold: Annotated[str, typer.Option("--threshold", help="Recharge when the balance falls below this.")],
    amount: Annotated[str, typer.Option("--amount", help="Amount of each recharge.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn on auto-recharge."""

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        from gateway.admin import configure_recharge

        th, amt = _money_arg(threshold, "threshold"), _money_arg(amount, "amount")
        _emit(as_json, await configure_recharge(svc, o, threshold=th, amount=amt))

    _run(config, body)


@recharge_app.command("off")
def recharge_off(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn off auto-recharge."""

    async def body(svc: Services) -> None:
        from gateway.admin import configure_recharge

        o = await svc.directory.resolve_org(org)
        _emit(as_json, await configure_recharge(svc, o, threshold=None, amount=None, enabled=False))

    _run(config, body)


@app.command()
def balance(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the balance, what live calls hold, and what is available."""

    async def body(svc: Services) -> None:
        from gateway.admin import balance_view

        o = await svc.directory.resolve_org(org)
        _emit(as_json, await balance_view(svc, o))

    _run(config, body)


@app.command()
def ledger(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    from_: FromOpt = None,
    to: ToOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the audit ledger: every balance change with the running balance."""

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        start = stream_id(parse_when(from_, field="from") if from_ else None)
        end = stream_id(parse_when(to, end=True, field="to") if to else None, end=True)
        from gateway.admin import ledger_view

        rows = await ledger_view(svc, o, start=start, end=end)

        def table() -> None:
            t = Table("time", "type", "amount", "balance", "call", "note")
            for r in rows:
                t.add_row(r["ts"], r["type"], r["amount"], r["balance"], r["call"] or "", r["note"])
            out.print(t)

        _emit(as_json, rows, table)

    _run(config, body)


@app.command()
def calls(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List live calls."""
    from gateway.reports.live import live_calls

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        rows = await live_calls(svc.ledger, o)

        def table() -> None:
            t = Table("call", "user", "callee", "class", "paid by", "granted s", "held", "state")
            for r in rows:
                t.add_row(r["call_id"], r["user"], r["callee"], r["class"], r["paid_by"], str(r["granted_s"]),
                          r["held"], r["state"])
            out.print(t)

        _emit(as_json, rows, table)

    _run(config, body)


@app.command()
def usage(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    from_: FromOpt = None,
    to: ToOpt = None,
    user: Annotated[Optional[str], typer.Option("--user", help="Only this user's calls.")] = None,
    by: Annotated[Optional[str], typer.Option("--by", help="Totals by user, destination or day.")] = None,
    csv_file: Annotated[Optional[Path], typer.Option("--csv", help="Write CSV to this file ('-': stdout).")] = None,
    xlsx_file: Annotated[Optional[Path], typer.Option("--xlsx", help="Write an Excel workbook to this file.")] = None,
    teams_file: Annotated[Optional[Path], typer.Option(
        "--teams-csv", help="Write the calls as the Teams PSTN usage export CSV ('-': stdout).")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """PSTN usage report: every call started in the range, or totals by user, destination or day."""
    from gateway.reports import export
    from gateway.reports.usage import aggregate, check_grouping, parse_range, usage_rows

    async def body(svc: Services) -> None:
        files = [(kind, path) for kind, path in (("csv", csv_file), ("xlsx", xlsx_file), ("teams-csv", teams_file))
                 if path is not None]
        if len(files) > 1:
            _fail("choose one of --csv, --xlsx and --teams-csv")
        kind, path = files[0] if files else (None, None)
        grouping = check_grouping(by)
        if kind == "teams-csv" and grouping is not None:
            _fail("--teams-csv lists calls: it does not take --by")
        if kind == "xlsx" and str(path) == "-":
            _fail("--xlsx needs a file name")
        start, end = parse_range(from_, to)
        o = await svc.directory.resolve_org(org)
        rows = usage_rows(svc.ledger, o.id, start=start, end=end, user=user)
        summary: dict[str, Any] = {"org": o.id, "from": iso(start) if start is not None else None,
                                   "to": iso(end) if end is not None else None, "user": user or None}
        if kind is not None and path is not None:
            data = await _write_usage(kind, path, rows, grouping, country=o.country)
            if str(path) != "-":
                data = {**summary, **data}
                _emit(as_json, data, f"wrote {data['calls']} calls to {data['file']} ({kind})")
            return
        if grouping is not None:
            totals = [t.to_dict() for t in await aggregate(rows, grouping)]

            def totals_table() -> None:
                t = Table(grouping, "currency", "calls", "answered", "billed s", "plan min s", "charge")
                for r in totals:
                    t.add_row(r[grouping] or "-", r["currency"], str(r["calls"]), str(r["answered"]),
                              str(r["billed_s"]), str(r["minutes_s"]), r["charge"])
                out.print(t)

            _emit(as_json, totals, totals_table)
            return
        if as_json:
            async for chunk in export.iter_json(rows):
                sys.stdout.write(chunk)
            return
        table = Table("start", "call", "user", "callee", "destination", "class", "billed s", "charge", "paid",
                      "end reason")
        sums: dict[str, int] = {}
        async for r in rows:
            table.add_row(r.call_time.strftime("%Y-%m-%d %H:%M:%S"), r.call_id, r.user or "-", r.callee,
                          r.destination or "-", r.number_class, str(r.billed_s), f"{format_money(r.charge)} {r.currency}",
                          r.paid, r.end_reason)
            sums[r.currency] = sums.get(r.currency, 0) + r.charge
        out.print(table)
        spent = ", ".join(f"{format_money(v)} {c}" for c, v in sorted(sums.items())) or "nothing"
        out.print(f"{table.row_count} calls; charged {spent}", markup=False)

    _run(config, body)


async def _write_usage(kind: str, path: Path, rows: Any, grouping: str | None, *, country: str) -> dict[str, Any]:
    """Write one export to ``path`` ('-': stdout); a file is written under a temporary name and
    renamed when complete, so a failed export leaves no partial file behind."""
    from gateway.reports import export
    from gateway.reports.usage import Totals

    data: dict[str, Any] = {"file": str(path), "format": kind}

    async def text(fh: Any) -> int:
        if kind == "teams-csv":
            return await export.write_teams_csv(rows, fh, user_location=country)
        if grouping is None:
            return await export.write_csv(rows, fh)
        totals = Totals((grouping,))  # type: ignore[arg-type]
        n = 0
        async for r in rows:
            totals.add(r)
            n += 1
        result = totals.result(grouping)  # type: ignore[arg-type]
        data.update(by=grouping, groups=len(result))
        await export.write_totals_csv(result, grouping, fh)
        return n

    if str(path) == "-":
        data["calls"] = await text(sys.stdout)
        return data
    target = path.expanduser()
    if target.is_dir():
        raise InvalidInput(f"{target} is a directory", kind)
    partial = target.with_name(target.name + ".partial")
    try:
        if kind == "xlsx":
            data["calls"] = await export.write_xlsx(rows, partial)
        else:
            with partial.open("w", newline="", encoding="utf-8") as fh:
                data["calls"] = await text(fh)
        partial.replace(target)
    except OSError as exc:
        raise InvalidInput(f"cannot write {target}: {exc.strerror or exc}", kind) from None
    finally:
        partial.unlink(missing_ok=True)
    data["file"] = str(target)
    return data


@app.command()
def reconcile(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the audit ledger, the CDRs and the balance agree; exit 1 on any difference."""

    async def body(svc: Services) -> bool:
        o = await svc.directory.resolve_org(org)
        rep = await reconcile_books(svc.ledger, o.id)
        data = rep.to_dict()

        def human() -> None:
            out.print(f"balance {data['balance']} {o.currency}; audit total {data['audit_sum']}; "
                      f"{data['audit_entries']} audit entries; {data['cdrs']} CDRs charging {data['cdr_charges']}; "
                      f"{data['live_calls']} live calls holding {data['reserved']}", markup=False)
            for p in rep.problems:
                out.print(f"DIFFERENCE: {p}", markup=False)
            out.print("books reconcile" if rep.ok else "books do NOT reconcile", markup=False)

        _emit(as_json, data, human)
        return rep.ok

    if not _run(config, body):
        raise typer.Exit(1)


# -- rates ----------------------------------------------------------------------------------


@rates_app.command("import")
def rates_import(
    file: Annotated[Path, typer.Argument(help="Rate deck CSV.", exists=False)],
    effective: Annotated[Optional[str], typer.Option("--effective", help="Effective date of rows without one.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import a rate deck (replaces the version with the same effective date; schedules future ones)."""

    async def body(svc: Services) -> None:
        deck = _load_deck_file(file, effective, progress=not as_json and sys.stderr.isatty())
        merged = await svc.rates.import_deck(deck)
        data = {"rates": len(deck.rates(at=_latest(deck))), "versions": [iso(v) for v in merged.versions()],
                "deck_version": svc.rates.version}
        _emit(as_json, data, f"imported {data['rates']} rates; deck versions: {', '.join(data['versions'])}")

    _run(config, body)


def _latest(deck: RateDeck) -> Any:
    versions = deck.versions()
    return versions[-1] if versions else None


def _load_deck_file(file: Path, effective: str | None, *, progress: bool) -> RateDeck:
    if not file.is_file():
        raise InvalidInput(f"{file} is not a readable file", "file")
    eff = parse_when(effective, field="effective") if effective else None
    if not progress:
        return RateDeck.from_csv(file, effective=eff)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with file.open("rb") as fh:
        total = sum(1 for _ in fh) - 1
    with Progress(TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("import", total=max(total, 1))
        return RateDeck.from_csv(file, effective=eff, progress=lambda n: bar.update(task, completed=n))


@rates_app.command("quote")
def rates_quote(
    number: Annotated[str, typer.Argument(help="Number to price, E.164 (+4420...) or national with --country.")],
    minutes: Annotated[int, typer.Option("--minutes", min=0, max=100000, help="Call length in minutes.")] = 1,
    country: Annotated[Optional[str], typer.Option("--country", help="Country of a nationally dialed number.")] = None,
    deck_file: Annotated[Optional[Path], typer.Option("--deck", help="Price from this CSV, offline.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What a call costs: E.164 form, class, matched prefix, destination, rate and the charge."""

    def show(q: dict[str, Any]) -> None:
        _emit(as_json, q, lambda: [out.print(f"{k}: {v}", markup=False) for k, v in q.items()])

    if deck_file is not None:
        try:
            deck = _load_deck_file(deck_file, None, progress=False)
            show(make_quote(deck, number, minutes=minutes, country=country).to_dict())
        except CreditRefused as exc:
            err.print(f"error: {exc.refusal.reason}", markup=False)
            raise typer.Exit(1) from None
        except CreditgateError as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from None
        return

    async def body(svc: Services) -> None:
        deck = await svc.rates.load()
        if deck is None:
            _fail("no rate deck loaded; import one with 'creditgate rates import FILE.csv' or pass --deck")
        assert deck is not None
        show(make_quote(deck, number, minutes=minutes, country=country).to_dict())

    _run(config, body)


# -- tokens ---------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(TOKEN_ROLES)}.")],
    label: Annotated[str, typer.Option("--label")] = "",
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token (printed once; stored hashed)."""

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        token = await svc.directory.create_token(o.id, role, label=label)
        _emit(as_json, {"org": o.id, "role": role, "token": token}, token)

    _run(config, body)


@token_app.command("revoke")
def token_revoke(
    org: Annotated[str, typer.Argument(help="Organization id or name.")],
    token: Annotated[str, typer.Argument(help="The token, or its sha256 hash.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API token."""

    async def body(svc: Services) -> None:
        o = await svc.directory.resolve_org(org)
        if not await svc.directory.revoke_token(o.id, token):
            _fail("no such token for this organization")
        _emit(as_json, {"org": o.id, "revoked": True})

    _run(config, body)


def main() -> None:
    app()
