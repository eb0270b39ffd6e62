"""bgwatch.wait / create_and_wait and their async twins, against the simulator through the real SDK."""

from __future__ import annotations

import asyncio
import math
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch.simulator import Simulator
from tests.conftest import sample, total

try:
    import httpx2 as httpx_module
except ImportError:  # openai 2.x environment
    import httpx as httpx_module  # type: ignore[no-redef]

MODEL = "gpt-4o-mini"
CANCEL = "POST"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=3, durations=(0.02, 0.05), poll_after_ms=10) as simulator:
        yield simulator


def plain_client(sim: Simulator, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", **options)


def instrumented_client(sim: Simulator, watcher: bgwatch.Watcher, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=sim.base_url, api_key="sk-test", http_client=bgwatch.http_client(watcher=watcher, **options)
    )


def create(client: openai.OpenAI, outcome: str | None = None) -> str:
    metadata = {"bgwatch_outcome": outcome} if outcome else {}
    return client.responses.create(model=MODEL, input="hi", background=True, metadata=metadata).id


def gets(sim: Simulator, response_id: str) -> int:
    return sim.request_log.count("GET", f"/v1/responses/{response_id}")


def cancels(sim: Simulator, response_id: str) -> int:
    return sim.request_log.count("POST", f"/v1/responses/{response_id}/cancel")


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.005)


Case = tuple[str, "str | None", "type[Exception] | None", "str | None"]
TERMINAL_CASES: list[Case] = [
    ("completed", None, None, None),
    ("failed:server_error", "failed", bgwatch.ServerError, "server_error"),
    ("failed:rate_limit_exceeded", "failed", bgwatch.RateLimitExceeded, "rate_limit_exceeded"),
    ("failed:brand_new_code", "failed", bgwatch.UnrecognizedFailure, "brand_new_code"),
    ("incomplete:max_output_tokens", "incomplete", bgwatch.MaxOutputTokensReached, "max_output_tokens"),
    ("cancelled", "cancelled", bgwatch.ResponseCancelled, None),
]


@pytest.mark.parametrize("instrumented", [False, True], ids=["plain", "transport"])
@pytest.mark.parametrize("case", TERMINAL_CASES, ids=[c[0] for c in TERMINAL_CASES])
def test_wait_on_every_terminal_state(
    sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher, instrumented: bool, case: Case
) -> None:
    outcome, status, exc_type, detail = case
    client = instrumented_client(sim, watcher) if instrumented else plain_client(sim)
    response_id = create(client, outcome)
    kwargs: dict[str, Any] = {} if instrumented else {"watcher": watcher}
    if exc_type is None:
        response = bgwatch.wait(client, response_id, timeout=5, **kwargs)
        assert response.status == "completed" and response.id == response_id
    else:
        with pytest.raises(exc_type) as caught:
            bgwatch.wait(client, response_id, timeout=5, **kwargs)
        error = caught.value
        assert isinstance(error, bgwatch.BackgroundResponseError)
        assert error.response_id == response_id and error.status == status
        assert (error.code if status == "failed" else error.reason) == detail
        assert error.request_id and error.request_id.startswith("req_")
    final = status or "completed"
    assert sample(registry, "bg_response_finished_total", status=final, model=MODEL) == 1
    # Every GET the server answered was counted exactly once as a poll (transport or wait).
    assert total(registry, "bg_response_polls_total") == gets(sim, response_id)
    assert sample(registry, "bg_response_in_flight") == 0
    if status == "failed":
        assert sample(registry, "bg_response_failed_total", code=str(detail), model=MODEL) == 1
    if instrumented:  # the create went through the transport too
        assert sample(registry, "bg_response_created_total", model=MODEL) == 1


def test_raise_on_subset_returns_the_response(sim: Simulator, watcher: bgwatch.Watcher) -> None:
    client = plain_client(sim)
    response_id = create(client, "failed:server_error")
    response = bgwatch.wait(client, response_id, raise_on=("incomplete",), timeout=5, watcher=watcher)
    assert response.status == "failed" and response.error is not None
    assert response.error.code == "server_error"
    assert bgwatch.wait(client, create(client, "cancelled"), raise_on=(), timeout=5, watcher=watcher).status == (
        "cancelled"
    )


