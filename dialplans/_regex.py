"""Prefix matching of libphonenumber's digit patterns, which Python's ``re`` cannot do.

Theory of operation: whether a short dialed string deserves 484 (address incomplete) or 404
(invalid) depends on whether some longer string would match one of libphonenumber's number
patterns. ``re`` only answers "does this whole string match", so the patterns are compiled here
into a Thompson NFA over the ten digits and walked as a lazily built DFA. libphonenumber's patterns
use a small regular subset (digits, ``\\d``, ``[...]`` classes with ranges, ``(?:...)`` groups,
``|`` and the quantifiers ``?``, ``{n}``, ``{n,m}``); ``*``, ``+`` and capturing groups are
accepted too so that a future metadata release cannot silently change the meaning of a pattern.
Anything else raises ``PatternError`` and callers treat the pattern as unusable.
"""

from __future__ import annotations

from functools import lru_cache

from .errors import InvalidDialPlan

__all__ = ["DigitPattern", "PatternError", "compile_pattern"]

_DIGITS = "0123456789"
_ANY = frozenset(_DIGITS)
# The longest string explored when enumerating a finite language or growing a prefix: E.164
# allows 15 digits, IDD prefixes add a few; nothing in the metadata needs more.
_MAX_LENGTH = 24

# AST nodes are plain tuples: ("set", frozenset[str]) | ("cat", tuple) | ("alt", tuple)
# | ("rep", node, low, high-or-None).
_Node = tuple


class PatternError(InvalidDialPlan):
    """A pattern outside the supported subset, or a language too large to enumerate."""


