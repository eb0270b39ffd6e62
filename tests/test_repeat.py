"""The repeat-poll fast path records exactly what the full path records.

A poll of a response whose status the tracker already holds changes nothing but the poll
count, and :meth:`bgwatch.Watcher.repeat_recorder` counts it without building an observation
and a transition. The full path (:meth:`bgwatch.Watcher.record`) is the oracle: a watcher with a
sink that needs every observation never takes the fast path, so two watchers, one of each kind,
fed the same random bodies on the same clock, must end with the same metrics and tracker.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch._classify import STATUSES, observation_from_json, repeat_key
from bgwatch._hook import Hook

from .conftest import response_body, sample

IDS = ("resp_a", "resp_b")
# Families whose values hold wall-clock time (durations, queue waits, ages): the two watchers
# read the clock microseconds apart. Their counts are compared; finishing never takes the fast path.
WALL_CLOCK_SAMPLES = ("_sum", "bg_response_oldest_in_flight_seconds")


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class AllObservations:
    """A custom sink without ``repeat_counts``: its watcher records every observation in full."""

    def __init__(self) -> None:
        self.seen: list[bgwatch.Observation] = []

    def observed(self, observation: bgwatch.Observation, *args: Any) -> None:
        self.seen.append(observation)

    def adjust_in_flight(self, delta: int) -> None:
        pass

    def internal_error(self, stage: str) -> None:
        pass


class RepeatAware(AllObservations):
    """A custom sink that takes the fast path too: it says which polls went through it."""

    def __init__(self) -> None:
        super().__init__()
        self.repeats: list[str] = []
        self.repeat_counts = {status: partial(self.repeats.append, status) for status in STATUSES}


def _mostly(plain: list[Any], odd: list[Any]) -> st.SearchStrategy[Any]:
    """Plain values four times as often as the odd ones the SDK converts or refuses."""
    return st.sampled_from(plain * 4 + odd)


def values() -> dict[str, st.SearchStrategy[Any]]:
    """Field values of the kinds a body may hold: plain ones, and ones the SDK converts or refuses."""
    return {
        "object": _mostly(["response"], ["response.input_tokens"]),
        "id": _mostly(list(IDS), ["", 7, "r" * 300]),
        "status": _mostly(list(STATUSES), ["paused", None, 3]),
        "model": _mostly(["m1", "m2"], [None, 7, "m" * 300]),
        "background": _mostly([True], [None, False, "yes", 1]),
        "created_at": _mostly([1_700_000_000, 1_700_000_000.5], [None, 10**400, 2**70, "soon", True]),
        "completed_at": _mostly([None, 1_700_000_100, 1_700_000_100.25], ["12", True, [1]]),
        "usage": _mostly(
            [None, {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}],
            [{"input_tokens": "3", "output_tokens": 5, "total_tokens": 8}, {"input_tokens": 3}, "lots"],
        ),
        "error": _mostly([None, {"code": "server_error", "message": "boom"}], [{"code": 5}]),
        "incomplete_details": _mostly([None, {"reason": "max_output_tokens"}], ["x"]),
    }


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    """A parsed body: mostly a response object with some fields missing, sometimes not a dict."""
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([[], "response", None, 1]))
    body: dict[str, Any] = {}
    for name, strategy in values().items():
        if draw(st.integers(0, 19)) > 0:
            body[name] = draw(strategy)
    return body


@given(bodies())
@settings(max_examples=3000, deadline=None)
def test_repeat_key_agrees_with_the_full_observation(body: Any) -> None:
    key = repeat_key(body)
    observation = observation_from_json("retrieve", body, None)
    if key is None:
        return
    assert observation is not None
    assert (observation.response_id, observation.status, observation.model) == key
    assert observation.background is not False


def _watcher(sink: AllObservations, clock: ManualClock) -> tuple[bgwatch.Watcher, CollectorRegistry, Any]:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    watcher = bgwatch.Watcher(
        registry=registry,
        sinks=[sink],
        clock=clock,
        in_flight_ttl=60,
        ttl_seconds=100,
        max_tracked=2,
        max_extra_models=1,  # model labels run out: which body admits a model must be the same
        otel=True,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    return watcher, registry, reader


def _prometheus(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in registry.collect()
        for s in metric.samples
        if not any(part in s.name for part in WALL_CLOCK_SAMPLES) and not s.name.endswith("_created")
    }


def _otel(reader: InMemoryMetricReader) -> dict[tuple[str, tuple[tuple[str, Any], ...]], Any]:
    found: dict[tuple[str, tuple[tuple[str, Any], ...]], Any] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if "oldest_in_flight" in metric.name:
                    continue  # wall-clock ages
                for point in metric.data.data_points:
                    key = (metric.name, tuple(sorted(point.attributes.items())))
                    found[key] = getattr(point, "value", None) if hasattr(point, "value") else point.count
    return found


steps = st.lists(
    st.tuples(
        st.sampled_from(["retrieve"] * 6 + ["create", "cancel"]), bodies(), st.sampled_from([0, 0, 0, 0.5, 2, 61, 99.8])
    ),
    min_size=1,
    max_size=40,
)


def _polls(status: str, *advances: float) -> list[tuple[str, Any, float]]:
    body = {"object": "response", "id": "resp_a", "status": status, "model": "m1"}
    return [("retrieve", body, advance) for advance in advances]


@given(steps, st.sampled_from([(), ("failed",), ("failed", "incomplete", "cancelled")]))
# A repeat poll keeps the id for another TTL, in flight and ended (too narrow a window for the search).
@example(_polls("queued", 0, 0.5, 59.8), ())
@example(_polls("completed", 0, 0.5, 99.8), ())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fast_path_records_what_the_full_path_records(steps: list[tuple[str, Any, float]], raise_on: Any) -> None:
    clock = ManualClock()
    fast_sink, full_sink = RepeatAware(), AllObservations()
    fast, fast_registry, fast_reader = _watcher(fast_sink, clock)
    full, full_registry, full_reader = _watcher(full_sink, clock)
    fast_hook, full_hook = Hook(fast, raise_on), Hook(full, raise_on)
    for call, body, advance in steps:
        clock.now += advance
        raised = fast_hook.observe_json(call, body, "req_1")
        expected = full_hook.observe_json(call, body, "req_1")
        assert repr(raised) == repr(expected)
    clock.now += 61  # whatever is still in flight is abandoned, under the model label its entry holds
    fast.sweep()
    full.sweep()
    assert _prometheus(fast_registry) == _prometheus(full_registry)
    assert _otel(fast_reader) == _otel(full_reader)
    for response_id in IDS:
        assert fast.tracker.status_of(response_id) == full.tracker.status_of(response_id)
    assert fast.tracker.stats() == full.tracker.stats()
    # Every observation the fast watcher did not record in full went through the fast path.
    assert len(fast_sink.seen) + len(fast_sink.repeats) == len(full_sink.seen)


def test_a_repeat_poll_takes_the_fast_path() -> None:
    clock = ManualClock()
    sink = RepeatAware()
    watcher, registry, _ = _watcher(sink, clock)
    hook = Hook(watcher)
    body = json.loads(json.dumps(response_body("resp_a", "in_progress", background=True)))
    for _ in range(3):
        hook.observe_json("retrieve", body, None)
    assert len(sink.seen) == 1 and sink.repeats == ["in_progress", "in_progress"]
    assert sample(registry, "bg_response_polls_total", status="in_progress") == 3
    body["status"] = "failed"
    body["error"] = {"code": "server_error", "message": "boom"}
    hook.observe_json("retrieve", body, None)  # a change: in full
    hook.observe_json("retrieve", body, None)  # ended: a repeat
    assert [o.status for o in sink.seen] == ["in_progress", "failed"]
    assert sink.repeats == ["in_progress", "in_progress", "failed"]
    assert sample(registry, "bg_response_failed_total", code="server_error", model="gpt-4.1-2025-04-14") == 1


def test_raise_mode_never_skips_a_raise() -> None:
    clock = ManualClock()
    sink = RepeatAware()
    watcher, _, _ = _watcher(sink, clock)
    hook = Hook(watcher, ("failed",))
    body = json.loads(json.dumps(response_body("resp_a", "failed", background=True)))
    for _ in range(3):
        assert isinstance(hook.observe_json("retrieve", body, None), bgwatch.ResponseFailed)
    assert sink.repeats == []
