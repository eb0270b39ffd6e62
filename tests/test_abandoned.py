"""Responses that end without us: nobody polls them again, they leave in-flight as abandoned."""

from __future__ import annotations

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

import bgwatch
from bgwatch._expiring import ExpiringMap, Stamped
from bgwatch._tracker import DEFAULT_IN_FLIGHT_TTL, RecentIds, Tracker
from bgwatch.transports import sdk_library

from .conftest import FakeAPI, response_body, sample

MODEL = "gpt-4.1-2025-04-14"
TTL = 600.0


class ManualClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def client_for(fake_api: FakeAPI, watcher: bgwatch.Watcher) -> openai.OpenAI:
    library = sdk_library()
    http = bgwatch.http_client(watcher=watcher, library=library, transport=fake_api.inner_transport(library))  # type: ignore[arg-type]
    return openai.OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0)


def create(fake_api: FakeAPI, client: openai.OpenAI, response_id: str, model: str = MODEL) -> None:
    fake_api.json("POST /responses", response_body(response_id, "queued", model=model))
    client.responses.create(model=model, input="x", background=True)


def test_an_unpolled_response_is_abandoned_at_the_next_scrape_without_any_traffic(fake_api: FakeAPI) -> None:
    registry, clock = CollectorRegistry(), ManualClock()
    watcher = bgwatch.Watcher(registry=registry, in_flight_ttl=TTL, clock=clock)
    client = client_for(fake_api, watcher)
    create(fake_api, client, "resp_gone")
    # Born at zero with its model, so that increase() sees the first abandonment.
    assert registry.get_sample_value("bg_response_abandoned_total", {"model": MODEL}) == 0
    assert sample(registry, "bg_response_in_flight") == 1
    clock.now += TTL - 1
    assert sample(registry, "bg_response_in_flight") == 1  # a scrape sweeps: not yet
    clock.now += 2
    exposition = generate_latest(registry).decode()  # a scrape, and nothing else happened
    assert f'bg_response_abandoned_total{{model="{MODEL}"}} 1.0' in exposition
    assert "bg_response_in_flight 0.0" in exposition
    assert watcher.tracker.in_flight == 0
    # Seen again later (a poll after all): tracked anew, its end counted; never abandoned twice.
    fake_api.json("GET /responses/resp_gone", response_body("resp_gone", "completed", model=MODEL))
    client.responses.retrieve("resp_gone")
    clock.now += 10 * TTL
    watcher.sweep()
    assert sample(registry, "bg_response_abandoned_total", model=MODEL) == 1
    assert sample(registry, "bg_response_finished_total", status="completed", model=MODEL) == 1


def test_a_response_still_being_polled_is_never_abandoned(fake_api: FakeAPI) -> None:
    registry, clock = CollectorRegistry(), ManualClock()
    watcher = bgwatch.Watcher(registry=registry, in_flight_ttl=TTL, clock=clock)
    client = client_for(fake_api, watcher)
    create(fake_api, client, "resp_long")
    fake_api.json("GET /responses/resp_long", response_body("resp_long", "in_progress", model=MODEL))
    for _ in range(20):  # 20 * 0.9 TTL: a long response, polled well within the TTL
        clock.now += 0.9 * TTL
        client.responses.retrieve("resp_long")
        watcher.sweep()
    assert sample(registry, "bg_response_abandoned_total", model=MODEL) == 0
    assert sample(registry, "bg_response_in_flight") == 1
    fake_api.json("GET /responses/resp_long", response_body("resp_long", "failed", code="server_error", model=MODEL))
    client.responses.retrieve("resp_long")
    clock.now += 2 * TTL
    watcher.sweep()  # an ended id leaves tracking without being abandoned
    assert sample(registry, "bg_response_abandoned_total", model=MODEL) == 0
    assert sample(registry, "bg_response_in_flight") == 0


def test_the_size_cap_abandons_the_oldest_in_flight_after_the_ended_ids(fake_api: FakeAPI) -> None:
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry, max_tracked=3)
    client = client_for(fake_api, watcher)
    create(fake_api, client, "resp_a", model="model-a")
    fake_api.json("GET /responses/resp_done", response_body("resp_done", "completed", model=MODEL))
    client.responses.retrieve("resp_done")
    create(fake_api, client, "resp_b", model="model-b")
    create(fake_api, client, "resp_c", model="model-c")  # 4 ids: the ended one goes first
    assert sample(registry, "bg_response_in_flight") == 3
    assert sample(registry, "bg_response_abandoned_total", model="model-a") == 0
    create(fake_api, client, "resp_d", model="model-d")  # now the oldest in flight
    assert sample(registry, "bg_response_abandoned_total", model="model-a") == 1
    assert sample(registry, "bg_response_in_flight") == 3 == watcher.tracker.in_flight
    created = sum(sample(registry, "bg_response_created_total", model=f"model-{x}") for x in "abcd")
    finished = sample(registry, "bg_response_finished_total", status="completed", model=MODEL)
    abandoned = sample(registry, "bg_response_abandoned_total", model="model-a")
    assert sample(registry, "bg_response_in_flight") + abandoned == created and finished == 1


