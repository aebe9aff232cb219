"""rating_core/deck.py with each twin's core: CSV import and its refusals, versions, lookups, export."""

from __future__ import annotations

import datetime as dt
import io
import math
import time

import pytest
from rating_helpers import HEADER, csv_text

import rating_core
from rating_core import Rate

JAN = 1_767_225_600  # 2026-01-01T00:00:00Z
FEB = 1_769_904_000  # 2026-02-01T00:00:00Z
MAR = 1_772_323_200  # 2026-03-01T00:00:00Z

DECK = csv_text(
    "1,United States,0.01,USD,6,6,0,",
    "44,United Kingdom,0.10,GBP,30,6,0,",
    "4420,London,0.05,GBP,60,60,0.01,",
    "447,UK Mobile,0.20,GBP,1,1,0,",
    "447700,UK Mobile Premium,1.50,GBP,60,60,0.50,",
    "+33,France,0.08,EUR,60,1,0,",
)


# --- import and refusals ------------------------------------------------------------------------------


def test_import_reads_every_field(rc) -> None:
    deck = rc.RateDeck.from_csv_text(DECK)
    assert len(deck) == 6
    assert deck.versions() == [0]
    assert deck.lookup("+447700900123") == Rate(
        prefix="447700",
        destination="UK Mobile Premium",
        rate_per_min=1_500_000,
        currency="GBP",
        initial_increment_s=60,
        subsequent_increment_s=60,
        connection_fee=500_000,
        effective_from=0,
    )
    assert deck.lookup("+33123456789").prefix == "33"  # the leading '+' of a prefix is stripped
    assert deck.currencies() == ["EUR", "GBP", "USD"]


def test_import_tolerates_what_a_spreadsheet_writes(rc) -> None:
    text = "\ufeff" + csv_text(
        ' 44 ,"United Kingdom, mainland", 0.10 ,GBP, 30 ,006,0.000,',
        "",
        '33,"France ""métropole""",0.08,EUR,60,1,0,2026-01-01',
    ).replace("\n", "\r\n")
    deck = rc.RateDeck.from_csv_text(text)
    uk = deck.lookup("+4420", at=JAN)
    assert (uk.prefix, uk.destination, uk.rate_per_min, uk.subsequent_increment_s) == ("44", "United Kingdom, mainland", 100_000, 6)
    assert deck.lookup("+33", at=JAN).destination == 'France "métropole"'