def test_create_and_wait_forces_background_and_counts_once(
    sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = instrumented_client(sim, watcher)
    with pytest.raises(bgwatch.InvalidPrompt) as caught:
        bgwatch.create_and_wait(
            client, model=MODEL, input="hi", metadata={"bgwatch_outcome": "failed:invalid_prompt"}, timeout=5
        )
    response_id = caught.value.response_id
    assert response_id is not None and sim.outcomes()[response_id].status == "failed"
    assert sample(registry, "bg_response_created_total", model=MODEL) == 1
    assert sample(registry, "bg_response_failed_total", code="invalid_prompt", model=MODEL) == 1
    assert total(registry, "bg_response_polls_total") == gets(sim, response_id)
    # plain client: the wait records the create and the polls itself, once
    plain = plain_client(sim)
    response = bgwatch.create_and_wait(plain, model=MODEL, input="x", watcher=watcher, timeout=5)
    assert response.background is True
    assert sample(registry, "bg_response_created_total", model=MODEL) == 2
    assert total(registry, "bg_response_polls_total") == sim.request_log.count("GET")


def test_transport_and_wait_never_double_count(
    sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = instrumented_client(sim, watcher)
    response_id = create(client, "failed:server_error")
    for _ in range(2):  # naming the transport's watcher explicitly changes nothing
        with pytest.raises(bgwatch.ServerError):
            bgwatch.wait(client, response_id, timeout=5, watcher=watcher)
    assert total(registry, "bg_response_polls_total") == gets(sim, response_id)
    # A plain client waiting on the same id records into the same watcher: the poll is counted
    # (it is a new poll) but the tracker has the id as terminal already, so nothing else moves.
    with pytest.raises(bgwatch.ServerError):
        bgwatch.wait(plain_client(sim), response_id, timeout=5, watcher=watcher)
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1
    assert sample(registry, "bg_response_finished_total", status="failed", model=MODEL) == 1
    assert sample(registry, "bg_response_duration_seconds_count", status="failed", model=MODEL) == 1
    assert total(registry, "bg_response_polls_total") == gets(sim, response_id)


def test_a_transport_raising_on_its_own_raise_on_propagates(sim: Simulator, watcher: bgwatch.Watcher) -> None:
    client = openai.OpenAI(
        base_url=sim.base_url,
        api_key="sk-test",
        http_client=bgwatch.http_client(watcher=watcher, raise_on=("failed",)),
    )
    response_id = create(client, "failed:server_error")
    with pytest.raises(bgwatch.ServerError):
        bgwatch.wait(client, response_id, raise_on=(), timeout=5)


def test_timeout_without_cancel(sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher) -> None:
    sim.durations = (30.0, 30.0)
    client = plain_client(sim)
    response_id = create(client)
    started = time.monotonic()
    with pytest.raises(bgwatch.WaitTimeout) as caught:
        bgwatch.wait(client, response_id, timeout=0.3, watcher=watcher)
    elapsed = time.monotonic() - started
    error = caught.value
    assert 0.3 <= elapsed < 2.0
    assert error.response_id == response_id and error.last_status == "queued"
    assert 0.3 <= error.elapsed < 2.0 and error.cancelled is False
    assert isinstance(error, bgwatch.BgwatchError) and isinstance(error, openai.OpenAIError)
    assert cancels(sim, response_id) == 0
    assert sim.outcomes()[response_id].finished_at is None  # still running
    assert sample(registry, "bg_response_in_flight") == 1
    assert "still queued" in str(error)


def test_timeout_with_cancel(sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher) -> None:
    sim.durations = (30.0, 30.0)
    client = plain_client(sim)
    response_id = create(client)
    with pytest.raises(bgwatch.WaitTimeout) as caught:
        bgwatch.wait(client, response_id, timeout=0.25, cancel_on_timeout=True, watcher=watcher)
    assert caught.value.cancelled is True and caught.value.last_status == "cancelled"
    assert cancels(sim, response_id) == 1
    assert sim.outcomes()[response_id].status == "cancelled"
    assert sample(registry, "bg_response_finished_total", status="cancelled", model=MODEL) == 1
    assert sample(registry, "bg_response_in_flight") == 0


def test_cancel_on_timeout_that_fails_still_raises_wait_timeout(sim: Simulator, watcher: bgwatch.Watcher) -> None:
    sim.durations = (30.0, 30.0)
    client = plain_client(sim, max_retries=0)
    response_id = create(client)
    sim.inject("500", count=5, match="cancel")
    with pytest.raises(bgwatch.WaitTimeout) as caught:
        bgwatch.wait(client, response_id, timeout=0.2, cancel_on_timeout=True, watcher=watcher)
    assert caught.value.cancelled is False and "cancelling it failed" in str(caught.value)
    assert caught.value.last_status == "queued"


def test_wait_timeout_pickles() -> None:
    error = bgwatch.WaitTimeout("m", response_id="resp_1", last_status="queued", elapsed=1.5, cancelled=True)
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.response_id, clone.last_status, clone.elapsed, clone.cancelled, str(clone)) == (
        "resp_1",
        "queued",
        1.5,
        True,
        "m",
    )


class RequestTimes:
    """httpx event hook: the monotonic time of every GET of one response."""

    def __init__(self, on_get: Callable[[int], None] | None = None) -> None:
        self.times: list[float] = []
        self._on_get = on_get
        self._lock = threading.Lock()

    def __call__(self, request: Any) -> None:
        if request.method == "GET" and "/responses/" in request.url.path:
            with self._lock:
                self.times.append(time.monotonic())
                count = len(self.times)
            if self._on_get is not None:
                self._on_get(count)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


def test_poll_after_header_is_honoured_on_every_poll_and_its_changes(sim: Simulator) -> None:
    sim.durations = (30.0, 30.0)
    sim.poll_after_ms = 30

    def switch(count: int) -> None:
        if count == 3:  # the third answer (and every later one) carries the new value
            sim.poll_after_ms = 130

    hook = RequestTimes(switch)
    client = plain_client(sim, http_client=httpx_module.Client(event_hooks={"request": [hook]}))
    response_id = create(client)
    # poll_interval is far off both hints: only the header can explain the measured gaps.
    with pytest.raises(bgwatch.WaitTimeout):
        bgwatch.wait(client, response_id, timeout=0.7, poll_interval=0.5, max_poll_interval=5)
    gaps = hook.gaps()
    assert len(gaps) >= 5, gaps
    assert all(0.03 <= g < 0.12 for g in gaps[:2]), gaps
    # the last gap may be cut short by the deadline
    assert all(0.13 <= g < 0.25 for g in gaps[2:-1]), gaps
    assert gaps[-1] < 0.25


def test_backoff_without_header_grows_with_jitter_up_to_the_cap(sim: Simulator) -> None:
    sim.durations = (30.0, 30.0)
    sim.poll_after_ms = None
    hook = RequestTimes()
    client = plain_client(sim, http_client=httpx_module.Client(event_hooks={"request": [hook]}))
    response_id = create(client)
    with pytest.raises(bgwatch.WaitTimeout):
        bgwatch.wait(client, response_id, timeout=0.5, poll_interval=0.02, max_poll_interval=0.08)
    gaps = hook.gaps()[:-1]  # the last one may be cut by the deadline
    expected = [min(0.08, 0.02 * 2**n) for n in range(len(gaps))]
    for gap, nominal in zip(gaps, expected, strict=True):
        assert nominal * 0.8 <= gap < nominal + 0.08, (gaps, expected)
    assert len(gaps) >= 6


def test_a_zero_hint_never_makes_a_hot_loop(sim: Simulator) -> None:
    sim.durations = (30.0, 30.0)
    sim.poll_after_ms = 0
    client = plain_client(sim)
    response_id = create(client)
    with pytest.raises(bgwatch.WaitTimeout):
        bgwatch.wait(client, response_id, timeout=0.2)
    assert gets(sim, response_id) <= 0.2 / 0.01 + 2


def test_transient_poll_errors_are_retried_until_the_deadline(sim: Simulator, watcher: bgwatch.Watcher) -> None:
    client = plain_client(sim, max_retries=0)
    response_id = create(client, "completed")
    sim.inject("500", count=2, match="GET")
    sim.inject("reset", count=1, match="GET")
    response = bgwatch.wait(client, response_id, timeout=5, poll_interval=0.01, watcher=watcher)
    assert response.status == "completed"
    # errors that last past the deadline end in WaitTimeout chained to the last one
    sim.durations = (30.0, 30.0)
    other = create(client)
    sim.inject("503", count=1000, match="GET")
    with pytest.raises(bgwatch.WaitTimeout) as caught:
        bgwatch.wait(client, other, timeout=0.2, poll_interval=0.01, watcher=watcher)
    assert isinstance(caught.value.last_error, openai.InternalServerError)
    assert caught.value.__cause__ is caught.value.last_error and caught.value.last_status is None
    sim.clear_faults()


def test_non_transient_errors_propagate_at_once(sim: Simulator, watcher: bgwatch.Watcher) -> None:
    client = plain_client(sim)
    started = time.monotonic()
    with pytest.raises(openai.NotFoundError):
        bgwatch.wait(client, "resp_does_not_exist", timeout=5, watcher=watcher)
    assert time.monotonic() - started < 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeout": 0}, bgwatch.ConfigurationError),
        ({"timeout": -1}, bgwatch.ConfigurationError),
        ({"timeout": math.nan}, bgwatch.ConfigurationError),
        ({"timeout": math.inf}, bgwatch.ConfigurationError),
        ({"timeout": True}, TypeError),
        ({"timeout": "5"}, TypeError),
        ({"poll_interval": 0}, bgwatch.ConfigurationError),
        ({"poll_interval": 2, "max_poll_interval": 1}, bgwatch.ConfigurationError),
        ({"cancel_timeout": 0}, bgwatch.ConfigurationError),
        ({"raise_on": "failed"}, bgwatch.ConfigurationError),
        ({"raise_on": ("completed",)}, bgwatch.ConfigurationError),
        ({"watcher": object()}, TypeError),
    ],
)
def test_invalid_arguments_are_refused_before_any_request(
    sim: Simulator, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    client = plain_client(sim)
    with pytest.raises(error):
        bgwatch.wait(client, "resp_1", **kwargs)
    with pytest.raises(error):
        bgwatch.create_and_wait(client, model=MODEL, input="x", **kwargs)
    with pytest.raises(error):
        asyncio.run(bgwatch.async_wait(openai.AsyncOpenAI(base_url=sim.base_url, api_key="k"), "resp_1", **kwargs))
    assert len(sim.request_log) == 0


def test_wrong_ids_clients_and_create_arguments_are_refused(sim: Simulator) -> None:
    client = plain_client(sim)
    async_client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="k")
    with pytest.raises(bgwatch.ConfigurationError):
        bgwatch.wait(client, " ")
    with pytest.raises(TypeError):
        bgwatch.wait(client, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="async_wait"):
        bgwatch.wait(async_client, "resp_1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="OpenAI client"):
        asyncio.run(bgwatch.async_wait(client, "resp_1"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        bgwatch.wait(object(), "resp_1")  # type: ignore[arg-type]
    with pytest.raises(bgwatch.ConfigurationError, match="background=True"):
        bgwatch.create_and_wait(client, model=MODEL, input="x", background=False)
    with pytest.raises(bgwatch.ConfigurationError, match="stream"):
        bgwatch.create_and_wait(client, model=MODEL, input="x", stream=True)
    assert len(sim.request_log) == 0


# -- async ---------------------------------------------------------------------------------


def async_client(sim: Simulator, watcher: bgwatch.Watcher | None = None, **options: Any) -> openai.AsyncOpenAI:
    if watcher is None:
        return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", **options)
    return openai.AsyncOpenAI(
        base_url=sim.base_url, api_key="sk-test", http_client=bgwatch.async_http_client(watcher=watcher, **options)
    )


ASYNC_CASES = TERMINAL_CASES[::2] + TERMINAL_CASES[-1:]


@pytest.mark.parametrize("instrumented", [False, True], ids=["plain", "transport"])
@pytest.mark.parametrize("case", ASYNC_CASES, ids=[c[0] for c in ASYNC_CASES])
def test_async_wait_on_terminal_states(
    sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher, instrumented: bool, case: Case
) -> None:
    outcome, status, exc_type, _ = case

    async def main() -> None:
        client = async_client(sim, watcher if instrumented else None)
        kwargs: dict[str, Any] = {} if instrumented else {"watcher": watcher}
        if exc_type is None:
            response = await bgwatch.async_create_and_wait(
                client, model=MODEL, input="x", metadata={"bgwatch_outcome": outcome}, timeout=5, **kwargs
            )
            assert response.status == "completed"
        else:
            with pytest.raises(exc_type):
                created = await client.responses.create(
                    model=MODEL, input="x", background=True, metadata={"bgwatch_outcome": outcome}
                )
                await bgwatch.async_wait(client, created.id, timeout=5, **kwargs)
        await client.close()

    asyncio.run(main())
    assert sample(registry, "bg_response_finished_total", status=status or "completed", model=MODEL) == 1
    assert total(registry, "bg_response_polls_total") == sim.request_log.count("GET")


def test_async_timeout_with_and_without_cancel(sim: Simulator, watcher: bgwatch.Watcher) -> None:
    sim.durations = (30.0, 30.0)

    async def main() -> tuple[str, str]:
        client = async_client(sim)
        first = (await client.responses.create(model=MODEL, input="x", background=True)).id
        with pytest.raises(bgwatch.WaitTimeout) as caught:
            await bgwatch.async_wait(client, first, timeout=0.2, watcher=watcher)
        assert caught.value.cancelled is False
        second = (await client.responses.create(model=MODEL, input="x", background=True)).id
        with pytest.raises(bgwatch.WaitTimeout) as caught:
            await bgwatch.async_wait(client, second, timeout=0.2, cancel_on_timeout=True, watcher=watcher)
        assert caught.value.cancelled is True
        await client.close()
        return first, second

    first, second = asyncio.run(main())
    assert cancels(sim, first) == 0 and sim.outcomes()[first].finished_at is None
    assert cancels(sim, second) == 1 and sim.outcomes()[second].status == "cancelled"


@pytest.mark.parametrize("cancel_on_abort", [True, False])
def test_cancelling_the_waiting_task_cancels_the_response(
    sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher, cancel_on_abort: bool
) -> None:
    sim.durations = (30.0, 30.0)

    async def main() -> str:
        client = async_client(sim, watcher)
        created = await client.responses.create(model=MODEL, input="x", background=True)
        task = asyncio.create_task(bgwatch.async_wait(client, created.id, timeout=30, cancel_on_abort=cancel_on_abort))
        deadline = time.monotonic() + 5
        while gets(sim, created.id) < 2:  # the wait is polling
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()
        return created.id

    started = time.monotonic()
    response_id = asyncio.run(main())
    assert time.monotonic() - started < 5
    if cancel_on_abort:
        assert cancels(sim, response_id) == 1
        assert sim.outcomes()[response_id].status == "cancelled"
        assert sample(registry, "bg_response_finished_total", status="cancelled", model=MODEL) == 1
    else:
        assert cancels(sim, response_id) == 0
        assert sim.outcomes()[response_id].finished_at is None


def test_an_outer_asyncio_timeout_cancels_the_response_too(sim: Simulator) -> None:
    sim.durations = (30.0, 30.0)

    async def main() -> str:
        client = async_client(sim)
        created = await client.responses.create(model=MODEL, input="x", background=True)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(bgwatch.async_wait(client, created.id, timeout=30, cancel_on_timeout=True), 0.2)
        await client.close()
        return created.id

    response_id = asyncio.run(main())
    assert cancels(sim, response_id) == 1
    assert sim.outcomes()[response_id].status == "cancelled"
