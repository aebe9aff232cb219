# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, binding=False, embedsignature=True
"""Compiled twin of the rating core (``_rating_py.py`` is its specification): the charging rule on int64,
a cache-friendly longest-prefix index per deck snapshot searched in C, cached version selection, and a
fast path for plain CSV rows.

Overflow: every operand is bounded (see ``_limits``) so that rate x billed seconds <= 3e18 and
60 x amount <= 6e18 stay below 2**63 - 1; all divisions are of non-negative integers, so C division is
floor division and ``(x + d - 1) / d`` is the ceiling.

Why an interval index rather than a digit trie: on a 100,000-prefix deck a flat trie (int32 x 10
children per node, 9.6 MB; or a compact one, 2.6 MB) costs one dependent cache miss per digit past the
first few levels, about 7 nodes per lookup; measured, it did 3.1 M single / 12.5 M batched lookups/s
where this index does about 6 M / 24-30 M, because a lookup reads one cold 128-byte leaf whatever the
prefix length. See the section "deck storage" below.
"""

from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check
from cpython.list cimport PyList_Check, PyList_New
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_Check
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_Fast_ITEMS
from cpython.set cimport PySet_Contains
from cpython.tuple cimport PyTuple_Check
from cpython.unicode cimport PyUnicode_Check
from libc.math cimport floor, isfinite
from libc.stdint cimport INT64_MAX, INT64_MIN, UINT64_MAX, int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from posix.time cimport clock_gettime, timespec

from . import _limits
from ._time import to_epoch
from .deck import PROGRESS_EVERY, duplicate_error, parse_row
from .errors import RatingError
from .money import CURRENCIES
from .rate import Rate

__all__ = ["charge", "billed_seconds", "max_seconds", "parse_rows", "DeckBase"]

cdef extern from "Python.h":
    # Borrowed-reference forms, so the hot loops do no reference counting of their own.
    bint raw_is_str "PyUnicode_Check"(PyObject *o)
    int raw_ready "PyUnicode_READY"(PyObject *o)
    unsigned int raw_kind "PyUnicode_KIND"(PyObject *o)
    Py_ssize_t raw_length "PyUnicode_GET_LENGTH"(PyObject *o)
    unsigned char *raw_latin1 "PyUnicode_1BYTE_DATA"(PyObject *o)
    void raw_incref "Py_INCREF"(PyObject *o)
    void raw_list_set "PyList_SET_ITEM"(object lst, Py_ssize_t i, PyObject *o)
    int PyObject_GenericSetAttr(object o, object name, object value) except -1

cdef enum:
    LATIN1_KIND = 1

cdef extern from *:
    """
    /* Versions are whole seconds, so the coarse real-time clock (a few ms resolution, ~4 ns a read
       instead of ~16 ns) is precise enough to choose one. */
    #include <time.h>
    #ifdef CLOCK_REALTIME_COARSE
    #define CREDITGATE_CLOCK CLOCK_REALTIME_COARSE
    #else
    #define CREDITGATE_CLOCK CLOCK_REALTIME
    #endif
    """
    int CREDITGATE_CLOCK

cdef int64_t MAX_CALL_SECONDS = 100_000_000
cdef int64_t MAX_RATE_MICROS = 10_000_000_000
cdef int64_t MAX_AMOUNT_MICROS = 100_000_000_000_000_000
cdef int64_t MAX_INCREMENT_S = 100_000_000
cdef int64_t UNLIMITED_SECONDS = 100_000_000
cdef Py_ssize_t MAX_PREFIX_DIGITS = 18
cdef Py_ssize_t MAX_DESTINATION_CHARS = 255
cdef Py_ssize_t progress_every = PROGRESS_EVERY

if (
    MAX_CALL_SECONDS != _limits.MAX_CALL_SECONDS
    or MAX_RATE_MICROS != _limits.MAX_RATE_MICROS
    or MAX_AMOUNT_MICROS != _limits.MAX_AMOUNT_MICROS
    or MAX_INCREMENT_S != _limits.MAX_INCREMENT_S
    or UNLIMITED_SECONDS != _limits.UNLIMITED_SECONDS
    or MAX_PREFIX_DIGITS != _limits.MAX_PREFIX_DIGITS
    or MAX_DESTINATION_CHARS != _limits.MAX_DESTINATION_CHARS
):
    raise ImportError("rating_core._rating was built against other bounds than rating_core._limits")

