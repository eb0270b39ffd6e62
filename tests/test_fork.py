"""os.fork() while threads and an event loop poll through bgwatch: no child ever blocks.

A process that embeds bgwatch forks (multiprocessing's ``fork`` start method, gunicorn
``preload_app``, Celery prefork) while its other threads are inside bgwatch. Each child here
polls through the very watcher those threads were using, under an alarm: a child that waits
on a lock inherited in the locked state is killed by SIGALRM and counted as a hang. A child
also checks its own counts: it starts from zero and counts only what it saw itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch.simulator import Simulator

from .conftest import sample, total

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # 3.12+: fork() of a threaded process
]

FORKS = int(os.environ.get("BGWATCH_FORKS", "200"))
POLLING_THREADS = 8
CHILD_ALARM = 5  # seconds; a healthy child needs a few milliseconds
CONCURRENT_CHILDREN = 4
SWITCH_INTERVAL = 1e-5
STOP_AFTER_HANGS = 10  # enough to fail; spares a broken build minutes of alarms
TERMINAL = frozenset(("completed", "failed", "incomplete", "cancelled"))
SRC = Path(__file__).resolve().parent.parent / "src" / "bgwatch"

EXIT_OK = 0
EXIT_WRONG_COUNTS = 3
EXIT_ERROR = 4


@pytest.fixture
def fast_sim() -> Iterator[Simulator]:
    with Simulator(seed=3, durations=(0.0, 0.02), poll_after_ms=1) as simulator:
        yield simulator


class Pollers:
    """8 threads and an asyncio loop creating and polling responses through one watcher."""

    def __init__(self, base_url: str, watcher: bgwatch.Watcher) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.terminal: set[str] = set()
        self.polls = 0
        self.creates = 0
        self.errors: list[BaseException] = []
        self._sync = openai.OpenAI(
            base_url=base_url, api_key="k", http_client=bgwatch.http_client(watcher=watcher), max_retries=0
        )
        self._base_url = base_url
        self._watcher = watcher
        self._threads = [threading.Thread(target=self._thread, daemon=True) for _ in range(POLLING_THREADS)]
        self._threads.append(threading.Thread(target=self._loop, daemon=True))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(30)
        self._sync.close()

    def _saw(self, response: openai.types.responses.Response, created: bool) -> None:
        with self.lock:
            if created:
                self.creates += 1
            else:
                self.polls += 1
            if response.status in TERMINAL:
                self.terminal.add(response.id)

    def _thread(self) -> None:
        try:
            while not self.stop.is_set():
                response = self._sync.responses.create(model="gpt-4.1", input="x", background=True)
                self._saw(response, True)
                while response.status not in TERMINAL:
                    response = self._sync.responses.retrieve(response.id)
                    self._saw(response, False)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)

    def _loop(self) -> None:
        async def one(client: openai.AsyncOpenAI) -> None:
            while not self.stop.is_set():
                response = await client.responses.create(model="gpt-4.1", input="x", background=True)
                self._saw(response, True)
                while response.status not in TERMINAL:
                    response = await client.responses.retrieve(response.id)
                    self._saw(response, False)

        async def main() -> None:
            http = bgwatch.async_http_client(watcher=self._watcher)
            async with openai.AsyncOpenAI(base_url=self._base_url, api_key="k", http_client=http, max_retries=0) as c:
                await asyncio.gather(*(one(c) for _ in range(4)))

        try:
            asyncio.run(main())
        except BaseException as exc:
            self.errors.append(exc)


def _in_child(client: openai.OpenAI, async_client: openai.AsyncOpenAI, registry: CollectorRegistry, target: str) -> int:
    """A forked child: poll ``target`` (completed) twice, sync and async, and check the counts."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # pytest-timeout may have installed a handler
    signal.alarm(CHILD_ALARM)
    try:
        assert client.responses.retrieve(target).status == "completed"

        async def poll() -> str:
            return (await async_client.responses.retrieve(target)).status

        assert asyncio.run(poll()) == "completed"
        # Fresh: only this child's two polls and one finish, nothing of the parent's.
        counts = (
            total(registry, "bg_response_polls_total"),
            total(registry, "bg_response_finished_total"),
            total(registry, "bg_response_created_total"),
            sample(registry, "bg_response_in_flight"),
            total(registry, "bgwatch_internal_errors_total"),
        )
        return EXIT_OK if counts == (2, 1, 0, 0, 0) else EXIT_WRONG_COUNTS
    except BaseException:
        return EXIT_ERROR


