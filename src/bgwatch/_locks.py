"""Locks that never hang a forked child, and per-process state that a child starts afresh.

``os.fork()`` copies a process with only the forking thread; a lock that another thread held
at that moment stays locked in the child forever. Processes that embed bgwatch fork while
other threads poll (multiprocessing's ``fork`` start method, gunicorn ``preload_app``,
Celery's prefork pool), so every lock bgwatch owns is made here, never with ``threading``
directly (a test greps ``src/`` for that):

* before a fork, the forking thread takes every registered lock (in creation order, each
  bounded by :data:`FORK_ACQUIRE_TIMEOUT`, so that a fork is never blocked for good), so no
  other thread is inside a critical section when the memory is copied;
* after the fork, the parent releases them; the child gets fresh, unlocked ones and then
  runs the registered :func:`at_fork_in_child` callbacks, which reset per-process state.

Rule that makes the acquisition order irrelevant: bgwatch never holds two of its registered
locks at once (nothing is called under one of them that takes another).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import weakref
from typing import Any, Final

__all__ = [
    "FORK_ACQUIRE_TIMEOUT",
    "PLAIN_LOCK_TYPE",
    "Condition",
    "Lock",
    "at_fork_in_child",
    "fresh_foreign_lock",
    "replace_foreign_lock",
    "unregistered_lock",
]

FORK_ACQUIRE_TIMEOUT: Final = 2.0
"""Seconds the forking thread waits for one lock; a lock held longer is skipped (the child
still gets a fresh one). Critical sections are microseconds long, so this only ever matters
when the forking thread itself holds a bgwatch lock (a fork from inside a sink)."""


class _Registry:
    """Every registered lock and child callback; its own lock is taken last before a fork (so
    nothing registers mid-fork) and replaced in the child."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.locks: weakref.WeakSet[Lock] = weakref.WeakSet()
        self.ranks = itertools.count()
        self.callbacks: list[tuple[weakref.ref[Any], str]] = []
        self.held_for_fork: list[Lock] = []


_registry = _Registry()

PLAIN_LOCK_TYPE: Final[type[Any]] = type(_registry.lock)
"""The type of ``threading.Lock()`` objects (to find other libraries' locks)."""


class Lock:
    """A mutex (``with lock: ...``) that is safe across ``os.fork()``.

    Not reentrant. Use it for long-lived state; for state that a forked child never reaches
    (see :func:`unregistered_lock`) a plain lock is cheaper.
    """

    __slots__ = ("__weakref__", "_rank", "inner")

    def __init__(self) -> None:
        self.inner: Any = self._new()
        """The current ``threading`` lock: ``with lock.inner:`` is ``with lock:`` without two Python
        calls, for the hottest paths. Renewed in a forked child: read it at each use, never keep it."""
        with _registry.lock:
            self._rank = next(_registry.ranks)
            _registry.locks.add(self)

    @staticmethod
    def _new() -> Any:
        return threading.Lock()

    def __enter__(self) -> bool:
        return bool(self.inner.acquire())

    def __exit__(self, *exc_info: object) -> None:
        self.inner.release()

    def _renew(self) -> None:
        self.inner = self._new()


class Condition(Lock):
    """A condition variable (``with cond: cond.wait()``) that is safe across ``os.fork()``."""

    __slots__ = ()

    @staticmethod
    def _new() -> Any:
        return threading.Condition(threading.Lock())

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock, wait for a notification or ``timeout``, re-acquire (as threading's)."""
        return bool(self.inner.wait(timeout))

    def notify_all(self) -> None:
        """Wake every waiter (call with the lock held)."""
        self.inner.notify_all()


def unregistered_lock() -> threading.Lock:
    """A plain lock for per-response state that a forked child can never reach.

    The only such state is what the tracker's entries hold (lifecycle spans): the child
    resets its trackers, so it never touches a lock a parent thread may have held. Registering
    one lock per in-flight response would make every fork wait for thousands of locks.
    """
    return threading.Lock()


def at_fork_in_child(owner: object, method: str) -> None:
    """Call ``owner.<method>()`` in a forked child, after every lock is fresh.

    Held weakly: a collected owner is skipped. A callback that raises is ignored (a fork must
    never fail because of bgwatch).
    """
    with _registry.lock:
        callbacks = _registry.callbacks
        callbacks.append((weakref.ref(owner), method))
        if len(callbacks) >= 64 and len(callbacks) & (len(callbacks) - 1) == 0:  # prune now and then
            callbacks[:] = [(ref, name) for ref, name in callbacks if ref() is not None]


def _before_fork() -> None:
    with _registry.lock:
        locks = sorted(_registry.locks, key=lambda lock: lock._rank)
    held: list[Lock] = []
    for lock in locks:
        if lock.inner.acquire(timeout=FORK_ACQUIRE_TIMEOUT):
            held.append(lock)
    _registry.lock.acquire()
    _registry.held_for_fork = held


def _after_fork_in_parent() -> None:
    held, _registry.held_for_fork = _registry.held_for_fork, []
    _registry.lock.release()
    for lock in held:
        lock.inner.release()


def _after_fork_in_child() -> None:
    _registry.lock = threading.Lock()
    _registry.held_for_fork = []
    for lock in list(_registry.locks):
        lock._renew()
    for ref, method in list(_registry.callbacks):
        owner = ref()
        if owner is not None:
            with contextlib.suppress(Exception):  # the child must go on; nowhere safe to report
                getattr(owner, method)()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def fresh_foreign_lock() -> threading.Lock:
    """A new lock for another library's object, made in a forked child (see :func:`replace_foreign_lock`)."""
    return threading.Lock()


def replace_foreign_lock(owner: object, attribute: str) -> None:
    """In a forked child, give ``owner`` a fresh lock in place of one a parent thread may have held.

    For locks of other libraries that bgwatch calls while counting (prometheus_client's), which
    have no fork handling of their own.
    """
    setattr(owner, attribute, fresh_foreign_lock())
