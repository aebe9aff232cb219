"""classify: libphonenumber's example numbers of each type, seen from home and from abroad."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType as T

from dialplans import NumberClass, UnknownCountry, classify

THE_EIGHT = ("US", "GB", "DE", "FR", "IN", "AU", "JP", "BR")

# (region, libphonenumber type) -> class when dialed from that region. NANP numbers and India's
# example fixed line are FIXED_LINE_OR_MOBILE to libphonenumber, which we rate as domestic fixed.
AT_HOME = {
    ("US", T.FIXED_LINE): NumberClass.DOMESTIC_FIXED,
    ("US", T.MOBILE): NumberClass.DOMESTIC_FIXED,
    ("US", T.TOLL_FREE): NumberClass.TOLL_FREE,
    ("US", T.PREMIUM_RATE): NumberClass.PREMIUM_RATE,
    ("GB", T.FIXED_LINE): NumberClass.DOMESTIC_FIXED,
    ("GB", T.MOBILE): NumberClass.DOMESTIC_MOBILE,
    ("GB", T.TOLL_FREE): NumberClass.TOLL_FREE,
    ("GB", T.PREMIUM_RATE): NumberClass.PREMIUM_RATE,
    ("DE", T.FIXED_LINE): NumberClass.DOMESTIC_FIXED,
    ("DE", T.MOBILE): NumberClass.DOMESTIC_MOBILE,
    ("DE", T.TOLL_FREE): NumberClass.TOLL_FREE,
    ("DE", T.PREMIUM_RATE): NumberClass.PREMIUM_RATE,
    ("FR", T.FIXED_LINE): NumberClass.DOMESTIC_FIXED,
    ("FR", T.MOBILE): NumberClass.DOMESTIC_MOBILE,
    ("FR", T.TOLL_FREE): NumberClass.TOLL_FREE,
    ("FR", T.PREMIUM_RATE): NumberClass.PREMIUM_RATE,
    ("IN", T.FIXED_LINE): NumberClass.DOMESTIC_FIXED,
    ("IN", T.MOBILE): NumberClass.DOMESTIC_MOBILE,
    ("IN", T.TOLL_FREE): NumberClass.TOLL_FREE,
    ("IN", T.PREMIUM_RATE): NumberClass.PREMIUM_RATE,
    ("AU", T.FIXED_LINE): NumberClass.DOMESTIC_FIXED,
    ("AU", T.MOBILE): NumberClass.DOMESTIC_MOBILE,
    ("AU", T.TOLL_FREE): NumberClass.TOLL_FREE,
    ("AU", T.PREMIUM_RATE): NumberClass.PREMIUM_RATE,
    ("JP", T.FIXED_LINE): NumberClass.DOMESTIC_FIXED,
    ("JP", T.MOBILE): NumberClass.DOMESTIC_MOBILE,
    ("JP", T.TOLL_FREE): NumberClass.TOLL_FREE,
    ("JP", T.PREMIUM_RATE): NumberClass.PREMIUM_RATE,
    ("BR", T.FIXED_LINE): NumberClass.DOMESTIC_FIXED,
    ("BR", T.MOBILE): NumberClass.DOMESTIC_MOBILE,
    ("BR", T.TOLL_FREE): NumberClass.TOLL_FREE,
    ("BR", T.PREMIUM_RATE): NumberClass.PREMIUM_RATE,
}
# Other types libphonenumber has examples for, all rated domestic fixed at home.
OTHER_TYPES = (T.VOIP, T.UAN, T.SHARED_COST, T.PERSONAL_NUMBER, T.PAGER, T.VOICEMAIL)


def example(region: str, kind: int) -> str:
    number = phonenumbers.example_number_for_type(region, kind)
    assert number is not None, (region, kind)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def abroad(region: str) -> str:
    return "GB" if region != "GB" else "US"


@pytest.mark.parametrize(("region", "kind"), sorted(AT_HOME))
def test_example_numbers_at_home(region: str, kind: int) -> None:
    assert classify(example(region, kind), region) is AT_HOME[(region, kind)]


@pytest.mark.parametrize(("region", "kind"), sorted(AT_HOME))
def test_example_numbers_from_abroad(region: str, kind: int) -> None:
    expected = AT_HOME[(region, kind)]
    if expected in (NumberClass.DOMESTIC_FIXED, NumberClass.DOMESTIC_MOBILE):
        expected = NumberClass.INTERNATIONAL
    assert classify(example(region, kind), abroad(region)) is expected


@pytest.mark.parametrize(
    ("region", "kind"),
    [
        (region, kind)
        for region in THE_EIGHT + ("IE", "ES", "IT", "NL", "CA")
        for kind in OTHER_TYPES
        if phonenumbers.example_number_for_type(region, kind) is not None
    ],
)
def test_other_valid_types_are_domestic_fixed_at_home(region: str, kind: int) -> None:
    assert classify(example(region, kind), region) is NumberClass.DOMESTIC_FIXED
    assert classify(example(region, kind), abroad(region)) is NumberClass.INTERNATIONAL


@pytest.mark.parametrize(
    ("e164", "home", "expected"),
    [
        # Concrete values, so that a metadata change that moves them is noticed.
        ("+12015550123", "US", NumberClass.DOMESTIC_FIXED),
        ("+12015550123", "CA", NumberClass.INTERNATIONAL),
        ("+15062345678", "CA", NumberClass.DOMESTIC_FIXED),
        ("+15062345678", "US", NumberClass.INTERNATIONAL),  # NANP shares +1, not the country
        ("+17872345678", "US", NumberClass.INTERNATIONAL),  # Puerto Rico is its own region
        ("+18002345678", "US", NumberClass.TOLL_FREE),
        ("+18002345678", "DE", NumberClass.TOLL_FREE),
        ("+19002345678", "US", NumberClass.PREMIUM_RATE),
        ("+442079460000", "GB", NumberClass.DOMESTIC_FIXED),
        ("+447400123456", "GB", NumberClass.DOMESTIC_MOBILE),
        ("+447400123456", "IE", NumberClass.INTERNATIONAL),
        ("+447781123456", "GB", NumberClass.INTERNATIONAL),  # Guernsey mobile: +44, region GG
        ("+448001234567", "GB", NumberClass.TOLL_FREE),
        ("+449012345678", "GB", NumberClass.PREMIUM_RATE),
        ("+4915123456789", "DE", NumberClass.DOMESTIC_MOBILE),
        ("+4930123456", "DE", NumberClass.DOMESTIC_FIXED),
        ("+498001234567890", "DE", NumberClass.TOLL_FREE),
        ("+33612345678", "FR", NumberClass.DOMESTIC_MOBILE),
        ("+81312345678", "JP", NumberClass.DOMESTIC_FIXED),
        ("+819012345678", "JP", NumberClass.DOMESTIC_MOBILE),
        ("+5511961234567", "BR", NumberClass.DOMESTIC_MOBILE),
        ("+61412345678", "AU", NumberClass.DOMESTIC_MOBILE),
        ("+61412345678", "NZ", NumberClass.INTERNATIONAL),
        ("+390612345678", "IT", NumberClass.DOMESTIC_FIXED),  # the leading zero is kept
        ("+80012345678", "US", NumberClass.TOLL_FREE),  # UIFN
        ("+80012345678", "GB", NumberClass.TOLL_FREE),
    ],
)
def test_concrete_numbers(e164: str, home: str, expected: NumberClass) -> None:
    assert classify(e164, home) is expected


def test_uifn_example_is_toll_free_everywhere() -> None:
    number = phonenumbers.example_number_for_non_geo_entity(800)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    for home in THE_EIGHT:
        assert classify(e164, home) is NumberClass.TOLL_FREE


@pytest.mark.parametrize(
    "e164",
    [
        "",
        "+",
        "+1911",  # an emergency number is never a valid E.164 number
        "+44999",
        "+12015550000123",  # too long for NANP
        "+1201555012",  # too short
        "+4930123456789012",  # 16 digits: more than E.164 allows
        "12015550123",  # no plus
        "+1 201 555 0123",  # E.164 has no separators
        "+0123456789",
        "+99912345678",  # unassigned country code
        "tel:+12015550123",
        "+1201555012a",
        None,
        12015550123,
    ],
)
def test_anything_else_is_invalid(e164: object) -> None:
    assert classify(e164, "US") is NumberClass.INVALID  # type: ignore[arg-type]


@pytest.mark.parametrize("home", ["XX", "USA", "", "1", "U", None, "ÜS"])
def test_unknown_home_country(home: object) -> None:
    with pytest.raises(UnknownCountry) as info:
        classify("+12015550123", home)  # type: ignore[arg-type]
    assert info.value.status_hint == 500


def test_home_country_is_case_insensitive() -> None:
    assert classify("+447400123456", "gb") is NumberClass.DOMESTIC_MOBILE


def test_number_class_values_and_str() -> None:
    assert [member.value for member in NumberClass] == [
        "domestic_fixed",
        "domestic_mobile",
        "international",
        "toll_free",
        "premium_rate",
        "emergency",
        "invalid",
        "extension",
    ]
    assert str(NumberClass.TOLL_FREE) == "toll_free"
    assert f"{NumberClass.PREMIUM_RATE}" == "premium_rate"
    assert NumberClass("international") is NumberClass.INTERNATIONAL
    assert NumberClass.DOMESTIC_FIXED == "domestic_fixed"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.sampled_from(THE_EIGHT))
def test_classify_never_raises_on_arbitrary_text(text: str, home: str) -> None:
    assert isinstance(classify(text, home), NumberClass)


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"\+[1-9][0-9]{1,14}", fullmatch=True), st.sampled_from(THE_EIGHT))
def test_classify_agrees_with_libphonenumber_validity(e164: str, home: str) -> None:
    try:
        valid = phonenumbers.is_valid_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        valid = False
    result = classify(e164, home)
    assert (result is NumberClass.INVALID) == (not valid)
    assert result not in (NumberClass.EMERGENCY, NumberClass.EXTENSION)
