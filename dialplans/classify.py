"""The class of an E.164 number as seen from a home country (domestic, international, toll-free...)."""

from __future__ import annotations

import enum
import re

import phonenumbers
from phonenumbers import PhoneNumber, PhoneNumberType

from ._data import check_country

__all__ = ["NumberClass", "classify"]

# E.164: a plus, a country code that does not start with 0, at most 15 digits in all (ITU-T E.164 6.1).
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


class NumberClass(str, enum.Enum):
    """What kind of destination a dialed number is; the value is what reports and the API show."""

    DOMESTIC_FIXED = "domestic_fixed"
    DOMESTIC_MOBILE = "domestic_mobile"
    INTERNATIONAL = "international"
    TOLL_FREE = "toll_free"
    PREMIUM_RATE = "premium_rate"
    EMERGENCY = "emergency"
    INVALID = "invalid"
    # An internal PBX extension: never reaches the PSTN.
    EXTENSION = "extension"

    def __str__(self) -> str:
        # str() of a mixed-in enum is "NumberClass.X" since Python 3.11; reports want the value.
        return self.value


def classify(e164: str, home_country: str) -> NumberClass:
    """Class of ``e164`` for a caller in ``home_country``; ``INVALID`` for anything not valid E.164.

    Raises ``UnknownCountry`` for a home country libphonenumber does not know.
    """
    home = check_country(home_country)
    if not isinstance(e164, str) or _E164.fullmatch(e164) is None:
        return NumberClass.INVALID
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return NumberClass.INVALID
    return classify_parsed(number, home)


def classify_parsed(number: PhoneNumber, home: str) -> NumberClass:
    """``classify`` for an already parsed number and validated home country (used by normalize)."""
    if not phonenumbers.is_valid_number(number):
        return NumberClass.INVALID
    kind = phonenumbers.number_type(number)
    # Toll-free and premium rate are decided before geography: a foreign toll-free number is still
    # toll-free (plans decide who pays), and +800 UIFN numbers have no country at all.
    if kind == PhoneNumberType.TOLL_FREE:
        return NumberClass.TOLL_FREE
    if kind == PhoneNumberType.PREMIUM_RATE:
        return NumberClass.PREMIUM_RATE
    # Valid *for the home region*, not "its region is home": regions sharing a country code share
    # non-geographic ranges (NANP 8xx, 5xx), which libphonenumber attributes to the first region.
    if not phonenumbers.is_valid_number_for_region(number, home):
        return NumberClass.INTERNATIONAL
    if kind == PhoneNumberType.MOBILE:
        return NumberClass.DOMESTIC_MOBILE
    # FIXED_LINE_OR_MOBILE (all of NANP, much of Asia), VoIP, UAN, shared-cost, personal numbers,
    # pagers and voicemail are rated as domestic fixed: the network cannot tell them apart any better.
    return NumberClass.DOMESTIC_FIXED


def region_of(number: PhoneNumber, home: str) -> str | None:
    """The region of a valid number, preferring ``home`` when the number is valid there too.

    libphonenumber names the first region of a shared country code for ranges that serve several
    (NANP toll-free 8xx is "US"); a caller in Canada dials them as Canadian numbers.
    """
    if phonenumbers.is_valid_number_for_region(number, home):
        return home
    return phonenumbers.region_code_for_number(number)
