"""normalize and DialPlan: every dialing form, outside lines, prefixes, extensions, 404 versus 484."""

from __future__ import annotations

import json

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType as T

from dialplans import (
    Destination,
    DialPlan,
    DialplanError,
    IncompleteNumber,
    InvalidDialPlan,
    InvalidNumber,
    NumberClass,
    UnknownCountry,
    UnknownPlan,
    classify,
    normalize,
)
from rating_core.errors import CreditgateError

THE_EIGHT = ("US", "GB", "DE", "FR", "IN", "AU", "JP", "BR")
TYPES = (T.FIXED_LINE, T.MOBILE, T.TOLL_FREE, T.PREMIUM_RATE)
# The international prefix each country dials (BR: 00 + a carrier code, 21 here).
IDD = {"US": "011", "GB": "00", "DE": "00", "FR": "00", "IN": "00", "AU": "0011", "JP": "010", "BR": "0021"}
# The outside line a PBX in that country would use, for plans that set one.
OUTSIDE = {"US": "9", "GB": "9", "DE": "0", "FR": "0", "IN": "0", "AU": "0", "JP": "0", "BR": "0"}
EXAMPLES = [
    (country, kind, phonenumbers.example_number_for_type(country, kind))
    for country in THE_EIGHT
    for kind in TYPES
]


def e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def national(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)


def forms(country: str, number: phonenumbers.PhoneNumber) -> list[tuple[DialPlan, str]]:
    """Every way a user in ``country`` can dial its own example ``number``."""
    default = DialPlan.for_country(country)
    outside = DialPlan.for_country(country, outside_line=OUTSIDE[country])
    line = OUTSIDE[country]
    digits = e164(number)[1:]
    return [
        (default, e164(number)),
        (default, phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)),
        (default, f"tel:{e164(number)}"),
        (default, national(number)),
        (default, IDD[country] + digits),
        (default, f"{IDD[country]} {digits}"),
        (outside, e164(number)),
        (outside, f"{line} {national(number)}"),
        (outside, f"{line}{IDD[country]}{digits}"),
    ]


# --- every form of every example number -----------------------------------------------------


@pytest.mark.parametrize(("country", "kind", "number"), EXAMPLES)
def test_every_form_of_an_example_number_gives_its_e164(
    country: str, kind: int, number: phonenumbers.PhoneNumber
) -> None:
    expected_class = classify(e164(number), country)
    assert expected_class is not NumberClass.INVALID
    for plan, dialed in forms(country, number):
        destination = normalize(dialed, plan)
        assert destination.number == e164(number), (plan, dialed)
        assert destination.number_class is expected_class
        assert destination.region == country
        assert destination.country_code == number.country_code
        assert destination.dialed == dialed
        assert not destination.emergency


@pytest.mark.parametrize(("country", "kind", "number"), EXAMPLES)
def test_example_numbers_dialed_from_another_country(
    country: str, kind: int, number: phonenumbers.PhoneNumber
) -> None:
    home = "GB" if country != "GB" else "US"
    destination = normalize(IDD[home] + e164(number)[1:], DialPlan.for_country(home))
    assert destination.number == e164(number)
    assert destination.region == country
    expected = {
        T.FIXED_LINE: NumberClass.INTERNATIONAL,
        T.MOBILE: NumberClass.INTERNATIONAL,
        T.TOLL_FREE: NumberClass.TOLL_FREE,
        T.PREMIUM_RATE: NumberClass.PREMIUM_RATE,
    }[kind]
    assert destination.number_class is expected


# --- concrete dialing table -------------------------------------------------------------------

US = DialPlan.for_country("US")
GB = DialPlan.for_country("GB")
DE = DialPlan.for_country("DE")


