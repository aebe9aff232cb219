"""Rate decks: CSV import and export, row validation and effective-dated versions (shared by both twins).

Theory of operation. A deck is a set of rows (``Rate``), each keyed by (prefix, effective_from). Every
distinct effective date is a *version*; the *snapshot* of the version at date D holds, per prefix, the
row with the greatest effective_from <= D. A lookup at time T uses the snapshot of the greatest version
date <= T (none before the first version). Versions are cumulative: a later version overrides and adds
prefixes, it never withdraws one, which is exactly what a CSV can express, so ``to_csv_text`` and
``from_csv_text`` round-trip any deck.

Each twin's core (``_rating_py`` or the compiled ``_rating``) provides ``DeckBase`` (storage of the
rows, the prefix table of every snapshot, version selection, ``lookup``/``lookup_many``) and
``parse_rows`` (the CSV row loop). ``RateDeckMixin`` here adds everything else on top of either base.
``parse_row`` is the one definition of a valid CSV row: the compiled core takes a fast path for rows it
can prove plain and hands every other row to ``parse_row``, so both twins accept and refuse the same
rows with the same messages.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import IO, Any, ClassVar

from ._limits import (
    MAX_AMOUNT_MICROS,
    MAX_DESTINATION_CHARS,
    MAX_INCREMENT_S,
    MAX_PREFIX_DIGITS,
    MAX_RATE_MICROS,
)
from ._time import check_effective, format_iso, parse_iso, to_epoch
from .errors import DeckError, MoneyError, RatingError
from .money import check_currency, format_money, parse_money
from .rate import Rate

__all__ = [
    "HEADER",
    "PROGRESS_EVERY",
    "RateDeckMixin",
    "parse_row",
    "duplicate_error",
    "effective_epoch",
]

HEADER = (
    "prefix",
    "destination",
    "rate_per_min",
    "currency",
    "initial_increment_s",
    "subsequent_increment_s",
    "connection_fee",
    "effective_from",
)
PROGRESS_EVERY = 10_000
"""``progress(rows_done)`` is called after every this many data rows, and once at the end."""

_ROW_ORDER = attrgetter("effective_from", "prefix")


# --- one CSV row --------------------------------------------------------------------------------------


def parse_row(fields: list[str], line: int, default_effective: int, date_cache: dict[str, int]) -> Rate:
    """Validate one CSV record (``line`` is its 1-based line number) and return its Rate, or DeckError.

    ``default_effective`` is used when effective_from is empty; ``date_cache`` maps effective_from texts
    already parsed to their epoch (filled here).
    """
    if len(fields) != len(HEADER):
        raise DeckError(f"expected {len(HEADER)} columns, found {len(fields)}", line)
    raw_prefix, raw_destination, raw_rate, raw_currency, raw_initial, raw_subsequent, raw_fee, raw_effective = fields
    prefix = raw_prefix.strip()
    if prefix.startswith("+"):
        prefix = prefix[1:]
    if not prefix:
        raise DeckError("missing prefix", line)
    if not (prefix.isascii() and prefix.isdigit()):
        raise DeckError(f"prefix {raw_prefix!r} must be digits (a leading '+' is allowed)", line)
    if len(prefix) > MAX_PREFIX_DIGITS:
        raise DeckError(f"prefix {raw_prefix!r} is longer than {MAX_PREFIX_DIGITS} digits", line)
    destination = raw_destination.strip()
    if not destination:
        raise DeckError("missing destination", line)
    if len(destination) > MAX_DESTINATION_CHARS:
        raise DeckError(f"destination is longer than {MAX_DESTINATION_CHARS} characters", line)
    rate_per_min = _money(raw_rate, "rate_per_min", MAX_RATE_MICROS, line)
    currency = raw_currency.strip()
    if not currency:
        raise DeckError("missing currency", line)
    try:
        check_currency(currency)
    except MoneyError as exc:
        raise DeckError(str(exc), line) from None
    initial = _increment(raw_initial, "initial_increment_s", line)
    subsequent = _increment(raw_subsequent, "subsequent_increment_s", line)
    fee = _money(raw_fee, "connection_fee", MAX_AMOUNT_MICROS, line)
    effective = _effective(raw_effective, default_effective, date_cache, line)
    return Rate(
        prefix=prefix,
        destination=destination,
        rate_per_min=rate_per_min,
        currency=currency,
        initial_increment_s=initial,
        subsequent_increment_s=subsequent,
        connection_fee=fee,
        effective_from=effective,
    )


def _money(raw: str, name: str, high: int, line: int) -> int:
    text = raw.strip()
    if not text:
        raise DeckError(f"missing {name}", line)
    try:
        value = parse_money(text)
    except MoneyError as exc:
        raise DeckError(f"{name}: {exc}", line) from None
    if value > high:
        raise DeckError(f"{name} {text} is above the maximum {format_money(high)}", line)
    return value


def _increment(raw: str, name: str, line: int) -> int:
    text = raw.strip()
    if not text:
        raise DeckError(f"missing {name}", line)
    if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
        raise DeckError(f"{name} must be a positive number of seconds, got {text}", line)
    if not (text.isascii() and text.isdigit()):
        raise DeckError(f"{name} must be a whole number of seconds, got {text!r}", line)
    digits = text.lstrip("0")
    if not digits:
        raise DeckError(f"{name} must be at least 1 second, got {text}", line)
    if len(digits) > len(str(MAX_INCREMENT_S)) or int(digits) > MAX_INCREMENT_S:
        raise DeckError(f"{name} {text} is above the maximum {MAX_INCREMENT_S}", line)
    return int(digits)


def _effective(raw: str, default: int, cache: dict[str, int], line: int) -> int:
    if not raw or raw.isspace():
        return default
    epoch = cache.get(raw)
    if epoch is None:
        try:
            epoch = check_effective(parse_iso(raw))
        except RatingError as exc:
            raise DeckError(f"effective_from: {exc}", line) from None
        cache[raw] = epoch
    return epoch


def duplicate_error(prefix: str, effective: int, line: int, first_line: int) -> DeckError:
    when = format_iso(effective) if effective else "always (no effective date)"
    return DeckError(f"duplicate prefix {prefix} for effective date {when} (first on line {first_line})", line)


def effective_epoch(value: object) -> int:
    """An ``effective`` argument (epoch, datetime, date or ISO text) as a checked epoch, else DeckError."""
    try:
        return check_effective(to_epoch(value))
    except RatingError as exc:
        raise DeckError(f"effective: {exc}") from None


# --- the deck -----------------------------------------------------------------------------------------


class RateDeckMixin:
    """Everything a RateDeck does beyond its core's storage and lookup; combined with each twin's
    ``DeckBase`` as ``class RateDeck(RateDeckMixin, core.DeckBase)``."""

    __slots__ = ()
    _core: ClassVar[Any]

    # Provided by the core's DeckBase:
    _install: Callable[[list[Rate]], None]
    _all_rows: Callable[[], tuple[Rate, ...]]
    _version_index: Callable[[object], int]
    _snapshot_len: Callable[[int], int]
    versions: Callable[[], list[int]]

    def __init__(self, rows: Iterable[Rate] = ()) -> None:
        """A deck of the given rows (each version by its rows' effective_from); empty by default."""
        self._install(_checked_rows(rows, "deck"))

    # Import and export.

    @classmethod
    def from_csv(
        cls,
        source: str | os.PathLike[str] | IO[str],
        *,
        effective: object = None,
        progress: Callable[[int], object] | None = None,
    ) -> Any:
        """Import a CSV rate deck from a path or an open text stream (see the module docstring).

        Rows with an empty effective_from take ``effective`` (epoch, datetime, date or ISO text; None:
        0, always). ``progress(rows_done)`` is called every PROGRESS_EVERY rows and at the end. Any
        invalid row is a DeckError carrying its 1-based line number.
        """
        default = 0 if effective is None else effective_epoch(effective)
        if isinstance(source, (str, os.PathLike)):
            try:
                stream = open(source, encoding="utf-8-sig", newline="")  # noqa: SIM115
            except OSError as exc:
                raise DeckError(f"cannot read {os.fspath(source)}: {exc.strerror or exc}") from exc
            with stream:
                return cls._read_csv(stream, default, progress)
        if isinstance(source, (bytes, bytearray)) or not hasattr(source, "__iter__"):
            raise DeckError(f"from_csv takes a path or a text stream, got {type(source).__name__}")
        return cls._read_csv(source, default, progress)

    @classmethod
    def from_csv_text(cls, text: str, *, effective: object = None) -> Any:
        """Import a CSV rate deck held in a str (as stored by ``to_csv_text``)."""
        if not isinstance(text, str):
            raise DeckError(f"from_csv_text takes a str, got {type(text).__name__}")
        return cls.from_csv(io.StringIO(text, newline=""), effective=effective)

    @classmethod
    def _read_csv(cls, stream: Iterable[str], default: int, progress: Callable[[int], object] | None) -> Any:
        reader = csv.reader(stream, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                raise DeckError(f"empty file: expected the header {','.join(HEADER)}", 1)
            if header and header[0].startswith("\ufeff"):
                header[0] = header[0][1:]
            if tuple(header) != HEADER:
                raise DeckError(f"wrong header: expected {','.join(HEADER)}", 1)
            rows = cls._core.parse_rows(reader, default, progress)
        except csv.Error as exc:
            raise DeckError(f"malformed CSV: {exc}", reader.line_num) from None
        except UnicodeDecodeError as exc:
            raise DeckError(f"not UTF-8 text: {exc.reason}", reader.line_num + 1) from None
        if not rows:
            raise DeckError("the deck has no rate rows", reader.line_num)
        if progress is not None and len(rows) % PROGRESS_EVERY:
            progress(len(rows))
        rows.sort(key=_ROW_ORDER)
        deck = cls.__new__(cls)
        deck._install(rows)
        return deck

    def to_csv_text(self) -> str:
        """The whole deck (every version) as CSV text that ``from_csv_text`` reads back identically."""
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(
            (
                row.prefix,
                row.destination,
                format_money(row.rate_per_min),
                row.currency,
                row.initial_increment_s,
                row.subsequent_increment_s,
                format_money(row.connection_fee),
                format_iso(row.effective_from) if row.effective_from else "",
            )
            for row in self._all_rows()
        )
        return buffer.getvalue()

    # Versions.

    def add_version(self, other: Any, effective: object) -> None:
        """Schedule ``other`` (a deck: its newest snapshot; or an iterable of Rate) as the version at
        ``effective``, re-dating its rows to it. A version already at that date is replaced (an empty
        ``other`` withdraws it); every other version is kept."""
        epoch = effective_epoch(effective)
        if isinstance(other, RateDeckMixin):
            dates = other.versions()
            new_rows = other.rates(at=dates[-1]) if dates else []
        else:
            new_rows = _checked_rows(other, "version")
        seen: set[str] = set()
        for row in new_rows:
            if row.prefix in seen:
                raise DeckError(f"duplicate prefix {row.prefix} in the new version")
            seen.add(row.prefix)
        kept = [row for row in self._all_rows() if row.effective_from != epoch]
        redated = [dataclasses.replace(row, effective_from=epoch) for row in new_rows]
        self._install(sorted(kept + redated, key=_ROW_ORDER))

    def merge(self, other: Any) -> None:
        """Take every version of ``other`` (a deck of either twin): a version of this deck with the same
        effective date is replaced by the other's, the others are kept."""
        if not isinstance(other, RateDeckMixin):
            raise DeckError(f"merge takes a RateDeck, got {type(other).__name__}")
        dates = set(other.versions())
        kept = [row for row in self._all_rows() if row.effective_from not in dates]
        self._install(sorted(kept + list(other._all_rows()), key=_ROW_ORDER))

    def rates(self, at: object = None) -> list[Rate]:
        """The rows of the snapshot in force at ``at`` (None: now), ordered by prefix."""
        index = self._version_index(at)
        if index < 0:
            return []
        until = self.versions()[index]
        latest: dict[str, Rate] = {}
        for row in self._all_rows():
            if row.effective_from > until:
                break
            latest[row.prefix] = row
        return [latest[prefix] for prefix in sorted(latest)]

    def currencies(self) -> list[str]:
        """The currencies of every row of every version, sorted."""
        return sorted({row.currency for row in self._all_rows()})

    def __len__(self) -> int:
        """Rows in the snapshot in force now."""
        index = self._version_index(None)
        return self._snapshot_len(index) if index >= 0 else 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._all_rows())} rows, {len(self.versions())} versions>"


def _checked_rows(rows: Iterable[Rate], what: str) -> list[Rate]:
    if isinstance(rows, (str, bytes)):
        raise DeckError(f"a {what} takes an iterable of Rate, got {type(rows).__name__}")
    checked = list(rows)
    seen: set[tuple[str, int]] = set()
    for row in checked:
        if not isinstance(row, Rate):
            raise DeckError(f"a {what} takes Rate rows, got {type(row).__name__}")
        key = (row.prefix, row.effective_from)
        if key in seen:
            raise DeckError(f"duplicate prefix {row.prefix} for effective_from {row.effective_from}")
        seen.add(key)
    checked.sort(key=_ROW_ORDER)
    return checked
