"""The emergency short codes of each country: from our data files, else libphonenumber's."""

from __future__ import annotations

from functools import lru_cache

from phonenumbers import PhoneMetadata

from ._data import check_country, country_data
from ._regex import PatternError, compile_pattern

__all__ = ["emergency_numbers"]

# 112 reaches emergency services from any GSM handset and is the EU-wide number, so it is added to
# what libphonenumber knows for countries we have no data file for: over-inclusion only means a call
# is free and never torn down, under-inclusion could block an emergency call.
_UNIVERSAL = frozenset({"112"})


def emergency_numbers(country: str) -> frozenset[str]:
    """The short codes that reach emergency services when dialed in ``country``."""
    return _emergency_numbers(check_country(country))


@lru_cache(maxsize=None)
def _emergency_numbers(country: str) -> frozenset[str]:
    data = country_data(country)
    if data is not None:
        return data.emergency
    return libphonenumber_emergency_numbers(country) | _UNIVERSAL


@lru_cache(maxsize=None)
def libphonenumber_emergency_numbers(country: str) -> frozenset[str]:
    """Every string libphonenumber's short-number metadata calls an emergency number in ``country``.

    The metadata holds a pattern; ``is_emergency_number`` matches it exactly, so the finite set of
    strings the pattern matches is the same answer, enumerated once.
    """
    metadata = PhoneMetadata.short_metadata_for_region(country)
    if metadata is None or metadata.emergency is None:
        return frozenset()
    pattern = metadata.emergency.national_number_pattern
    if not pattern:
        return frozenset()
    try:
        return compile_pattern(pattern).enumerate()
    except PatternError:
        # A pattern we cannot enumerate leaves only the universal number; a test walks every region.
        return frozenset()
