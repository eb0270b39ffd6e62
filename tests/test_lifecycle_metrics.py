"""Queue wait, oldest in flight and tokens: the real SDK against the simulator, vs its ledger.

The simulator's ledger knows, per response, when it was created (to the microsecond, while
bodies say whole seconds), how long it really stayed queued, when a client was first sent it
past ``queued`` and the ``usage`` of its terminal body. bgwatch's histogram and counters must
agree: tokens exactly, queue waits in count exactly and in sum within the loopback round trips.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

import bgwatch
from bgwatch.simulator import Mix, Outcome, Simulator

MODEL = "gpt-4o-mini"
TERMINAL = frozenset(("completed", "failed", "incomplete", "cancelled"))
ROUND_TRIPS = 0.05  # seconds per response: generous for loopback on a loaded 2-core machine


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == name
    }


def queue_histogram(registry: CollectorRegistry) -> tuple[float, float]:
    """(count, sum) of bg_response_queue_seconds over all models."""
    return sum(samples(registry, "bg_response_queue_seconds_count").values()), sum(
        samples(registry, "bg_response_queue_seconds_sum").values()
    )


def tokens_by_type_and_status(registry: CollectorRegistry) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for labels, value in samples(registry, "bg_response_tokens_total").items():
        d = dict(labels)
        assert d["model"] == MODEL
        found[d["type"], d["status"]] += int(value)
    return found


def ledger_tokens(ledger: dict[str, Outcome]) -> Counter[tuple[str, str]]:
    found: Counter[tuple[str, str]] = Counter()
    for outcome in ledger.values():
        found["input", outcome.status] += outcome.input_tokens
        found["output", outcome.status] += outcome.output_tokens
    return found


def check_against_ledger(registry: CollectorRegistry, ledger: dict[str, Outcome], responses: int) -> None:
    assert len(ledger) == responses
    assert tokens_by_type_and_status(registry) == ledger_tokens(ledger)
    count, total = queue_histogram(registry)
    assert count == responses  # every response was polled past its queue
    seen = sum(o.queue_seen_seconds or 0.0 for o in ledger.values())
    true = sum(o.queue_seconds or 0.0 for o in ledger.values())
    # What a poller can see (first body past queued), up to the loopback round trips ...
    assert abs(total - seen) <= responses * ROUND_TRIPS, (total, seen, true)
    # ... which is the real queue time, late by up to a poll gap each, never early.
    assert total >= true - responses * ROUND_TRIPS, (total, true)


def _poll_to_end(client: openai.OpenAI, index: int) -> None:
    outcome = ("completed", "failed:server_error", "incomplete:max_output_tokens", "cancelled")[index % 4]
    response = client.responses.create(
        model=MODEL, input=f"question {index} " * (index + 1), background=True, metadata={"bgwatch_outcome": outcome}
    )
    if index % 8 == 7:
        client.responses.cancel(response.id)  # while queued: nothing spent, queue ends at the cancel
    while response.status not in TERMINAL:
        time.sleep(0.02)
        response = client.responses.retrieve(response.id)


@pytest.mark.parametrize("output_bytes", [64, 300_000], ids=["small", "large-bodies"])
def test_sync_polling_counts_queue_wait_and_tokens_as_the_ledger(output_bytes: int) -> None:
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    responses = 16
    with Simulator(
        seed=4,
        durations=(0.05, 0.15),
        queue_seconds=(0.1, 0.5),
        poll_after_ms=20,
        output_bytes=output_bytes,
    ) as sim:
        client = openai.OpenAI(
            base_url=sim.base_url, api_key="sk-test", http_client=bgwatch.http_client(watcher=watcher)
        )
        threads = [threading.Thread(target=_poll_to_end, args=(client, n)) for n in range(responses)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ledger = sim.ledger()
    cancelled_in_queue = [o for o in ledger.values() if o.status == "cancelled" and o.input_tokens == 0]
    assert len(cancelled_in_queue) == 2  # the API cancels: usage all zeros, and counted as such
    assert all(o.queue_seconds is not None and o.queue_seconds < 0.5 for o in cancelled_in_queue)
    check_against_ledger(registry, ledger, responses)
    assert registry.get_sample_value("bg_response_oldest_in_flight_seconds") == 0.0


def test_async_polling_counts_queue_wait_and_tokens_as_the_ledger() -> None:
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    responses = 16

    async def one(client: openai.AsyncOpenAI) -> None:
        response = await client.responses.create(model=MODEL, input="hello there", background=True)
        while response.status not in TERMINAL:
            await asyncio.sleep(0.02)
            response = await client.responses.retrieve(response.id)

    with Simulator(seed=5, mix=Mix(), durations=(0.05, 0.1), queue_seconds=(0.0, 0.4), poll_after_ms=20) as sim:

        async def main() -> None:
            client = openai.AsyncOpenAI(
                base_url=sim.base_url, api_key="sk-test", http_client=bgwatch.async_http_client(watcher=watcher)
            )
            await asyncio.gather(*(one(client) for _ in range(responses)))
            await client.close()

        asyncio.run(main())
        ledger = sim.ledger()
    check_against_ledger(registry, ledger, responses)


@pytest.mark.parametrize("final", ["completed", "failed:server_error", "incomplete:max_output_tokens", "cancelled"])
def test_a_stream_measures_the_queue_exactly_and_counts_its_tokens(final: str) -> None:
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    with Simulator(durations=(0.05, 0.05), queue_seconds=(0.3, 0.3)) as sim:
        client = openai.OpenAI(
            base_url=sim.base_url, api_key="sk-test", http_client=bgwatch.http_client(watcher=watcher)
        )
        events: list[Any] = list(
            client.responses.create(
                model=MODEL, input="stream me", background=True, stream=True, metadata={"bgwatch_outcome": final}
            )
        )
        (outcome,) = sim.ledger().values()
    assert events[0].type == "response.created" and events[0].response.status == "queued"
    count, total = queue_histogram(registry)
    assert count == 1
    # The in_progress event is sent the moment the queue ends: no poll gap, only the round trip.
    assert outcome.queue_seconds == pytest.approx(0.3, abs=0.001)
    assert total == pytest.approx(outcome.queue_seconds, abs=ROUND_TRIPS)
    assert tokens_by_type_and_status(registry) == ledger_tokens({"r": outcome})
    assert sum(tokens_by_type_and_status(registry).values()) > 0


def test_oldest_in_flight_is_the_age_of_the_oldest_response_at_scrape_time() -> None:
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    oldest = lambda: registry.get_sample_value("bg_response_oldest_in_flight_seconds")  # noqa: E731
    assert oldest() == 0.0
    with Simulator(durations=(0.1, 0.1), queue_seconds=(1.2, 1.2), poll_after_ms=20) as sim:
        client = openai.OpenAI(
            base_url=sim.base_url, api_key="sk-test", http_client=bgwatch.http_client(watcher=watcher)
        )
        first = client.responses.create(model=MODEL, input="a", background=True)
        time.sleep(0.5)
        second = client.responses.create(model=MODEL, input="b", background=True)
        age = oldest()
        created = sim.outcomes()[first.id].created_at
        assert created is not None
        # From this process's sight of the create (created_at is whole seconds): the true age, less a round trip.
        assert time.time() - created - ROUND_TRIPS <= age <= time.time() - created  # type: ignore[operator]
        time.sleep(0.2)
        assert oldest() == pytest.approx(age + 0.2, abs=ROUND_TRIPS)  # type: ignore[operator]
        for created_response in (first, second):
            status = created_response.status
            while status not in TERMINAL:
                time.sleep(0.05)
                status = client.responses.retrieve(created_response.id).status
    assert oldest() == 0.0
    assert watcher.tracker.in_flight == 0


WORKER = """
import sys, time, openai, bgwatch
base_url, hold = sys.argv[1], float(sys.argv[2])
client = openai.OpenAI(base_url=base_url, api_key="sk-test", http_client=bgwatch.http_client())
response = client.responses.create(model="m", input="x", background=True)
time.sleep(hold)
client.responses.retrieve(response.id)  # still queued: refreshes this worker's age in its file
"""


def test_oldest_in_flight_in_multiprocess_mode_is_the_max_over_workers_at_their_last_observation(
    tmp_path: Path,
) -> None:
    # prometheus_client's multiprocess mode cannot call back at scrape time: each worker writes
    # its age at every observation (livemax), so the aggregate is as of each one's last.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    with Simulator(durations=(60.0, 60.0), queue_seconds=(30.0, 30.0)) as sim:
        for hold in ("0.1", "0.7"):
            subprocess.run([sys.executable, "-c", WORKER, sim.base_url, hold], env=env, timeout=60, check=True)

    def aggregate() -> float | None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
        return registry.get_sample_value("bg_response_oldest_in_flight_seconds")

    # The second worker's response was 0.7 s old at its last observation (created_at is whole
    # seconds; the start is the create's answer, so no second is lost).
    assert aggregate() == pytest.approx(0.7, abs=0.2)
    for path in tmp_path.glob("gauge_livemax_*.db"):  # what mark_process_dead() does for a worker
        path.unlink()
    assert aggregate() is None
