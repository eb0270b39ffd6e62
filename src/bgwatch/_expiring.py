"""One bounded, expiring map for every "remember this for a while" in bgwatch.

The tracker (response ids in flight and ended) and the webhook receiver's replay set
(``webhook-id`` values) both need: O(1) lookup, O(1) insert, a size cap that drops the oldest
first, and entries that expire a fixed time after they were last stored. Keys are kept in the
order they were last stored, so expiry only ever looks at the front.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

__all__ = ["ExpiringMap", "Stamped"]


class Stamped:
    """Base of the values an :class:`ExpiringMap` holds: the map keeps each one's last store
    time on the value itself (no wrapper per entry). Subclasses add their own slots."""

    __slots__ = ("stamp",)

    def __init__(self) -> None:
        self.stamp = 0.0


K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Stamped)


class ExpiringMap(Generic[K, V]):
    """Keys in the order they were last :meth:`put`, each expiring ``ttl`` seconds after it.

    Not thread-safe: its owner holds a lock around every call (the tracker changes two maps
    and its counters in one critical section). Times are whatever clock the owner passes in,
    as long as it never goes backwards (``time.monotonic``); read them under the owner's lock
    so that the order of keys is the order of their stamps.

    Values are :class:`Stamped` objects whose other fields the map never reads (the
    tracker's entries, which may grow).
    """

    __slots__ = ("_items", "get", "ttl")

    def __init__(self, ttl: float) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be positive, got {ttl!r}")
        self.ttl = float(ttl)
        self._items: OrderedDict[K, V] = OrderedDict()
        # The dict's own method, not a Python one around it: every poll looks an id up.
        self.get: Callable[[K], V | None] = self._items.get
        """``get(key)``: the value of ``key``, or None (expired keys count until :meth:`expire` drops them)."""

    def put(self, key: K, value: V, now: float) -> None:
        """Store ``value`` under ``key``, stamped ``now``: it moves to the back and expires at ``now + ttl``."""
        value.stamp = now
        self._items[key] = value
        self._items.move_to_end(key)

    def refresh(self, key: K, now: float) -> V | None:
        """Stamp the value of ``key`` ``now`` (as :meth:`put` would store it again) and return it; None when absent."""
        value = self._items.get(key)
        if value is not None:
            value.stamp = now
            self._items.move_to_end(key)
        return value

    def pop(self, key: K) -> V | None:
        """Remove ``key``; its value, or None."""
        return self._items.pop(key, None)

    def pop_oldest(self) -> tuple[K, V] | None:
        """Remove and return the least recently stored entry, or None when empty."""
        if not self._items:
            return None
        return self._items.popitem(last=False)

    def expire(self, now: float) -> Sequence[tuple[K, V]]:
        """Remove every entry stored at or before ``now - ttl``; returns them, oldest first."""
        items = self._items
        deadline = now - self.ttl
        if not items or next(iter(items.values())).stamp > deadline:
            return ()  # the common case, without allocating
        expired: list[tuple[K, V]] = []
        while items:
            key, value = next(iter(items.items()))
            if value.stamp > deadline:
                break
            del items[key]
            expired.append((key, value))
        return expired

    def clear(self) -> None:
        """Forget everything."""
        self._items.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)
