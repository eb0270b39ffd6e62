"""Fault injection with ground truth: 10,000 background responses through the simulator.

The simulator runs in its own process (so that the server and the clients use both cores)
and serves over loopback with a random outcome mix and random faults: 5% server errors
(500/503/429, retried by the SDK), connection resets, truncated bodies and slow answers that
hit the client's short timeout. Clients from 32 threads and from an asyncio loop, at the same
time and through one watcher, create background responses and poll each one until it ends
or they give up.

The ground truth is twofold: the simulator's ledger (the outcome each response really
reached) and what the SDK handed back to the clients (which responses were observed in a
terminal state, and as what). bgwatch must have counted every observed terminal response
exactly once under its status, code and reason, nothing else, every poll, every create,
and must leave in flight exactly the responses a client stopped watching before their end;
once nobody has looked at those for ``in_flight_ttl`` they are abandoned, and every response
whose create was seen is accounted for: in flight + finished + abandoned == created.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch.simulator import Faults, Mix, Outcome, Simulator

from .conftest import sample

pytestmark = pytest.mark.slow

MODEL = "gpt-4.1-mini"
THREADS = 32
TASKS = 64
RESPONSES_THREADED = int(os.environ.get("BGWATCH_RELIABILITY_THREADED", "6000"))
RESPONSES_ASYNC = int(os.environ.get("BGWATCH_RELIABILITY_ASYNC", "4000"))
TERMINAL = frozenset(("completed", "failed", "incomplete", "cancelled"))
# 9% of requests get a fault: 5% server errors, 1% each resets before the request is read,
# replies cut after the request took effect, truncated bodies, slow answers.
FAULTS = Faults(rate=0.09, kinds=("500", "503", "429", "500", "503", "reset", "cut", "truncate", "slow"), seed=7)
MIX = Mix(completed=55, failed=25, incomplete=10, cancelled=10)
CLIENT_TIMEOUT = 0.5  # seconds; the "slow" fault answers after 1 s
MAX_POLL_FAILURES = 6  # polls in a row that fail (after the SDK's own retries) before giving up
WALK_AWAY = 0.03  # share of responses whose client stops watching right after the create


def _serve(conn: Connection) -> None:
    """The simulator's process: serve, then answer "ledger" and "stop"."""
    sim = Simulator(
        seed=11,
        mix=MIX,
        durations=(0.0, 0.04),
        poll_after_ms=20,
        faults=FAULTS,
        slow_seconds=1.0,
        retry_after_ms=5,
    ).start()
    conn.send(sim.base_url)
    while True:
        message = conn.recv()
        if message == "ledger":
            conn.send(sim.ledger())
        elif message == "faults":
            log = sim.request_log
            conn.send(
                {kind: log.count(fault=kind) for kind in ("500", "503", "429", "reset", "cut", "truncate", "slow")}
            )
        elif message == "stop":
            sim.stop()
            conn.send(sim.internal_errors)
            return


@pytest.fixture(scope="module")
def simulator() -> Iterator[tuple[str, Connection]]:
    """A simulator in a child process: (base URL, control connection)."""
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(theirs,), daemon=True)
    process.start()
    try:
        assert ours.poll(60), "the simulator did not start"
        yield ours.recv(), ours
        ours.send("stop")
        assert ours.poll(30) and ours.recv() == [], "the simulator hit internal errors"
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()


@dataclass
class Seen:
    """What the SDK handed back to the clients: the ground truth of observation."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    last: dict[str, str] = field(default_factory=dict)
    terminal: dict[str, tuple[str, str | None, str | None]] = field(default_factory=dict)
    polls: Counter[str] = field(default_factory=Counter)
    creates: int = 0
    failed_creates: int = 0
    failed_polls: int = 0
    abandoned: int = 0
    walked_away: int = 0
    # time.time() just after the SDK handed back the create's answer / the first answer past queued
    create_answered: dict[str, float] = field(default_factory=dict)
    started_answered: dict[str, float] = field(default_factory=dict)

    def created(self, response: Any) -> None:
        answered = time.time()
        with self.lock:
            self.creates += 1
            self.create_answered[response.id] = answered
            self._saw(response, answered)

    def polled(self, response: Any) -> None:
        answered = time.time()
        with self.lock:
            self.polls[response.status] += 1
            self._saw(response, answered)

    def _saw(self, response: Any, answered: float) -> None:
        self.last[response.id] = response.status
        if response.status != "queued":
            self.started_answered.setdefault(response.id, answered)
        if response.status in TERMINAL:
            code = response.error.code if response.error is not None else None
            reason = response.incomplete_details.reason if response.incomplete_details is not None else None
            self.terminal.setdefault(response.id, (response.status, code, reason))


class OffsetClock:
    """time.monotonic() plus an offset the test moves forward (to let the in-flight TTL pass)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def _lifecycle(client: openai.OpenAI, seen: Seen, rng: random.Random) -> None:
    try:
        response = client.responses.create(model=MODEL, input="hi", background=True)
    except openai.APIError:
        with seen.lock:
            seen.failed_creates += 1
        return
    seen.created(response)
    if rng.random() < WALK_AWAY:
        with seen.lock:
            seen.walked_away += 1
        return
    failures = 0
    while response.status not in TERMINAL:
        time.sleep(rng.uniform(0.005, 0.03))
        try:
            response = client.responses.retrieve(response.id)
        except openai.APIError:
            failures += 1
            with seen.lock:
                seen.failed_polls += 1
            if failures >= MAX_POLL_FAILURES:
                with seen.lock:
                    seen.abandoned += 1
                return
            continue
        failures = 0
        seen.polled(response)