cdef object _CURRENCIES = CURRENCIES
cdef object _object_new = object.__new__
cdef object _Rate = Rate


# --- the charging rule (the one place it lives in the compiled twin) -----------------------------------


cdef inline int64_t _bounded(object value, int64_t low, int64_t high) except? -2:
    """``value`` as int64 when it is an int in low..high (low >= 0), else -1."""
    cdef int overflow = 0
    cdef long long x
    if not PyLong_Check(value):
        return -1
    x = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or x < low or x > high:
        return -1
    return x


cdef int _terms(object rate, int64_t *terms) except -1:
    """rate_per_min, initial, subsequent, fee of ``rate``, checked in RATE_FIELD_BOUNDS order."""
    cdef object value
    value = rate.rate_per_min
    terms[0] = _bounded(value, 0, MAX_RATE_MICROS)
    if terms[0] < 0:
        raise _limits.bad_rate_field("rate_per_min", value)
    value = rate.initial_increment_s
    terms[1] = _bounded(value, 1, MAX_INCREMENT_S)
    if terms[1] < 0:
        raise _limits.bad_rate_field("initial_increment_s", value)
    value = rate.subsequent_increment_s
    terms[2] = _bounded(value, 1, MAX_INCREMENT_S)
    if terms[2] < 0:
        raise _limits.bad_rate_field("subsequent_increment_s", value)
    value = rate.connection_fee
    terms[3] = _bounded(value, 0, MAX_AMOUNT_MICROS)
    if terms[3] < 0:
        raise _limits.bad_rate_field("connection_fee", value)
    return 0


cdef inline int64_t _seconds(object seconds) except -1:
    cdef int64_t s = _bounded(seconds, 0, MAX_CALL_SECONDS)
    if s < 0:
        raise _limits.bad_seconds(seconds)
    return s


cdef inline int64_t _billed(int64_t initial, int64_t subsequent, int64_t seconds) noexcept nogil:
    if seconds <= initial:
        return initial
    return initial + (seconds - initial + subsequent - 1) / subsequent * subsequent


def billed_seconds(rate, seconds):
    """Seconds billed for an answered call of ``seconds`` (see ``_rating_py.billed_seconds``)."""
    cdef int64_t terms[4]
    _terms(rate, terms)
    return _billed(terms[1], terms[2], _seconds(seconds))


def charge(rate, seconds):
    """Micro-units charged for an answered call of ``seconds`` (see ``_rating_py.charge``)."""
    cdef int64_t terms[4]
    _terms(rate, terms)
    cdef int64_t billed = _billed(terms[1], terms[2], _seconds(seconds))
    return terms[3] + (terms[0] * billed + 59) / 60


def max_seconds(rate, available_micros):
    """Longest duration in whole increments whose charge is covered (see ``_rating_py.max_seconds``)."""
    cdef int64_t terms[4]
    _terms(rate, terms)
    cdef int64_t available = _bounded(available_micros, 0, MAX_AMOUNT_MICROS)
    if available < 0:
        raise _limits.bad_amount(available_micros)
    if available < terms[3]:
        return 0
    if terms[0] == 0:
        return UNLIMITED_SECONDS
    cdef int64_t limit = 60 * (available - terms[3])
    cdef int64_t first = terms[0] * terms[1]
    if first > limit:
        return 0
    cdef int64_t billed = terms[1] + (limit - first) / (terms[0] * terms[2]) * terms[2]
    return UNLIMITED_SECONDS if billed >= MAX_CALL_SECONDS else billed


# --- the CSV row loop, with a fast path for plain rows ------------------------------------------------