@pytest.mark.slow  # ~10 s
def test_forked_children_never_hang_and_count_afresh(fast_sim: Simulator) -> None:
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    plain = openai.OpenAI(base_url=fast_sim.base_url, api_key="k")
    target = plain.responses.create(model="gpt-4.1", input="x", background=True).id
    while plain.responses.retrieve(target).status not in TERMINAL:
        time.sleep(0.01)
    fast_sim.mix = bgwatch.simulator.Mix(completed=1, failed=0, incomplete=0, cancelled=0)
    # The children's clients: made here, never used here (so their connection pools are empty).
    child_client = openai.OpenAI(
        base_url=fast_sim.base_url, api_key="k", http_client=bgwatch.http_client(watcher=watcher), max_retries=0
    )
    child_async = openai.AsyncOpenAI(
        base_url=fast_sim.base_url, api_key="k", http_client=bgwatch.async_http_client(watcher=watcher), max_retries=0
    )
    pollers = Pollers(fast_sim.base_url, watcher)
    # Switch threads every few microseconds instead of every 5 ms: a thread is then often
    # suspended inside a critical section when the fork copies the process (as on busy hosts).
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    pollers.start()
    outcomes: dict[str, int] = {"ok": 0, "hung": 0, "wrong_counts": 0, "error": 0}
    running: set[int] = set()
    started = time.monotonic()

    def reap(block: bool) -> None:
        for pid in list(running):
            done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
            if done == 0:
                continue
            running.discard(pid)
            if os.WIFSIGNALED(status):
                outcomes["hung" if os.WTERMSIG(status) == signal.SIGALRM else "error"] += 1
            else:
                code = os.WEXITSTATUS(status)
                outcomes[{EXIT_OK: "ok", EXIT_WRONG_COUNTS: "wrong_counts"}.get(code, "error")] += 1

    try:
        time.sleep(0.2)  # every poller is busy inside bgwatch
        for _ in range(FORKS):
            while len(running) >= CONCURRENT_CHILDREN:
                reap(False)
                time.sleep(0.001)
            pid = os.fork()
            if pid == 0:
                os._exit(_in_child(child_client, child_async, registry, target))
            running.add(pid)
            if outcomes["hung"] >= STOP_AFTER_HANGS:
                break
        while running:
            reap(False)
            time.sleep(0.005)
    finally:
        sys.setswitchinterval(switch_interval)
        pollers.join()
        for pid in running:
            os.kill(pid, signal.SIGKILL)
    elapsed = time.monotonic() - started
    print(f"\n{sum(outcomes.values())} forks in {elapsed:.1f} s: {outcomes}; parent polls {pollers.polls}")
    assert pollers.errors == []
    assert outcomes == {"ok": FORKS, "hung": 0, "wrong_counts": 0, "error": 0}

    # The parent's counts are untouched by hundreds of forks: each response once, every poll.
    assert pollers.polls > 0 and pollers.creates > 0
    assert total(registry, "bg_response_finished_total") == len(pollers.terminal)
    assert total(registry, "bg_response_polls_total") == pollers.polls
    assert total(registry, "bg_response_created_total") == pollers.creates
    assert sample(registry, "bg_response_in_flight") == watcher.tracker.in_flight == 0
    assert total(registry, "bgwatch_internal_errors_total") == 0


LOCK_CONSTRUCTORS = re.compile(r"\bthreading\s*\.\s*(Lock|RLock|Condition|Semaphore|BoundedSemaphore)\s*\(")


def test_every_lock_bgwatch_owns_is_made_by_the_fork_safe_helper() -> None:
    # The simulator is a test server, not part of a user's process; _locks is the helper itself.
    offenders = [
        f"{path.relative_to(SRC)}:{number}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "_locks.py" and "simulator" not in path.parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if LOCK_CONSTRUCTORS.search(line) or re.search(r"from threading import .*\b(Lock|RLock|Condition)\b", line)
    ]
    assert offenders == []


def test_a_lock_held_by_another_thread_at_fork_is_free_in_the_child() -> None:
    from bgwatch import _locks

    lock = _locks.Lock()
    condition = _locks.Condition()
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock, condition:
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(5)
    # The forking thread waits for the holder (bounded), so the fork happens between critical
    # sections: release shortly after the fork began.
    threading.Timer(0.2, release.set).start()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(CHILD_ALARM)
        with lock, condition:
            condition.notify_all()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    holder.join(5)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    with lock:  # the parent's lock was released after the fork, too
        pass