@pytest.mark.parametrize(
    ("plan", "dialed", "number", "number_class"),
    [
        # US: 10 digits, 1 + 10 digits, outside line, 011, 9xx area codes without the outside line.
        (US, "(201) 555-0123", "+12015550123", NumberClass.DOMESTIC_FIXED),
        (US, "201.555.0123", "+12015550123", NumberClass.DOMESTIC_FIXED),
        (US, "1-201-555-0123", "+12015550123", NumberClass.DOMESTIC_FIXED),
        (US, "9 1 201 555 0123", "+12015550123", NumberClass.DOMESTIC_FIXED),
        (US, "9 201 555 0123", "+12015550123", NumberClass.DOMESTIC_FIXED),
        (US, "909-555-1234", "+19095551234", NumberClass.DOMESTIC_FIXED),
        (US, "9 909-555-1234", "+19095551234", NumberClass.DOMESTIC_FIXED),
        (US, "9 1 909 555 1234", "+19095551234", NumberClass.DOMESTIC_FIXED),
        (US, "011 44 20 7946 0000", "+442079460000", NumberClass.INTERNATIONAL),
        (US, "9 011 44 20 7946 0000", "+442079460000", NumberClass.INTERNATIONAL),
        (US, "1-800-234-5678", "+18002345678", NumberClass.TOLL_FREE),
        (US, "1 900 234 5678", "+19002345678", NumberClass.PREMIUM_RATE),
        (US, "506 234 5678", "+15062345678", NumberClass.INTERNATIONAL),  # Canada
        (US, "tel:+1-201-555-0123;phone-context=example.com", "+12015550123", NumberClass.DOMESTIC_FIXED),
        (US, "TEL:2015550123", "+12015550123", NumberClass.DOMESTIC_FIXED),
        (US, "+80012345678", "+80012345678", NumberClass.TOLL_FREE),
        (US, "011 800 1234 5678", "+80012345678", NumberClass.TOLL_FREE),
        # GB: national prefix 0, international 00, outside line 9.
        (GB, "020 7946 0000", "+442079460000", NumberClass.DOMESTIC_FIXED),
        (GB, "9 020 7946 0000", "+442079460000", NumberClass.DOMESTIC_FIXED),
        (GB, "(020) 7946-0000", "+442079460000", NumberClass.DOMESTIC_FIXED),
        (GB, "+44 (0)20 7946 0000", "+442079460000", NumberClass.DOMESTIC_FIXED),
        (GB, "07400 123456", "+447400123456", NumberClass.DOMESTIC_MOBILE),
        (GB, "0800 123 4567", "+448001234567", NumberClass.TOLL_FREE),
        (GB, "0901 234 5678", "+449012345678", NumberClass.PREMIUM_RATE),
        (GB, "00 1 201 555 0123", "+12015550123", NumberClass.INTERNATIONAL),
        (GB, "9 00 33 1 23 45 67 89", "+33123456789", NumberClass.INTERNATIONAL),
        (GB, "07781 123456", "+447781123456", NumberClass.INTERNATIONAL),  # Guernsey
        # DE, FR, IN, AU, JP, BR national and international prefixes.
        (DE, "030 123456", "+4930123456", NumberClass.DOMESTIC_FIXED),
        (DE, "0049 30 123456", "+4930123456", NumberClass.DOMESTIC_FIXED),
        (DE, "01512 3456789", "+4915123456789", NumberClass.DOMESTIC_MOBILE),
        (DE, "00 44 7400 123456", "+447400123456", NumberClass.INTERNATIONAL),
        (DialPlan.for_country("FR"), "01 23 45 67 89", "+33123456789", NumberClass.DOMESTIC_FIXED),
        (DialPlan.for_country("FR"), "06 12 34 56 78", "+33612345678", NumberClass.DOMESTIC_MOBILE),
        (DialPlan.for_country("IN"), "081234 56789", "+918123456789", NumberClass.DOMESTIC_MOBILE),
        (DialPlan.for_country("IN"), "00 1 201 555 0123", "+12015550123", NumberClass.INTERNATIONAL),
        (DialPlan.for_country("AU"), "(02) 1234 5678", "+61212345678", NumberClass.DOMESTIC_FIXED),
        (DialPlan.for_country("AU"), "0011 44 20 7946 0000", "+442079460000", NumberClass.INTERNATIONAL),
        (DialPlan.for_country("JP"), "03-1234-5678", "+81312345678", NumberClass.DOMESTIC_FIXED),
        (DialPlan.for_country("JP"), "010 1 201 555 0123", "+12015550123", NumberClass.INTERNATIONAL),
        (DialPlan.for_country("BR"), "(11) 2345-6789", "+551123456789", NumberClass.DOMESTIC_FIXED),
        (DialPlan.for_country("BR"), "0 21 11 2345-6789", "+551123456789", NumberClass.DOMESTIC_FIXED),
        (DialPlan.for_country("BR"), "0021 1 201 555 0123", "+12015550123", NumberClass.INTERNATIONAL),
        (DialPlan.for_country("IT"), "06 1234 5678", "+390612345678", NumberClass.DOMESTIC_FIXED),
        (DialPlan.for_country("CA"), "1-800-234-5678", "+18002345678", NumberClass.TOLL_FREE),
        # Outside line 0 where PBXs use it, with its national and international prefixes.
        (DialPlan.for_country("DE", outside_line="0"), "0 030 123456", "+4930123456", NumberClass.DOMESTIC_FIXED),
        (DialPlan.for_country("DE", outside_line="0"), "0 0044 20 7946 0000", "+442079460000", NumberClass.INTERNATIONAL),
        (DialPlan.for_country("FR", outside_line="0"), "0 01 23 45 67 89", "+33123456789", NumberClass.DOMESTIC_FIXED),
    ],
)
def test_dialing_table(plan: DialPlan, dialed: str, number: str, number_class: NumberClass) -> None:
    destination = normalize(dialed, plan)
    assert (destination.number, destination.number_class) == (number, number_class)