cdef inline int64_t _plain_money(object text):
    """Micro-units of ``digits[.1-6 digits]`` (no sign, no space, at most 12 integer digits) up to
    MAX_AMOUNT_MICROS, else -1: the row then goes to ``deck.parse_row``."""
    cdef PyObject *o = <PyObject *>text
    cdef Py_ssize_t n, i = 0, int_digits = 0, decimals = 0
    cdef unsigned char *p
    cdef unsigned int d
    cdef int64_t units = 0, fraction = 0
    if not raw_is_str(o) or raw_ready(o) != 0 or raw_kind(o) != LATIN1_KIND:
        return -1
    n = raw_length(o)
    p = raw_latin1(o)
    while i < n:
        d = p[i] - 48
        if d > 9:
            break
        units = units * 10 + d
        int_digits += 1
        if int_digits > 12:
            return -1
        i += 1
    if int_digits == 0:
        return -1
    if i < n:
        if p[i] != 46:  # '.'
            return -1
        i += 1
        while i < n:
            d = p[i] - 48
            if d > 9:
                return -1
            fraction = fraction * 10 + d
            decimals += 1
            if decimals > 6:
                return -1
            i += 1
        if decimals == 0:
            return -1
        while decimals < 6:
            fraction *= 10
            decimals += 1
    units = units * 1_000_000 + fraction
    return units if units <= MAX_AMOUNT_MICROS else -1


cdef inline int64_t _plain_increment(object text):
    """Seconds of a plain ``digits`` text in 1..MAX_INCREMENT_S, else -1."""
    cdef PyObject *o = <PyObject *>text
    cdef Py_ssize_t n, i
    cdef unsigned char *p
    cdef unsigned int d
    cdef int64_t value = 0
    if not raw_is_str(o) or raw_ready(o) != 0 or raw_kind(o) != LATIN1_KIND:
        return -1
    n = raw_length(o)
    if n == 0 or n > 10:
        return -1
    p = raw_latin1(o)
    for i in range(n):
        d = p[i] - 48
        if d > 9:
            return -1
        value = value * 10 + d
    return value if 1 <= value <= MAX_INCREMENT_S else -1


cdef object _plain_row(list fields, object default_effective, dict date_cache):
    """The Rate of a row every field of which is in its plain form, else None (``parse_row`` decides)."""
    cdef object raw_prefix = fields[0]
    cdef PyObject *o = <PyObject *>raw_prefix
    cdef Py_ssize_t n, i, start
    cdef unsigned char *p
    cdef int64_t per_min, initial, subsequent, fee
    if not raw_is_str(o) or raw_ready(o) != 0 or raw_kind(o) != LATIN1_KIND:
        return None
    n = raw_length(o)
    p = raw_latin1(o)
    start = 1 if n > 0 and p[0] == 43 else 0  # '+'
    if n - start < 1 or n - start > MAX_PREFIX_DIGITS:
        return None
    for i in range(start, n):
        if <unsigned int>(p[i] - 48) > 9:
            return None
    prefix = raw_prefix if start == 0 else raw_prefix[1:]
    raw_destination = fields[1]
    if not PyUnicode_Check(raw_destination):
        return None
    destination = raw_destination.strip()
    if len(destination) == 0 or len(destination) > MAX_DESTINATION_CHARS:
        return None
    per_min = _plain_money(fields[2])
    if per_min < 0 or per_min > MAX_RATE_MICROS:
        return None
    currency = fields[3]
    if not PyUnicode_Check(currency) or not PySet_Contains(_CURRENCIES, currency):
        return None
    initial = _plain_increment(fields[4])
    subsequent = _plain_increment(fields[5])
    fee = _plain_money(fields[6])
    if initial < 0 or subsequent < 0 or fee < 0:
        return None
    raw_effective = fields[7]
    if not PyUnicode_Check(raw_effective):
        return None
    if len(raw_effective) == 0:
        effective = default_effective
    else:
        effective = date_cache.get(raw_effective)
        if effective is None:
            return None
    # Every field is valid by the checks above (the same as Rate.__post_init__), so the Rate is filled in
    # directly, the way the frozen dataclass's own __init__ does it.
    rate = _object_new(_Rate)
    PyObject_GenericSetAttr(rate, "prefix", prefix)
    PyObject_GenericSetAttr(rate, "destination", destination)
    PyObject_GenericSetAttr(rate, "rate_per_min", per_min)
    PyObject_GenericSetAttr(rate, "currency", currency)
    PyObject_GenericSetAttr(rate, "initial_increment_s", initial)
    PyObject_GenericSetAttr(rate, "subsequent_increment_s", subsequent)
    PyObject_GenericSetAttr(rate, "connection_fee", fee)
    PyObject_GenericSetAttr(rate, "effective_from", effective)
    return rate