def test_the_otel_mirror_counts_abandoned_responses_too(fake_api: FakeAPI) -> None:
    reader, clock = InMemoryMetricReader(), ManualClock()
    watcher = bgwatch.Watcher(
        prometheus=False,
        otel=True,
        meter_provider=MeterProvider(metric_readers=[reader]),
        in_flight_ttl=TTL,
        clock=clock,
    )
    create(fake_api, client_for(fake_api, watcher), "resp_o")
    clock.now += TTL + 1
    watcher.sweep()
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        m.name: [(dict(p.attributes or {}), p.value) for p in m.data.data_points]  # type: ignore[attr-defined]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert points["bg_response_abandoned"] == [({"model": MODEL}, 1)]
    assert points["bg_response_in_flight"] == [({}, 0)]


def test_in_flight_ttl_is_an_explicit_option_with_a_documented_default() -> None:
    assert bgwatch.Watcher(registry=CollectorRegistry()).tracker.in_flight_ttl == DEFAULT_IN_FLIGHT_TTL == 3600
    with pytest.raises(bgwatch.ConfigurationError):
        bgwatch.Watcher(registry=CollectorRegistry(), in_flight_ttl=0)


def test_tracker_and_replay_set_share_one_expiring_map() -> None:
    # One FIFO+TTL implementation: both hold ExpiringMaps and neither has an expiry loop of its own.
    tracker, replays = Tracker(), RecentIds(10, 60.0)
    assert isinstance(tracker._active, ExpiringMap) and isinstance(tracker._ended, ExpiringMap)
    assert isinstance(replays._seen, ExpiringMap)
    assert not hasattr(Tracker, "_evict_oldest") and not hasattr(RecentIds, "_expire")


def test_expiring_map_expires_in_store_order_and_caps_oldest_first() -> None:
    items: ExpiringMap[str, Stamped] = ExpiringMap(10.0)
    a, b, c = Stamped(), Stamped(), Stamped()
    items.put("a", a, 0.0)
    items.put("b", b, 5.0)
    items.put("a", a, 6.0)  # stored again: moves behind b
    items.put("c", c, 7.0)
    assert items.expire(15.0) == [("b", b)]
    assert items.pop_oldest() == ("a", a)
    assert items.get("c") is c and len(items) == 1 and "a" not in items
    assert items.expire(17.0) == [("c", c)] and items.pop_oldest() is None


def test_expiring_map_refresh_is_a_put_of_the_same_value() -> None:
    items: ExpiringMap[str, Stamped] = ExpiringMap(10.0)
    a, b = Stamped(), Stamped()
    items.put("a", a, 0.0)
    items.put("b", b, 5.0)
    assert items.refresh("a", 6.0) is a and a.stamp == 6.0  # moves behind b, as put would
    assert items.refresh("z", 6.0) is None and "z" not in items
    assert items.expire(15.0) == [("b", b)] and items.get("a") is a


class LegacySink:
    """A sink written before abandoned() and forked() existed."""

    def __init__(self) -> None:
        self.in_flight = 0

    def observed(self, observation: object, transition: object, labels: object, duration: object) -> None:
        self.in_flight += getattr(transition, "in_flight_delta", 0)

    def adjust_in_flight(self, delta: int) -> None:
        self.in_flight += delta

    def internal_error(self, stage: str) -> None:
        raise AssertionError(f"internal error at {stage}")


def test_a_sink_without_the_new_methods_keeps_working(fake_api: FakeAPI) -> None:
    registry, clock, legacy = CollectorRegistry(), ManualClock(), LegacySink()
    watcher = bgwatch.Watcher(registry=registry, sinks=[legacy], in_flight_ttl=TTL, clock=clock, max_tracked=2)
    client = client_for(fake_api, watcher)
    for n in range(3):
        create(fake_api, client, f"resp_{n}")  # the third evicts the first (abandoned)
    assert legacy.in_flight == 2
    clock.now += TTL + 1
    watcher.sweep()
    assert legacy.in_flight == 0
    assert sample(registry, "bg_response_abandoned_total", model=MODEL) == 3
