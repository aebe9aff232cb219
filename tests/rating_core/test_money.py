"""rating_core/money.py: exact decimal strings <-> integer micro-units, and currency codes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rating_core


@pytest.mark.parametrize(
    "text,micros",
    [
        ("12.50", 12_500_000),
        ("12.5", 12_500_000),
        ("12", 12_000_000),
        ("0", 0),
        ("0.00", 0),
        ("0.000001", 1),
        ("0.10", 100_000),
        ("+1.5", 1_500_000),
        ("  7 ", 7_000_000),
        ("007.250000", 7_250_000),
        ("100000000000", rating_core.MAX_AMOUNT_MICROS),
        ("99999999999.999999", rating_core.MAX_AMOUNT_MICROS - 1),
    ],
)
def test_parse_money(rc, text: str, micros: int) -> None:
    assert rc.parse_money(text) == micros


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "empty amount"),
        ("   ", "empty amount"),
        ("abc", "is not a decimal number"),
        ("1,50", "is not a decimal number"),
        ("1.", "is not a decimal number"),
        (".5", "is not a decimal number"),
        ("1.2.3", "is not a decimal number"),
        ("--1", "is not a decimal number"),
        ("\u0661\u0662", "is not a decimal number"),  # Arabic-Indic digits are not ASCII digits
        ("1e3", "uses an exponent"),
        ("1.5E-2", "uses an exponent"),
        ("1.0000001", "has more than 6 decimals"),
        ("0.1234567", "has more than 6 decimals"),
        ("-1", "must not be negative"),
        ("-0.000001", "must not be negative"),
        ("100000000000.000001", "is above the maximum 100000000000.00"),
        ("1" + "0" * 5000, "is above the maximum"),
        ("inf", "is not a decimal number"),
        ("NaN", "is not a decimal number"),
    ],
)
def test_parse_money_refuses(rc, text: str, message: str) -> None:
    with pytest.raises(rc.MoneyError, match=message.replace("(", r"\(")):
        rc.parse_money(text)


@pytest.mark.parametrize("value", [None, 1.5, 12, b"1.00"])
def test_parse_money_refuses_non_str(rc, value: object) -> None:
    with pytest.raises(rc.MoneyError, match="must be a decimal string"):
        rc.parse_money(value)  # type: ignore[arg-type]


def test_parse_money_negative_when_allowed(rc) -> None:
    assert rc.parse_money("-3", allow_negative=True) == -3_000_000
    assert rc.parse_money("-0.000001", allow_negative=True) == -1
    with pytest.raises(rc.MoneyError, match="above the maximum"):
        rc.parse_money("-100000000000.000001", allow_negative=True)


@pytest.mark.parametrize(
    "micros,text",
    [
        (12_500_000, "12.50"),
        (1, "0.000001"),
        (-3_000_000, "-3.00"),
        (0, "0.00"),
        (10, "0.00001"),
        (1_230_000, "1.23"),
        (1_200_000, "1.20"),
        (1_234_500, "1.2345"),
        (123_456_789, "123.456789"),
        (-1, "-0.000001"),
        (rating_core.MAX_AMOUNT_MICROS, "100000000000.00"),
    ],
)
def test_format_money(rc, micros: int, text: str) -> None:
    assert rc.format_money(micros) == text


@pytest.mark.parametrize("value", [1.5, "12", None, True])
def test_format_money_refuses_non_int(rc, value: object) -> None:
    with pytest.raises(rc.MoneyError):
        rc.format_money(value)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.integers(-rating_core.MAX_AMOUNT_MICROS, rating_core.MAX_AMOUNT_MICROS))
def test_format_then_parse_is_identity(micros: int) -> None:
    text = rating_core.format_money(micros)
    assert rating_core.parse_money(text, allow_negative=True) == micros
    assert len(text.split(".")[1]) in range(2, 7)


@pytest.mark.parametrize("code", ["GBP", "EUR", "USD", "JPY", "CHF", "XOF"])
def test_check_currency_accepts(rc, code: str) -> None:
    assert code in rc.CURRENCIES
    assert rc.check_currency(code) == code


@pytest.mark.parametrize(
    "code,message",
    [
        ("gbp", "unknown currency 'gbp': not an active ISO 4217 code (codes are upper case)"),
        ("ABC", "unknown currency 'ABC'"),
        ("XXX", "unknown currency 'XXX'"),  # "no currency" cannot price a call
        ("HRK", "unknown currency 'HRK'"),  # withdrawn in 2023
        ("", "missing currency"),
    ],
)
def test_check_currency_refuses(rc, code: str, message: str) -> None:
    with pytest.raises(rc.MoneyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rc.check_currency(code)