def test_nanp_shared_ranges_belong_to_the_callers_country() -> None:
    # libphonenumber says "US" for +1 800; a Canadian dialing it is dialing a Canadian toll-free.
    assert normalize("1-800-234-5678", DialPlan.for_country("CA")).region == "CA"
    assert normalize("1-800-234-5678", US).region == "US"
    assert normalize("+15062345678", US).region == "CA"


# --- extensions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "dialed", "expected"),
    [
        (DialPlan.for_country("US", extension_lengths=(4,)), "2001", "2001"),
        (DialPlan.for_country("US", extension_lengths=(4,)), "20-01", "2001"),
        (DialPlan.for_country("US", extension_lengths=(3, 4)), "412", "412"),
        (DialPlan.for_country("GB", extension_lengths=(3, 4)), "4001", "4001"),
        (DialPlan.for_country("DE", extension_lengths=(2, 3)), "12", "12"),
        (DialPlan.for_country("DE", extension_lengths=(2, 3)), "123", "123"),
        (DialPlan.for_country("DE", extension_lengths=(2, 3)), "030", "030"),
        (DialPlan(country="US", extension_lengths=(4,)), "9001", "9001"),  # no outside line
    ],
)
def test_extensions(plan: DialPlan, dialed: str, expected: str) -> None:
    destination = normalize(dialed, plan)
    assert destination == Destination(
        dialed=dialed,
        number=expected,
        number_class=NumberClass.EXTENSION,
        region=None,
        country_code=None,
    )


@pytest.mark.parametrize(
    ("plan", "dialed", "error"),
    [
        # Starts with the outside line: not an extension, and too short for anything else.
        (DialPlan.for_country("US", extension_lengths=(4,)), "9001", IncompleteNumber),
        (DialPlan.for_country("GB", extension_lengths=(4,)), "9001", IncompleteNumber),
        # A length that is not an extension length is a PSTN number, here an incomplete one.
        (DialPlan.for_country("US", extension_lengths=(4,)), "20012", IncompleteNumber),
        # A plus is never an extension.
        (DialPlan.for_country("DE", extension_lengths=(4,)), "+2001", IncompleteNumber),  # Egypt
    ],
)
def test_not_extensions(plan: DialPlan, dialed: str, error: type[DialplanError]) -> None:
    with pytest.raises(error):
        normalize(dialed, plan)