def parse_rows(reader, default_effective, progress):
    """Rows of a csv.reader positioned after the header, validated (see ``_rating_py.parse_rows``)."""
    cdef list rows = []
    cdef dict first_lines = {}
    cdef dict date_cache = {}
    cdef Py_ssize_t previous = reader.line_num, line, count = 0
    for fields in reader:
        line = previous + 1
        previous = reader.line_num
        if not fields:
            continue
        rate = None
        if type(fields) is list and len(<list>fields) == 8:
            rate = _plain_row(<list>fields, default_effective, date_cache)
        if rate is None:
            rate = parse_row(fields, line, default_effective, date_cache)
        key = (rate.prefix, rate.effective_from)
        first = first_lines.setdefault(key, line)
        if first != line:
            raise duplicate_error(rate.prefix, rate.effective_from, line, first)
        rows.append(rate)
        count += 1
        if progress is not None and count % progress_every == 0:
            progress(count)
    return rows


# --- deck storage, version selection and lookup -------------------------------------------------------
#
# Longest-prefix match as an interval search. A number's first KEY_DIGITS digits give a key in base 11
# (digit d counts d + 1; a missing digit counts 0), so the numbers that start with a prefix of L digits
# have exactly the keys in [key(prefix), key(prefix) + 11**(KEY_DIGITS - L) - 1], and prefixes nest as
# intervals. Flattening the nested intervals of a snapshot gives sorted boundaries, each with the row
# of the innermost prefix from there to the next boundary (NULL: none); the answer for a key is the row
# of the last boundary <= key. The boundaries sit in a static B+ tree of 8-key blocks: the leaf level
# stores each block's 8 keys with their 8 Rate pointers in one 128-byte, cache-aligned block, and the
# levels above hold the first key of each block below (about 1/8 of the size each, so they stay in
# the CPU caches). A lookup reads a handful of cached blocks and one leaf, whatever the prefix length;
# ``lookup_many`` searches LANES numbers at once, one level per round, prefetching each lane's next
# block so that their cache misses overlap.

cdef extern from *:
    void prefetch "__builtin_prefetch"(const void *address) nogil

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

cdef enum:
    KEY_DIGITS = 18      # 11**18 < 2**63; MAX_PREFIX_DIGITS must not exceed it
    FANOUT = 8           # keys per block
    MAX_LEVELS = 24      # levels above the leaves (8**24 blocks: never reached)
    LANES = 16           # numbers searched together by lookup_many
    NESTING = 20         # deepest nesting of prefixes: one per digit


cdef uint64_t[KEY_DIGITS + 1] POW11
POW11[0] = 1
for _i in range(1, KEY_DIGITS + 1):
    POW11[_i] = POW11[_i - 1] * 11
if MAX_PREFIX_DIGITS > KEY_DIGITS:
    raise ImportError("MAX_PREFIX_DIGITS exceeds the digits a lookup key holds")


cdef struct Leaf:
    uint64_t keys[FANOUT]            # ascending; padding keys are UINT64_MAX
    PyObject *rates[FANOUT]          # the Rate in force from keys[i] on (borrowed), NULL: none


cdef struct Index:
    Leaf *leaves
    Py_ssize_t nleaves
    Py_ssize_t nlevels               # levels above the leaves; upper[nlevels - 1] is one block
    uint64_t *upper[MAX_LEVELS]      # upper[0][j]: first key of leaf j; upper[k + 1][j]: of block j of upper[k]


cdef struct Interval:
    uint64_t low
    uint64_t high
    Py_ssize_t row


cdef void _index_free(Index *index) noexcept nogil:
    cdef Py_ssize_t level
    free(index.leaves)
    for level in range(index.nlevels):
        free(index.upper[level])
    index.leaves = NULL
    index.nlevels = 0


cdef void *_aligned(size_t size) noexcept nogil:
    cdef void *memory = NULL
    if posix_memalign(&memory, 128, size if size else 128) != 0:
        return NULL
    return memory


