"""Pure-Python twin of the compiled rating core (``_rating.pyx``): the charging rule, per-snapshot prefix
tables with version selection, and the CSV row loop.

Both twins implement the same API with the same checks in the same order; ``tests/rating_core`` proves
them equal with hypothesis. Read this file as the specification of the compiled one.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence

from . import _limits
from ._limits import MAX_AMOUNT_MICROS, MAX_CALL_SECONDS, RATE_FIELD_BOUNDS, UNLIMITED_SECONDS
from ._time import to_epoch
from .deck import PROGRESS_EVERY, duplicate_error, parse_row
from .errors import RatingError
from .rate import Rate

__all__ = ["charge", "billed_seconds", "max_seconds", "parse_rows", "DeckBase"]

_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)


# --- the charging rule --------------------------------------------------------------------------------
#
# Increments (SPEC 4): the first ``initial_increment_s`` seconds are billed whole as soon as the call is
# answered (a 0-second answered call too), then whole ``subsequent_increment_s`` steps, the last one
# rounded up. The price of the billed seconds is rounded up to the micro-unit, once per call, and the
# connection fee is added once. This is the one place the rule lives in the pure twin.


def _terms(rate: object) -> tuple[int, int, int, int]:
    values = []
    for name, (low, high) in RATE_FIELD_BOUNDS.items():
        value = getattr(rate, name)
        if not isinstance(value, int) or not low <= value <= high:
            raise _limits.bad_rate_field(name, value)
        values.append(int(value))
    return values[0], values[1], values[2], values[3]


def _seconds(seconds: object) -> int:
    if not isinstance(seconds, int) or not 0 <= seconds <= MAX_CALL_SECONDS:
        raise _limits.bad_seconds(seconds)
    return int(seconds)


def _billed(initial: int, subsequent: int, seconds: int) -> int:
    if seconds <= initial:
        return initial
    steps = (seconds - initial + subsequent - 1) // subsequent
    return initial + steps * subsequent


def billed_seconds(rate: Rate, seconds: int) -> int:
    """Seconds billed for an answered call of ``seconds``: the initial increment whole, then whole
    subsequent increments rounded up."""
    _, initial, subsequent, _ = _terms(rate)
    return _billed(initial, subsequent, _seconds(seconds))


def charge(rate: Rate, seconds: int) -> int:
    """Micro-units charged for an answered call of ``seconds``: connection fee +
    ceil(rate_per_min x billed_seconds / 60)."""
    per_min, initial, subsequent, fee = _terms(rate)
    billed = _billed(initial, subsequent, _seconds(seconds))
    return fee + (per_min * billed + 59) // 60


def max_seconds(rate: Rate, available_micros: int) -> int:
    """The longest duration, in whole increments, whose charge is <= ``available_micros``: 0 when even
    the fee and the first increment are not covered, UNLIMITED_SECONDS for a free rate whose fee is
    covered or when the amount covers a call of MAX_CALL_SECONDS or more."""
    per_min, initial, subsequent, fee = _terms(rate)
    if not isinstance(available_micros, int) or not 0 <= available_micros <= MAX_AMOUNT_MICROS:
        raise _limits.bad_amount(available_micros)
    available = int(available_micros)
    if available < fee:
        return 0
    if per_min == 0:
        return UNLIMITED_SECONDS
    # ceil(per_min x B / 60) <= budget  <=>  per_min x B <= 60 x budget, for integers.
    limit = 60 * (available - fee)
    first = per_min * initial
    if first > limit:
        return 0
    billed = initial + (limit - first) // (per_min * subsequent) * subsequent
    return UNLIMITED_SECONDS if billed >= MAX_CALL_SECONDS else billed


# --- the CSV row loop ---------------------------------------------------------------------------------


def parse_rows(reader: Iterable[list[str]], default_effective: int, progress: Callable[[int], object] | None) -> list[Rate]:
    """Rows of a csv.reader positioned after the header, validated; blank lines are skipped."""
    rows: list[Rate] = []
    first_lines: dict[tuple[str, int], int] = {}
    date_cache: dict[str, int] = {}
    previous = reader.line_num  # type: ignore[attr-defined]
    for fields in reader:
        line = previous + 1
        previous = reader.line_num  # type: ignore[attr-defined]
        if not fields:
            continue
        rate = parse_row(fields, line, default_effective, date_cache)
        first = first_lines.setdefault((rate.prefix, rate.effective_from), line)
        if first != line:
            raise duplicate_error(rate.prefix, rate.effective_from, line, first)
        rows.append(rate)
        if progress is not None and len(rows) % PROGRESS_EVERY == 0:
            progress(len(rows))
    return rows


# --- deck storage, version selection and lookup -------------------------------------------------------


class _Table:
    """One snapshot: prefix -> Rate, probed by decreasing prefix length."""

    __slots__ = ("by_prefix", "lengths")

    def __init__(self, by_prefix: dict[str, Rate]) -> None:
        self.by_prefix = by_prefix
        self.lengths = tuple(sorted({len(prefix) for prefix in by_prefix}, reverse=True))

    def lookup(self, number: object) -> Rate | None:
        if type(number) is not str and not isinstance(number, str):
            raise _limits.not_a_number(number)
        digits = number[1:] if number[:1] == "+" else number
        if not (digits.isdigit() and digits.isascii()):
            return None
        size = len(digits)
        get = self.by_prefix.get
        for length in self.lengths:
            if length <= size:
                found = get(digits[:length])
                if found is not None:
                    return found
        return None


def _clamp(epoch: int) -> int:
    return _INT64_MAX if epoch > _INT64_MAX else _INT64_MIN if epoch < _INT64_MIN else epoch


class DeckBase:
    """Rows of every version, one prefix table per snapshot, and the version in force cached."""

    __slots__ = ("_rows", "_epochs", "_tables", "_sizes", "_cache_from", "_cache_until", "_cache_index")

    def __new__(cls, *args: object, **kwargs: object) -> DeckBase:
        self = super().__new__(cls)
        self._reset(())
        return self

    def _reset(self, rows: tuple[Rate, ...]) -> None:
        self._rows: tuple[Rate, ...] = rows
        self._epochs: list[int] = []
        self._tables: list[_Table] = []
        self._sizes: list[int] = []
        # An empty range: the first selection computes the version and caches its range.
        self._cache_from = _INT64_MAX
        self._cache_until = _INT64_MIN
        self._cache_index = -1

    def _install(self, rows: Sequence[Rate]) -> None:
        """Take ``rows``, sorted by (effective_from, prefix) and unique on that pair; build every snapshot."""
        rows = tuple(rows)
        epochs: list[int] = []
        tables: list[_Table] = []
        sizes: list[int] = []
        current: dict[str, Rate] = {}
        start = 0
        while start < len(rows):
            epoch = rows[start].effective_from
            end = start
            while end < len(rows) and rows[end].effective_from == epoch:
                current[rows[end].prefix] = rows[end]
                end += 1
            epochs.append(epoch)
            tables.append(_Table(dict(current)))
            sizes.append(len(current))
            start = end
        self._reset(rows)
        self._epochs, self._tables, self._sizes = epochs, tables, sizes

    def _all_rows(self) -> tuple[Rate, ...]:
        return self._rows

    def versions(self) -> list[int]:
        """Effective dates of the versions (UTC epochs), ascending."""
        return list(self._epochs)

    def _snapshot_len(self, index: int) -> int:
        return self._sizes[index]

    def _select(self, epoch: int) -> int:
        if self._cache_from <= epoch < self._cache_until:
            return self._cache_index
        epochs = self._epochs
        index = bisect_right(epochs, epoch) - 1
        self._cache_index = index
        self._cache_from = epochs[index] if index >= 0 else _INT64_MIN
        self._cache_until = epochs[index + 1] if index + 1 < len(epochs) else _INT64_MAX
        return index

    def _version_index(self, at: object) -> int:
        if at is None:
            return self._select(math.floor(time.time()))
        if isinstance(at, float) and not math.isinf(at) and at == at:
            return self._select(_clamp(math.floor(at)))
        return self._select(_clamp(to_epoch(at)))

    def lookup(self, number: str, at: object = None) -> Rate | None:
        """The Rate of the longest prefix of ``number`` (E.164 ``+4420...`` or bare digits) in the
        snapshot in force at ``at`` (None: now); None when nothing matches or ``number`` is not digits."""
        index = self._version_index(at)
        if index < 0:
            if not isinstance(number, str):
                raise _limits.not_a_number(number)
            return None
        return self._tables[index].lookup(number)

    def lookup_many(self, numbers: Sequence[str], at: object = None) -> list[Rate | None]:
        """``[lookup(n, at) for n in numbers]`` with the version chosen once."""
        if isinstance(numbers, str):
            raise RatingError("lookup_many takes a list of numbers, not one str")
        if not isinstance(numbers, (list, tuple)):
            numbers = list(numbers)
        index = self._version_index(at)
        if index < 0:
            for number in numbers:
                if not isinstance(number, str):
                    raise _limits.not_a_number(number)
            return [None] * len(numbers)
        lookup = self._tables[index].lookup
        return [lookup(number) for number in numbers]

    def charge(self, rate: Rate, seconds: int) -> int:
        """Same as the module's ``charge``."""
        return charge(rate, seconds)

    def max_seconds(self, rate: Rate, available_micros: int) -> int:
        """Same as the module's ``max_seconds``."""
        return max_seconds(rate, available_micros)
