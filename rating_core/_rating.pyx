# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, binding=False, embedsignature=True
"""Compiled twin of the rating core (``_rating_py.py`` is its specification): the charging rule on int64,
a cache-friendly longest-prefix index per deck snapshot searched in C, cached version selection, and a
fast path for plain CSV rows.

Overflow: every operand is bounded (see ``_limits``) so that rate x billed seconds <= 3e18 and
60 x amount <= 6e18 stay below 2**63 - 1; all divisions are of non-negative integers, so C division is
floor division and ``(x + d - 1) / d`` is the ceiling.

Why an interval index rather than a digit trie: on a 100,000-prefix deck a flat trie (int32 x 10
children per node, 9.6 MB; or a compact one, 2.6 MB) costs one dependent cache miss per digit past the
first few levels, about 7 nodes per lookup, where this index reads one cold 64-byte leaf whatever the
prefix length, found through a table that stays in the CPU caches. See "deck storage" below. What is
left of a uniform lookup is mostly that leaf and the returned Rate's reference count, each a cache
miss on a deck this size; ``lookup_many`` overlaps them across numbers.
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
from libc.stdint cimport INT64_MAX, INT64_MIN, UINT64_MAX, int64_t, uint32_t, uint64_t
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
# Longest-prefix match as an interval search. Let D be the length of the deck's longest prefix. A
# number's first D digits give a key in base 11 (digit d counts d + 1; a missing digit counts 0), so the
# numbers that start with a prefix of L digits have exactly the keys in [key(prefix), key(prefix) +
# 11**(D - L) - 1], and prefixes nest as intervals. Flattening the nested intervals of a snapshot gives
# sorted boundaries, each with the row of the innermost prefix from there to the next boundary (none
# past the last); the answer for a key is the row of the last boundary <= key.
#
# The boundaries sit in leaves of LEAF keys with their LEAF rows. A table of 2**k buckets (about one
# per two leaves) maps the top k bits of a key to the leaf holding the last boundary <= the bucket's
# first key; from there the leaf of any key in the bucket is found by counting, LEAF at a time, the
# following leaves whose first key (a separate, compact array) is <= key: usually one step. The table and
# the first keys stay in the CPU caches; what counts is the size of the leaves, as a lookup reads one cold:
#   - keys are 32-bit when D <= 9 (11**9 < 2**32), the usual case; 64-bit above (11**18 < 2**64);
#   - a row is a 32-bit reference: the Rate's address as a 16-byte offset from the lowest Rate address
#     (CPython's allocator aligns objects to 16 bytes), or, should the Rates lie too far apart for that,
#     its position in the deck's row tuple.
# So a leaf is one 64-byte cache line (32-bit keys) or two (64-bit), and the index of a 100,000-prefix
# deck takes 1.6 MB where 64-bit keys and pointers took 3.2 MB (more than the cache this machine gives us).
#
# ``lookup`` reads the clock only when the deck has versions dated after "always" (0), and then with
# time(), the kernel's cached second. ``lookup_many`` works in three passes over a C array of the
# numbers: keys (reading each str), the search (C only, nogil; LANES numbers at a time, one step per
# round, prefetching each lane's next read so that their cache misses overlap), then the list
# (prefetching the Rates whose reference counts it is about to raise).

cdef extern from *:
    """
    #define __creditgate_prefetch_write(address) __builtin_prefetch((address), 1)
    """
    void prefetch "__builtin_prefetch"(const void *address) nogil
    void prefetch_write "__creditgate_prefetch_write"(const void *address) nogil

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    time_t time(time_t *tloc)

cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)

ctypedef fused key_t:
    uint32_t
    uint64_t

cdef enum:
    KEY_DIGITS = 18      # 11**18 < 2**64; MAX_PREFIX_DIGITS must not exceed it
    NARROW_DIGITS = 9    # 11**9 < 2**32: 32-bit keys
    LEAF = 8             # boundaries per leaf: LEAF keys, then LEAF uint32 refs (16 x sizeof(key_t) bytes)
    LANES = 16           # numbers searched together by lookup_many
    AHEAD = 16           # how far ahead lookup_many prefetches the Rates it returns
    NESTING = 20         # deepest nesting of prefixes: one per digit
    STACK_NUMBERS = 256  # lookup_many's work array lives on the stack up to this many numbers

cdef uint32_t NOREF = 0xFFFFFFFF     # a boundary with no rate from it on
cdef uint64_t NOKEY = UINT64_MAX     # a number that is not [+]digits (every real key is < 11**18)

cdef uint64_t[KEY_DIGITS + 1] POW11
POW11[0] = 1
for _i in range(1, KEY_DIGITS + 1):
    POW11[_i] = POW11[_i - 1] * 11
if MAX_PREFIX_DIGITS > KEY_DIGITS:
    raise ImportError("MAX_PREFIX_DIGITS exceeds the digits a lookup key holds")


cdef struct Index:
    char *leaves                     # nleaves leaves of 16 x sizeof(key) bytes, 64-byte aligned
    Py_ssize_t nleaves
    void *firsts                     # key[nleaves + LEAF]: the first key of each leaf, then padding
    uint32_t *table                  # table[b]: the leaf that holds the last boundary <= b << shift
    int shift


cdef struct Refs:
    char *base                       # Rate address = base + (ref << 4) ...
    PyObject **table                 # ... or table[ref] when this is not NULL


cdef struct Interval:
    uint64_t low
    uint64_t high
    Py_ssize_t row


cdef void _index_free(Index *index) noexcept nogil:
    free(index.leaves)
    free(index.firsts)
    free(index.table)
    index.leaves = NULL
    index.firsts = NULL
    index.table = NULL


cdef void *_aligned(size_t size) noexcept nogil:
    cdef void *memory = NULL
    if posix_memalign(&memory, 128, size if size else 128) != 0:
        return NULL
    return memory


cdef inline PyObject *_decode(const Refs *refs, uint32_t ref) noexcept nogil:
    if ref == NOREF:
        return NULL
    if refs.table != NULL:
        return refs.table[ref]
    return <PyObject *>(refs.base + ((<size_t>ref) << 4))


cdef int _index_build(Index *index, key_t width, const uint64_t *keys, const uint32_t *refs,
                      Py_ssize_t count, uint64_t limit) except -1:
    """Fill ``index`` (zeroed by the caller) from ``count`` >= 1 ascending boundaries, the first 0, of
    keys below ``limit``; ``width`` only picks the key type."""
    cdef Py_ssize_t j, b, buckets = 1
    cdef int bits = 0, table_bits = 0
    cdef key_t *leaf
    cdef key_t *firsts
    cdef key_t padding = <key_t>-1
    index.nleaves = (count + LEAF - 1) // LEAF
    index.leaves = <char *>_aligned(index.nleaves * 2 * LEAF * sizeof(key_t))
    index.firsts = _aligned((index.nleaves + LEAF) * sizeof(key_t))
    while buckets < index.nleaves // 2 and table_bits < 24:  # about two leaves a bucket
        buckets *= 2
        table_bits += 1
    index.table = <uint32_t *>_aligned(buckets * sizeof(uint32_t))
    if index.leaves == NULL or index.firsts == NULL or index.table == NULL:
        raise MemoryError()
    for j in range(index.nleaves * LEAF):
        leaf = <key_t *>(index.leaves + (j // LEAF) * 2 * LEAF * sizeof(key_t))
        leaf[j % LEAF] = <key_t>keys[j] if j < count else padding
        (<uint32_t *>(leaf + LEAF))[j % LEAF] = refs[j] if j < count else NOREF
    firsts = <key_t *>index.firsts
    for j in range(index.nleaves + LEAF):
        firsts[j] = <key_t>keys[j * LEAF] if j < index.nleaves else padding
    while bits < 64 and (limit - 1) >> bits:
        bits += 1
    index.shift = bits - table_bits if bits > table_bits else 0
    j = 0
    for b in range(buckets):
        while j + 1 < index.nleaves and <uint64_t>firsts[j + 1] <= (<uint64_t>b) << index.shift:
            j += 1
        index.table[b] = <uint32_t>j
    return 0


cdef inline Py_ssize_t _rank(const key_t *block, key_t key) noexcept nogil:
    """How many of LEAF keys from ``block`` on are <= key, branch-free."""
    cdef Py_ssize_t t, count = 0
    for t in range(LEAF):
        count += block[t] <= key
    return count


cdef inline Py_ssize_t _leaf_of(const Index *index, key_t key, Py_ssize_t j) noexcept nogil:
    """The leaf holding the last boundary <= key, from ``j`` = table[key >> shift] (a leaf at or before
    it, usually it or the next): count the later leaves that start at or below key, LEAF at a time."""
    cdef Py_ssize_t step
    cdef const key_t *firsts = <const key_t *>index.firsts
    while True:
        step = _rank(firsts + j + 1, key)  # firsts ascend, and end with LEAF padding keys
        j += step
        if step < LEAF:
            return j


cdef inline uint32_t _search(const Index *index, key_t key) noexcept nogil:
    """The ref of the last boundary <= key."""
    cdef Py_ssize_t j = _leaf_of(index, key, index.table[(<uint64_t>key) >> index.shift])
    cdef const key_t *leaf = <const key_t *>(index.leaves + j * 2 * LEAF * sizeof(key_t))
    return (<const uint32_t *>(leaf + LEAF))[_rank(leaf, key) - 1]


cdef void _search_many(const Index *index, const Refs *refs, uint64_t *work, Py_ssize_t n, key_t width) noexcept nogil:
    """Replace each key of ``work`` by the address of its Rate (0: none; NOKEY in: 0 out)."""
    cdef Py_ssize_t base, count, j, group
    cdef key_t lane_key[LANES]
    cdef Py_ssize_t lane_leaf[LANES]
    cdef const key_t *leaf
    cdef const char *leaves = index.leaves
    cdef const key_t *firsts = <const key_t *>index.firsts
    for group in range((n + LANES - 1) // LANES):
        base = group * LANES
        count = LANES if n - base > LANES else n - base
        for j in range(count):  # round 1: the table, prefetching the first keys to scan
            lane_key[j] = <key_t>work[base + j] if work[base + j] != NOKEY else 0  # searched, then dropped
            lane_leaf[j] = index.table[(<uint64_t>lane_key[j]) >> index.shift]  # 64-bit: the shift may be 32
            prefetch(firsts + lane_leaf[j] + 1)
        for j in range(count):  # round 2: the leaf, prefetched
            lane_leaf[j] = _leaf_of(index, lane_key[j], lane_leaf[j])
            prefetch(leaves + lane_leaf[j] * 2 * LEAF * sizeof(key_t))
        for j in range(count):  # round 3: the boundary and its Rate
            if work[base + j] == NOKEY:
                work[base + j] = 0
            else:
                leaf = <const key_t *>(leaves + lane_leaf[j] * 2 * LEAF * sizeof(key_t))
                work[base + j] = <uint64_t><size_t>_decode(
                    refs, (<const uint32_t *>(leaf + LEAF))[_rank(leaf, lane_key[j]) - 1])


cdef inline Py_ssize_t _key(PyObject *number, Py_ssize_t digits, const uint64_t *weights, uint64_t *key) noexcept:
    """Put the lookup key of ``number`` (its first ``digits`` digits; ``weights[i]`` = 11**(digits-1-i))
    in ``key`` and return 0; -2 when ``number`` is not ``[+]digits`` (at least one); -3 when the str
    could not be readied (an exception is set)."""
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
    used = n if n < digits else digits
    for i in range(used):
        d = p[i] - 48
        if d > 9:
            return -2
        k += (d + 1) * weights[i]  # independent products: no multiply chain
    for i in range(used, n):  # digits past the key cannot change the answer, but must be digits
        if <unsigned int>(p[i] - 48) > 9:
            return -2
    key[0] = k
    return 0


cdef int _interval(object prefix, Py_ssize_t row, Py_ssize_t digits, Interval *out) except -1:
    cdef PyObject *o = <PyObject *>prefix
    cdef Py_ssize_t i, n
    cdef unsigned char *p
    cdef unsigned int d
    cdef uint64_t k = 0
    if (
        not raw_is_str(o) or raw_ready(o) != 0 or raw_kind(o) != LATIN1_KIND
        or raw_length(o) == 0 or raw_length(o) > digits
    ):
        raise RatingError(f"prefix must be 1 to {MAX_PREFIX_DIGITS} digits, got {prefix!r}")
    n = raw_length(o)
    p = raw_latin1(o)
    for i in range(n):
        d = p[i] - 48
        if d > 9:
            raise RatingError(f"prefix must be 1 to {MAX_PREFIX_DIGITS} digits, got {prefix!r}")
        k = k * 11 + d + 1
    out.low = k * POW11[digits - n]
    out.high = out.low + POW11[digits - n] - 1
    out.row = row
    return 0


cdef Py_ssize_t _prefix_digits(object prefix) except -1:
    """Length of a row's prefix (checked as digits by ``_interval``), refusing one past MAX_PREFIX_DIGITS."""
    if not PyUnicode_Check(prefix) or not 0 < len(prefix) <= MAX_PREFIX_DIGITS:
        raise RatingError(f"prefix must be 1 to {MAX_PREFIX_DIGITS} digits, got {prefix!r}")
    return len(prefix)


