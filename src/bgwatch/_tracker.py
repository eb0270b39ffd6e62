"""All of bgwatch's mutable per-process state: response lifecycles and label-value caps.

Everything here is bounded, O(1) per call and guarded by a lock that is never held across I/O
or an ``await``, so it is safe from threads and from asyncio tasks alike.
"""

from __future__ import annotations

import heapq
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from ._classify import TERMINAL_STATUSES

log = logging.getLogger("bgwatch")

DEFAULT_MAX_TRACKED: Final = 100_000
DEFAULT_TTL_SECONDS: Final = 24 * 3600.0


class Attachment(Protocol):
    """Per-response state a sink keeps in the tracker's entry (the OpenTelemetry lifecycle span).

    An entry holds its attachment only while the response is in flight: the tracker lets go
    of it on the first terminal observation (handing it over in that :class:`Transition`), so
    memory stays bounded by the in-flight count.
    """

    def dropped(self, reason: str) -> None:
        """The entry was evicted (``"evicted"``) or expired (``"expired"``) while in flight.

        Called outside the tracker's lock; must not raise.
        """


class _Entry:
    __slots__ = ("attachment", "created_at", "first_seen", "queued", "response_id", "status")

    def __init__(
        self,
        first_seen: float,
        status: str,
        attachment: Attachment | None = None,
        created_at: float = 0.0,
        response_id: str = "",
    ) -> None:
        self.first_seen = first_seen
        self.status = status
        self.attachment = attachment
        self.created_at = created_at
        """Wall-clock start of the response (see :meth:`Tracker.observe`), for queue wait and age."""
        self.queued = status == "queued"
        """Seen queued and not yet seen past the queue: its queue wait is still to be measured."""
        self.response_id = response_id
        """The key of this entry (the same string object): tells a live heap item from a stale one."""

    def __lt__(self, other: _Entry) -> bool:  # heap order: oldest start first
        return self.created_at < other.created_at


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
    attachment: Attachment | None = None
    """The entry's attachment (see :meth:`Tracker.observe`); None once the id is terminal."""
    queue_seconds: float | None = None
    """Set on the one observation that first saw the response past ``queued`` (``in_progress``,
    or terminal when ``in_progress`` was never seen): seconds from its start to now, >= 0.
    None on every other observation, and for responses whose queued phase this tracker did not
    see from the start (first seen already running, from a poll or a webhook)."""


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
        # Entries that were in flight when added, a min-heap by created_at for the oldest in
        # flight at scrape time. Entries that finished or left the map are dropped lazily when
        # they reach the top, and filtered out when they pile up, so eviction and expiry never
        # touch the heap. It holds references only (8 bytes per item).
        self._by_start: list[_Entry] = []

    def observe(
        self,
        response_id: str,
        status: str,
        attach: Callable[[], Attachment] | None = None,
        *,
        created_at: float | None = None,
        from_start: bool = False,
    ) -> Transition:
        """Record that ``response_id`` was seen with ``status`` and say what that changed.

        ``created_at`` (wall-clock seconds) is when the response started, as well as the caller
        knows; a new entry without it starts now. ``from_start`` says that this observation is
        the answer to the create itself: a response that is already past ``queued`` there has
        its queue wait measured at once (see :attr:`Transition.queue_seconds`).

        ``attach`` makes the entry's :class:`Attachment` the first time it is asked for while
        the id is in flight (once per entry, whatever the threads). The attachment comes back
        in every transition up to and including the first terminal one; after that the entry
        no longer holds it. Attachments of entries evicted or expired while in flight are told
        so (:meth:`Attachment.dropped`) after the lock is released.
        """
        now = self._clock()
        dropped: list[tuple[Attachment, str]] = []
        try:
            with self._lock:
                return self._observe(
                    response_id, status, now, attach, dropped, created_at=created_at, from_start=from_start
                )
        finally:
            for attachment, reason in dropped:
                _tell_dropped(attachment, reason)

    def _observe(
        self,
        response_id: str,
        status: str,
        now: float,
        attach: Callable[[], Attachment] | None,
        dropped: list[tuple[Attachment, str]],
        *,
        created_at: float | None,
        from_start: bool,
    ) -> Transition:
        terminal = status in TERMINAL_STATUSES
        before = self._in_flight
        self._expire(now, dropped)
        entry = self._entries.get(response_id)
        if entry is None:
            attachment = _make_attachment(attach)
            wall = self._to_wall(now, now)
            start = wall if created_at is None else created_at
            entry = _Entry(now, status, None if terminal else attachment, start, response_id)
            self._entries[response_id] = entry
            if not terminal:
                self._in_flight += 1
                self._push_start(entry)
            if len(self._entries) > self.max_tracked:
                self._evict_oldest(dropped)
            queue = max(0.0, wall - start) if from_start and not entry.queued else None
            return Transition(True, terminal, None, wall, self._in_flight - before, attachment, queue)
        previous = entry.status
        first_seen = self._to_wall(entry.first_seen, now)
        if previous in TERMINAL_STATUSES:
            return Transition(False, False, previous, first_seen, self._in_flight - before)
        entry.status = status
        queue = None
        if entry.queued and status != "queued":  # the first sight past the queue, once per entry
            entry.queued = False
            queue = max(0.0, self._wall_clock() - entry.created_at)
        attachment = entry.attachment
        if attachment is None:
            attachment = entry.attachment = _make_attachment(attach)
        if terminal:
            self._in_flight -= 1
            entry.attachment = None  # handed over in this transition; a terminal id holds nothing
        return Transition(False, terminal, previous, first_seen, self._in_flight - before, attachment, queue)

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
        dropped: list[tuple[Attachment, str]] = []
        try:
            with self._lock:
                before = self._in_flight
                self._expire(self._clock(), dropped)
                return self._in_flight - before
        finally:
            for attachment, reason in dropped:
                _tell_dropped(attachment, reason)

    def stats(self) -> TrackerStats:
        """A snapshot of the counters."""
        with self._lock:
            return TrackerStats(len(self._entries), self._in_flight, self._evicted_in_flight, self._expired_in_flight)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def oldest_in_flight_created_at(self) -> float | None:
        """The ``created_at`` (wall clock) of the oldest response still in flight, or None.

        Amortized O(log n): stale heap items are popped as they surface.
        """
        with self._lock:
            heap = self._by_start
            while heap:
                if self._live(heap[0]):
                    return heap[0].created_at
                heapq.heappop(heap)
            return None

    def _live(self, entry: _Entry) -> bool:
        return entry.status not in TERMINAL_STATUSES and self._entries.get(entry.response_id) is entry

    def _push_start(self, entry: _Entry) -> None:
        heap = self._by_start
        if len(heap) >= self._in_flight + (self._in_flight >> 2) + 256:
            # A fifth or more is stale (finished, evicted, expired): keep the live ones. O(heap)
            # once per in_flight / 4 pushes, so O(1) per push; stale items pin evicted entries
            # only that long.
            heap[:] = [item for item in heap if self._live(item)]
            heapq.heapify(heap)
        heapq.heappush(heap, entry)

    def _to_wall(self, monotonic_time: float, now: float) -> float:
        return self._wall_clock() - (now - monotonic_time)

    def _evict_oldest(self, dropped: list[tuple[Attachment, str]]) -> None:
        _, entry = self._entries.popitem(last=False)
        if entry.attachment is not None:
            dropped.append((entry.attachment, "evicted"))
        if entry.status not in TERMINAL_STATUSES:
            self._in_flight -= 1
            self._evicted_in_flight += 1

    def _expire(self, now: float, dropped: list[tuple[Attachment, str]]) -> None:
        deadline = now - self.ttl_seconds
        entries = self._entries
        while entries:
            oldest = next(iter(entries.values()))
            if oldest.first_seen > deadline:
                return
            entries.popitem(last=False)
            if oldest.attachment is not None:
                dropped.append((oldest.attachment, "expired"))
            if oldest.status not in TERMINAL_STATUSES:
                self._in_flight -= 1
                self._expired_in_flight += 1


