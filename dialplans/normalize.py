"""Turns what a user dialed into a classified destination, by the organization's dial plan.

Theory of operation (SPEC section 3.2). ``normalize`` applies these rules, in this order:

1. Clean: accept a ``tel:`` URI (RFC 3966; ``;parameters`` dropped), drop the visual separators
   (space ``-`` ``.`` ``(`` ``)`` ``/``), accept one leading ``+``. Anything else that is not an
   ASCII digit is ``InvalidNumber``; nothing left is ``IncompleteNumber``.
2. Emergency, first and always: the digits equal one of the country's emergency numbers, or the
   outside line followed by one. A ``+CC`` form is never emergency (``+1911`` is not 911), and
   emergency wins over extensions, so a 3-digit extension plan still reaches 911, 999 and 112.
3. ``+...`` is an E.164 candidate.
4. An extension: a length listed in ``extension_lengths`` that does not start with the outside line.
5. The outside line is stripped when present. Should the rest not be a valid number while the
   digits as dialed are (US area codes 9xx dialed without the 9), the digits as dialed win.
6. An international prefix (the plan's, else libphonenumber's pattern, e.g. 00, 011, 0011) makes
   the rest an E.164 candidate.
7. Otherwise a national number of the plan's country, parsed by libphonenumber (national prefix,
   carrier codes, and numbers dialed without the national prefix where it accepts them).

A candidate is then judged: valid is a destination; too short, possible only locally (a missing area
code) or a proper prefix of some valid number is ``IncompleteNumber`` (484); everything else, such
as an unknown country code or too many digits, is ``InvalidNumber`` (404). The prefix test uses
libphonenumber's per-type patterns through ``_regex``, since ``re`` cannot match prefixes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, NoReturn

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumber, ValidationResult

from ._data import check_country, country_data, is_digits
from ._regex import PatternError, compile_pattern
from .classify import NumberClass, classify_parsed, region_of
from .emergency import emergency_numbers
from .errors import DialplanError, IncompleteNumber, InvalidDialPlan, InvalidNumber

__all__ = ["DialPlan", "Destination", "normalize"]

_SEPARATORS = str.maketrans("", "", " -.()/")
# Bounds on input (ARCHITECTURE rule 9): far above any real dial string (15 E.164 digits plus an
# outside line and a carrier-select IDD), far below anything that could cost time.
_MAX_DIALED_CHARS = 128
_MAX_DIGITS = 32
_MAX_PREFIX_DIGITS = 8
_MAX_EXTENSION_LENGTH = 15
_MAX_E164_LENGTH = 16  # "+" and 15 digits
# libphonenumber descriptions of number types; a number is valid when it matches one of them.
_TYPE_DESCS = (
    "fixed_line",
    "mobile",
    "toll_free",
    "premium_rate",
    "shared_cost",
    "personal_number",
    "voip",
    "pager",
    "uan",
    "voicemail",
)
_INCOMPLETE_REASONS = (ValidationResult.TOO_SHORT, ValidationResult.IS_POSSIBLE_LOCAL_ONLY)


@dataclass(frozen=True, slots=True, kw_only=True)
class DialPlan:
    """How one organization's users dial: its country, outside line, prefixes and extensions.

    ``national_prefix`` and ``international_prefix`` of None take libphonenumber's metadata for the
    country (GB 0 and 00, US 1 and 011, AU 0 and 0011...); an empty string means "none".
    """

    country: str
    outside_line: str = ""
    national_prefix: str | None = None
    international_prefix: str | None = None
    extension_lengths: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Normalized in place so that equal plans compare equal and round-trip through to_dict.
        object.__setattr__(self, "country", check_country(self.country))
        _check_prefix("outside_line", self.outside_line)
        for name in ("national_prefix", "international_prefix"):
            value = getattr(self, name)
            if value is not None:
                _check_prefix(name, value)
        lengths = self.extension_lengths
        if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Iterable):
            raise InvalidDialPlan(f"extension_lengths must be a sequence of ints, got {lengths!r}")
        lengths = tuple(lengths)
        for length in lengths:
            if (
                not isinstance(length, int)
                or isinstance(length, bool)
                or not 1 <= length <= _MAX_EXTENSION_LENGTH
            ):
                raise InvalidDialPlan(
                    f"extension lengths must be ints 1..{_MAX_EXTENSION_LENGTH}, got {length!r}"
                )
        object.__setattr__(self, "extension_lengths", tuple(sorted(set(lengths))))

    @classmethod
    def for_country(cls, country: str, /, **overrides: Any) -> DialPlan:
        """The plan for ``country`` with the defaults of its data file, then ``overrides``."""
        code = check_country(country)
        data = country_data(code)
        defaults: dict[str, Any] = {} if data is None else {"outside_line": data.outside_line}
        # The country comes from the argument; overriding it would defeat the per-country defaults.
        refused = (set(overrides) - _PLAN_FIELDS) | ({"country"} & set(overrides))
        if refused:
            raise InvalidDialPlan(f"unknown dial-plan settings: {sorted(refused)}")
        return cls(country=code, **{**defaults, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (the plan is stored in Redis)."""
        return {
            "country": self.country,
            "outside_line": self.outside_line,
            "national_prefix": self.national_prefix,
            "international_prefix": self.international_prefix,
            "extension_lengths": list(self.extension_lengths),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DialPlan:
        """The plan ``to_dict`` produced; ``InvalidDialPlan`` for anything else."""
        if not isinstance(data, Mapping):
            raise InvalidDialPlan(f"a dial plan must be a mapping, got {type(data).__name__}")
        unknown = set(data) - _PLAN_FIELDS
        if unknown:
            raise InvalidDialPlan(f"unknown dial-plan settings: {sorted(map(str, unknown))}")
        if "country" not in data:
            raise InvalidDialPlan("a dial plan needs a country")
        return cls(**data)


_PLAN_FIELDS = frozenset(field.name for field in fields(DialPlan))


def _check_prefix(name: str, value: object) -> None:
    if not is_digits(value) or len(value) > _MAX_PREFIX_DIGITS:  # type: ignore[arg-type]
        raise InvalidDialPlan(f"{name} must be at most {_MAX_PREFIX_DIGITS} digits, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """A dialed number after normalization.

    ``number`` is E.164 (``+...``) for PSTN numbers, the short code (``"911"``) for emergency calls
    and the digits for an extension. ``region`` is the destination's ISO region (``"001"`` for
    non-geographic numbers such as +800 UIFN, None for extensions); for emergency calls it is the
    plan's country, whose emergency services answer.
    """

    dialed: str
    number: str
    number_class: NumberClass
    region: str | None
    country_code: int | None

    @property
    def emergency(self) -> bool:
        """True for emergency calls: always passed, never charged, never torn down."""
        return self.number_class is NumberClass.EMERGENCY


def normalize(dialed: str, plan: DialPlan) -> Destination:
    """The destination ``dialed`` reaches under ``plan``; ``InvalidNumber`` or ``IncompleteNumber``.

    Answers are remembered (libphonenumber's parsing is the costliest step of a call setup, and the
    same numbers are dialed again and again); refusals are not, they are worked out every time.
    """
    if type(dialed) is str and type(plan) is DialPlan and len(dialed) <= 64:
        return _normalize_cached(dialed, plan)
    return _normalize(dialed, plan)


@lru_cache(maxsize=65536)
def _normalize_cached(dialed: str, plan: DialPlan) -> Destination:
    return _normalize(dialed, plan)


def _normalize(dialed: str, plan: DialPlan) -> Destination:
    if not isinstance(plan, DialPlan):
        raise InvalidDialPlan(f"normalize needs a DialPlan, got {type(plan).__name__}")
    digits, plus = _clean(dialed)
    outside = plan.outside_line

    if not plus:
        emergency = emergency_numbers(plan.country)
        short_code = digits
        if short_code not in emergency and outside and digits.startswith(outside):
            short_code = digits[len(outside) :]
        if short_code in emergency:
            return Destination(
                dialed=dialed,
                number=short_code,
                number_class=NumberClass.EMERGENCY,
                region=plan.country,
                country_code=phonenumbers.country_code_for_region(plan.country),
            )
    else:
        return _international(dialed, digits, plan)

    starts_outside = bool(outside) and digits.startswith(outside)
    if len(digits) in plan.extension_lengths and not starts_outside:
        return Destination(
            dialed=dialed,
            number=digits,
            number_class=NumberClass.EXTENSION,
            region=None,
            country_code=None,
        )
    if not starts_outside:
        return _pstn(dialed, digits, plan)
    try:
        return _pstn(dialed, digits[len(outside) :], plan)
    except DialplanError as stripped_error:
        # The outside line is optional, so a leading 9 may belong to the number itself (a US area
        # code 9xx dialed without the outside line): accept that reading only when it is valid.
        try:
            return _pstn(dialed, digits, plan)
        except DialplanError:
            raise stripped_error from None


def _clean(dialed: object) -> tuple[str, bool]:
    """The digits of ``dialed`` and whether it had a leading ``+`` (rule 1)."""
    if not isinstance(dialed, str):
        raise InvalidNumber(f"a dialed number must be a string, got {type(dialed).__name__}")
    if len(dialed) > _MAX_DIALED_CHARS:
        raise InvalidNumber(f"dialed string longer than {_MAX_DIALED_CHARS} characters")
    text = dialed.strip()
    if text[:4].lower() == "tel:":
        # RFC 3966: parameters such as ;phone-context or ;ext follow the number; they do not
        # change which number is called here (the dial plan supplies the context).
        text = text[4:].split(";", 1)[0]
    text = text.translate(_SEPARATORS)
    plus = text.startswith("+")
    digits = text[1:] if plus else text
    if not is_digits(digits):
        raise InvalidNumber(f"not a dialable number: {dialed!r}")
    if not digits:
        raise IncompleteNumber(f"nothing dialed: {dialed!r}")
    if len(digits) > _MAX_DIGITS:
        raise InvalidNumber(f"more than {_MAX_DIGITS} digits: {dialed!r}")
    return digits, plus


def _pstn(dialed: str, digits: str, plan: DialPlan) -> Destination:
    """Rules 6 and 7 for ``digits`` with any outside line already removed."""
    if not digits:
        raise IncompleteNumber(f"only the outside line was dialed: {dialed!r}")
    idd_length = _international_prefix_length(digits, plan)
    if idd_length is not None:
        return _international(dialed, digits[idd_length:], plan)
    return _national(dialed, digits, plan)


def _international_prefix_length(digits: str, plan: DialPlan) -> int | None:
    """Length of the international prefix ``digits`` starts with, or None."""
    if plan.international_prefix is not None:
        prefix = plan.international_prefix
        return len(prefix) if prefix and digits.startswith(prefix) else None
    match = _idd_regex(plan.country)
    if match is None:
        return None
    found = match.match(digits)
    return found.end() if found is not None else None


@lru_cache(maxsize=None)
def _idd_regex(country: str) -> re.Pattern[str] | None:
    pattern = PhoneMetadata.metadata_for_region(country).international_prefix
    return re.compile(f"(?:{pattern})") if pattern else None


def _could_be_prefix(digits: str, plan: DialPlan) -> bool:
    """True when ``digits`` is a proper prefix of the plan's international or national prefix."""
    idd = plan.international_prefix
    if idd is None:
        pattern = PhoneMetadata.metadata_for_region(plan.country).international_prefix
        try:
            if pattern and compile_pattern(pattern).completion_lengths(digits):
                return True
        except PatternError:
            pass
    elif len(digits) < len(idd) and idd.startswith(digits):
        return True
    national = _national_prefix(plan)
    return bool(national) and len(digits) < len(national) and national.startswith(digits)


def _national_prefix(plan: DialPlan) -> str:
    if plan.national_prefix is not None:
        return plan.national_prefix
    return PhoneMetadata.metadata_for_region(plan.country).national_prefix or ""


def _international(dialed: str, digits: str, plan: DialPlan) -> Destination:
    """Judges ``digits`` as everything after a ``+`` or an international prefix."""
    if not digits:
        raise IncompleteNumber(f"no country code after the international prefix: {dialed!r}")
    code_length = _country_code_length(digits)
    if code_length is None:
        if len(digits) < 3 and any(str(code).startswith(digits) for code in _country_codes()):
            raise IncompleteNumber(f"incomplete country code: {dialed!r}")
        raise InvalidNumber(f"unknown country code: {dialed!r}")
    country_code = int(digits[:code_length])
    national = digits[code_length:]
    if not national:
        raise IncompleteNumber(f"nothing after the country code: {dialed!r}")
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        _raise_unparsed(dialed, country_code, (national,))
    return _judge(dialed, number, plan)


@lru_cache(maxsize=1)
def _country_codes() -> frozenset[int]:
    return frozenset(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def _country_code_length(digits: str) -> int | None:
    # Country codes are a prefix code of 1 to 3 digits (ITU-T E.164), so the first hit is the one.
    if digits.startswith("0"):
        return None
    for length in range(1, min(3, len(digits)) + 1):
        if int(digits[:length]) in _country_codes():
            return length
    return None


def _national(dialed: str, digits: str, plan: DialPlan) -> Destination:
    """Judges ``digits`` as a national number of the plan's country (rule 7)."""
    try:
        return _national_number(dialed, digits, plan)
    except InvalidNumber:
        # "0" or "01" are not numbers yet, but may still become 0011... or 011...: 484, not 404.
        if _could_be_prefix(digits, plan):
            raise IncompleteNumber(f"only part of a dialing prefix: {dialed!r}") from None
        raise


def _national_number(dialed: str, digits: str, plan: DialPlan) -> Destination:
    country_code = phonenumbers.country_code_for_region(plan.country)
    prefix = _national_prefix(plan)
    without_prefix = digits[len(prefix) :] if prefix and digits.startswith(prefix) else digits
    if not without_prefix:
        raise IncompleteNumber(f"only the national prefix was dialed: {dialed!r}")
    try:
        if plan.national_prefix is None and plan.international_prefix is None:
            # libphonenumber knows the country's prefix, carrier codes and transform rules (BR, JP).
            number = phonenumbers.parse(digits, plan.country)
        else:
            # A plan that overrides a prefix must not have libphonenumber apply the default one.
            number = phonenumbers.parse(f"+{country_code}{without_prefix}", None)
    except phonenumbers.NumberParseException:
        _raise_unparsed(dialed, country_code, (without_prefix, digits))
    if number.country_code != country_code:
        # libphonenumber found an international prefix we did not (the plan overrides it).
        raise InvalidNumber(f"not a national number of {plan.country}: {dialed!r}")
    # libphonenumber keeps a national prefix it cannot strip yet ("0301" in DE), so the digits after
    # the prefix are judged as well.
    return _judge(dialed, number, plan, also=(without_prefix,))


def _judge(
    dialed: str, number: PhoneNumber, plan: DialPlan, *, also: tuple[str, ...] = ()
) -> Destination:
    """A destination for a valid number; else 484 or 404 by the rules in the module docstring.

    ``also`` are further national significant numbers the digits could stand for.
    """
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(e164) > _MAX_E164_LENGTH:
        # libphonenumber accepts some 16-digit German numbers; E.164 (6.1) allows 15 digits.
        raise InvalidNumber(f"more than 15 digits in E.164: {dialed!r}")
    if phonenumbers.is_valid_number(number):
        return Destination(
            dialed=dialed,
            number=e164,
            number_class=classify_parsed(number, plan.country),
            region=region_of(number, plan.country),
            country_code=number.country_code,
        )
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason in _INCOMPLETE_REASONS:
        raise IncompleteNumber(f"too few digits: {dialed!r}")
    candidates = (phonenumbers.national_significant_number(number), *also)
    if reason != ValidationResult.TOO_LONG and any(
        _could_complete(number.country_code, nsn) for nsn in candidates
    ):
        raise IncompleteNumber(f"more digits could make a valid number: {dialed!r}")
    if reason == ValidationResult.TOO_LONG:
        raise InvalidNumber(f"too many digits: {dialed!r}")
    if reason == ValidationResult.INVALID_COUNTRY_CODE:
        raise InvalidNumber(f"unknown country code: {dialed!r}")
    raise InvalidNumber(f"not a valid number: {dialed!r}")


def _raise_unparsed(dialed: str, country_code: int, candidates: Iterable[str]) -> NoReturn:
    """libphonenumber could not parse it (usually too short): 484 if it can still grow, else 404."""
    if any(_could_complete(country_code, nsn) for nsn in candidates):
        raise IncompleteNumber(f"more digits could make a valid number: {dialed!r}")
    raise InvalidNumber(f"not a valid number: {dialed!r}")


def _could_complete(country_code: int, nsn: str) -> bool:
    """True when appending digits to national significant number ``nsn`` can make it valid."""
    for metadata in _metadata_for_code(country_code):
        general = metadata.general_desc
        general_lengths = frozenset(general.possible_length) if general is not None else frozenset()
        for name in _TYPE_DESCS:
            desc = getattr(metadata, name)
            if desc is None or not desc.national_number_pattern:
                continue
            lengths = frozenset(desc.possible_length) or general_lengths
            longest = max(lengths, default=0)
            if longest <= len(nsn):
                continue
            try:
                grown = compile_pattern(desc.national_number_pattern).completion_lengths(nsn, longest)
            except PatternError:
                continue
            if grown & lengths:
                return True
    return False


@lru_cache(maxsize=None)
def _metadata_for_code(country_code: int) -> tuple[PhoneMetadata, ...]:
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ())
    found = []
    for region in regions:
        if region == phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY:
            metadata = PhoneMetadata.metadata_for_nongeo_region(country_code)
        else:
            metadata = PhoneMetadata.metadata_for_region(region)
        if metadata is not None:
            found.append(metadata)
    return tuple(found)