cdef int _by_low_then_row(const void *a, const void *b) noexcept nogil:
    cdef const Interval *x = <const Interval *>a
    cdef const Interval *y = <const Interval *>b
    if x.low != y.low:
        return -1 if x.low < y.low else 1
    return -1 if x.row < y.row else (1 if x.row > y.row else 0)


cdef extern from "stdlib.h" nogil:
    void qsort(void *base, size_t count, size_t size, int (*compare)(const void *, const void *) noexcept nogil)


cdef inline void _emit(uint64_t *keys, Py_ssize_t *rows, Py_ssize_t *count, uint64_t key, Py_ssize_t row) noexcept nogil:
    if count[0] and keys[count[0] - 1] == key:
        rows[count[0] - 1] = row
    elif not (count[0] and rows[count[0] - 1] == row):
        keys[count[0]] = key
        rows[count[0]] = row
        count[0] += 1


cdef Py_ssize_t _flatten(
    const Interval *intervals, Py_ssize_t n, const int64_t *dates, int64_t until, uint64_t *keys, Py_ssize_t *rows
) noexcept nogil:
    """Boundaries of the snapshot at ``until`` (row -1: none): of each run of intervals with the same
    prefix (sorted by row, so by effective date), the last one dated <= until. Returns how many."""
    cdef Interval stack[NESTING]
    cdef Py_ssize_t depth = 0, count = 0, i = 0, pick
    _emit(keys, rows, &count, 0, -1)
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
            _emit(keys, rows, &count, stack[depth].high + 1, stack[depth - 1].row if depth else -1)
        _emit(keys, rows, &count, intervals[pick].low, intervals[pick].row)
        stack[depth] = intervals[pick]
        depth += 1
    while depth:
        depth -= 1
        _emit(keys, rows, &count, stack[depth].high + 1, stack[depth - 1].row if depth else -1)
    return count


