"""Rating core on a 100,000-prefix deck, compiled and pure side by side.

Measures longest-prefix lookups one number at a time from Python (a loop of calls per round) and
through ``lookup_many`` (one call per round), ``charge``, and the CSV import. Prints lookups/s (and
charges/s, import seconds) for each twin and the compiled/pure ratio. The deck and the numbers come
from a fixed seed. ``uniform`` numbers spread evenly over every prefix of the deck, so nearly every
lookup touches a Rate object no other recent lookup touched (the worst case for the CPU caches);
``skewed`` numbers follow a Zipf law over destinations, closer to real traffic.

CREDITGATE_BENCH_SMOKE=1: a 2,000-prefix deck, fewer numbers and one round, only to prove it runs.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from types import ModuleType

import pytest

from bench.conftest import SMOKE
from rating_core import pure

try:
    from rating_core import _compiled as compiled
except ImportError:  # pragma: no cover - CI builds it; a missing build fails the compiled cases
    compiled = None

PREFIXES = 2_000 if SMOKE else 100_000
NUMBERS = 10_000 if SMOKE else 100_000
ROUNDS = 1 if SMOKE else 7
IMPORT_ROUNDS = 1 if SMOKE else 3
SEED = 20_260_101
HEADER = "prefix,destination,rate_per_min,currency,initial_increment_s,subsequent_increment_s,connection_fee,effective_from"

RESULTS: dict[tuple[str, str], float] = {}  # (what, twin) -> per second (or seconds, for the import)


def _deck_text(count: int, rnd: random.Random) -> tuple[str, list[str]]:
    """A deck like a carrier's A-Z: ~230 country codes, breakouts of 1 to 6 more digits, mixed prices."""
    codes = ["1", "7"] + [str(c) for c in rnd.sample(range(20, 100), 40)] + [str(c) for c in rnd.sample(range(200, 1000), 190)]
    weights = [40 if len(c) == 1 else 4 if len(c) == 2 else 1 for c in codes]  # NANP and +7 have many breakouts
    prefixes: set[str] = set(codes)
    while len(prefixes) < count:
        code = rnd.choices(codes, weights)[0]
        prefixes.add(code + "".join(rnd.choices("0123456789", k=rnd.choice((1, 2, 3, 3, 4, 4, 5, 6)))))
    ordered = sorted(prefixes)[:count]
    lines = [HEADER]
    for prefix in ordered:
        per_min = rnd.randrange(0, 3_000_000)
        fee = rnd.choice(("0", "0", "0", "0.01", "0.05"))
        increments = rnd.choice(("60,60", "30,6", "1,1", "60,1"))
        currency = rnd.choice(("EUR", "USD", "GBP"))
        lines.append(f"+{prefix},Destination {prefix},{per_min // 1_000_000}.{per_min % 1_000_000:06d},{currency},{increments},{fee},")
    return "\n".join(lines) + "\n", ordered


def _numbers(prefixes: list[str], rnd: random.Random, *, skewed: bool) -> list[str]:
    if skewed:
        popular = prefixes[:]
        rnd.shuffle(popular)
        weights = list(itertools.accumulate(1 / (rank + 1) ** 1.1 for rank in range(len(popular))))
        chosen = rnd.choices(popular, cum_weights=weights, k=NUMBERS)
    else:
        chosen = [rnd.choice(prefixes) for _ in range(NUMBERS)]
    return ["+" + p + "".join(rnd.choices("0123456789", k=max(1, 12 - len(p)))) for p in chosen]


_rnd = random.Random(SEED)
DECK_TEXT, DECK_PREFIXES = _deck_text(PREFIXES, _rnd)
UNIFORM = _numbers(DECK_PREFIXES, _rnd, skewed=False)
SKEWED = _numbers(DECK_PREFIXES, _rnd, skewed=True)
TWINS = ["c", "py"]


def _twin(name: str) -> ModuleType:
    if name == "py":
        return pure
    if compiled is None:
        pytest.fail("the compiled rating core is not built; run `python setup.py build_ext --inplace`")
    return compiled


