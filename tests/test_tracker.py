"""The tracker and label caps: exactly-once, bounded, thread-safe."""

from __future__ import annotations

import gc
import threading
import tracemalloc

import pytest

from bgwatch._tracker import LabelValues, Tracker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_terminal_state_is_reported_once() -> None:
    tracker = Tracker()
    first = tracker.observe("r", "queued")
    assert first.new and not first.finished and first.in_flight_delta == 1
    assert not tracker.observe("r", "in_progress").finished
    done = tracker.observe("r", "failed")
    assert done.finished and done.previous_status == "in_progress" and done.in_flight_delta == -1
    again = tracker.observe("r", "failed")
    assert not again.finished and not again.new and again.in_flight_delta == 0
    # A terminal response never changes status again, whatever a later body says.
    assert not tracker.observe("r", "completed").finished
    assert tracker.status_of("r") == "failed"
    assert tracker.in_flight == 0


def test_first_sight_terminal_counts_without_touching_in_flight() -> None:
    tracker = Tracker()
    seen = tracker.observe("r", "completed")
    assert seen.new and seen.finished and seen.in_flight_delta == 0
    assert tracker.in_flight == 0


def test_capacity_evicts_oldest_and_corrects_in_flight() -> None:
    tracker = Tracker(max_tracked=3)
    for n in range(3):
        tracker.observe(f"r{n}", "queued")
    transition = tracker.observe("r3", "queued")
    assert transition.in_flight_delta == 0  # +1 for r3, -1 for evicted r0
    assert len(tracker) == 3 and tracker.in_flight == 3
    assert tracker.status_of("r0") is None
    assert tracker.stats().evicted_in_flight == 1


def test_ttl_expires_entries() -> None:
    clock = FakeClock()
    tracker = Tracker(ttl_seconds=60, in_flight_ttl=60, clock=clock)
    tracker.observe("old", "in_progress", model="m1")
    tracker.observe("done", "completed")
    clock.now += 61
    transition = tracker.observe("new", "queued", model="m2")
    assert transition.in_flight_delta == 0  # +1 new, -1 expired "old"
    assert transition.abandoned == ("m1",)
    assert tracker.status_of("old") is None and tracker.status_of("done") is None
    assert tracker.stats().expired_in_flight == 1
    clock.now += 61
    assert tracker.expire() == ("m2",)
    assert tracker.in_flight == 0 and len(tracker) == 0


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        Tracker(max_tracked=0)
    with pytest.raises(ValueError):
        Tracker(ttl_seconds=0)


def test_concurrent_observers_count_each_finish_exactly_once() -> None:
    tracker = Tracker()
    finished: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        local = 0
        for n in range(2000):
            rid = f"r{n}"
            tracker.observe(rid, "in_progress")
            if tracker.observe(rid, "failed").finished:
                local += 1
        with lock:
            finished.append(local)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(finished) == 2000
    assert tracker.in_flight == 0


def test_a_million_never_finished_ids_stay_under_the_cap() -> None:
    cap = 10_000
    tracker = Tracker(max_tracked=cap)
    for n in range(1_000_000):
        tracker.observe(f"resp_{n:048x}", "in_progress")
    assert len(tracker) == cap and tracker.in_flight == cap
    assert tracker.stats().evicted_in_flight == 1_000_000 - cap


def test_tracker_memory_per_response_and_no_growth_past_the_cap() -> None:
    # Traced from empty, so every byte the tracker holds (entries, ids of real length,
    # ordering nodes, hash tables) is counted. Tracing a million ids would take ~15 s; the
    # structure is the same whatever the count, so steady state is reached after one refill.
    cap = 10_000
    gc.collect()
    tracemalloc.start()
    tracker = Tracker(max_tracked=cap)
    readings = []
    for n in range(6 * cap):
        tracker.observe(f"resp_{n:048x}", "in_progress", created_at=1_800_000_000.0 + n)
        if n % (2 * cap) == 2 * cap - 1:
            readings.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    # ~280 bytes before the lifecycle fields; created_at (a float), the queued mark and the id
    # on the entry add ~50, and at the cap, where every new id evicts one in flight, up to a
    # quarter of the cap in evicted entries waits in the oldest-in-flight heap (~400 measured).
    assert readings[0] / cap < 420, readings[0] / cap
    assert readings[-1] <= readings[0] * 1.01, readings


