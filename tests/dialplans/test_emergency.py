"""Emergency numbers: the data files, libphonenumber's view of them, and every way to dial them."""

from __future__ import annotations

import tomllib
from importlib import resources

import phonenumbers
import pytest
from phonenumbers import shortnumberinfo

from dialplans import (
    DialPlan,
    DialplanError,
    IncompleteNumber,
    NumberClass,
    UnknownCountry,
    emergency_numbers,
    normalize,
)
from dialplans._data import data_countries
from dialplans.emergency import libphonenumber_emergency_numbers

# What the data files must say: written out here so that an edit of a data file has to be made
# (and justified) twice.
EXPECTED = {
    "US": {"911", "112"},
    "CA": {"911", "112"},
    "GB": {"999", "112"},
    "IE": {"999", "112"},
    "DE": {"112", "110"},
    "FR": {"112", "15", "17", "18", "114", "115", "119", "191", "196", "197"},
    "IN": {"112", "100", "101", "102", "108", "1298", "2611"},
    "AU": {"000", "112", "106"},
    "JP": {"110", "119", "118"},
    "BR": {"190", "191", "192", "193", "194", "197", "198", "199", "112", "128", "911"},
    "ES": {"112", "091", "092", "062", "061", "080", "085", "088"},
    "IT": {"112", "113", "115", "118", "1530"},
    "NL": {"112", "911"},
}
THE_EIGHT = ("US", "GB", "DE", "FR", "IN", "AU", "JP", "BR")

# National emergency numbers that libphonenumber's short-number metadata does not (yet) mark as
# emergency; every other listed number must be one per libphonenumber.
KNOWN_GAPS = {
    ("FR", "114"),  # deaf and hard-of-hearing emergency line
    ("FR", "115"),  # SAMU social
    ("FR", "119"),  # child abuse
    ("FR", "191"),  # aviation rescue
    ("FR", "196"),  # maritime rescue
    ("FR", "197"),  # terror / kidnapping alert
    ("JP", "118"),  # Japan Coast Guard
    ("BR", "191"),  # Polícia Rodoviária Federal
    ("BR", "194"),  # Polícia Federal
    ("BR", "197"),  # Polícia Civil
    ("BR", "198"),  # Polícia Rodoviária Estadual
    ("BR", "199"),  # Defesa Civil
    ("ES", "061"),  # urgencias sanitarias
    ("ES", "062"),  # Guardia Civil
    ("ES", "080"),  # bomberos
    ("ES", "091"),  # Policía Nacional
    ("ES", "092"),  # Policía Local
    ("IT", "1530"),  # Guardia Costiera
}

# Every 2- to 4-digit string: the lengths of all emergency numbers in the data files.
SHORT_STRINGS = tuple(str(i).zfill(n) for n in (2, 3, 4) for i in range(10**n))

CASES = [(country, number) for country in THE_EIGHT for number in sorted(EXPECTED[country])]


@pytest.mark.parametrize("country", sorted(EXPECTED))
def test_data_files_list_exactly_the_expected_numbers(country: str) -> None:
    assert emergency_numbers(country) == frozenset(EXPECTED[country])


def test_every_data_file_is_expected_and_the_eight_are_there() -> None:
    assert data_countries() == frozenset(EXPECTED)
    assert set(THE_EIGHT) <= data_countries()


@pytest.mark.parametrize("country", sorted(EXPECTED))
def test_data_file_cites_a_source(country: str) -> None:
    text = resources.files("dialplans").joinpath("data", f"{country}.toml").read_text("utf-8")
    assert "Source:" in text.splitlines()[0] + text.splitlines()[1]
    assert set(tomllib.loads(text)) == {"emergency", "outside_line"}


@pytest.mark.parametrize("country", sorted(EXPECTED))
def test_listed_numbers_are_emergency_per_libphonenumber_where_it_knows_them(country: str) -> None:
    not_known = {
        number
        for number in emergency_numbers(country)
        if not shortnumberinfo.is_emergency_number(number, country)
    }
    # A subset, not equality, so that a libphonenumber release that learns a number passes.
    assert not_known <= {number for (gap_country, number) in KNOWN_GAPS if gap_country == country}


@pytest.mark.parametrize("country", sorted(EXPECTED))
def test_data_files_miss_nothing_libphonenumber_knows(country: str) -> None:
    known = {s for s in SHORT_STRINGS if shortnumberinfo.is_emergency_number(s, country)}
    assert known
    assert known <= emergency_numbers(country)


@pytest.mark.parametrize(
    ("country", "expected"),
    [
        ("SE", {"112", "90000"}),
        ("CH", {"112", "117", "118", "144"}),
        ("MX", {"060", "065", "066", "068", "080", "112", "911"}),
    ],
)
def test_countries_without_data_file_use_libphonenumber_plus_112(
    country: str, expected: set[str]
) -> None:
    assert country not in data_countries()
    assert emergency_numbers(country) == frozenset(expected)