def test_ten_digit_extensions_shadow_national_numbers_only_without_outside_line() -> None:
    plan = DialPlan.for_country("US", extension_lengths=(10,))
    assert normalize("2015550123", plan).number_class is NumberClass.EXTENSION
    assert normalize("9 201 555 0123", plan).number == "+12015550123"


# --- 404 versus 484 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "dialed"),
    [
        (US, ""),
        (US, "   "),
        (US, "+"),
        (US, "tel:"),
        (US, "-()"),
        (US, "9"),  # only the outside line
        (US, "1"),  # only the national prefix
        (US, "0"),  # the start of 011
        (US, "01"),
        (US, "011"),  # the international prefix alone
        (US, "9011"),
        (US, "011 4"),  # the start of a country code
        (US, "+4"),
        (US, "+44"),
        (US, "+1911"),  # too short (+CC emergency is not emergency)
        (US, "201555012"),  # nine digits
        (US, "555 0123"),  # seven-digit local number: the area code is missing
        (US, "1 201 555"),
        (GB, "0"),
        (GB, "00"),
        (GB, "020 7946 000"),
        (GB, "07400 12345"),
        (GB, "+44 20 7946"),
        (DE, "0301"),  # Berlin numbers have variable length: more digits can follow
        (DE, "+49 301"),
        (DE, "0151"),
        (DialPlan.for_country("AU"), "001"),  # the start of 0011
        (DialPlan.for_country("AU"), "0011 6"),
        (DialPlan.for_country("JP"), "01"),  # the start of 010
        (DialPlan.for_country("IT"), "0"),
    ],
)
def test_incomplete_numbers_are_484(plan: DialPlan, dialed: str) -> None:
    with pytest.raises(IncompleteNumber) as info:
        normalize(dialed, plan)
    assert info.value.status_hint == 484
    assert info.value.reason == "address incomplete"


@pytest.mark.parametrize(
    ("plan", "dialed"),
    [
        (US, "abc"),
        (US, "*67 201 555 0123"),  # feature codes are the PBX's business
        (US, "911#"),
        (US, "++12015550123"),
        (US, "1+2015550123"),
        (US, "201_555_0123"),
        (US, "٩١١"),  # Arabic-Indic digits
        (US, "２０１５５５０１２３"),  # full-width digits
        (US, "+0"),
        (US, "+0 44 20 7946 0000"),
        (US, "+999 1234"),  # unassigned country code
        (US, "011 999 1234"),
        (US, "2015550123456"),  # too long
        (US, "1 555 555 0123"),  # area code 555 is not assigned
        (US, "+1 201 555 01234"),
        (US, "sip:2015550123@example.com"),
        (US, "tel:2015550123x"),
        (US, "9" * 40),
        (US, "1" * 200),
        (GB, "020 7946 0000 0000"),
        (GB, "+44 20 7946 0000 0"),
        (DE, "+49 30 1234567890123"),  # 16 digits: more than E.164 allows
        (DialPlan.for_country("US", international_prefix="00"), "011 44 20 7946 0000"),
    ],
)
def test_invalid_numbers_are_404(plan: DialPlan, dialed: str) -> None:
    with pytest.raises(InvalidNumber) as info:
        normalize(dialed, plan)
    assert info.value.status_hint == 404
    assert info.value.reason == "invalid number"


@pytest.mark.parametrize("dialed", [None, 2015550123, b"2015550123", ["911"]])
def test_non_strings_are_invalid(dialed: object) -> None:
    with pytest.raises(InvalidNumber):
        normalize(dialed, US)  # type: ignore[arg-type]