def test_label_values_are_bounded() -> None:
    labels = LabelValues.for_codes(["server_error"], max_extra=3)
    assert labels("server_error") == "server_error"
    assert labels(None) == "unknown" and labels("") == "unknown"
    assert labels("Not A Code!") == "other"
    assert labels("x" * 65) == "other"
    assert [labels(f"new_code_{n}") for n in range(5)] == [
        "new_code_0",
        "new_code_1",
        "new_code_2",
        "other",
        "other",
    ]
    assert labels("new_code_1") == "new_code_1"  # admitted values stay admitted
    assert len(labels.admitted) == 1 + 3 + 2
    # get: the label of a value that passes as it is, without admitting anything
    assert labels.get("server_error") == "server_error" and labels.get("new_code_2") == "new_code_2"
    assert labels.get("new_code_3") is None and labels.get(None) is None and labels.get("") is None
    fresh = LabelValues.for_codes((), max_extra=1)
    assert fresh.get("some_code") is None and fresh("other_code") == "other_code"


def test_model_labels() -> None:
    models = LabelValues.for_models((), max_extra=2)
    assert models("gpt-4.1-2025-04-14") == "gpt-4.1-2025-04-14"
    assert models("ft:gpt-4o:org:name:abc") == "ft:gpt-4o:org:name:abc"
    assert models("a third model") == "other"
    assert models("third-model") == "other"


def test_queue_wait_is_measured_once_from_the_start_to_the_first_sight_past_queued() -> None:
    wall = FakeClock()
    tracker = Tracker(wall_clock=wall)
    assert tracker.observe("r", "queued", created_at=990.0, from_start=True).queue_seconds is None
    wall.now = 1003.5
    assert tracker.observe("r", "queued").queue_seconds is None
    assert tracker.observe("r", "in_progress").queue_seconds == 13.5
    wall.now = 1010.0
    # A stale "queued" body processed late, then in_progress again: measured once only.
    assert tracker.observe("r", "queued").queue_seconds is None
    assert tracker.observe("r", "in_progress").queue_seconds is None
    assert tracker.observe("r", "completed").queue_seconds is None


def test_queue_wait_ends_at_a_terminal_state_when_in_progress_was_never_seen() -> None:
    wall = FakeClock()
    tracker = Tracker(wall_clock=wall)
    tracker.observe("r", "queued", created_at=999.0)  # first seen queued on a poll: still from created_at
    wall.now = 1002.0
    done = tracker.observe("r", "cancelled")
    assert done.finished and done.queue_seconds == 3.0


def test_queue_wait_of_a_create_answered_running_is_measured_at_once_and_never_negative() -> None:
    wall = FakeClock()
    tracker = Tracker(wall_clock=wall)
    assert tracker.observe("a", "in_progress", created_at=999.75, from_start=True).queue_seconds == 0.25
    # created_at after the local clock (a skewed clock): clamped to 0, not negative
    assert tracker.observe("b", "in_progress", created_at=1001.0, from_start=True).queue_seconds == 0.0
    # first seen running on a poll: the wait before is unknown, nothing is measured
    assert tracker.observe("c", "in_progress", created_at=900.0).queue_seconds is None
    assert tracker.observe("c", "completed").queue_seconds is None
    # first seen finished (a webhook): nothing either
    assert tracker.observe("d", "failed", created_at=900.0, from_start=False).queue_seconds is None


def test_oldest_in_flight_follows_finishes_evictions_and_expiry() -> None:
    clock = FakeClock()
    tracker = Tracker(max_tracked=4, ttl_seconds=60, in_flight_ttl=60, clock=clock)
    assert tracker.oldest_in_flight_created_at() is None
    tracker.observe("late", "queued", created_at=500.0)
    tracker.observe("early", "queued", created_at=100.0)
    tracker.observe("done", "completed", created_at=50.0)  # never in flight
    tracker.observe("mid", "in_progress", created_at=300.0)
    assert tracker.oldest_in_flight_created_at() == 100.0
    tracker.observe("early", "failed")
    assert tracker.oldest_in_flight_created_at() == 300.0
    tracker.observe("x", "queued", created_at=400.0)  # the cap evicts ended ids first: "done"
    tracker.observe("y", "queued", created_at=450.0)  # then "early"
    assert tracker.status_of("late") == "queued"
    tracker.observe("z", "queued", created_at=460.0)  # no ended id left: the oldest in flight goes
    assert tracker.status_of("late") is None
    assert tracker.oldest_in_flight_created_at() == 300.0
    tracker.observe("mid", "completed")
    assert tracker.oldest_in_flight_created_at() == 400.0
    clock.now += 61
    assert len(tracker.expire()) == 3  # x, y and z abandoned
    assert tracker.oldest_in_flight_created_at() is None


def test_oldest_in_flight_heap_stays_bounded_by_the_in_flight_count() -> None:
    tracker = Tracker()
    for n in range(50_000):
        tracker.observe(f"r{n}", "queued", created_at=float(n))
        if n >= 10:
            tracker.observe(f"r{n - 10}", "completed")
    assert tracker.in_flight == 10
    assert tracker.oldest_in_flight_created_at() == 49_990.0
    assert len(tracker._by_start) <= 10 + 10 // 4 + 256
