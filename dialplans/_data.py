"""Country validation and the loading of the package's own data files, once per process."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import phonenumbers

from .errors import InvalidDialPlan, UnknownCountry

__all__ = ["CountryData", "check_country", "country_data", "data_countries", "is_digits", "load_toml"]

_DIGITS = re.compile(r"[0-9]*")
_COUNTRY_FILE = re.compile(r"([A-Z]{2})\.toml")
_COUNTRY_KEYS = frozenset({"emergency", "outside_line"})


@dataclass(frozen=True, slots=True, kw_only=True)
class CountryData:
    """What ``data/<CC>.toml`` says about one country."""

    country: str
    emergency: frozenset[str]
    outside_line: str


def check_country(country: object) -> str:
    """``country`` upper-cased when libphonenumber knows it as a region, else ``UnknownCountry``."""
    if not isinstance(country, str) or len(country) != 2 or not country.isascii():
        raise UnknownCountry(f"not an ISO 3166 alpha-2 country code: {country!r}")
    code = country.upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise UnknownCountry(f"no numbering metadata for country {code!r}")
    return code


def is_digits(value: object, *, allow_empty: bool = True) -> bool:
    """True for a ``str`` of ASCII digits (``str.isdigit`` would also accept other scripts)."""
    return (
        isinstance(value, str)
        and _DIGITS.fullmatch(value) is not None
        and (allow_empty or value != "")
    )


@lru_cache(maxsize=None)
def load_toml(name: str) -> dict[str, Any]:
    """The parsed ``data/<name>``; read once, because nothing may do I/O at call time."""
    resource = resources.files(__package__).joinpath("data", name)
    try:
        with resource.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidDialPlan(f"cannot load data/{name}: {exc}") from exc


@lru_cache(maxsize=None)
def data_countries() -> frozenset[str]:
    """Countries that have a ``data/<CC>.toml`` file."""
    folder = resources.files(__package__).joinpath("data")
    return frozenset(
        match.group(1)
        for entry in folder.iterdir()
        if (match := _COUNTRY_FILE.fullmatch(entry.name)) is not None
    )


@lru_cache(maxsize=None)
def country_data(country: str) -> CountryData | None:
    """The data file of an already validated country, or None when the package has none."""
    if country not in data_countries():
        return None
    raw = load_toml(f"{country}.toml")
    name = f"data/{country}.toml"
    if set(raw) != _COUNTRY_KEYS:
        raise InvalidDialPlan(f"{name}: keys must be {sorted(_COUNTRY_KEYS)}, got {sorted(raw)}")
    emergency = raw["emergency"]
    if (
        not isinstance(emergency, list)
        or not emergency
        or not all(is_digits(number, allow_empty=False) for number in emergency)
    ):
        raise InvalidDialPlan(f"{name}: emergency must be a non-empty list of digit strings")
    if not is_digits(raw["outside_line"]):
        raise InvalidDialPlan(f"{name}: outside_line must be a string of digits")
    return CountryData(
        country=country, emergency=frozenset(emergency), outside_line=raw["outside_line"]
    )
