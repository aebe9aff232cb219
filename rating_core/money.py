"""Money as integer micro-units: exact parsing and formatting of decimal strings, and currency codes.

Money crosses every interface as a decimal string with at most 6 decimals (``"12.50"``) and is an ``int``
of micro-units inside (1 unit = 1_000_000 micro-units). Nothing here goes through ``float``.
"""

from __future__ import annotations

import re

from ._limits import MAX_AMOUNT_MICROS, MICROS
from .errors import MoneyError

__all__ = ["parse_money", "format_money", "CURRENCIES", "check_currency", "MICROS"]

_DECIMAL = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]+))?", re.ASCII)
_EXPONENT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]+", re.ASCII)
# Longest integer part worth converting: anything longer is above MAX_AMOUNT_MICROS anyway, and
# refusing it before int() keeps a hostile 100,000-digit string cheap.
_MAX_INT_DIGITS = len(str(MAX_AMOUNT_MICROS // MICROS)) + 1


def parse_money(text: str, *, allow_negative: bool = False) -> int:
    """Parse a decimal string (``"12.5"``, ``"0.000001"``, ``"-3"``) into integer micro-units.

    Surrounding whitespace is ignored. Refused with MoneyError: a non-str, an empty string, anything
    but ``[+-]digits[.digits]``, an exponent (``"1e3"``), more than 6 decimals, a negative amount unless
    ``allow_negative``, and a magnitude above MAX_AMOUNT_MICROS.
    """
    if not isinstance(text, str):
        raise MoneyError(f"an amount must be a decimal string, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise MoneyError("empty amount")
    match = _DECIMAL.fullmatch(stripped)
    if match is None:
        if _EXPONENT.fullmatch(stripped):
            raise MoneyError(f"amount {text!r} uses an exponent; write it as a plain decimal")
        raise MoneyError(f"amount {text!r} is not a decimal number")
    sign, units, decimals = match.groups()
    if decimals is not None and len(decimals) > 6:
        raise MoneyError(f"amount {text!r} has more than 6 decimals")
    if sign == "-" and not allow_negative:
        raise MoneyError(f"amount {text!r} must not be negative")
    units = units.lstrip("0")
    if len(units) > _MAX_INT_DIGITS:
        raise MoneyError(f"amount {text!r} is above the maximum {format_money(MAX_AMOUNT_MICROS)}")
    micros = int(units or "0") * MICROS + (int(decimals.ljust(6, "0")) if decimals else 0)
    if micros > MAX_AMOUNT_MICROS:
        raise MoneyError(f"amount {text!r} is above the maximum {format_money(MAX_AMOUNT_MICROS)}")
    return -micros if sign == "-" else micros


def format_money(micros: int) -> str:
    """Format micro-units as a decimal string: at least 2 decimals, at most 6, no trailing zeros past 2.

    ``format_money(12_500_000) == "12.50"``, ``format_money(1) == "0.000001"``,
    ``format_money(-3_000_000) == "-3.00"``.
    """
    if not isinstance(micros, int) or isinstance(micros, bool):
        raise MoneyError(f"micro-units must be an int, got {type(micros).__name__}")
    sign = "-" if micros < 0 else ""
    units, fraction = divmod(abs(micros), MICROS)
    digits = f"{fraction:06d}".rstrip("0")
    if len(digits) < 2:
        digits = digits.ljust(2, "0")
    return f"{sign}{units}.{digits}"


# ISO 4217 List One as in force in 2026: national and regional currencies and the fund codes. Left out
# on purpose: precious metals (XAU, XAG, XPD, XPT), bond-market units (XBA-XBD), XDR/XSU/XUA, the
# testing code XTS and XXX ("no currency"), and withdrawn codes (ANG, BGN, CUC, HRK, SLL, ZWL, ...).
CURRENCIES: frozenset[str] = frozenset(
    """
    AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN BZD
    CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP
    GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR
    KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN
    MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD
    SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX
    USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    """.split()
)


def check_currency(code: str) -> str:
    """Return ``code`` if it is an active ISO 4217 code (exactly 3 upper-case letters), else MoneyError."""
    if not isinstance(code, str):
        raise MoneyError(f"a currency must be a str, got {type(code).__name__}")
    if code not in CURRENCIES:
        if not code:
            raise MoneyError("missing currency")
        hint = " (codes are upper case)" if code.upper() in CURRENCIES else ""
        raise MoneyError(f"unknown currency {code!r}: not an active ISO 4217 code{hint}")
    return code
