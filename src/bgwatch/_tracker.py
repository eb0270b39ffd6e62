"""All of bgwatch's mutable per-process state: response lifecycles and label-value caps.

Everything here is bounded, O(1) per call and guarded by a lock that is never held across I/O
or an ``await``, so it is safe from threads and from asyncio tasks alike.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from ._classify import TERMINAL_STATUSES

DEFAULT_MAX_TRACKED: Final = 100_000
DEFAULT_TTL_SECONDS: Final = 24 * 3600.0


class _Entry:
    __slots__ = ("first_seen", "status")

    def __init__(self, first_seen: float, status: str) -> None:
        self.first_seen = first_seen
        self.status = status


@dataclass(frozen=True, slots=True)
class Transition:
    """What one observation changed in a response's known lifecycle."""

    new: bool
    """The id had not been seen before (or had expired)."""
    finished: bool
    """This is the first terminal observation of the id: count it now, and only now."""
    previous_status: str | None
    first_seen: float
    """``time.time()`` of the first observation, for durations without ``completed_at``."""
    in_flight_delta: int
    """Change of the in-flight count, evictions and expiries included: apply it atomically."""


@dataclass(frozen=True, slots=True)
class TrackerStats:
    """A consistent snapshot of the tracker's counters."""

    tracked: int
    in_flight: int
    evicted_in_flight: int
    expired_in_flight: int


class Tracker:
    """Remembers each response id's status so that terminal states are counted exactly once.

    Entries are kept in first-seen order: the oldest is evicted when ``max_tracked`` is
    reached and entries older than ``ttl_seconds`` expire. Terminal ids stay (until evicted or
    expired) so that later polls, retries and webhooks of the same id are not counted again.
    """

    def __init__(
        self,
        max_tracked: int = DEFAULT_MAX_TRACKED,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(max_tracked, int) or max_tracked < 1:
            raise ValueError(f"max_tracked must be a positive int, got {max_tracked!r}")
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        self.max_tracked = max_tracked
        self.ttl_seconds = float(ttl_seconds)
        self._clock = clock
        self._wall_clock = wall_clock
        # first_seen in the entries is monotonic; the wall offset converts it for durations.
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._in_flight = 0
        self._evicted_in_flight = 0
        self._expired_in_flight = 0

    def observe(self, response_id: str, status: str) -> Transition:
        """Record that ``response_id`` was seen with ``status`` and say what that changed."""
        now = self._clock()
        terminal = status in TERMINAL_STATUSES
        with self._lock:
            before = self._in_flight
            self._expire(now)
            entry = self._entries.get(response_id)
            if entry is None:
                self._entries[response_id] = _Entry(now, status)
                if not terminal:
                    self._in_flight += 1
                if len(self._entries) > self.max_tracked:
                    self._evict_oldest()
                return Transition(True, terminal, None, self._to_wall(now, now), self._in_flight - before)
            previous = entry.status
            first_seen = self._to_wall(entry.first_seen, now)
            if previous in TERMINAL_STATUSES:
                return Transition(False, False, previous, first_seen, self._in_flight - before)
            entry.status = status
            if terminal:
                self._in_flight -= 1
            return Transition(False, terminal, previous, first_seen, self._in_flight - before)

    def status_of(self, response_id: str) -> str | None:
        """The last status recorded for an id, or None when it is not tracked."""
        with self._lock:
            entry = self._entries.get(response_id)
            return entry.status if entry is not None else None

    @property
    def in_flight(self) -> int:
        """Tracked responses not yet seen in a terminal state."""
        with self._lock:
            return self._in_flight

    def expire(self) -> int:
        """Drop entries past their TTL now; returns the change of the in-flight count."""
        with self._lock:
            before = self._in_flight
            self._expire(self._clock())
            return self._in_flight - before

    def stats(self) -> TrackerStats:
        """A snapshot of the counters."""
        with self._lock:
            return TrackerStats(
                len(self._entries), self._in_flight, self._evicted_in_flight, self._expired_in_flight
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _to_wall(self, monotonic_time: float, now: float) -> float:
        return self._wall_clock() - (now - monotonic_time)

    def _evict_oldest(self) -> None:
        _, entry = self._entries.popitem(last=False)
        if entry.status not in TERMINAL_STATUSES:
            self._in_flight -= 1
            self._evicted_in_flight += 1

    def _expire(self, now: float) -> None:
        deadline = now - self.ttl_seconds
        entries = self._entries
        while entries:
            oldest = next(iter(entries.values()))
            if oldest.first_seen > deadline:
                return
            entries.popitem(last=False)
            if oldest.status not in TERMINAL_STATUSES:
                self._in_flight -= 1
                self._expired_in_flight += 1


_CODE_PATTERN: Final = re.compile(r"[a-z0-9_]{1,64}")
_MODEL_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


class LabelValues:
    """Maps raw values to a bounded set of Prometheus label values.

    Known values pass; an unseen value that matches ``pattern`` passes until ``max_extra``
    distinct extras have been admitted; anything else becomes ``"other"``; a missing value is
    ``"unknown"``. The admitted set never shrinks, so a label value never flaps.
    """

    OTHER: Final = "other"
    MISSING: Final = "unknown"

    def __init__(self, known: Iterable[str], max_extra: int, pattern: re.Pattern[str]) -> None:
        if max_extra < 0:
            raise ValueError(f"max_extra must be >= 0, got {max_extra}")
        self._known = frozenset(known)
        self._extra: set[str] = set()
        self._max_extra = max_extra
        self._pattern = pattern
        self._lock = threading.Lock()

    @classmethod
    def for_codes(cls, known: Iterable[str], max_extra: int) -> LabelValues:
        """Error codes and reasons: lowercase snake_case words."""
        return cls(known, max_extra, _CODE_PATTERN)

    @classmethod
    def for_models(cls, known: Iterable[str], max_extra: int) -> LabelValues:
        """Model names such as ``gpt-4.1-2025-04-14`` or ``ft:gpt-4o:org:name:id``."""
        return cls(known, max_extra, _MODEL_PATTERN)

    def __call__(self, value: str | None) -> str:
        if value is None or value == "":
            return self.MISSING
        if value in self._known or value in self._extra:
            return value
        if not self._pattern.fullmatch(value):
            return self.OTHER
        with self._lock:
            if len(self._extra) < self._max_extra:
                self._extra.add(value)
                return value
        return self.OTHER

    @property
    def admitted(self) -> frozenset[str]:
        """Every value that may appear as a label (known, admitted extras, other, unknown)."""
        with self._lock:
            return self._known | self._extra | {self.OTHER, self.MISSING}