class _Parser:
    """Recursive-descent parser for the regex subset; one instance per pattern."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> _Node:
        node = self._alternation()
        if self.pos != len(self.text):
            raise PatternError(f"unexpected {self.text[self.pos]!r} at {self.pos} in {self.text!r}")
        return node

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _take(self) -> str:
        char = self._peek()
        if not char:
            raise PatternError(f"pattern ends early: {self.text!r}")
        self.pos += 1
        return char

    def _alternation(self) -> _Node:
        branches = [self._concatenation()]
        while self._peek() == "|":
            self.pos += 1
            branches.append(self._concatenation())
        return branches[0] if len(branches) == 1 else ("alt", tuple(branches))

    def _concatenation(self) -> _Node:
        items: list[_Node] = []
        while self._peek() not in ("", "|", ")"):
            items.append(self._quantified())
        return items[0] if len(items) == 1 else ("cat", tuple(items))

    def _quantified(self) -> _Node:
        node = self._atom()
        while True:
            char = self._peek()
            if char == "?":
                self.pos += 1
                node = ("rep", node, 0, 1)
            elif char == "*":
                self.pos += 1
                node = ("rep", node, 0, None)
            elif char == "+":
                self.pos += 1
                node = ("rep", node, 1, None)
            elif char == "{":
                self.pos += 1
                low, high = self._bounds()
                node = ("rep", node, low, high)
            else:
                return node

    def _bounds(self) -> tuple[int, int | None]:
        end = self.text.find("}", self.pos)
        if end < 0:
            raise PatternError(f"unclosed quantifier in {self.text!r}")
        body = self.text[self.pos : end]
        self.pos = end + 1
        low_text, comma, high_text = body.partition(",")
        if not low_text.isdigit() or (high_text and not high_text.isdigit()):
            raise PatternError(f"bad quantifier {{{body}}} in {self.text!r}")
        low = int(low_text)
        high = low if not comma else (int(high_text) if high_text else None)
        if high is not None and high < low:
            raise PatternError(f"bad quantifier {{{body}}} in {self.text!r}")
        return low, high

    def _atom(self) -> _Node:
        char = self._take()
        if char in _DIGITS:
            return ("set", frozenset(char))
        if char == "\\":
            if self._take() != "d":
                raise PatternError(f"unsupported escape in {self.text!r}")
            return ("set", _ANY)
        if char == "[":
            return ("set", self._char_class())
        if char == "(":
            if self.text.startswith("?:", self.pos):
                self.pos += 2
            elif self._peek() == "?":
                raise PatternError(f"unsupported group in {self.text!r}")
            node = self._alternation()
            if self._take() != ")":
                raise PatternError(f"unclosed group in {self.text!r}")
            return node
        raise PatternError(f"unsupported {char!r} in {self.text!r}")

    def _char_class(self) -> frozenset[str]:
        chars: set[str] = set()
        if self._peek() == "^":
            raise PatternError(f"negated class in {self.text!r}")
        while (char := self._take()) != "]":
            if char == "\\":
                if self._take() != "d":
                    raise PatternError(f"unsupported escape in {self.text!r}")
                chars |= _ANY
            elif char in _DIGITS:
                if self._peek() == "-" and self.text[self.pos + 1 : self.pos + 2] in tuple(_DIGITS):
                    self.pos += 1
                    last = self._take()
                    chars.update(_DIGITS[int(char) : int(last) + 1])
                else:
                    chars.add(char)
            else:
                raise PatternError(f"unsupported {char!r} in class in {self.text!r}")
        return frozenset(chars)


class DigitPattern:
    """One compiled pattern: full matches, prefix growth and finite enumeration over digits."""

    __slots__ = ("pattern", "_eps", "_edges", "_accept", "_start", "_closure", "_steps")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._eps: list[list[int]] = []
        self._edges: list[list[tuple[frozenset[str], int]]] = []
        start, self._accept = self._build(_Parser(pattern).parse())
        self._closure = [self._eps_closure(state) for state in range(len(self._eps))]
        self._start = self._closure[start]
        # Lazily built DFA: (state set, digit or "" for any digit) -> state set.
        self._steps: dict[tuple[frozenset[int], str], frozenset[int]] = {}

    # --- Thompson construction ---------------------------------------------------------------
    def _new_state(self) -> int:
        self._eps.append([])
        self._edges.append([])
        return len(self._eps) - 1

    def _build(self, node: _Node) -> tuple[int, int]:
        kind = node[0]
        if kind == "set":
            start, end = self._new_state(), self._new_state()
            self._edges[start].append((node[1], end))
            return start, end
        if kind == "cat":
            start, end = self._build(node[1][0])
            for item in node[1][1:]:
                item_start, item_end = self._build(item)
                self._eps[end].append(item_start)
                end = item_end
            return start, end
        if kind == "alt":
            start, end = self._new_state(), self._new_state()
            for branch in node[1]:
                branch_start, branch_end = self._build(branch)
                self._eps[start].append(branch_start)
                self._eps[branch_end].append(end)
            return start, end
        _, child, low, high = node
        start = end = self._new_state()
        for _ in range(low):
            child_start, child_end = self._build(child)
            self._eps[end].append(child_start)
            end = child_end
        if high is None:
            loop_start, loop_end = self._build(child)
            self._eps[end].append(loop_start)
            self._eps[loop_end].append(loop_start)
            self._eps[loop_end].append(end)
            return start, end
        final = self._new_state()
        for _ in range(high - low):
            # Each optional copy may be skipped straight to the end.
            self._eps[end].append(final)
            child_start, child_end = self._build(child)
            self._eps[end].append(child_start)
            end = child_end
        self._eps[end].append(final)
        return start, final

    def _eps_closure(self, state: int) -> frozenset[int]:
        seen = {state}
        stack = [state]
        while stack:
            for target in self._eps[stack.pop()]:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return frozenset(seen)

    def _step(self, states: frozenset[int], digit: str) -> frozenset[int]:
        key = (states, digit)
        cached = self._steps.get(key)
        if cached is not None:
            return cached
        result: set[int] = set()
        for state in states:
            for chars, target in self._edges[state]:
                if not digit or digit in chars:
                    result |= self._closure[target]
        frozen = frozenset(result)
        self._steps[key] = frozen
        return frozen

    def _run(self, digits: str) -> frozenset[int]:
        states = self._start
        for digit in digits:
            if digit not in _ANY:
                return frozenset()
            states = self._step(states, digit)
            if not states:
                break
        return states

    # --- queries -----------------------------------------------------------------------------
    def fullmatch(self, digits: str) -> bool:
        """True when the whole of ``digits`` matches, like ``re.fullmatch``."""
        return self._accept in self._run(digits)

    def completion_lengths(self, prefix: str, max_length: int = _MAX_LENGTH) -> frozenset[int]:
        """Total lengths ``> len(prefix)`` of the matching strings that start with ``prefix``."""
        states = self._run(prefix)
        lengths: set[int] = set()
        for length in range(len(prefix) + 1, max_length + 1):
            if not states:
                break
            states = self._step(states, "")
            if self._accept in states:
                lengths.add(length)
        return frozenset(lengths)

    def enumerate(self, limit: int = 1000) -> frozenset[str]:
        """Every string the pattern matches; ``PatternError`` beyond ``limit`` strings."""
        found: set[str] = set()
        stack: list[tuple[str, frozenset[int]]] = [("", self._start)]
        # Bounds the walk too, for patterns that branch widely long before they accept.
        budget = limit * 100
        while stack:
            text, states = stack.pop()
            budget -= 1
            if budget < 0:
                raise PatternError(f"{self.pattern!r} is too large to enumerate")
            if self._accept in states:
                found.add(text)
                if len(found) > limit:
                    raise PatternError(f"{self.pattern!r} matches more than {limit} strings")
            if len(text) >= _MAX_LENGTH:
                continue
            for digit in _DIGITS:
                following = self._step(states, digit)
                if following:
                    stack.append((text + digit, following))
        return frozenset(found)


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> DigitPattern:
    """The compiled form of ``pattern``, built once per process (metadata patterns repeat)."""
    return DigitPattern(pattern)