@pytest.mark.parametrize(
    "rows,line,message",
    [
        (["44,UK,0.10,GBP,30,6,0"], 2, "expected 8 columns, found 7"),
        (["44,UK,0.10,GBP,30,6,0,,"], 2, "expected 8 columns, found 9"),
        (["44,UK,0.10,GBP,30,6,0,", "   "], 3, "expected 8 columns, found 1"),
        ([",UK,0.10,GBP,30,6,0,"], 2, "missing prefix"),
        (["+,UK,0.10,GBP,30,6,0,"], 2, "missing prefix"),
        (["44a,UK,0.10,GBP,30,6,0,"], 2, "prefix '44a' must be digits (a leading '+' is allowed)"),
        (["++44,UK,0.10,GBP,30,6,0,"], 2, "prefix '++44' must be digits"),
        (["4 4,UK,0.10,GBP,30,6,0,"], 2, "prefix '4 4' must be digits"),
        (["\uff14\uff14,UK,0.10,GBP,30,6,0,"], 2, "must be digits"),  # full-width digits
        (["1234567890123456789,UK,0.10,GBP,30,6,0,"], 2, "is longer than 18 digits"),
        (["44,,0.10,GBP,30,6,0,"], 2, "missing destination"),
        (["44,UK,,GBP,30,6,0,"], 2, "missing rate_per_min"),
        (["44,UK,0.1234567,GBP,30,6,0,"], 2, "rate_per_min: amount '0.1234567' has more than 6 decimals"),
        (["44,UK,-0.10,GBP,30,6,0,"], 2, "rate_per_min: amount '-0.10' must not be negative"),
        (["44,UK,ten,GBP,30,6,0,"], 2, "rate_per_min: amount 'ten' is not a decimal number"),
        (["44,UK,1e-1,GBP,30,6,0,"], 2, "rate_per_min: amount '1e-1' uses an exponent"),
        (["44,UK,10000.000001,GBP,30,6,0,"], 2, "rate_per_min 10000.000001 is above the maximum 10000.00"),
        (["44,UK,0.10,,30,6,0,"], 2, "missing currency"),
        (["44,UK,0.10,ABC,30,6,0,"], 2, "unknown currency 'ABC': not an active ISO 4217 code"),
        (["44,UK,0.10,gbp,30,6,0,"], 2, "unknown currency 'gbp': not an active ISO 4217 code (codes are upper case)"),
        (["44,UK,0.10,GBP,,6,0,"], 2, "missing initial_increment_s"),
        (["44,UK,0.10,GBP,0,6,0,"], 2, "initial_increment_s must be at least 1 second, got 0"),
        (["44,UK,0.10,GBP,-30,6,0,"], 2, "initial_increment_s must be a positive number of seconds, got -30"),
        (["44,UK,0.10,GBP,30.5,6,0,"], 2, "initial_increment_s must be a whole number of seconds, got '30.5'"),
        (["44,UK,0.10,GBP,30,000,0,"], 2, "subsequent_increment_s must be at least 1 second, got 000"),
        (["44,UK,0.10,GBP,30,-6,0,"], 2, "subsequent_increment_s must be a positive number of seconds, got -6"),
        (["44,UK,0.10,GBP,30,six,0,"], 2, "subsequent_increment_s must be a whole number of seconds, got 'six'"),
        (["44,UK,0.10,GBP,30,100000001,0,"], 2, "subsequent_increment_s 100000001 is above the maximum 100000000"),
        (["44,UK,0.10,GBP,30,6,,"], 2, "missing connection_fee"),
        (["44,UK,0.10,GBP,30,6,-1,"], 2, "connection_fee: amount '-1' must not be negative"),
        (["44,UK,0.10,GBP,30,6,0.0000001,"], 2, "connection_fee: amount '0.0000001' has more than 6 decimals"),
        (["44,UK,0.10,GBP,30,6,0,2026-13-01"], 2, "effective_from: bad date '2026-13-01'"),
        (["44,UK,0.10,GBP,30,6,0,tomorrow"], 2, "effective_from: bad date 'tomorrow'"),
        (["44,UK,0.10,GBP,30,6,0,2026-01-01T25:00:00Z"], 2, "effective_from: bad date"),
        (["44,UK,0.10,GBP,30,6,0,1969-12-31"], 2, "effective_from: effective date -86400 is outside 1970-01-01..9999-12-31"),
        (["44,UK,0.10,GBP,30,6,0,", "44,UK again,0.20,GBP,30,6,0,"], 3,
         "duplicate prefix 44 for effective date always (no effective date) (first on line 2)"),
        (["44,UK,0.10,GBP,30,6,0,2026-01-01", "33,FR,0.1,EUR,1,1,0,", "+44,UK,0.20,GBP,30,6,0,2026-01-01T00:00:00Z"], 4,
         "duplicate prefix 44 for effective date 2026-01-01 (first on line 2)"),
        (['44,"UK,0.10,GBP,30,6,0,'], 2, "malformed CSV: unexpected end of data"),
        (['44,"UK"x,0.10,GBP,30,6,0,'], 2, "malformed CSV: ',' expected after '\"'"),
    ],
)
def test_import_refusals(rc, rows: list[str], line: int, message: str) -> None:
    with pytest.raises(rc.DeckError) as info:
        rc.RateDeck.from_csv_text(csv_text(*rows))
    assert info.value.line == line
    assert message in info.value.reason, info.value.reason
    assert str(info.value).startswith(f"line {line}: ")