def test_normalize_needs_a_dial_plan() -> None:
    with pytest.raises(InvalidDialPlan):
        normalize("911", "US")  # type: ignore[arg-type]


# --- prefix overrides -------------------------------------------------------------------------


def test_explicit_prefixes_equal_to_the_metadata_behave_the_same() -> None:
    explicit = DialPlan.for_country("GB", national_prefix="0", international_prefix="00")
    for dialed in ("020 7946 0000", "00 1 201 555 0123", "07400 123456", "9 0800 123 4567"):
        assert normalize(dialed, explicit) == normalize(dialed, GB)


def test_an_overridden_international_prefix_replaces_the_default() -> None:
    plan = DialPlan.for_country("US", international_prefix="00")
    assert normalize("00 44 20 7946 0000", plan).number == "+442079460000"
    assert normalize("201 555 0123", plan).number == "+12015550123"


def test_an_empty_international_prefix_allows_only_plus() -> None:
    plan = DialPlan.for_country("GB", international_prefix="")
    assert normalize("+1 201 555 0123", plan).number == "+12015550123"
    with pytest.raises(InvalidNumber):
        normalize("00 1 201 555 0123", plan)


def test_an_empty_national_prefix_takes_national_significant_numbers() -> None:
    plan = DialPlan.for_country("GB", national_prefix="")
    assert normalize("20 7946 0000", plan).number == "+442079460000"


# --- DialPlan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "outside_line"),
    [("US", "9"), ("CA", "9"), ("GB", "9"), ("IE", "9"), ("DE", ""), ("FR", ""), ("JP", ""), ("SE", "")],
)
def test_for_country_applies_the_data_file(country: str, outside_line: str) -> None:
    plan = DialPlan.for_country(country)
    assert plan == DialPlan(country=country, outside_line=outside_line)


def test_for_country_overrides_and_normalizes() -> None:
    plan = DialPlan.for_country("us", outside_line="8", extension_lengths=[4, 3, 4])
    assert plan.country == "US"
    assert plan.outside_line == "8"
    assert plan.extension_lengths == (3, 4)
    with pytest.raises(InvalidDialPlan):
        DialPlan.for_country("US", country="GB")
    with pytest.raises(InvalidDialPlan):
        DialPlan.for_country("US", outside="9")


@pytest.mark.parametrize("country", ["XX", "ZZ", "USA", "", "u", None, 1, "001"])
def test_unknown_countries(country: object) -> None:
    with pytest.raises(UnknownCountry) as info:
        DialPlan(country=country)  # type: ignore[arg-type]
    assert info.value.status_hint == 500
    with pytest.raises(UnknownCountry):
        DialPlan.for_country(country)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "settings_",
    [
        {"outside_line": "a"},
        {"outside_line": 9},
        {"outside_line": "٩"},
        {"outside_line": "123456789"},
        {"national_prefix": "x"},
        {"international_prefix": 11},
        {"extension_lengths": (0,)},
        {"extension_lengths": (16,)},
        {"extension_lengths": ("4",)},
        {"extension_lengths": (True,)},
        {"extension_lengths": "4"},
        {"extension_lengths": 4},
    ],
)
def test_bad_plan_settings(settings_: dict[str, object]) -> None:
    with pytest.raises(InvalidDialPlan):
        DialPlan(country="US", **settings_)  # type: ignore[arg-type]


def test_plans_are_frozen_and_hashable() -> None:
    plan = DialPlan.for_country("GB", extension_lengths=(4,))
    with pytest.raises(AttributeError):
        plan.country = "US"  # type: ignore[misc]
    assert hash(plan) == hash(DialPlan.for_country("GB", extension_lengths=[4]))