cdef int _index_build(Index *index, const uint64_t *keys, PyObject **rates, Py_ssize_t count) except -1:
    """Fill ``index`` (zeroed by the caller) from ``count`` >= 1 ascending boundaries."""
    cdef Py_ssize_t j, t, size, blocks, level
    cdef uint64_t *below
    cdef uint64_t *above
    index.nleaves = (count + FANOUT - 1) // FANOUT
    index.leaves = <Leaf *>_aligned(index.nleaves * sizeof(Leaf))
    if index.leaves == NULL:
        raise MemoryError()
    for j in range(index.nleaves * FANOUT):
        index.leaves[j // FANOUT].keys[j % FANOUT] = keys[j] if j < count else UINT64_MAX
        index.leaves[j // FANOUT].rates[j % FANOUT] = rates[j] if j < count else NULL
    size = index.nleaves  # keys in the level being built
    while size > 1 or index.nlevels == 0:
        if index.nlevels == MAX_LEVELS:
            raise RatingError("rate deck too large for the prefix index")
        blocks = (size + FANOUT - 1) // FANOUT
        above = <uint64_t *>_aligned(blocks * FANOUT * sizeof(uint64_t))
        if above == NULL:
            raise MemoryError()
        level = index.nlevels
        index.upper[level] = above
        index.nlevels += 1
        for j in range(blocks * FANOUT):
            if j >= size:
                above[j] = UINT64_MAX
            elif level == 0:
                above[j] = index.leaves[j].keys[0]
            else:
                below = index.upper[level - 1]
                above[j] = below[j * FANOUT]
        size = blocks
    return 0


cdef inline Py_ssize_t _rank(const uint64_t *block, uint64_t key) noexcept nogil:
    """How many of a block's FANOUT keys are <= key, branch-free."""
    cdef Py_ssize_t t, count = 0
    for t in range(FANOUT):
        count += block[t] <= key
    return count


cdef inline PyObject *_search(const Index *index, uint64_t key) noexcept nogil:
    cdef Py_ssize_t level, j = 0
    cdef const Leaf *leaf
    for level in range(index.nlevels - 1, -1, -1):
        j = j * FANOUT + _rank(index.upper[level] + j * FANOUT, key) - 1
    leaf = index.leaves + j
    return leaf.rates[_rank(leaf.keys, key) - 1]


cdef inline Py_ssize_t _key(PyObject *number, uint64_t *key) noexcept:
    """Put the lookup key of ``number`` in ``key`` and return 0; -2 when ``number`` is not
    ``[+]digits`` (at least one); -3 when the str could not be readied (an exception is set)."""
    cdef Py_ssize_t i, n, used
    cdef unsigned char *p
    cdef unsigned int d
    cdef uint64_t k = 0
    if raw_ready(number) != 0:
        return -3
    if raw_kind(number) != LATIN1_KIND:
        return -2  # holds a character above U+00FF: not a digit
    n = raw_length(number)
    p = raw_latin1(number)
    if n > 0 and p[0] == 43:  # '+'
        p += 1
        n -= 1
    if n == 0:
        return -2
    used = n if n < KEY_DIGITS else KEY_DIGITS
    for i in range(used):
        d = p[i] - 48
        if d > 9:
            return -2
        k += (d + 1) * POW11[KEY_DIGITS - 1 - i]  # independent products: no multiply chain
    for i in range(used, n):  # digits past the key cannot change the answer, but must be digits
        if <unsigned int>(p[i] - 48) > 9:
            return -2
    key[0] = k
    return 0


cdef int _interval(object prefix, Py_ssize_t row, Interval *out) except -1:
    cdef PyObject *o = <PyObject *>prefix
    cdef Py_ssize_t i, n
    cdef unsigned char *p
    cdef unsigned int d
    cdef uint64_t k = 0
    if (
        not raw_is_str(o) or raw_ready(o) != 0 or raw_kind(o) != LATIN1_KIND
        or raw_length(o) == 0 or raw_length(o) > MAX_PREFIX_DIGITS
    ):
        raise RatingError(f"prefix must be 1 to {MAX_PREFIX_DIGITS} digits, got {prefix!r}")
    n = raw_length(o)
    p = raw_latin1(o)
    for i in range(n):
        d = p[i] - 48
        if d > 9:
            raise RatingError(f"prefix must be 1 to {MAX_PREFIX_DIGITS} digits, got {prefix!r}")
        k = k * 11 + d + 1
    out.low = k * POW11[KEY_DIGITS - n]
    out.high = out.low + POW11[KEY_DIGITS - n] - 1
    out.row = row
    return 0


cdef int _by_low_then_row(const void *a, const void *b) noexcept nogil:
    cdef const Interval *x = <const Interval *>a
    cdef const Interval *y = <const Interval *>b
    if x.low != y.low:
        return -1 if x.low < y.low else 1
    return -1 if x.row < y.row else (1 if x.row > y.row else 0)


cdef extern from "stdlib.h" nogil:
    void qsort(void *base, size_t count, size_t size, int (*compare)(const void *, const void *) noexcept nogil)


cdef inline void _emit(uint64_t *keys, PyObject **rates, Py_ssize_t *count, uint64_t key, PyObject *rate) noexcept nogil:
    if count[0] and keys[count[0] - 1] == key:
        rates[count[0] - 1] = rate
    elif not (count[0] and rates[count[0] - 1] == rate):
        keys[count[0]] = key
        rates[count[0]] = rate
        count[0] += 1


cdef Py_ssize_t _flatten(
    const Interval *intervals, Py_ssize_t n, const int64_t *dates, int64_t until, PyObject **refs,
    uint64_t *keys, PyObject **rates
) noexcept nogil:
    """Boundaries of the snapshot at ``until``: of each run of intervals with the same prefix (sorted by
    row, so by effective date), the last one dated <= until. Returns how many were written."""
    cdef Interval stack[NESTING]
    cdef Py_ssize_t depth = 0, count = 0, i = 0, pick
    _emit(keys, rates, &count, 0, NULL)
    while i < n:
        pick = -1
        while True:
            if dates[intervals[i].row] <= until:
                pick = i
            if i + 1 < n and intervals[i + 1].low == intervals[i].low:
                i += 1
            else:
                break
        i += 1
        if pick < 0:
            continue
        while depth and stack[depth - 1].high < intervals[pick].low:
            depth -= 1
            _emit(keys, rates, &count, stack[depth].high + 1, refs[stack[depth - 1].row] if depth else NULL)
        _emit(keys, rates, &count, intervals[pick].low, refs[intervals[pick].row])
        stack[depth] = intervals[pick]
        depth += 1
    while depth:
        depth -= 1
        _emit(keys, rates, &count, stack[depth].high + 1, refs[stack[depth - 1].row] if depth else NULL)
    return count


cdef class DeckBase:
    """Rows of every version, one search index per snapshot, and the version in force cached with the
    epoch range over which it stays in force (so ``lookup(number)`` reads the clock and compares)."""

    cdef tuple _rows                # every Rate, sorted by (effective_from, prefix); owns the references
    cdef Py_ssize_t _nversions
    cdef int64_t *_epochs           # effective date of each version, ascending
    cdef Index *_indexes            # one per version
    cdef Py_ssize_t *_sizes         # rows in each snapshot
    cdef int64_t _cache_from        # the cached version is in force for _cache_from <= t < _cache_until
    cdef int64_t _cache_until
    cdef Py_ssize_t _cache_index

    def __cinit__(self, *args, **kwargs):
        self._rows = ()
        self._nversions = 0
        self._epochs = NULL
        self._indexes = NULL
        self._sizes = NULL
        self._cache_from = INT64_MAX  # empty range: the first selection computes and caches
        self._cache_until = INT64_MIN
        self._cache_index = -1

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        cdef Py_ssize_t v
        if self._indexes != NULL:
            for v in range(self._nversions):
                _index_free(&self._indexes[v])
            free(self._indexes)
        free(self._epochs)
        free(self._sizes)
        self._indexes = NULL
        self._epochs = NULL
        self._sizes = NULL
        self._nversions = 0

    def _install(self, rows):
        """Take ``rows``, sorted by (effective_from, prefix) and unique on that pair; build every snapshot.

        The deck keeps them as a tuple: the index points into it, so nothing may take a row away."""
        rows = tuple(rows)
        cdef Py_ssize_t n = len(rows), i, v, nversions = 0, count, size
        cdef int64_t last = 0
        if n >= 0x7FFFFFFF:
            raise RatingError("rate deck too large")
        cdef Py_ssize_t room = n if n else 1
        cdef PyObject **refs = <PyObject **>malloc(room * sizeof(PyObject *))
        cdef int64_t *row_dates = <int64_t *>malloc(room * sizeof(int64_t))
        cdef Interval *intervals = <Interval *>malloc(room * sizeof(Interval))
        cdef uint64_t *keys = <uint64_t *>malloc((2 * room + 2) * sizeof(uint64_t))
        cdef PyObject **rates = <PyObject **>malloc((2 * room + 2) * sizeof(PyObject *))
        cdef int64_t *dates = <int64_t *>malloc(room * sizeof(int64_t))
        cdef Py_ssize_t *sizes = <Py_ssize_t *>malloc(room * sizeof(Py_ssize_t))
        cdef Index *indexes = <Index *>calloc(room, sizeof(Index))
        try:
            if (refs == NULL or row_dates == NULL or intervals == NULL or keys == NULL or rates == NULL
                    or dates == NULL or sizes == NULL or indexes == NULL):
                raise MemoryError()
            for i in range(n):
                row = rows[i]
                refs[i] = <PyObject *>row
                row_dates[i] = row.effective_from
                _interval(row.prefix, i, &intervals[i])
                if i == 0 or row_dates[i] != last:
                    dates[nversions] = row_dates[i]
                    nversions += 1
                    last = row_dates[i]
            qsort(intervals, n, sizeof(Interval), _by_low_then_row)
            for v in range(nversions):
                size = 0
                for i in range(n):  # distinct prefixes dated <= this version
                    if row_dates[intervals[i].row] <= dates[v] and (
                        i == 0 or intervals[i - 1].low != intervals[i].low
                        or row_dates[intervals[i - 1].row] > dates[v]
                    ):
                        size += 1
                sizes[v] = size
                count = _flatten(intervals, n, row_dates, dates[v], refs, keys, rates)
                _index_build(&indexes[v], keys, rates, count)
        except BaseException:
            if indexes != NULL:
                for v in range(nversions):
                    _index_free(&indexes[v])
            free(indexes); free(dates); free(sizes)
            raise
        finally:
            free(refs); free(row_dates); free(intervals); free(keys); free(rates)
        self._free()
        self._rows = rows
        self._epochs = dates
        self._sizes = sizes
        self._indexes = indexes
        self._nversions = nversions
        self._cache_from = INT64_MAX
        self._cache_until = INT64_MIN
        self._cache_index = -1

    def _all_rows(self):
        return self._rows

    def versions(self):
        """Effective dates of the versions (UTC epochs), ascending."""
        return [self._epochs[v] for v in range(self._nversions)]

    def _snapshot_len(self, Py_ssize_t index):
        if not 0 <= index < self._nversions:
            raise IndexError(index)
        return self._sizes[index]

    cdef inline Py_ssize_t _select(self, int64_t t) noexcept:
        cdef Py_ssize_t low = 0, high = self._nversions, middle
        if self._cache_from <= t < self._cache_until:
            return self._cache_index
        while low < high:  # the first version dated after t
            middle = (low + high) >> 1
            if self._epochs[middle] <= t:
                low = middle + 1
            else:
                high = middle
        self._cache_index = low - 1
        self._cache_from = self._epochs[low - 1] if low > 0 else INT64_MIN
        self._cache_until = self._epochs[low] if low < self._nversions else INT64_MAX
        return low - 1

    cdef inline Py_ssize_t _resolve(self, object at) except -2:
        """Index of the version in force at ``at`` (None: now, from the real-time clock); -1: none."""
        cdef timespec now
        cdef int overflow = 0
        cdef int64_t t
        cdef double f
        if at is None:
            clock_gettime(CREDITGATE_CLOCK, &now)
            t = now.tv_sec  # tv_nsec >= 0, so tv_sec is the floor
        elif PyLong_Check(at):
            t = PyLong_AsLongLongAndOverflow(at, &overflow)
            if overflow:
                t = INT64_MAX if overflow > 0 else INT64_MIN
        elif PyFloat_Check(at) and isfinite(PyFloat_AS_DOUBLE(at)):
            f = floor(PyFloat_AS_DOUBLE(at))
            if f >= 9223372036854775808.0:
                t = INT64_MAX
            elif f < -9223372036854775808.0:
                t = INT64_MIN
            else:
                t = <int64_t>f
        else:
            epoch = to_epoch(at)
            t = PyLong_AsLongLongAndOverflow(epoch, &overflow)
            if overflow:
                t = INT64_MAX if overflow > 0 else INT64_MIN
        return self._select(t)

    def _version_index(self, at):
        return self._resolve(at)

    def lookup(self, number, at=None):
        """The Rate of the longest prefix of ``number`` (E.164 ``+4420...`` or bare digits) in the
        snapshot in force at ``at`` (None: now); None when nothing matches or ``number`` is not digits."""
        cdef Py_ssize_t index = self._resolve(at), status
        cdef uint64_t key
        cdef PyObject *found
        if not PyUnicode_Check(number):
            raise _limits.not_a_number(number)
        if index < 0:
            return None
        status = _key(<PyObject *>number, &key)
        if status == 0:
            found = _search(&self._indexes[index], key)
            if found != NULL:
                return <object>found
        elif status == -3:
            raise MemoryError()
        return None

    def lookup_many(self, numbers, at=None):
        """``[lookup(n, at) for n in numbers]`` with the version chosen once and the list built in C."""
        cdef Py_ssize_t index, base, n, j, t, count, level, status
        cdef PyObject **items
        cdef PyObject *found
        cdef PyObject *none = <PyObject *>None
        cdef const Index *search = NULL
        cdef const Leaf *leaf
        cdef uint64_t lane_key[LANES]
        cdef Py_ssize_t lane_block[LANES]
        cdef bint lane_valid[LANES]
        if PyUnicode_Check(numbers):
            raise RatingError("lookup_many takes a list of numbers, not one str")
        if not (PyList_Check(numbers) or PyTuple_Check(numbers)):
            numbers = list(numbers)
        index = self._resolve(at)
        if index >= 0:
            search = &self._indexes[index]
        n = len(numbers)
        result = PyList_New(n)
        items = PySequence_Fast_ITEMS(numbers)
        # Nothing below calls back into Python (but to raise), so ``numbers`` cannot change under it.
        for base in range(0, n, LANES):
            count = LANES if n - base > LANES else n - base
            for j in range(count):  # let the next group's str objects arrive meanwhile
                if base + LANES + j < n:
                    prefetch(items[base + LANES + j])
            for j in range(count):
                if not raw_is_str(items[base + j]):
                    raise _limits.not_a_number(<object>items[base + j])
                lane_valid[j] = False
                lane_block[j] = 0
                if search != NULL:
                    status = _key(items[base + j], &lane_key[j])
                    if status == -3:
                        raise MemoryError()
                    lane_valid[j] = status == 0
            if search != NULL:
                for level in range(search.nlevels - 1, -1, -1):  # one level for every lane per round
                    for j in range(count):
                        t = lane_block[j] * FANOUT + _rank(search.upper[level] + lane_block[j] * FANOUT, lane_key[j]) - 1
                        lane_block[j] = t
                        if level:
                            prefetch(search.upper[level - 1] + t * FANOUT)
                        else:
                            prefetch(&search.leaves[t].keys[0])
                            prefetch(&search.leaves[t].rates[0])
            for j in range(count):
                found = none
                if lane_valid[j]:
                    leaf = search.leaves + lane_block[j]
                    found = leaf.rates[_rank(leaf.keys, lane_key[j]) - 1]
                    if found == NULL:
                        found = none
                raw_incref(found)
                raw_list_set(result, base + j, found)
        return result

    def charge(self, rate, seconds):
        """Same as the module's ``charge``."""
        return charge(rate, seconds)

    def max_seconds(self, rate, available_micros):
        """Same as the module's ``max_seconds``."""
        return max_seconds(rate, available_micros)
