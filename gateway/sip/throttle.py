"""Failed attempts per source address in a fixed window, in a table of bounded size (sans-IO).

Used for digest authentication: a source that fails ``max_failures`` times within ``window_s`` of its
first failure is refused (with the seconds left as Retry-After) until that window ends, whatever it
sends, so a password can be guessed at most ``max_failures`` times per window. Time comes in as an
argument (monotonic seconds); nothing here reads a clock.

Memory: at most ``max_sources`` entries. Entries are kept in the order their window opened, so the
expired ones are always at the front and are dropped first; when every entry is still live, the
oldest window is dropped to make room (a flood of new sources can then free an old source early, but
never grow the table). For digest, only sources that match a trunk with credentials get this far
(strangers are refused 403 before any digest work), so the live keys are the configured trunk hosts.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.sip.errors import SipError

__all__ = ["FailureThrottle"]


class FailureThrottle:
    __slots__ = ("_entries", "max_failures", "max_sources", "window_s")

    def __init__(self, max_failures: int, window_s: float, *, max_sources: int = 4096) -> None:
        if max_failures < 1 or window_s <= 0 or max_sources < 1:
            raise SipError("max_failures and max_sources must be at least 1, window_s positive", ours=True)
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_sources = max_sources
        # source -> [window start, failures in the window], in the order the windows opened
        self._entries: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, source: str, now: float) -> list[float] | None:
        entry = self._entries.get(source)
        if entry is not None and now - entry[0] >= self.window_s:
            del self._entries[source]
            return None
        return entry

    def retry_after(self, source: str, now: float) -> float:
        """Seconds until ``source`` may try again; 0.0 when it is not refused."""
        entry = self._live(source, now)
        if entry is None or entry[1] < self.max_failures:
            return 0.0
        return entry[0] + self.window_s - now

    def failed(self, source: str, now: float) -> bool:
        """Count one failure of ``source``; True when it is now refused."""
        entry = self._live(source, now)
        if entry is None:
            self._make_room(now)
            entry = self._entries[source] = [now, 0.0]
        entry[1] += 1
        return entry[1] >= self.max_failures

    def _make_room(self, now: float) -> None:
        entries = self._entries
        while entries:
            _, (start, _) = next(iter(entries.items()))
            if now - start < self.window_s and len(entries) < self.max_sources:
                return
            entries.popitem(last=False)  # expired, or the oldest live window when the table is full
