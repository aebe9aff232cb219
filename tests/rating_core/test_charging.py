"""The charging rule (billed_seconds, charge, max_seconds) of each twin: examples and bounds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import rating_core
from rating_core import Rate


def rate(per_min: str, initial: int, subsequent: int, fee: str = "0") -> Rate:
    return Rate(
        prefix="44",
        destination="United Kingdom",
        rate_per_min=rating_core.parse_money(per_min),
        currency="GBP",
        initial_increment_s=initial,
        subsequent_increment_s=subsequent,
        connection_fee=rating_core.parse_money(fee),
    )


@pytest.mark.parametrize(
    "per_min,initial,subsequent,fee,seconds,billed,charged",
    [
        # 30/6: the first 30 s whole, then 6-second steps rounded up.
        ("0.10", 30, 6, "0", 31, 36, "0.06"),
        ("0.10", 30, 6, "0", 30, 30, "0.05"),
        ("0.10", 30, 6, "0", 36, 36, "0.06"),
        ("0.10", 30, 6, "0", 37, 42, "0.07"),
        ("0.10", 30, 6, "0", 1, 30, "0.05"),
        ("0.10", 30, 6, "0", 0, 30, "0.05"),  # a 0-second answered call pays the first increment
        # 60/60: whole minutes.
        ("0.60", 60, 60, "0", 61, 120, "1.20"),
        ("0.60", 60, 60, "0", 60, 60, "0.60"),
        ("0.60", 60, 60, "0", 0, 60, "0.60"),
        # 1/1: per second.
        ("0.60", 1, 1, "0", 61, 61, "0.61"),
        ("0.60", 1, 1, "0", 0, 1, "0.01"),
        # A connection fee is added once, whatever the duration.
        ("0.10", 30, 6, "0.05", 31, 36, "0.11"),
        ("0.60", 60, 60, "0.25", 0, 60, "0.85"),
        ("0.60", 60, 60, "0.25", 121, 180, "2.05"),
        ("0", 60, 60, "0.25", 3600, 3600, "0.25"),
        # The price of the billed seconds rounds up to the micro-unit.
        ("0.000001", 1, 1, "0", 1, 1, "0.000001"),
        ("0.000059", 1, 1, "0", 1, 1, "0.000001"),
        ("0.000061", 1, 1, "0", 1, 1, "0.000002"),
        ("0.07", 1, 1, "0", 7, 7, "0.008167"),  # 0.07 x 7 / 60 = 0.0081666...
        # Extremes stay exact (int64 in the compiled twin).
        ("10000", 1, 1, "100000000000", 10**8, 10**8, 10**17 + 16_666_666_666_666_667),
    ],
)
def test_charge_examples(rc, per_min, initial, subsequent, fee, seconds, billed, charged) -> None:
    r = rate(per_min, initial, subsequent, fee)
    assert rc.billed_seconds(r, seconds) == billed
    expected = charged if isinstance(charged, int) else rating_core.parse_money(charged)
    assert rc.charge(r, seconds) == expected
    assert rc.RateDeck().charge(r, seconds) == rc.charge(r, seconds)


@pytest.mark.parametrize(
    "per_min,initial,subsequent,fee,available,expected",
    [
        ("0.10", 30, 6, "0", "0.06", 36),
        ("0.10", 30, 6, "0", "0.069999", 36),
        ("0.10", 30, 6, "0", "0.07", 42),
        ("0.10", 30, 6, "0", "0.05", 30),
        ("0.10", 30, 6, "0", "0.049999", 0),  # the first increment is not covered
        ("0.10", 30, 6, "0", "0", 0),
        ("0.60", 60, 60, "0.25", "1.45", 120),
        ("0.60", 60, 60, "0.25", "0.84", 0),  # fee + first minute = 0.85
        ("0.60", 60, 60, "0.25", "0.24", 0),  # not even the fee
        ("0.60", 1, 1, "0", "0.01", 1),
        ("0", 60, 60, "0.25", "0.25", rating_core.UNLIMITED_SECONDS),  # free once the fee is paid
        ("0", 60, 60, "0.25", "0.24", 0),
        ("0.000001", 1, 1, "0", "100000000000", rating_core.UNLIMITED_SECONDS),  # covers a longer call than rated
    ],
)
def test_max_seconds_examples(rc, per_min, initial, subsequent, fee, available, expected) -> None:
    r = rate(per_min, initial, subsequent, fee)
    assert rc.max_seconds(r, rating_core.parse_money(available)) == expected
    assert rc.RateDeck().max_seconds(r, rating_core.parse_money(available)) == expected


def test_unlimited_is_the_longest_call(rc) -> None:
    assert rc.UNLIMITED_SECONDS == rc.MAX_CALL_SECONDS == 10**8
    r = rate("0.000001", 1, 1)
    assert rc.charge(r, rc.max_seconds(r, rc.MAX_AMOUNT_MICROS)) <= rc.MAX_AMOUNT_MICROS


@pytest.mark.parametrize(
    "seconds,message",
    [
        (-1, "seconds must be an int in 0..100000000, got -1"),
        (10**8 + 1, "seconds must be an int in 0..100000000, got 100000001"),
        (2**64, "seconds must be an int in 0..100000000, got 18446744073709551616"),
        (1.5, "seconds must be an int in 0..100000000, got float 1.5"),
        ("3", "seconds must be an int in 0..100000000, got str '3'"),
        (None, "seconds must be an int in 0..100000000, got NoneType None"),
    ],
)
def test_seconds_out_of_bounds(rc, seconds: object, message: str) -> None:
    r = rate("0.10", 30, 6)
    for function in (rc.charge, rc.billed_seconds):
        with pytest.raises(rc.RatingError) as info:
            function(r, seconds)
        assert str(info.value) == message


@pytest.mark.parametrize("available", [-1, 10**17 + 1, 2**70, 0.5, "1.00", None])
def test_amount_out_of_bounds(rc, available: object) -> None:
    with pytest.raises(rc.RatingError, match=r"available_micros must be an int in 0\.\.100000000000000000"):
        rc.max_seconds(rate("0.10", 30, 6), available)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("rate_per_min", -1, "rate.rate_per_min must be an int in 0..10000000000, got -1"),
        ("rate_per_min", 10**10 + 1, "rate.rate_per_min must be an int in 0..10000000000, got 10000000001"),
        ("rate_per_min", 0.5, "rate.rate_per_min must be an int in 0..10000000000, got float 0.5"),
        ("initial_increment_s", 0, "rate.initial_increment_s must be an int in 1..100000000, got 0"),
        ("subsequent_increment_s", 10**8 + 1, "rate.subsequent_increment_s must be an int in 1..100000000"),
        ("connection_fee", -5, "rate.connection_fee must be an int in 0..100000000000000000, got -5"),
    ],
)
def test_rate_out_of_bounds(rc, field: str, value: object, message: str) -> None:
    # A Rate cannot hold such values, but the rule checks whatever it is given.
    fields = dict(rate_per_min=100_000, initial_increment_s=30, subsequent_increment_s=6, connection_fee=0)
    fields[field] = value
    duck = SimpleNamespace(**fields)
    for call in (lambda: rc.charge(duck, 10), lambda: rc.billed_seconds(duck, 10), lambda: rc.max_seconds(duck, 10)):
        with pytest.raises(rc.RatingError) as info:
            call()
        assert str(info.value).startswith(message)


def test_rate_refuses_invalid_fields() -> None:
    good = dict(prefix="44", destination="UK", rate_per_min=1, currency="GBP", initial_increment_s=1,
                subsequent_increment_s=1, connection_fee=0, effective_from=0)
    for field, value in [
        ("prefix", ""), ("prefix", "+44"), ("prefix", "4a"), ("prefix", "1" * 19), ("prefix", 44),
        ("destination", ""), ("destination", " UK"), ("destination", "x" * 256),
        ("rate_per_min", -1), ("rate_per_min", 1.0), ("rate_per_min", True),
        ("currency", "gbp"), ("initial_increment_s", 0), ("subsequent_increment_s", 10**8 + 1),
        ("connection_fee", 10**17 + 1), ("effective_from", -1), ("effective_from", 253_402_300_800),
    ]:
        with pytest.raises(rating_core.RatingError):
            Rate(**{**good, field: value})
    with pytest.raises(TypeError):
        Rate("44", "UK", 1, "GBP", 1, 1, 0, 0)  # type: ignore[misc]  # keyword-only


def test_rate_dict_round_trip() -> None:
    r = Rate(prefix="4420", destination="London", rate_per_min=12_345, currency="GBP",
             initial_increment_s=30, subsequent_increment_s=6, connection_fee=500_000, effective_from=1_767_225_600)
    data = r.to_dict()
    assert data == {
        "prefix": "4420",
        "destination": "London",
        "rate_per_min": "0.012345",
        "currency": "GBP",
        "initial_increment_s": 30,
        "subsequent_increment_s": 6,
        "connection_fee": "0.50",
        "effective_from": "2026-01-01T00:00:00Z",
    }
    assert Rate.from_dict(data) == r
    assert Rate.from_dict({**data, "effective_from": None}).effective_from == 0
    assert Rate.from_dict({**data, "prefix": "+4420"}) == r
    with pytest.raises(rating_core.RatingError, match="missing currency"):
        Rate.from_dict({k: v for k, v in data.items() if k != "currency"})
    with pytest.raises(rating_core.MoneyError):
        Rate.from_dict({**data, "rate_per_min": "0.1234567"})