def test_refusal_counts_blank_and_multiline_records(rc) -> None:
    text = csv_text('44,"United\nKingdom",0.10,GBP,30,6,0,', "", "33,FR,0.1,EUR,1,1,x,")
    with pytest.raises(rc.DeckError) as info:
        rc.RateDeck.from_csv_text(text)
    assert info.value.line == 5


@pytest.mark.parametrize(
    "text,line,message",
    [
        ("", 1, "empty file: expected the header prefix,destination,"),
        ("prefix,destination,rate,currency\n44,UK,0.1,GBP\n", 1, "wrong header: expected prefix,destination,rate_per_min"),
        (HEADER.replace("prefix", "Prefix") + "\n", 1, "wrong header"),
        (HEADER.rsplit(",", 1)[0] + "\n44,UK,0.10,GBP,30,6,0\n", 1, "wrong header"),
        (HEADER + "\n", 1, "the deck has no rate rows"),
        (HEADER + "\n\n\n", 3, "the deck has no rate rows"),
    ],
)
def test_import_refuses_header_and_empty(rc, text: str, line: int, message: str) -> None:
    with pytest.raises(rc.DeckError) as info:
        rc.RateDeck.from_csv_text(text)
    assert (info.value.line, message in info.value.reason) == (line, True), info.value


def test_import_from_path_and_stream(rc, tmp_path) -> None:
    path = tmp_path / "deck.csv"
    path.write_text(DECK, encoding="utf-8")
    from_path = rc.RateDeck.from_csv(path)
    from_str_path = rc.RateDeck.from_csv(str(path))
    with path.open(encoding="utf-8", newline="") as stream:
        from_stream = rc.RateDeck.from_csv(stream)
    from_stringio = rc.RateDeck.from_csv(io.StringIO(DECK))
    texts = {deck.to_csv_text() for deck in (from_path, from_str_path, from_stream, from_stringio)}
    assert len(texts) == 1
    with pytest.raises(rc.DeckError, match="cannot read .*missing.csv"):
        rc.RateDeck.from_csv(tmp_path / "missing.csv")
    (tmp_path / "latin1.csv").write_bytes(DECK.encode() + "33,Fran\xe7e,0.1,EUR,1,1,0,\n".encode("latin-1"))
    with pytest.raises(rc.DeckError, match="not UTF-8 text"):
        rc.RateDeck.from_csv(tmp_path / "latin1.csv")
    with pytest.raises(rc.DeckError, match="takes a path or a text stream"):
        rc.RateDeck.from_csv(b"prefix")


def test_progress_is_reported(rc) -> None:
    rows = [f"{prefix},D{prefix},0.01,EUR,1,1,0," for prefix in range(100_000, 125_000)]
    seen: list[int] = []
    deck = rc.RateDeck.from_csv(io.StringIO(csv_text(*rows)), progress=seen.append)
    assert seen == [10_000, 20_000, 25_000]
    assert len(deck) == 25_000


def test_effective_argument_dates_undated_rows(rc) -> None:
    text = csv_text("44,UK,0.10,GBP,30,6,0,", "33,FR,0.08,EUR,60,1,0,2026-03-01")
    for effective in (FEB, "2026-02-01", dt.date(2026, 2, 1), dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc),
                      dt.datetime(2026, 2, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))):
        deck = rc.RateDeck.from_csv_text(text, effective=effective)
        assert deck.versions() == [FEB, MAR]
        assert deck.lookup("+4420", at=FEB - 1) is None
        assert deck.lookup("+4420", at=FEB).effective_from == FEB
    with pytest.raises(rc.DeckError, match="effective: bad date"):
        rc.RateDeck.from_csv_text(text, effective="soon")
    with pytest.raises(rc.DeckError, match="effective: effective date -1 is outside"):
        rc.RateDeck.from_csv_text(text, effective=-1)


