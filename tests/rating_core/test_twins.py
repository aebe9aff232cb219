"""Property tests: the compiled twin answers exactly as the pure one, and both keep the charging rule.

For random decks, numbers, times, durations and amounts, both twins give the same results, or raise the
same error with the same message (lookup, lookup_many, charge, billed_seconds, max_seconds, CSV import).
The charging rule itself: monotonic in the duration, the fee charged once, never below the exact price,
and max_seconds its inverse. Decks survive the CSV round trip.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rating_helpers import csv_text

from rating_core import MAX_AMOUNT_MICROS, MAX_CALL_SECONDS, MAX_RATE_MICROS, UNLIMITED_SECONDS, Rate

REPO = Path(__file__).resolve().parents[2]
FIXTURE_OK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

EPOCHS = [0, 1_000, 1_767_225_600, 1_769_904_000, 4_102_444_800]
per_minute = st.one_of(st.integers(0, 2_000_000), st.integers(0, MAX_RATE_MICROS), st.sampled_from([0, MAX_RATE_MICROS]))
increment = st.one_of(st.sampled_from([1, 6, 30, 60]), st.integers(1, 3_600), st.integers(1, MAX_CALL_SECONDS))
fee = st.one_of(st.just(0), st.integers(0, 1_000_000), st.integers(0, MAX_AMOUNT_MICROS))
seconds = st.one_of(st.integers(0, 7_200), st.integers(0, MAX_CALL_SECONDS), st.sampled_from([0, MAX_CALL_SECONDS]))
amount = st.one_of(st.integers(0, 10**8), st.integers(0, MAX_AMOUNT_MICROS), st.sampled_from([0, MAX_AMOUNT_MICROS]))
prefix = st.one_of(st.text("0123456789", min_size=1, max_size=4), st.text("0123456789", min_size=1, max_size=18))


def rates(prefixes: st.SearchStrategy[str] = prefix) -> st.SearchStrategy[Rate]:
    return st.builds(
        Rate,
        prefix=prefixes,
        destination=st.sampled_from(["A", "Bee land", 'C, "c"', "Dé\nline"]),
        rate_per_min=per_minute,
        currency=st.sampled_from(["EUR", "GBP", "JPY"]),
        initial_increment_s=increment,
        subsequent_increment_s=increment,
        connection_fee=fee,
        effective_from=st.sampled_from(EPOCHS),
    )


deck_rows = st.lists(rates(), max_size=40, unique_by=lambda r: (r.prefix, r.effective_from))
moments = st.one_of(
    st.none(),
    st.sampled_from(EPOCHS),
    st.sampled_from(EPOCHS).map(lambda e: e - 1),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.datetimes(),
    st.datetimes(timezones=st.just(dt.timezone(dt.timedelta(hours=-5)))),
    st.dates(),
)


def outcome(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    try:
        return ("ok", function(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the point is to compare any failure
        return ("error", type(exc), str(exc))


@st.composite
def numbers_for(draw: st.DrawFn, rows: list[Rate]) -> list[str]:
    """Numbers that start with the deck's prefixes (longer, shorter, exact) mixed with noise."""
    known = [r.prefix for r in rows] or ["1"]
    numbered = st.tuples(st.sampled_from(known), st.text("0123456789", max_size=14), st.booleans()).map(
        lambda t: ("+" if t[2] else "") + t[0] + t[1]
    )
    shortened = st.sampled_from(known).map(lambda p: "+" + p[:-1])
    # The last number a prefix covers: the prefix then nines (the top of its key interval), and past it.
    edges = st.tuples(st.sampled_from(known), st.integers(0, 20), st.sampled_from(["", "0", "9"])).map(
        lambda t: "+" + t[0] + "9" * t[1] + t[2]
    )
    noise = st.one_of(st.text("0123456789+x ", max_size=20), st.text(max_size=6), st.just(""), st.just("+"))
    return draw(st.lists(st.one_of(numbered, shortened, edges, noise), max_size=30))