@pytest.mark.parametrize(
    "plan",
    [
        DialPlan(country="US"),
        DialPlan.for_country("GB", extension_lengths=(3, 4)),
        DialPlan.for_country("DE", outside_line="0", national_prefix="0", international_prefix="00"),
        DialPlan.for_country("FR", national_prefix="", international_prefix=""),
    ],
)
def test_to_dict_round_trips_through_json(plan: DialPlan) -> None:
    data = json.loads(json.dumps(plan.to_dict()))
    assert DialPlan.from_dict(data) == plan


def test_to_dict_is_plain() -> None:
    assert DialPlan.for_country("US", extension_lengths=(4,)).to_dict() == {
        "country": "US",
        "outside_line": "9",
        "national_prefix": None,
        "international_prefix": None,
        "extension_lengths": [4],
    }


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({}, InvalidDialPlan),
        ({"outside_line": "9"}, InvalidDialPlan),
        ({"country": "US", "colour": "red"}, InvalidDialPlan),
        ({"country": "US", 1: 2}, InvalidDialPlan),
        ({"country": "XX"}, UnknownCountry),
        ({"country": "US", "extension_lengths": "34"}, InvalidDialPlan),
        (["US"], InvalidDialPlan),
        (None, InvalidDialPlan),
    ],
)
def test_from_dict_refuses_garbage(data: object, error: type[DialplanError]) -> None:
    with pytest.raises(error):
        DialPlan.from_dict(data)  # type: ignore[arg-type]


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (InvalidNumber, 404, "invalid number"),
        (IncompleteNumber, 484, "address incomplete"),
        (UnknownCountry, 500, "unknown country"),
        (InvalidDialPlan, 500, "dial plan misconfigured"),
        (UnknownPlan, 500, "unknown calling plan"),
    ],
)
def test_errors_carry_status_and_reason(error: type[DialplanError], status: int, reason: str) -> None:
    assert issubclass(error, DialplanError)
    assert issubclass(error, CreditgateError)
    assert not issubclass(error, ValueError)
    assert (error.status_hint, error.reason) == (status, reason)


# --- properties -------------------------------------------------------------------------------

PLANS = st.sampled_from(
    [
        DialPlan.for_country(country, extension_lengths=lengths)
        for country in THE_EIGHT + ("IT", "ES", "SE")
        for lengths in ((), (3, 4))
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), PLANS)
def test_normalize_raises_only_dialplan_errors_on_any_text(text: str, plan: DialPlan) -> None:
    try:
        destination = normalize(text, plan)
    except DialplanError as error:
        assert error.status_hint in (404, 484)
        return
    assert destination.number_class is not NumberClass.INVALID
    assert destination.dialed == text


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"\+?[0-9 ()\-]{0,24}", fullmatch=True), PLANS)
def test_pstn_results_agree_with_classify(text: str, plan: DialPlan) -> None:
    try:
        destination = normalize(text, plan)
    except (InvalidNumber, IncompleteNumber):
        return
    if destination.number.startswith("+"):
        assert classify(destination.number, plan.country) is destination.number_class
        assert len(destination.number) <= 16
    else:
        assert destination.number_class in (NumberClass.EMERGENCY, NumberClass.EXTENSION)


SEPARATOR = st.sampled_from(["", "", " ", "-", ".", "/"])


@st.composite
def dialed_forms(draw: st.DrawFn) -> tuple[DialPlan, str, str]:
    country, _, number = draw(st.sampled_from(EXAMPLES))
    plan, dialed = draw(st.sampled_from(forms(country, number)))
    if dialed.startswith("tel:"):
        return plan, dialed, e164(number)
    # Scatter separators through the digits: they must never change the result.
    scattered = "".join(char + draw(SEPARATOR) for char in dialed)
    return plan, scattered, e164(number)


@settings(max_examples=300, deadline=None)
@given(dialed_forms())
def test_national_international_and_e164_forms_agree(case: tuple[DialPlan, str, str]) -> None:
    plan, dialed, expected = case
    assert normalize(dialed, plan).number == expected
