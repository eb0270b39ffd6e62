"""Cost of the lifecycle metrics (issue 15): the oldest-in-flight heap and gauge, and reading
``usage`` from terminal bodies. Prints medians; asserts nothing.

    .venv/bin/python benchmarks/lifecycle.py
"""

from __future__ import annotations

import json
import statistics
import time
import tracemalloc
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

import bgwatch
from bgwatch._classify import classify_body
from bgwatch._tracker import Tracker


def median_us(fn: Callable[[], object], repeat: int = 7, number: int = 20) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - start) / number)
    return statistics.median(times) * 1e6


def lifecycle_per_response(in_flight: int, responses: int = 100_000) -> float:
    """µs per response for create (queued) + poll (in_progress) + poll (completed)."""
    tracker = Tracker()
    ids = [f"resp_{n:048x}" for n in range(responses + in_flight)]
    now = time.time()
    for rid in ids[:in_flight]:
        tracker.observe(rid, "queued", created_at=now, from_start=True)
    start = time.perf_counter()
    for n, rid in enumerate(ids[in_flight:]):
        tracker.observe(rid, "queued", created_at=now, from_start=True)
        tracker.observe(rid, "in_progress")
        tracker.observe(ids[n], "completed")  # keeps in_flight constant
    return (time.perf_counter() - start) / responses * 1e6


def scrape(in_flight: int) -> tuple[float, float]:
    """µs for the oldest-in-flight age alone, and for a whole /metrics exposition."""
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    now = time.time()
    for n in range(in_flight):
        watcher.tracker.observe(f"resp_{n:048x}", "queued", created_at=now - n)
    sink = watcher.sinks[0]
    return median_us(sink._oldest_age), median_us(lambda: generate_latest(registry), number=5)  # type: ignore[attr-defined]


def memory_per_in_flight(count: int = 100_000) -> float:
    tracemalloc.start()
    tracker = Tracker(max_tracked=count)
    now = time.time()
    for n in range(count):
        tracker.observe(f"resp_{n:048x}", "in_progress", created_at=now + n)
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return used / count


def body(status: str, size: int) -> bytes:
    doc = {
        "id": "resp_" + "a" * 48,
        "object": "response",
        "created_at": 1_800_000_000,
        "status": status,
        "background": True,
        "completed_at": 1_800_000_010 if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "model": "gpt-4.1-2025-04-14",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "x" * size}]}],
        "usage": {"input_tokens": 10, "output_tokens": size // 4, "total_tokens": 10 + size // 4},
    }
    return json.dumps(doc).encode()


def main() -> None:
    print("tracker, create + 2 polls per response (µs per response):")
    for in_flight in (10, 10_000, 100_000):
        print(f"  {in_flight:>7} in flight: {lifecycle_per_response(in_flight):6.2f}")
    print("scrape with N in flight (µs): oldest-in-flight age / whole exposition")
    for in_flight in (0, 1_000, 100_000):
        age, whole = scrape(in_flight)
        print(f"  {in_flight:>7}: {age:8.2f} / {whole:9.1f}")
    print(f"tracker memory per in-flight response at 100k: {memory_per_in_flight():.0f} bytes")
    print("classify a body (µs): running (prefix only) / terminal (read up to its usage)")
    for size in (2_000, 100_000, 1_000_000):
        running, done = body("in_progress", size), body("completed", size)
        r = median_us(lambda b=running: classify_body("retrieve", 200, b))
        d = median_us(lambda b=done: classify_body("retrieve", 200, b))
        print(f"  {size:>9} B: {r:8.1f} / {d:8.1f}")


if __name__ == "__main__":
    main()