cdef class DeckBase:
    """Rows of every version, one search index per snapshot, and the version in force cached with the
    epoch range over which it stays in force (so ``lookup(number)`` reads the clock and compares, or,
    when the deck's one version is dated "always", does not read it)."""

    cdef tuple _rows                # every Rate, sorted by (effective_from, prefix); owns the references
    cdef Py_ssize_t _nversions
    cdef int64_t *_epochs           # effective date of each version, ascending
    cdef Index *_indexes            # one per version
    cdef Py_ssize_t *_sizes         # rows in each snapshot
    cdef int64_t _cache_from        # the cached version is in force for _cache_from <= t < _cache_until
    cdef int64_t _cache_until
    cdef Py_ssize_t _cache_index
    cdef bint _timeless             # no version dated after 0: the time never changes the answer
    cdef bint _wide                 # 64-bit keys (the longest prefix has more than NARROW_DIGITS digits)
    cdef Py_ssize_t _digits         # digits in a key: the length of the deck's longest prefix
    cdef uint64_t _weights[KEY_DIGITS]   # _weights[i] = 11 ** (_digits - 1 - i)
    cdef Refs _refs

    def __cinit__(self, *args, **kwargs):
        self._rows = ()
        self._nversions = 0
        self._epochs = NULL
        self._indexes = NULL
        self._sizes = NULL
        self._cache_from = INT64_MAX  # empty range: the first selection computes and caches
        self._cache_until = INT64_MIN
        self._cache_index = -1
        self._timeless = True
        self._wide = False
        self._digits = 1
        self._weights[0] = 1
        self._refs.base = NULL
        self._refs.table = NULL

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

        The deck keeps them as a tuple: the index refers into it, so nothing may take a row away."""
        rows = tuple(rows)
        cdef Py_ssize_t n = len(rows), i, v, nversions = 0, count, size, digits = 1
        cdef int64_t last = 0
        cdef size_t address, lowest = <size_t>-1, highest = 0
        cdef bint wide
        cdef Refs refs
        if n >= 0x7FFFFFFF:
            raise RatingError("rate deck too large")
        cdef Py_ssize_t room = n if n else 1
        cdef PyObject **items = PySequence_Fast_ITEMS(rows)
        cdef int64_t *row_dates = <int64_t *>malloc(room * sizeof(int64_t))
        cdef Interval *intervals = <Interval *>malloc(room * sizeof(Interval))
        cdef uint64_t *keys = <uint64_t *>malloc((2 * room + 2) * sizeof(uint64_t))
        cdef Py_ssize_t *key_rows = <Py_ssize_t *>malloc((2 * room + 2) * sizeof(Py_ssize_t))
        cdef uint32_t *key_refs = <uint32_t *>malloc((2 * room + 2) * sizeof(uint32_t))
        cdef int64_t *dates = <int64_t *>malloc(room * sizeof(int64_t))
        cdef Py_ssize_t *sizes = <Py_ssize_t *>malloc(room * sizeof(Py_ssize_t))
        cdef Index *indexes = <Index *>calloc(room, sizeof(Index))
        try:
            if (row_dates == NULL or intervals == NULL or keys == NULL or key_rows == NULL or key_refs == NULL
                    or dates == NULL or sizes == NULL or indexes == NULL):
                raise MemoryError()
            for i in range(n):
                row = rows[i]
                row_dates[i] = row.effective_from
                digits = max(digits, _prefix_digits(row.prefix))
                address = <size_t>items[i]
                lowest = min(lowest, address)
                highest = max(highest, address)
                if i == 0 or row_dates[i] != last:
                    dates[nversions] = row_dates[i]
                    nversions += 1
                    last = row_dates[i]
            wide = digits > NARROW_DIGITS
            # Refs are 16-byte offsets from the lowest Rate when they can be, else positions in ``rows``.
            refs.base = <char *>lowest
            refs.table = NULL
            if n and (highest - lowest) >> 4 >= NOREF:
                refs.table = items
            for i in range(n):
                _interval(rows[i].prefix, i, digits, &intervals[i])
                if (<size_t>items[i] - lowest) & 15:
                    refs.table = items
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
                count = _flatten(intervals, n, row_dates, dates[v], keys, key_rows)
                for i in range(count):
                    if key_rows[i] < 0:
                        key_refs[i] = NOREF
                    elif refs.table != NULL:
                        key_refs[i] = <uint32_t>key_rows[i]
                    else:
                        key_refs[i] = <uint32_t>((<size_t>items[key_rows[i]] - lowest) >> 4)
                if wide:
                    _index_build(&indexes[v], <uint64_t>0, keys, key_refs, count, POW11[digits])
                else:
                    _index_build(&indexes[v], <uint32_t>0, keys, key_refs, count, POW11[digits])
        except BaseException:
            if indexes != NULL:
                for v in range(nversions):
                    _index_free(&indexes[v])
            free(indexes); free(dates); free(sizes)
            raise
        finally:
            free(row_dates); free(intervals); free(keys); free(key_rows); free(key_refs)
        self._free()
        self._rows = rows
        self._epochs = dates
        self._sizes = sizes
        self._indexes = indexes
        self._nversions = nversions
        self._cache_from = INT64_MAX
        self._cache_until = INT64_MIN
        self._cache_index = -1
        self._timeless = nversions == 0 or (nversions == 1 and dates[0] == 0)
        self._wide = wide if n else False
        self._digits = digits
        for i in range(digits):
            self._weights[i] = POW11[digits - 1 - i]
        self._refs = refs

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
        """Index of the version in force at ``at`` (None: now); -1: none."""
        cdef int overflow = 0
        cdef int64_t t
        cdef double f
        if at is None:
            if self._timeless:  # no version, or one dated 0 ("always"): in force whatever the time
                return self._nversions - 1
            # Versions are whole seconds: time() is the floor of the real-time clock, read from the
            # kernel's cached second (vDSO) for a few ns; it may lag by one tick at a second's turn.
            t = time(NULL)
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
        status = _key(<PyObject *>number, self._digits, self._weights, &key)
        if status == 0:
            if self._wide:
                found = _decode(&self._refs, _search(&self._indexes[index], <uint64_t>key))
            else:
                found = _decode(&self._refs, _search(&self._indexes[index], <uint32_t>key))
            if found != NULL:
                return <object>found
        elif status == -3:
            raise MemoryError()
        return None

    def lookup_many(self, numbers, at=None):
        """``[lookup(n, at) for n in numbers]`` with the version chosen once and the list built in C."""
        cdef Py_ssize_t index, n, i, status
        cdef PyObject **items
        cdef PyObject *found
        cdef PyObject *none = <PyObject *>None
        cdef const Index *search = NULL
        cdef uint64_t stack_work[STACK_NUMBERS]
        cdef uint64_t *work = stack_work
        if PyUnicode_Check(numbers):
            raise RatingError("lookup_many takes a list of numbers, not one str")
        if not (PyList_Check(numbers) or PyTuple_Check(numbers)):
            numbers = list(numbers)
        index = self._resolve(at)
        if index >= 0:
            search = &self._indexes[index]
        n = len(numbers)
        items = PySequence_Fast_ITEMS(numbers)
        if n > STACK_NUMBERS:
            work = <uint64_t *>malloc(n * sizeof(uint64_t))
            if work == NULL:
                raise MemoryError()
        try:
            # Pass 1, the keys. Nothing from here on calls back into Python (but to raise), so ``numbers``
            # and the deck cannot change under it.
            for i in range(n):
                if i + LANES < n:
                    prefetch(items[i + LANES])
                if not raw_is_str(items[i]):
                    raise _limits.not_a_number(<object>items[i])
                work[i] = NOKEY
                if search != NULL:
                    status = _key(items[i], self._digits, self._weights, &work[i])
                    if status == -3:
                        raise MemoryError()
                    if status != 0:
                        work[i] = NOKEY
            # Pass 2, the search: C only.
            if search == NULL:
                for i in range(n):
                    work[i] = 0
            elif self._wide:
                _search_many(search, &self._refs, work, n, <uint64_t>0)
            else:
                _search_many(search, &self._refs, work, n, <uint32_t>0)
            # Pass 3, the list.
            result = PyList_New(n)
            for i in range(n):
                if i + AHEAD < n and work[i + AHEAD]:
                    prefetch_write(<void *><size_t>work[i + AHEAD])
                found = <PyObject *><size_t>work[i]
                if found == NULL:
                    found = none
                raw_incref(found)
                raw_list_set(result, i, found)
        finally:
            if work != stack_work:
                free(work)
        return result

    def charge(self, rate, seconds):
        """Same as the module's ``charge``."""
        return charge(rate, seconds)

    def max_seconds(self, rate, available_micros):
        """Same as the module's ``max_seconds``."""
        return max_seconds(rate, available_micros)