@pytest.mark.parametrize(
    "text,epoch",
    [
        ("2026-01-01", JAN),
        ("2026-01-01T00:00:00Z", JAN),
        ("2026-01-01T02:00:00+02:00", JAN),
        ("2025-12-31T19:00:00-05:00", JAN),
        ("2026-01-01T00:00:00", JAN),  # no offset: UTC
        ("2026-01-01T12:30:15Z", JAN + 45_015),
        ("2026-01-01 12:30:15Z", JAN + 45_015),
        ("1970-01-01", 0),
    ],
)
def test_effective_from_formats(rc, text: str, epoch: int) -> None:
    deck = rc.RateDeck.from_csv_text(csv_text(f"44,UK,0.10,GBP,30,6,0,{text}"))
    assert deck.versions() == [epoch]


# --- versions -----------------------------------------------------------------------------------------

VERSIONED = csv_text(
    "44,UK,0.10,GBP,30,6,0,",
    "4420,London,0.05,GBP,60,60,0,",
    "44,UK from Feb,0.12,GBP,30,6,0,2026-02-01",
    "33,France from Feb,0.08,EUR,60,1,0,2026-02-01",
    "4420,London from Mar,0.04,GBP,60,60,0,2026-03-01",
)


@pytest.mark.parametrize(
    "at,uk,london,france",
    [
        (0, "UK", "London", None),
        (FEB - 1, "UK", "London", None),
        (FEB, "UK from Feb", "London", "France from Feb"),
        (FEB + 0.5, "UK from Feb", "London", "France from Feb"),
        (FEB - 0.5, "UK", "London", None),
        (MAR, "UK from Feb", "London from Mar", "France from Feb"),
        (10**30, "UK from Feb", "London from Mar", "France from Feb"),
        (math.inf, "UK from Feb", "London from Mar", "France from Feb"),
        (dt.date(2026, 2, 1), "UK from Feb", "London", "France from Feb"),
        (dt.datetime(2026, 1, 31, 23, 59, 59), "UK", "London", None),  # naive: UTC
        (dt.datetime(2026, 2, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=1))), "UK", "London", None),
        ("2026-03-01T00:00:00Z", "UK from Feb", "London from Mar", "France from Feb"),
    ],
)
def test_lookup_uses_the_version_in_force(rc, at, uk, london, france) -> None:
    deck = rc.RateDeck.from_csv_text(VERSIONED)
    assert deck.versions() == [0, FEB, MAR]
    found = [deck.lookup(number, at=at) for number in ("+4410", "+44207", "+331")]
    assert [r.destination if r else None for r in found] == [uk, london, france]
    assert [r.destination if r else None for r in deck.lookup_many(["+4410", "+44207", "+331"], at=at)] == [uk, london, france]


def test_rates_and_len_per_version(rc) -> None:
    deck = rc.RateDeck.from_csv_text(VERSIONED)
    assert [r.destination for r in deck.rates(at=0)] == ["UK", "London"]
    assert [r.destination for r in deck.rates(at=FEB)] == ["France from Feb", "UK from Feb", "London"]
    assert [r.destination for r in deck.rates(at=MAR)] == ["France from Feb", "UK from Feb", "London from Mar"]
    assert len(deck) == 3  # now (after March 2026)


def test_before_the_first_version_there_is_no_rate(rc) -> None:
    deck = rc.RateDeck.from_csv_text(csv_text("44,UK,0.10,GBP,30,6,0,2026-02-01"))
    assert deck.lookup("+44", at=FEB - 1) is None
    assert deck.lookup_many(["+44", "x"], at=-(2**70)) == [None, None]
    assert deck.rates(at=JAN) == []
    assert deck.lookup("+44", at=FEB).destination == "UK"


def test_at_none_reads_the_clock_and_caches_the_version(rc) -> None:
    now = int(time.time())
    deck = rc.RateDeck.from_csv_text(csv_text(
        "44,UK,0.10,GBP,30,6,0,",
        f"44,UK soon,0.20,GBP,30,6,0,{rating_core._time.format_iso(now + 3600)}",
        f"44,UK past,0.15,GBP,30,6,0,{rating_core._time.format_iso(now - 3600)}",
    ))
    assert deck.lookup("+44").destination == "UK past"
    assert deck.lookup("+44", at=now + 3600).destination == "UK soon"  # moves the cached version
    assert deck.lookup("+44").destination == "UK past"  # and back
    assert deck.lookup("+44", at=None).destination == "UK past"
    assert [r.destination for r in deck.lookup_many(["+44"])] == ["UK past"]
    assert len(deck) == 1