@pytest.mark.parametrize("region", sorted(phonenumbers.SUPPORTED_SHORT_REGIONS))
def test_enumeration_agrees_with_is_emergency_number(region: str) -> None:
    numbers = libphonenumber_emergency_numbers(region)
    assert all(shortnumberinfo.is_emergency_number(number, region) for number in numbers)
    if region in ("US", "GB", "MX", "GA"):
        # A full check on a few, including Gabon whose pattern has a \d\d (100 numbers).
        brute = {s for s in SHORT_STRINGS if shortnumberinfo.is_emergency_number(s, region)}
        assert {n for n in numbers if len(n) <= 4} == brute


def test_emergency_numbers_accepts_lower_case_and_rejects_unknown() -> None:
    assert emergency_numbers("gb") == frozenset({"999", "112"})
    for bad in ("XX", "GBR", "", "1"):
        with pytest.raises(UnknownCountry):
            emergency_numbers(bad)


def _outside(country: str) -> str:
    # North America, UK and Ireland use 9 for an outside line; the rest conventionally 0.
    return "9" if country in ("US", "CA", "GB", "IE") else "0"


def _forms(country: str, number: str) -> list[tuple[DialPlan, str]]:
    default = DialPlan.for_country(country)
    outside = DialPlan.for_country(country, outside_line=_outside(country))
    extensions = DialPlan.for_country(country, extension_lengths=(len(number), len(number) + 1))
    dashed = "-".join(number)
    line = _outside(country)
    return [
        (default, number),
        (default, dashed),
        (default, f" {number} "),
        (default, f"tel:{number}"),
        (default, f"tel:{number};phone-context=+{phonenumbers.country_code_for_region(country)}"),
        (outside, number),
        (outside, line + number),
        (outside, f"{line}-{number}"),
        (outside, f"{line} {dashed}"),
        (outside, f"({line}) {number}"),
        (extensions, number),
        (extensions, line + number if default.outside_line else number),
    ]


@pytest.mark.parametrize(("country", "number"), CASES)
def test_every_dialing_form_reaches_emergency(country: str, number: str) -> None:
    for plan, dialed in _forms(country, number):
        destination = normalize(dialed, plan)
        assert destination.number_class is NumberClass.EMERGENCY, (plan, dialed)
        assert destination.emergency
        assert destination.number == number
        assert destination.region == country
        assert destination.country_code == phonenumbers.country_code_for_region(country)
        assert destination.dialed == dialed


@pytest.mark.parametrize(("country", "number"), CASES)
def test_plus_country_code_form_is_not_emergency(country: str, number: str) -> None:
    plan = DialPlan.for_country(country)
    code = phonenumbers.country_code_for_region(country)
    for dialed in (f"+{code}{number}", f"+{code} {number}"):
        try:
            destination = normalize(dialed, plan)
        except DialplanError:
            continue
        assert destination.number_class is not NumberClass.EMERGENCY


@pytest.mark.parametrize(
    ("country", "dialed"),
    [
        ("US", "911"),
        ("US", "9911"),
        ("US", "9-911"),
        ("US", "112"),
        ("US", "9112"),
        ("GB", "999"),
        ("GB", "112"),
        ("GB", "9999"),
        ("GB", "9112"),
        ("GB", "9 999"),
    ],
)
def test_default_plans_of_us_and_gb_know_the_outside_line(country: str, dialed: str) -> None:
    assert DialPlan.for_country(country).outside_line == "9"
    assert normalize(dialed, DialPlan.for_country(country)).emergency


@pytest.mark.parametrize(
    ("country", "dialed"),
    [("US", "99911"), ("US", "9111"), ("GB", "99999"), ("DE", "0112"), ("US", "1911")],
)
def test_near_misses_are_not_emergency(country: str, dialed: str) -> None:
    # Only the bare number or outside line + number: nothing else is guessed to be an emergency.
    try:
        destination = normalize(dialed, DialPlan.for_country(country))
    except DialplanError:
        return
    assert not destination.emergency


def test_emergency_wins_over_a_three_digit_extension_plan() -> None:
    plan = DialPlan.for_country("US", extension_lengths=(3,))
    assert normalize("911", plan).emergency
    assert normalize("112", plan).emergency
    assert normalize("412", plan).number_class is NumberClass.EXTENSION
    gb = DialPlan.for_country("GB", extension_lengths=(3,))
    assert normalize("999", gb).emergency
    with pytest.raises(IncompleteNumber):  # starts with the outside line: not an extension
        normalize("998", gb)
    assert normalize("498", gb).number_class is NumberClass.EXTENSION