async def _async_lifecycle(client: openai.AsyncOpenAI, seen: Seen, rng: random.Random) -> None:
    try:
        response = await client.responses.create(model=MODEL, input="hi", background=True)
    except openai.APIError:
        with seen.lock:
            seen.failed_creates += 1
        return
    seen.created(response)
    if rng.random() < WALK_AWAY:
        with seen.lock:
            seen.walked_away += 1
        return
    failures = 0
    while response.status not in TERMINAL:
        await asyncio.sleep(rng.uniform(0.005, 0.03))
        try:
            response = await client.responses.retrieve(response.id)
        except openai.APIError:
            failures += 1
            with seen.lock:
                seen.failed_polls += 1
            if failures >= MAX_POLL_FAILURES:
                with seen.lock:
                    seen.abandoned += 1
                return
            continue
        failures = 0
        seen.polled(response)


def _run_threads(base_url: str, watcher: bgwatch.Watcher, seen: Seen, count: int) -> None:
    http = bgwatch.http_client(watcher=watcher)
    client = openai.OpenAI(
        api_key="sk-test", base_url=base_url, http_client=http, max_retries=4, timeout=CLIENT_TIMEOUT
    )
    todo = iter(range(count))
    todo_lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while True:
                with todo_lock:
                    if next(todo, None) is None:
                        return
                _lifecycle(client, seen, rng)
        except BaseException as exc:  # reported below: a worker must not die silently
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    assert errors == []


def _run_async(base_url: str, watcher: bgwatch.Watcher, seen: Seen, count: int) -> None:
    async def main() -> None:
        http = bgwatch.async_http_client(watcher=watcher)
        client = openai.AsyncOpenAI(
            api_key="sk-test", base_url=base_url, http_client=http, max_retries=4, timeout=CLIENT_TIMEOUT
        )
        gate = asyncio.Semaphore(TASKS)
        rng = random.Random(99)

        async def one() -> None:
            async with gate:
                await _async_lifecycle(client, seen, rng)

        await asyncio.gather(*(one() for _ in range(count)))
        await client.close()

    asyncio.run(main())


def _series(registry: CollectorRegistry, name: str, label: str) -> Counter[str]:
    found: Counter[str] = Counter()
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == name and s.value:
                found[s.labels[label]] += int(s.value)
    return found