@pytest.mark.parametrize("at", [math.nan, "never", object(), b"2026-01-01"])
def test_bad_at_is_refused(rc, at) -> None:
    deck = rc.RateDeck.from_csv_text(DECK)
    with pytest.raises(rc.RatingError):
        deck.lookup("+44", at=at)
    with pytest.raises(rc.RatingError):
        deck.lookup_many(["+44"], at=at)


def test_add_version_schedules_a_future_deck(rc) -> None:
    deck = rc.RateDeck.from_csv_text(DECK)
    future = rc.RateDeck.from_csv_text(csv_text("44,UK 2026,0.09,GBP,30,6,0,", "49,Germany,0.05,EUR,60,60,0,"))
    deck.add_version(future, "2026-02-01")
    assert deck.versions() == [0, FEB]
    assert deck.lookup("+4420", at=JAN).destination == "London"
    assert deck.lookup("+4410", at=JAN).destination == "United Kingdom"
    assert deck.lookup("+4910", at=JAN) is None
    assert deck.lookup("+4410", at=FEB).destination == "UK 2026"
    assert deck.lookup("+4410", at=FEB).effective_from == FEB  # re-dated
    assert deck.lookup("+4420", at=FEB).destination == "London"  # versions add and override
    assert deck.lookup("+4910", at=FEB).destination == "Germany"
    # The same date again replaces that version; other versions are kept.
    deck.add_version([Rate(prefix="49", destination="Germany v2", rate_per_min=1, currency="EUR",
                           initial_increment_s=1, subsequent_increment_s=1, connection_fee=0)], FEB)
    assert deck.lookup("+4910", at=FEB).destination == "Germany v2"
    assert deck.lookup("+4410", at=FEB).destination == "United Kingdom"
    # An empty version withdraws the scheduled one.
    deck.add_version([], dt.date(2026, 2, 1))
    assert deck.versions() == [0]
    with pytest.raises(rc.DeckError, match="duplicate prefix 44 in the new version"):
        deck.add_version([deck.lookup("+44"), Rate(**{**deck.lookup("+44").to_dict(), "rate_per_min": 1,
                                                      "connection_fee": 0, "effective_from": 5})], FEB)


def test_merge_replaces_versions_of_the_same_date(rc, twins) -> None:
    deck = rc.RateDeck.from_csv_text(VERSIONED)
    for other_twin in twins:  # a deck of either twin merges
        incoming = other_twin.RateDeck.from_csv_text(csv_text(
            "44,UK Feb v2,0.11,GBP,30,6,0,2026-02-01", "1,USA Apr,0.01,USD,6,6,0,2026-04-01"))
        merged = rc.RateDeck.from_csv_text(deck.to_csv_text())
        merged.merge(incoming)
        assert len(merged.versions()) == 4
        assert merged.lookup("+44", at=FEB).destination == "UK Feb v2"
        assert merged.lookup("+33", at=FEB) is None  # France was in the replaced February version
        assert merged.lookup("+44207", at=MAR).destination == "London from Mar"
        assert merged.lookup("+1555", at=MAR) is None
        assert merged.lookup("+1555", at=1_775_001_600).destination == "USA Apr"
    with pytest.raises(rc.DeckError, match="merge takes a RateDeck"):
        deck.merge([])


def test_constructor_takes_rows(rc) -> None:
    rows = rc.RateDeck.from_csv_text(VERSIONED).rates(at=MAR)
    deck = rc.RateDeck(rows)
    assert deck.rates(at=MAR) == rows
    assert len(rc.RateDeck()) == 0 and rc.RateDeck().versions() == []
    assert rc.RateDeck().lookup("+44") is None
    with pytest.raises(rc.DeckError, match="duplicate prefix 33 for effective_from 1769904000"):
        rc.RateDeck(rows + rows[:2])
    with pytest.raises(rc.DeckError, match="takes Rate rows"):
        rc.RateDeck([("44", "UK")])