@settings(max_examples=200, deadline=None)
@given(data=st.data(), rows=deck_rows, at=moments)
def test_lookups_are_equal(twins: tuple[ModuleType, ModuleType], data: st.DataObject, rows: list[Rate], at: Any) -> None:
    pure, compiled = twins
    py_deck, c_deck = pure.RateDeck(rows), compiled.RateDeck(rows)
    numbers = data.draw(numbers_for(rows))
    assert c_deck.versions() == py_deck.versions()
    assert outcome(c_deck.lookup_many, numbers, at=at) == outcome(py_deck.lookup_many, numbers, at=at)
    for number in numbers:
        expected = outcome(py_deck.lookup, number, at=at)
        assert outcome(c_deck.lookup, number, at=at) == expected
        if expected[0] == "ok" and expected[1] is not None:
            # The longest prefix wins: no longer prefix of the number is in the snapshot.
            digits = number.lstrip("+")
            snapshot = {r.prefix for r in py_deck.rates(at=at)}
            assert digits.startswith(expected[1].prefix)
            assert not any(digits[:n] in snapshot for n in range(len(expected[1].prefix) + 1, len(digits) + 1))
    if numbers:
        assert outcome(c_deck.lookup_many, [*numbers, 44], at=at) == outcome(py_deck.lookup_many, [*numbers, 44], at=at)
    assert outcome(c_deck.rates, at) == outcome(py_deck.rates, at)
    assert len(c_deck) == len(py_deck)


def _large_deck(rnd: random.Random, longest: int, dense: bool, versions: int) -> list[Rate]:
    """Thousands of prefixes up to ``longest`` digits; ``dense``: most under one root, so that one bucket
    of the compiled index's table spans many leaves. Each prefix is in one or more of ``versions``."""
    roots = ["1", "7", "44", "33", "49", "351", "880", "998"]
    prefixes: set[str] = set(roots)
    target = rnd.choice((1_500, 4_000))
    for _ in range(4 * target):  # decks with short prefixes have room for fewer
        if len(prefixes) >= target:
            break
        root = "1" if dense and rnd.random() < 0.8 else rnd.choice(roots)
        size = rnd.randint(len(root), longest)
        prefixes.add((root + "".join(rnd.choices("0123456789", k=longest)))[:size])
    rows = []
    for n, prefix in enumerate(sorted(prefixes)):
        dates = rnd.sample(EPOCHS[:versions], rnd.randint(1, versions))
        for date in dates:
            rows.append(Rate(prefix=prefix, destination=f"D{n}", rate_per_min=n, currency="EUR",
                             initial_increment_s=1, subsequent_increment_s=1, connection_fee=0, effective_from=date))
    return rows


def _numbers_near(rnd: random.Random, rows: list[Rate], count: int) -> list[str]:
    """Numbers under, at, just past and around the deck's prefixes, and ones that are not numbers."""
    prefixes = [row.prefix for row in rows]
    numbers = []
    for _ in range(count):
        prefix = rnd.choice(prefixes)
        kind = rnd.randrange(8)
        if kind == 0:
            numbers.append("+" + prefix[:-1])
        elif kind == 1:
            numbers.append("+" + prefix + "9" * rnd.randint(0, 20))
        elif kind == 2:
            numbers.append(prefix + "".join(rnd.choices("0123456789", k=rnd.randint(0, 40))))
        elif kind == 3:  # a non-digit somewhere, also past the digits a key holds
            digits = prefix + "".join(rnd.choices("0123456789", k=rnd.randint(0, 25)))
            at = rnd.randint(0, len(digits))
            numbers.append("+" + digits[:at] + rnd.choice("x +-#\u0664\uff11\u00e9") + digits[at:])
        elif kind == 4:
            numbers.append(rnd.choice(["", "+", "++1", "+" * 3, "0", "9" * 60, "+" + "0" * 30]))
        else:
            numbers.append("+" + prefix + "".join(rnd.choices("0123456789", k=rnd.randint(0, 12))))
    return numbers


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    longest=st.sampled_from([4, 9, 10, 18]),
    dense=st.booleans(),
    versions=st.integers(1, 3),
)
def test_large_decks_are_equal(twins: tuple[ModuleType, ModuleType], seed: int, longest: int, dense: bool, versions: int) -> None:
    """Decks large enough that the compiled index has many leaves and table buckets (32-bit keys up to 9
    digits, 64-bit above), looked up one at a time and in batches longer than lookup_many's stack buffer."""
    pure, compiled = twins
    rnd = random.Random(seed)
    rows = _large_deck(rnd, longest, dense, versions)
    py_deck, c_deck = pure.RateDeck(rows), compiled.RateDeck(rows)
    numbers = _numbers_near(rnd, rows, 3_000)
    assert c_deck.versions() == py_deck.versions()
    for at in [None, *EPOCHS[:versions], EPOCHS[versions - 1] - 1, -1]:
        assert c_deck.lookup_many(numbers, at=at) == py_deck.lookup_many(numbers, at=at)
        assert [c_deck.lookup(n, at=at) for n in numbers[:500]] == [py_deck.lookup(n, at=at) for n in numbers[:500]]
    assert len(c_deck) == len(py_deck)