def _make_attachment(attach: Callable[[], Attachment] | None) -> Attachment | None:
    if attach is None:
        return None
    try:
        return attach()
    except Exception:  # a sink's factory must never break counting
        log.debug("bgwatch: making a tracker attachment failed", exc_info=True)
        return None


def _tell_dropped(attachment: Attachment, reason: str) -> None:
    try:
        attachment.dropped(reason)
    except Exception:
        log.debug("bgwatch: a tracker attachment failed while being dropped", exc_info=True)


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


class RecentIds:
    """A bounded, thread-safe set of recently seen keys that expire after ``ttl_seconds``.

    Used to refuse a replayed webhook delivery (same ``webhook-id``). O(1) per call; the
    oldest key is dropped first when ``max_size`` is reached.
    """

    def __init__(self, max_size: int, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        self.max_size = max_size
        self.ttl_seconds = float(ttl_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, float] = OrderedDict()

    def add(self, key: str) -> bool:
        """Remember ``key``; True when it was not already remembered (and not expired)."""
        now = self._clock()
        with self._lock:
            self._expire(now)
            if key in self._seen:
                return False
            self._seen[key] = now
            if len(self._seen) > self.max_size:
                self._seen.popitem(last=False)
            return True

    def discard(self, key: str) -> None:
        """Forget ``key`` (for a delivery that was refused after all and will be retried)."""
        with self._lock:
            self._seen.pop(key, None)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            self._expire(self._clock())
            return key in self._seen

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def _expire(self, now: float) -> None:
        deadline = now - self.ttl_seconds
        seen = self._seen
        while seen:
            first = next(iter(seen.values()))
            if first > deadline:
                return
            seen.popitem(last=False)