def test_csv_round_trip_keeps_every_version(rc) -> None:
    deck = rc.RateDeck.from_csv_text(VERSIONED)
    deck.add_version([Rate(prefix="49", destination='Germany, "Festnetz"\nline 2', rate_per_min=1,
                           currency="EUR", initial_increment_s=1, subsequent_increment_s=1,
                           connection_fee=123, effective_from=0)], FEB + 45_015)
    text = deck.to_csv_text()
    assert text.splitlines()[0] == HEADER
    assert "2026-02-01T12:30:15Z" in text and ",2026-03-01\n" in text
    again = rc.RateDeck.from_csv_text(text)
    assert again.to_csv_text() == text
    assert again._all_rows() == deck._all_rows()
    assert again.versions() == deck.versions()


# --- lookup -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number,prefix",
    [
        ("+447700900123", "447700"),
        ("447700900123", "447700"),
        ("+44770090", "447700"),
        ("+447700", "447700"),
        ("+44770", "447"),
        ("+4477", "447"),
        ("+447", "447"),
        ("+44", "44"),
        ("+4", None),
        ("+442071234567", "4420"),
        ("+4421", "44"),
        ("+15551234567", "1"),
        ("+33999", "33"),
        ("+34", None),
        ("+9", None),
        ("+", None),
        ("", None),
        ("++44", None),
        ("+44 20", None),
        ("+44-20", None),
        (" +44", None),
        ("44+", None),
        ("+44x", None),
        ("+\uff14\uff14", None),  # full-width digits
        ("+\u0664\u0664", None),  # Arabic-Indic digits
        ("+44\u00e9", None),
        ("+4477009001234567890123456789", "447700"),  # digits past any prefix do not matter
        ("+447" + "9" * 15, "447"),  # the top of a prefix's range
        ("+447" + "9" * 14, "447"),
        ("+447" + "9" * 30, "447"),
        ("+44" + "9" * 16, "44"),
        ("+448" + "0" * 15, "44"),
        ("+1" + "9" * 17, "1"),
        ("9" * 18, None),
        ("0" * 18, None),
        ("+4477009001234567890123456789a", None),
    ],
)
def test_longest_prefix_wins(rc, number: str, prefix: str | None) -> None:
    deck = rc.RateDeck.from_csv_text(DECK)
    found = deck.lookup(number)
    assert (found.prefix if found else None) == prefix
    assert deck.lookup_many([number]) == [found]


def test_lookup_many_equals_map_lookup(rc) -> None:
    deck = rc.RateDeck.from_csv_text(DECK)
    numbers = ["+447700900123", "+4420", "x", "", "+1", "+34", "+44", "+33612345678"] * 7
    expected = [deck.lookup(n) for n in numbers]
    assert deck.lookup_many(numbers) == expected
    assert deck.lookup_many(tuple(numbers)) == expected
    assert deck.lookup_many(iter(numbers)) == expected
    assert deck.lookup_many([]) == []


@pytest.mark.parametrize("bad", [None, 44, b"+44"])
def test_lookup_refuses_a_non_str(rc, bad: object) -> None:
    deck = rc.RateDeck.from_csv_text(DECK)
    with pytest.raises(rc.RatingError, match="a number to rate must be a str"):
        deck.lookup(bad)
    with pytest.raises(rc.RatingError, match="a number to rate must be a str"):
        deck.lookup_many(["+44", bad])
    with pytest.raises(rc.RatingError, match="a number to rate must be a str"):
        rc.RateDeck().lookup(bad)
    with pytest.raises(rc.RatingError, match="not one str"):
        deck.lookup_many("+44")


def test_repr(rc) -> None:
    assert repr(rc.RateDeck.from_csv_text(VERSIONED)) == "<RateDeck 5 rows, 3 versions>"