@pytest.mark.parametrize("longest", [9, 10])
def test_keys_at_the_top_of_their_width_are_equal(twins: tuple[ModuleType, ModuleType], longest: int) -> None:
    """Prefixes of nines at the longest length (the last key of the key space) and of zeros (the first)."""
    pure, compiled = twins
    prefixes = ["9" * longest, "9" * (longest - 1), "9", "0" * longest, "0", "5" + "9" * (longest - 1)]
    rows = [Rate(prefix=p, destination=p, rate_per_min=1, currency="EUR", initial_increment_s=1,
                 subsequent_increment_s=1, connection_fee=0) for p in prefixes]
    numbers = [n + tail for p in prefixes for n in (p, p[:-1], "+" + p) for tail in ("", "0", "9", "9" * 30)]
    numbers += ["9" * 100, "0" * 100, "", "+", "8" + "9" * 20]
    py_deck, c_deck = pure.RateDeck(rows), compiled.RateDeck(rows)
    assert c_deck.lookup_many(numbers) == py_deck.lookup_many(numbers)
    assert [c_deck.lookup(n) for n in numbers] == [py_deck.lookup(n) for n in numbers]


@settings(max_examples=300, deadline=None)
@given(
    rate=rates(),
    duration=st.one_of(seconds, st.integers(-(2**65), 2**65), st.booleans(), st.floats(0, 10), st.none()),
    available=st.one_of(amount, st.integers(-(2**65), 2**65), st.booleans(), st.floats(0, 10), st.text(max_size=3)),
)
def test_charging_is_equal(twins: tuple[ModuleType, ModuleType], rate: Rate, duration: Any, available: Any) -> None:
    pure, compiled = twins
    assert outcome(compiled.charge, rate, duration) == outcome(pure.charge, rate, duration)
    assert outcome(compiled.billed_seconds, rate, duration) == outcome(pure.billed_seconds, rate, duration)
    assert outcome(compiled.max_seconds, rate, available) == outcome(pure.max_seconds, rate, available)


# Fields of CSV rows, valid and not, to drive both twins' row parsers (the compiled one has a fast path).
csv_fields = st.tuples(
    st.sampled_from(["44", "+44", "4420", "1", " 33", "+", "", "4a", "++1", "\u0664", "1" * 18, "1" * 19, "0"]),
    st.sampled_from(["UK", " London ", "", "x" * 255, "x" * 256, '"quoted, comma"']),
    st.sampled_from(["0.10", "0", "1.", ".5", "0.1234567", "-1", " 1", "1e3", "0001.5", "10000", "10000.000001",
                     "123456789012.5", "12", "0.000001"]),
    st.sampled_from(["GBP", "EUR", "gbp", "", "XXX", " EUR"]),
    st.sampled_from(["1", "30", "0", "-1", "1.5", "007", " 6", "100000000", "100000001", "99999999999", ""]),
    st.sampled_from(["1", "6", "60", "0", "x"]),
    st.sampled_from(["0", "0.01", "", "-0.5", "100000000000", "100000000000.000001", "5.1234567"]),
    st.sampled_from(["", "2026-01-01", "2026-01-01T00:00:00Z", "2026-02-01T10:00:00+01:00", "bad", " ", "1969-12-31"]),
)


def _csv_line(fields: tuple[str, ...]) -> str:
    return ",".join(f'"{f}"' if "," in f else f for f in fields)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(csv_fields.map(_csv_line), min_size=1, max_size=12), effective=st.sampled_from([None, 1_000]))
def test_csv_import_is_equal(twins: tuple[ModuleType, ModuleType], lines: list[str], effective: int | None) -> None:
    pure, compiled = twins
    text = csv_text(*lines)
    py = outcome(pure.RateDeck.from_csv_text, text, effective=effective)
    c = outcome(compiled.RateDeck.from_csv_text, text, effective=effective)
    if py[0] == "ok":
        assert c[0] == "ok", c
        assert c[1]._all_rows() == py[1]._all_rows()
        assert c[1].to_csv_text() == py[1].to_csv_text()
    else:
        assert c == py