_decks: dict[str, object] = {}


def _deck(name: str):  # noqa: ANN202 - either twin's RateDeck
    if name not in _decks:
        _decks[name] = _twin(name).RateDeck.from_csv_text(DECK_TEXT)
    return _decks[name]


def _run(benchmark, rounds: int, work: Callable[[], object]) -> float:  # noqa: ANN001
    benchmark.pedantic(work, rounds=rounds, iterations=1, warmup_rounds=0 if SMOKE else 1)
    return benchmark.stats.stats.median


def _report(what: str, twin: str, value: float, unit: str, capsys: pytest.CaptureFixture[str]) -> None:
    RESULTS[(what, twin)] = value
    with capsys.disabled():
        text = f"{value:.3f} s" if unit == "s" else f"{value / 1e6:,.2f} M {unit}/s"
        line = f"\nrating {what} [{twin}]: {text}"
        other = RESULTS.get((what, "py" if twin == "c" else "c"))
        if other:
            c, py = (value, other) if twin == "c" else (other, value)
            ratio = py / c if unit == "s" else c / py
            line += f"  (compiled/pure: {ratio:.1f}x)"
        print(line)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("traffic", ["uniform", "skewed"])
def test_lookup_one_at_a_time(benchmark, twin: str, traffic: str, capsys) -> None:  # noqa: ANN001
    deck = _deck(twin)
    numbers = UNIFORM if traffic == "uniform" else SKEWED

    def loop() -> None:
        lookup = deck.lookup
        for number in numbers:
            lookup(number)

    assert deck.lookup(numbers[0]) is not None
    seconds = _run(benchmark, ROUNDS, loop)
    _report(f"lookup single {traffic}", twin, len(numbers) / seconds, "lookups", capsys)


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("traffic", ["uniform", "skewed"])
def test_lookup_many(benchmark, twin: str, traffic: str, capsys) -> None:  # noqa: ANN001
    deck = _deck(twin)
    numbers = UNIFORM if traffic == "uniform" else SKEWED
    assert deck.lookup_many(numbers[:50]) == [deck.lookup(n) for n in numbers[:50]]
    seconds = _run(benchmark, ROUNDS, lambda: deck.lookup_many(numbers))
    _report(f"lookup_many {traffic}", twin, len(numbers) / seconds, "lookups", capsys)


@pytest.mark.parametrize("twin", TWINS)
def test_charge(benchmark, twin: str, capsys) -> None:  # noqa: ANN001
    module = _twin(twin)
    deck = _deck(twin)
    rnd = random.Random(SEED + 1)
    calls = [(rate, rnd.randrange(0, 3_600)) for rate in deck.lookup_many(UNIFORM)]
    charge = module.charge

    def loop() -> None:
        for rate, seconds in calls:
            charge(rate, seconds)

    seconds = _run(benchmark, ROUNDS, loop)
    _report("charge", twin, len(calls) / seconds, "charges", capsys)


@pytest.mark.parametrize("twin", TWINS)
def test_csv_import(benchmark, twin: str, capsys) -> None:  # noqa: ANN001
    module = _twin(twin)
    seconds = _run(benchmark, IMPORT_ROUNDS, lambda: module.RateDeck.from_csv_text(DECK_TEXT))
    _report(f"CSV import of {PREFIXES:,} lines", twin, seconds, "s", capsys)
    deck = module.RateDeck.from_csv_text(DECK_TEXT)
    assert len(deck) == PREFIXES


def test_twins_agree_on_the_bench_deck() -> None:
    """The figures compare like with like: both twins rate the bench numbers identically."""
    sample = UNIFORM[:2_000] + SKEWED[:2_000]
    assert _deck("c").lookup_many(sample) == _deck("py").lookup_many(sample)
    started = time.perf_counter()
    assert _deck("c").to_csv_text() == _deck("py").to_csv_text()
    assert time.perf_counter() - started < 60
