"""All of bgwatch's mutable per-process state: response lifecycles and label-value caps.

Everything here is bounded, O(1) per call and guarded by a fork-safe lock (:mod:`._locks`)
that is never held across I/O or an ``await``, so it is safe from threads, asyncio tasks and
forked children alike.
"""

from __future__ import annotations

import heapq
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from . import _locks
from ._classify import TERMINAL_STATUSES
from ._expiring import ExpiringMap, Stamped
from ._safe_log import describe

log = logging.getLogger("bgwatch")

DEFAULT_MAX_TRACKED: Final = 100_000
DEFAULT_TTL_SECONDS: Final = 24 * 3600.0
"""How long an ended id is remembered after it was last seen (so it is never counted twice)."""
DEFAULT_IN_FLIGHT_TTL: Final = 3600.0
"""How long an in-flight id may go unobserved before it counts as abandoned (see README)."""
UNKNOWN_MODEL: Final = "unknown"


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


class _Entry(Stamped):
    """What the tracker knows about one response id (more fields may join; keep it slotted)."""

    __slots__ = ("attachment", "created_at", "first_seen", "model", "queued", "response_id", "status")

    def __init__(
        self,
        first_seen: float,
        status: str,
        model: str,
        attachment: Attachment | None = None,
        *,
        created_at: float = 0.0,
        response_id: str = "",
    ) -> None:
        self.stamp = first_seen
        self.first_seen = first_seen
        """Monotonic time of the first observation."""
        self.status = status
        self.model = model
        """The bounded model label (for ``bg_response_abandoned_total``)."""
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
    """Change of the in-flight count, abandoned responses included: apply it atomically."""
    attachment: Attachment | None = None
    """The entry's attachment (see :meth:`Tracker.observe`); None once the id is terminal."""
    abandoned: tuple[str, ...] = ()
    """Model labels of other responses that left tracking in flight during this call (TTL
    expiry or the size cap): count each in ``bg_response_abandoned_total``. Already part of
    ``in_flight_delta``."""
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

    Two :class:`~bgwatch._expiring.ExpiringMap` hold the ids: in flight (expiring
    ``in_flight_ttl`` seconds after the id was last observed: nobody polls it any more, and
    an unstored response is gone from the API after ~10 minutes anyway) and ended
    (remembered ``ttl_seconds`` after last seen, so that later polls, retries and webhooks of
    the same id are not counted again). Together they hold at most ``max_tracked`` ids: the
    oldest ended id goes first, then the oldest in-flight one. An in-flight id that leaves
    (expiry or the cap) is *abandoned*: it leaves the in-flight count and is reported once.
    """

    def __init__(
        self,
        max_tracked: int = DEFAULT_MAX_TRACKED,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        *,
        in_flight_ttl: float = DEFAULT_IN_FLIGHT_TTL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_tracked, bool) or not isinstance(max_tracked, int) or max_tracked < 1:
            raise ValueError(f"max_tracked must be a positive int, got {max_tracked!r}")
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        if not in_flight_ttl > 0:
            raise ValueError(f"in_flight_ttl must be positive, got {in_flight_ttl!r}")
        self.max_tracked = max_tracked
        self.ttl_seconds = float(ttl_seconds)
        self.in_flight_ttl = float(in_flight_ttl)
        self._clock = clock
        self._wall_clock = wall_clock
        # first_seen in the entries is monotonic; the wall offset converts it for durations.
        self._lock = _locks.Lock()
        self._active: ExpiringMap[str, _Entry] = ExpiringMap(self.in_flight_ttl)
        self._ended: ExpiringMap[str, _Entry] = ExpiringMap(self.ttl_seconds)
        self._evicted_in_flight = 0
        self._expired_in_flight = 0
        # Observations look at the TTLs at most this often (an explicit expire() always does).
        self._expiry_interval = min(1.0, self.in_flight_ttl / 8, self.ttl_seconds / 8)
        self._next_expiry = 0.0
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
        model: str = UNKNOWN_MODEL,
        *,
        created_at: float | None = None,
        from_start: bool = False,
    ) -> Transition:
        """Record that ``response_id`` was seen with ``status`` and say what that changed.

        ``model`` is the bounded model label (kept for the abandoned count). ``created_at``
        (wall-clock seconds) is when the response started, as well as the caller knows; a new
        entry without it starts now. ``from_start`` says that this observation is the answer to
        the create itself: a response that is already past ``queued`` there has its queue wait
        measured at once (see :attr:`Transition.queue_seconds`).

        ``attach`` makes the entry's :class:`Attachment` the first time it is asked for while
        the id is in flight (once per entry, whatever the threads). The attachment comes back
        in every transition up to and including the first terminal one; after that the entry
        no longer holds it. Attachments of entries evicted or expired while in flight are told
        so (:meth:`Attachment.dropped`) after the lock is released.
        """
        dropped: list[tuple[Attachment, str]] = []
        try:
            with self._lock.inner:  # on the path of every observation that changes something
                return self._observe(
                    response_id, status, model, attach, dropped, created_at=created_at, from_start=from_start
                )
        finally:
            for attachment, reason in dropped:
                _tell_dropped(attachment, reason)

    def _observe(
        self,
        response_id: str,
        status: str,
        model: str,
        attach: Callable[[], Attachment] | None,
        dropped: list[tuple[Attachment, str]],
        *,
        created_at: float | None,
        from_start: bool,
    ) -> Transition:
        now = self._clock()  # read under the lock: the maps' order is their stamps' order
        before = len(self._active)
        abandoned = self._expire(now, dropped) if now >= self._next_expiry else []
        ended = self._ended.get(response_id)
        if ended is not None:
            self._ended.put(response_id, ended, now)  # still being looked at: remember it longer
            first_seen = self._to_wall(ended.first_seen, now)
            return Transition(
                False, False, ended.status, first_seen, len(self._active) - before, None, tuple(abandoned)
            )
        terminal = status in TERMINAL_STATUSES
        entry = self._active.get(response_id)
        if entry is None:
            attachment = _make_attachment(attach)
            wall = self._to_wall(now, now)
            start = wall if created_at is None else created_at
            entry = _Entry(
                now, status, model, None if terminal else attachment, created_at=start, response_id=response_id
            )
            (self._ended if terminal else self._active).put(response_id, entry, now)
            if not terminal:
                self._push_start(entry)
            self._enforce_cap(abandoned, dropped)
            queue = max(0.0, wall - start) if from_start and not entry.queued else None
            return Transition(
                True, terminal, None, wall, len(self._active) - before, attachment, tuple(abandoned), queue
            )
        previous = entry.status
        first_seen = self._to_wall(entry.first_seen, now)
        entry.status = status
        if model != UNKNOWN_MODEL:
            entry.model = model
        queue = None
        if entry.queued and status != "queued":  # the first sight past the queue, once per entry
            entry.queued = False
            queue = max(0.0, self._wall_clock() - entry.created_at)
        attachment = entry.attachment
        if attachment is None:
            attachment = entry.attachment = _make_attachment(attach)
        if terminal:
            self._active.pop(response_id)
            entry.attachment = None  # handed over in this transition; a terminal id holds nothing
            self._ended.put(response_id, entry, now)
        else:
            self._active.put(response_id, entry, now)  # observed again: not abandoned
        delta = len(self._active) - before
        return Transition(False, terminal, previous, first_seen, delta, attachment, tuple(abandoned), queue)

    def touch(self, response_id: str, status: str, model: str) -> bool:
        """Refresh an id that this observation leaves as it is; False when it would change it.

        True for an ended id (any status: it stays ended) and for an in-flight id seen again
        with its status and model label (or an unknown model): exactly what :meth:`observe`
        would do there, without the :class:`Transition`. False, changing nothing, for anything
        else and when the TTLs are due for a look (then :meth:`observe` does it).
        """
        with self._lock.inner:  # the hot path of every repeat poll
            now = self._clock()
            if now >= self._next_expiry:
                return False
            if self._ended.refresh(response_id, now) is not None:
                return True
            entry = self._active.get(response_id)
            if entry is None or entry.status != status or model not in (UNKNOWN_MODEL, entry.model):
                return False
            self._active.put(response_id, entry, now)
            return True

    def status_of(self, response_id: str) -> str | None:
        """The last status recorded for an id, or None when it is not tracked."""
        with self._lock:
            entry = self._active.get(response_id) or self._ended.get(response_id)
            return entry.status if entry is not None else None

    @property
    def in_flight(self) -> int:
        """Tracked responses not yet seen in a terminal state."""
        with self._lock:
            return len(self._active)

    def expire(self) -> tuple[str, ...]:
        """Drop entries past their TTL now; the model labels of the in-flight ones (abandoned).

        Each abandoned response has left the in-flight count (``-len(result)``).
        """
        dropped: list[tuple[Attachment, str]] = []
        try:
            with self._lock:
                return tuple(self._expire(self._clock(), dropped))
        finally:
            for attachment, reason in dropped:
                _tell_dropped(attachment, reason)

    def start_afresh(self) -> int:
        """Forget every id (a forked child's start); returns how many were in flight.

        Attachments are not told: they belong to the parent, which still tracks them.
        """
        with self._lock:
            in_flight = len(self._active)
            self._active.clear()
            self._ended.clear()
            self._by_start.clear()
            self._evicted_in_flight = self._expired_in_flight = 0
            return in_flight

    def stats(self) -> TrackerStats:
        """A snapshot of the counters."""
        with self._lock:
            return TrackerStats(
                len(self._active) + len(self._ended),
                len(self._active),
                self._evicted_in_flight,
                self._expired_in_flight,
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._active) + len(self._ended)

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
        return entry.status not in TERMINAL_STATUSES and self._active.get(entry.response_id) is entry

    def _push_start(self, entry: _Entry) -> None:
        heap = self._by_start
        in_flight = len(self._active)
        if len(heap) >= in_flight + (in_flight >> 2) + 256:
            # A fifth or more is stale (finished, evicted, expired): keep the live ones. O(heap)
            # once per in_flight / 4 pushes, so O(1) per push; stale items pin evicted entries
            # only that long.
            heap[:] = [item for item in heap if self._live(item)]
            heapq.heapify(heap)
        heapq.heappush(heap, entry)

    def _to_wall(self, monotonic_time: float, now: float) -> float:
        return self._wall_clock() - (now - monotonic_time)

    def _enforce_cap(self, abandoned: list[str], dropped: list[tuple[Attachment, str]]) -> None:
        for _ in range(len(self._active) + len(self._ended) - self.max_tracked):
            if self._ended.pop_oldest() is not None:
                continue
            oldest = self._active.pop_oldest()
            if oldest is None:  # pragma: no cover - max_tracked >= 1
                return
            entry = oldest[1]
            self._evicted_in_flight += 1
            abandoned.append(entry.model)
            if entry.attachment is not None:
                dropped.append((entry.attachment, "evicted"))

    def _expire(self, now: float, dropped: list[tuple[Attachment, str]]) -> list[str]:
        self._next_expiry = now + self._expiry_interval
        abandoned: list[str] = []
        for _, entry in self._active.expire(now):
            self._expired_in_flight += 1
            abandoned.append(entry.model)
            if entry.attachment is not None:
                dropped.append((entry.attachment, "expired"))
        self._ended.expire(now)
        return abandoned


def _make_attachment(attach: Callable[[], Attachment] | None) -> Attachment | None:
    if attach is None:
        return None
    try:
        return attach()
    except Exception as exc:  # a sink's factory must never break counting
        log.debug("bgwatch: making a tracker attachment failed: %s", describe(exc))
        return None


def _tell_dropped(attachment: Attachment, reason: str) -> None:
    try:
        attachment.dropped(reason)
    except Exception as exc:
        log.debug("bgwatch: a tracker attachment failed while being dropped: %s", describe(exc))


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
        # value -> the one string object stored for it: entries and label children share it
        # instead of each keeping its own copy parsed from a body. Known values and admitted
        # extras share one dict, so that a value that passes is one lookup (see get).
        self._admitted: dict[str | None, str] = {value: value for value in known}
        self._extra = 0
        self._max_extra = max_extra
        self._pattern = pattern
        self._lock = _locks.Lock()
        self.get: Callable[[str | None], str | None] = self._admitted.get
        """``get(value)``: the label of a value that passes as it is (known or admitted), else None.

        A dict's own lookup, without admitting anything: the hot path tries it first and calls
        the object only for None (``label = values.get(value) or values(value)``).
        """

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
        found = self._admitted.get(value)
        if found is not None:
            return found
        if not self._pattern.fullmatch(value):
            return self.OTHER
        with self._lock:
            found = self._admitted.get(value)
            if found is not None:
                return found
            if self._extra < self._max_extra:
                self._admitted[value] = value
                self._extra += 1
                return value
        return self.OTHER

    @property
    def admitted(self) -> frozenset[str]:
        """Every value that may appear as a label (known, admitted extras, other, unknown)."""
        with self._lock:
            return frozenset(self._admitted.values()) | {self.OTHER, self.MISSING}


class RecentIds:
    """A bounded, thread-safe set of recently seen keys that expire after ``ttl_seconds``.

    Used to refuse a replayed webhook delivery (same ``webhook-id``). O(1) per call; the
    oldest key is dropped first when ``max_size`` is reached. A forked child keeps the set
    (the keys were accepted; a replay to the child is still a replay).
    """

    def __init__(self, max_size: int, ttl_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        self.max_size = max_size
        self.ttl_seconds = float(ttl_seconds)
        self._clock = clock
        self._lock = _locks.Lock()
        self._seen: ExpiringMap[str, Stamped] = ExpiringMap(self.ttl_seconds)

    def add(self, key: str) -> bool:
        """Remember ``key``; True when it was not already remembered (and not expired)."""
        with self._lock:
            now = self._clock()
            self._seen.expire(now)
            if key in self._seen:
                return False
            self._seen.put(key, Stamped(), now)
            if len(self._seen) > self.max_size:
                self._seen.pop_oldest()
            return True

    def discard(self, key: str) -> None:
        """Forget ``key`` (for a delivery that was refused after all and will be retried)."""
        with self._lock:
            self._seen.pop(key)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            self._seen.expire(self._clock())
            return key in self._seen

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)