def test_every_observed_terminal_response_is_counted_once_under_the_right_code(
    simulator: tuple[str, Connection],
) -> None:
    base_url, control = simulator
    registry = CollectorRegistry()
    clock = OffsetClock()
    watcher = bgwatch.Watcher(registry=registry, clock=clock)
    seen = Seen()
    started = time.monotonic()
    errors: list[BaseException] = []

    def in_thread() -> None:
        try:
            _run_async(base_url, watcher, seen, RESPONSES_ASYNC)
        except BaseException as exc:
            errors.append(exc)

    loop_thread = threading.Thread(target=in_thread)
    loop_thread.start()
    _run_threads(base_url, watcher, seen, RESPONSES_THREADED)
    loop_thread.join()
    elapsed = time.monotonic() - started
    assert errors == []
    control.send("ledger")
    ledger: dict[str, Outcome] = control.recv()
    control.send("faults")
    faults: dict[str, int] = control.recv()

    # The workload really was faulty and really finished.
    total_responses = RESPONSES_THREADED + RESPONSES_ASYNC
    assert seen.creates + seen.failed_creates == total_responses
    assert min(faults.values()) > 0, faults
    assert len(seen.terminal) >= 0.9 * total_responses, (len(seen.terminal), seen.abandoned, seen.failed_creates)

    # Every response a client saw end had ended so in the simulator: the same status, code, reason.
    for response_id, (status, code, reason) in seen.terminal.items():
        outcome = ledger.get(response_id)
        assert outcome is not None, f"{response_id} seen {status} but never reached a terminal state"
        assert (outcome.status, outcome.code, outcome.reason) == (status, code, reason), response_id

    # bgwatch counted each of them once, under the right labels, and nothing else.
    expected_finished = Counter(status for status, _, _ in seen.terminal.values())
    expected_codes = Counter(code for status, code, _ in seen.terminal.values() if status == "failed")
    expected_reasons = Counter(reason for status, _, reason in seen.terminal.values() if status == "incomplete")
    assert _series(registry, "bg_response_finished_total", "status") == expected_finished
    assert _series(registry, "bg_response_failed_total", "code") == expected_codes
    assert _series(registry, "bg_response_incomplete_total", "reason") == expected_reasons
    assert sum(_series(registry, "bg_response_duration_seconds_count", "status").values()) == len(seen.terminal)

    # Every poll that reached the SDK, and every create, was counted (faulted attempts were not).
    assert _series(registry, "bg_response_polls_total", "status") == seen.polls
    assert sample(registry, "bg_response_created_total", model=MODEL) == seen.creates

    # In flight: exactly the responses a client stopped watching before their end (the
    # simulator finished them all the same: bgwatch must not have counted them).
    unfinished = sum(1 for status in seen.last.values() if status not in TERMINAL)
    assert 0 < unfinished <= seen.abandoned + seen.walked_away
    assert sample(registry, "bg_response_in_flight") == unfinished == watcher.tracker.in_flight
    assert sum(1 for rid, status in seen.last.items() if status not in TERMINAL and rid in ledger) > 0

    # Every response whose create was seen is in flight, finished or abandoned: nothing leaks.
    def accounted() -> tuple[float, ...]:
        in_flight = sample(registry, "bg_response_in_flight")
        finished = total(registry, "bg_response_finished_total")
        abandoned = total(registry, "bg_response_abandoned_total")
        return in_flight, finished, abandoned, sample(registry, "bg_response_created_total", model=MODEL)

    in_flight, finished, abandoned, created = accounted()
    assert (in_flight, abandoned) == (unfinished, 0) and in_flight + finished + abandoned == created
    clock.offset += watcher.tracker.in_flight_ttl + 1  # nobody polls them any more: an hour passes
    watcher.sweep()
    in_flight, finished, abandoned, created = accounted()
    assert (in_flight, abandoned) == (0, unfinished) and in_flight + finished + abandoned == created
    assert total(registry, "bgwatch_internal_errors_total") == 0

    # Tokens: each observed terminal response's usage, once, under its terminal status (the
    # ledger's numbers are the ones the simulator put into the bodies).
    expected_tokens: Counter[tuple[str, str]] = Counter()
    for response_id, (status, _, _) in seen.terminal.items():
        expected_tokens["input", status] += ledger[response_id].input_tokens
        expected_tokens["output", status] += ledger[response_id].output_tokens
    counted_tokens: Counter[tuple[str, str]] = Counter()
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "bg_response_tokens_total":
                counted_tokens[s.labels["type"], s.labels["status"]] += int(s.value)
    assert counted_tokens == +expected_tokens and sum(expected_tokens.values()) > 0

    # Queue wait: measured once for every response a client saw past queued (from its create's
    # answer on), never for one it only saw queued. Each lies between what the clocks allow:
    # from after the true creation (bgwatch's start is the create's answer, clamped into the
    # whole second of created_at) to no later than the client got the first answer past queued,
    # and no shorter than the true time queued less the create's round trip.
    started = [rid for rid, status in seen.last.items() if status != "queued"]
    assert set(started) == set(seen.started_answered)
    assert sample(registry, "bg_response_queue_seconds_count", model=MODEL) == len(started)
    measured = sample(registry, "bg_response_queue_seconds_sum", model=MODEL)
    latest = math.fsum(seen.started_answered[rid] - _created(ledger, rid) for rid in started)
    earliest = math.fsum(_created(ledger, rid) + _queued(ledger, rid) - seen.create_answered[rid] for rid in started)
    assert earliest <= measured <= latest, (earliest, measured, latest)
    print(
        f"\n{total_responses} responses in {elapsed:.1f} s: {len(seen.terminal)} seen terminal,"
        f" {seen.walked_away} walked away, {seen.abandoned} abandoned, {seen.failed_creates} creates failed,"
        f" {seen.failed_polls} polls failed;"
        f" faults served: {faults}; ledger {len(ledger)}"
    )


def _created(ledger: dict[str, Outcome], response_id: str) -> float:
    created = ledger[response_id].created_at
    assert created is not None
    return created


def _queued(ledger: dict[str, Outcome], response_id: str) -> float:
    queued = ledger[response_id].queue_seconds
    assert queued is not None
    return queued


def total(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for metric in registry.collect() for s in metric.samples if s.name == name)