@FIXTURE_OK
@given(rows=deck_rows, data=st.data())
def test_csv_round_trip(rc: ModuleType, rows: list[Rate], data: st.DataObject) -> None:
    assume(rows)
    deck = rc.RateDeck(rows)
    again = rc.RateDeck.from_csv_text(deck.to_csv_text())
    assert again._all_rows() == deck._all_rows()
    assert again.versions() == deck.versions()
    numbers = data.draw(numbers_for(rows))
    for at in EPOCHS:
        assert again.lookup_many(numbers, at=at) == deck.lookup_many(numbers, at=at)


# --- the charging rule, on each twin ------------------------------------------------------------------


def _exact(rate: Rate, billed: int) -> int:
    return rate.connection_fee + -(-rate.rate_per_min * billed // 60)


@FIXTURE_OK
@given(rate=rates(), a=seconds, b=seconds)
def test_charge_is_monotonic_and_never_below_the_exact_price(rc: ModuleType, rate: Rate, a: int, b: int) -> None:
    low, high = sorted((a, b))
    assert rc.charge(rate, low) <= rc.charge(rate, high)
    assert rc.billed_seconds(rate, low) <= rc.billed_seconds(rate, high)
    billed = rc.billed_seconds(rate, high)
    assert billed >= max(high, rate.initial_increment_s)
    assert billed < max(high, rate.initial_increment_s) + rate.subsequent_increment_s
    assert (billed - rate.initial_increment_s) % rate.subsequent_increment_s == 0
    charged = rc.charge(rate, high)
    assert charged * 60 >= rate.connection_fee * 60 + rate.rate_per_min * high
    assert charged == _exact(rate, billed)


@FIXTURE_OK
@given(rate=rates(), duration=seconds, other_fee=fee)
def test_the_fee_is_charged_once(rc: ModuleType, rate: Rate, duration: int, other_fee: int) -> None:
    refeed = dataclasses.replace(rate, connection_fee=other_fee)
    assert rc.charge(rate, duration) - rate.connection_fee == rc.charge(refeed, duration) - other_fee


@FIXTURE_OK
@given(rate=rates(), available=amount)
def test_max_seconds_is_the_inverse_of_charge(rc: ModuleType, rate: Rate, available: int) -> None:
    longest = rc.max_seconds(rate, available)
    if longest == 0:
        assert rc.charge(rate, 0) > available  # not even the fee and the first increment
        return
    assert rc.charge(rate, longest) <= available
    if longest == UNLIMITED_SECONDS:
        assert rate.rate_per_min == 0 or _exact(rate, rc.billed_seconds(rate, MAX_CALL_SECONDS)) <= available
        return
    assert rc.billed_seconds(rate, longest) == longest  # whole increments
    assert _exact(rate, longest + rate.subsequent_increment_s) > available  # one more would not be covered


def test_no_extensions_forces_the_pure_twin() -> None:
    code = "import rating_core; print(rating_core.COMPILED, rating_core.compiled is None, rating_core.RateDeck.__module__)"
    env = {**os.environ, "CREDITGATE_NO_EXTENSIONS": "1", "PYTHONPATH": str(REPO)}
    forced = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert forced.stdout.split() == ["False", "True", "rating_core.pure"]
    env["CREDITGATE_NO_EXTENSIONS"] = "0"
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO)
    assert default.stdout.split() == ["True", "False", "rating_core._compiled"], "CI builds the compiled core"


def test_public_names() -> None:
    import rating_core

    assert set(rating_core.__all__) >= {
        "RateDeck", "Rate", "COMPILED", "pure", "compiled", "charge", "billed_seconds", "max_seconds",
        "parse_money", "format_money", "UNLIMITED_SECONDS", "MAX_RATE_MICROS", "MAX_AMOUNT_MICROS",
        "MAX_CALL_SECONDS", "CreditgateError", "RatingError", "MoneyError", "DeckError",
    }
    for name in rating_core.__all__:
        assert hasattr(rating_core, name), name
    if os.environ.get("CREDITGATE_NO_EXTENSIONS") == "1":
        assert (rating_core.COMPILED, rating_core.compiled) == (False, None)
        assert rating_core.RateDeck is rating_core.pure.RateDeck
        return
    assert rating_core.COMPILED, "CI builds the compiled core"
    assert rating_core.RateDeck is rating_core.compiled.RateDeck is not rating_core.pure.RateDeck
    assert rating_core.charge is rating_core.compiled.charge
    assert set(rating_core.pure.__all__) == set(rating_core.compiled.__all__)
