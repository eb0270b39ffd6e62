"""OpenTelemetry: call spans, lifecycle spans and the metrics mirror, through the real SDK.

Every test uses private tracer and meter providers and private Prometheus registries; the
global providers are never set.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import bgwatch
from bgwatch._tracker import Tracker
from bgwatch.errors import ConfigurationError
from bgwatch.metrics import DURATION_BUCKETS, INTERNAL_ERROR_STAGES, METRIC_NAMES, QUEUE_BUCKETS
from bgwatch.tracing import MAX_LINKS
from bgwatch.transports import sdk_library

from .conftest import FakeAPI, response_body, sample


@pytest.fixture(autouse=True)
def _genai_latest_experimental(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the experimental GenAI names (test_instrumentation covers the default)."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")


SDK_LIBRARY = sdk_library()  # httpx2 on openai >= 3, httpx on openai 2.x
http_module: Any = pytest.importorskip(SDK_LIBRARY)

MODEL = "gpt-4.1-2025-04-14"
REQUEST_MODEL = "gpt-4.1"
CREATED_AT = 1_760_000_000.0
COMPLETED_AT = CREATED_AT + 12.5
API_KEY = "sk-bgwatch-test-SECRETKEY-4c1d"
PROMPT = "PROMPT-do-not-export-7f3a"
OUTPUT = "OUTPUT-do-not-export-91c2"
ERROR_MESSAGE = "ERRMSG-do-not-export-55aa"
BASE = {
    "gen_ai.provider.name": "openai",
    "openai.api.type": "responses",
    "server.address": "api.test",
    "server.port": 80,
}


def ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def traced(registry: CollectorRegistry, tracer_provider: TracerProvider) -> bgwatch.Watcher:
    return bgwatch.Watcher(registry=registry, tracer_provider=tracer_provider)


def client_for(
    fake_api: FakeAPI, watcher: bgwatch.Watcher, library: str = SDK_LIBRARY, *, max_retries: int = 2
) -> openai.OpenAI:
    http = bgwatch.http_client(watcher=watcher, library=library, transport=fake_api.inner_transport(library))  # type: ignore[arg-type]
    return openai.OpenAI(api_key=API_KEY, base_url="http://api.test/v1", http_client=http, max_retries=max_retries)


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def lifecycle_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("background_response")]


def one(spans: list[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


# -- call spans ---------------------------------------------------------------------------


def test_call_spans_follow_the_genai_conventions(
    fake_api: FakeAPI,
    library: str,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    watcher = bgwatch.Watcher(registry=registry, tracer_provider=tracer_provider)
    fake_api.json("POST /responses", response_body("resp_a", "queued"))
    fake_api.json("GET /responses/resp_a", response_body("resp_a", "failed", code="server_error"))
    fake_api.json("POST /responses/resp_b/cancel", response_body("resp_b", "cancelled"))
    client = client_for(fake_api, watcher, library)
    app = tracer_provider.get_tracer("app")
    with app.start_as_current_span("handle job") as parent:
        created = client.responses.create(model=REQUEST_MODEL, input=PROMPT, background=True)
        polled = client.responses.retrieve(created.id)
        client.responses.cancel("resp_b")
    assert polled.status == "failed"  # untouched: observe mode

    create = one(by_name(exporter, f"chat {REQUEST_MODEL}"))
    assert create.kind is SpanKind.CLIENT
    assert dict(create.attributes or {}) == {
        **BASE,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": REQUEST_MODEL,
        "gen_ai.response.id": "resp_a",
        "gen_ai.response.model": MODEL,
        "gen_ai.response.status": "queued",
    }
    poll = one(by_name(exporter, "fetch_response"))
    assert poll.kind is SpanKind.CLIENT
    assert dict(poll.attributes or {}) == {
        **BASE,
        "gen_ai.operation.name": "fetch_response",
        "gen_ai.response.id": "resp_a",
        "gen_ai.response.model": MODEL,
        "gen_ai.response.status": "failed",
        "gen_ai.response.finish_reasons": ("error",),
    }
    # The poll worked: it is not an error span, even though the response failed.
    assert poll.status.status_code is StatusCode.UNSET
    cancel = one(by_name(exporter, "cancel_response"))
    assert dict(cancel.attributes or {}) == {
        **BASE,
        "gen_ai.operation.name": "cancel_response",
        "gen_ai.response.id": "resp_b",
        "gen_ai.response.model": MODEL,
        "gen_ai.response.status": "cancelled",
        "gen_ai.response.finish_reasons": ("error",),
    }
    for span in (create, poll, cancel):
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        assert span.instrumentation_scope is not None and span.instrumentation_scope.name == "bgwatch"


def test_stream_cursor_and_finish_reasons(
    fake_api: FakeAPI, traced: bgwatch.Watcher, exporter: InMemorySpanExporter
) -> None:
    cases = [
        ("completed", None, ("stop",)),
        ("incomplete", "max_output_tokens", ("length",)),
        ("incomplete", "content_filter", ("content_filter",)),
        ("in_progress", None, None),
    ]
    client = client_for(fake_api, traced)
    for n, (status, reason, _) in enumerate(cases):
        fake_api.json(f"GET /responses/r{n}", response_body(f"r{n}", status, reason=reason))
        client.responses.retrieve(f"r{n}")
    spans = sorted(by_name(exporter, "fetch_response"), key=lambda s: str((s.attributes or {})["gen_ai.response.id"]))
    for span, (_, _, reasons) in zip(spans, cases, strict=True):
        assert (span.attributes or {}).get("gen_ai.response.finish_reasons") == reasons
    # A resumed stream's cursor (the query of GET /responses/{id}?stream=true&starting_after=N).
    call = traced.tracing
    assert call is not None
    request = http_module.Request("GET", "https://api.openai.com/v1/responses/r9?stream=true&starting_after=42")
    span = call.start_call("retrieve", request)
    span.end()
    resumed = by_name(exporter, "fetch_response")[-1]
    assert (resumed.attributes or {})["gen_ai.request.stream_cursor"] == "42"
    assert (resumed.attributes or {})["server.port"] == 443
    assert "gen_ai.request.stream" not in (resumed.attributes or {})


def test_stream_layer_hand_off(traced: bgwatch.Watcher, exporter: InMemorySpanExporter) -> None:
    """How the SSE layer drives a stream's span: record each event through the hook, end at the end."""
    from bgwatch._classify import observation_from_mapping
    from bgwatch.transports import Hook

    hook = Hook(traced)
    request = http_module.Request("GET", "http://api.test/v1/responses/r1?stream=true&starting_after=3")
    span = hook.start_span("retrieve", request)
    for status in ("in_progress", "completed"):
        observation = observation_from_mapping("stream", response_body("r1", status, completed_at=COMPLETED_AT))
        assert observation is not None
        hook.record(observation, span)
    assert by_name(exporter, "fetch_response") == []  # open until the stream ends
    span.end()
    span.end()  # idempotent
    stream = one(by_name(exporter, "fetch_response"))
    assert (stream.attributes or {})["gen_ai.request.stream_cursor"] == "3"
    assert (stream.attributes or {})["gen_ai.response.status"] == "completed"
    lifecycle = one(lifecycle_spans(exporter))
    assert [link.context.span_id for link in lifecycle.links] == [stream.get_span_context().span_id] * 2
    assert lifecycle.links[0].attributes == {"bgwatch.call": "stream"}


def test_http_errors_make_one_error_span_per_attempt(
    fake_api: FakeAPI, traced: bgwatch.Watcher, exporter: InMemorySpanExporter
) -> None:
    error = {"error": {"message": "boom", "type": "server_error"}}
    fake_api.sequence("GET /responses/r1", [(500, error), (503, error), (200, response_body("r1", "completed"))])
    client = client_for(fake_api, traced, max_retries=2)
    assert client.responses.retrieve("r1").status == "completed"
    spans = sorted(by_name(exporter, "fetch_response"), key=lambda s: s.start_time or 0)
    assert [(s.status.status_code, (s.attributes or {}).get("error.type")) for s in spans] == [
        (StatusCode.ERROR, "500"),
        (StatusCode.ERROR, "503"),
        (StatusCode.UNSET, None),
    ]
    assert spans[0].status.description is None  # no message without capture_error_messages


def test_transport_errors_are_error_spans(
    registry: CollectorRegistry, traced: bgwatch.Watcher, exporter: InMemorySpanExporter
) -> None:
    def refuse(request: Any) -> Any:
        raise http_module.ConnectError("connection refused", request=request)

    http = bgwatch.http_client(watcher=traced, transport=http_module.MockTransport(refuse))
    client = openai.OpenAI(api_key=API_KEY, base_url="http://api.test/v1", http_client=http, max_retries=1)
    with pytest.raises(openai.APIConnectionError):
        client.responses.retrieve("r1")
    spans = by_name(exporter, "fetch_response")
    assert len(spans) == 2  # one per attempt
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == f"{SDK_LIBRARY}.ConnectError"
        assert span.status.description is None


def test_async_client_spans_nest_under_the_callers_span(
    fake_api: FakeAPI, traced: bgwatch.Watcher, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    fake_api.json("GET /responses/r1", response_body("r1", "completed"))

    async def main() -> None:
        http = bgwatch.async_http_client(
            watcher=traced, transport=fake_api.inner_transport(SDK_LIBRARY, asynchronous=True)
        )
        client = openai.AsyncOpenAI(api_key=API_KEY, base_url="http://api.test/v1", http_client=http)
        with tracer_provider.get_tracer("app").start_as_current_span("job"):
            await asyncio.gather(*(client.responses.retrieve("r1") for _ in range(3)))
        await client.close()

    asyncio.run(main())
    job = one(by_name(exporter, "job"))
    spans = by_name(exporter, "fetch_response")
    assert len(spans) == 3
    assert all(s.parent is not None and s.parent.span_id == job.get_span_context().span_id for s in spans)
    assert one(lifecycle_spans(exporter)).status.status_code is StatusCode.UNSET


# -- lifecycle spans -----------------------------------------------------------------------


def test_lifecycle_span_is_made_once_across_threads_and_polls(
    fake_api: FakeAPI, traced: bgwatch.Watcher, exporter: InMemorySpanExporter
) -> None:
    fake_api.json("POST /responses", response_body("resp_t", "queued"))
    answers = [(200, response_body("resp_t", "in_progress"))] * 40
    answers.append((200, response_body("resp_t", "completed", completed_at=COMPLETED_AT)))
    fake_api.sequence("GET /responses/resp_t", answers)
    client = client_for(fake_api, traced)
    client.responses.create(model=REQUEST_MODEL, input=PROMPT, background=True)
    barrier = threading.Barrier(8)

    def poll() -> None:
        barrier.wait()
        for _ in range(15):
            client.responses.retrieve("resp_t")

    threads = [threading.Thread(target=poll) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    span = one(lifecycle_spans(exporter))
    assert span.name == f"background_response {MODEL}"
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is None  # a root: it outlives every call
    assert span.start_time == ns(CREATED_AT)
    assert span.end_time == ns(COMPLETED_AT)
    assert span.status.status_code is StatusCode.UNSET
    assert [e.name for e in span.events] == ["response.queued", "response.in_progress", "response.completed"]
    assert span.events[-1].timestamp == ns(COMPLETED_AT)
    attributes = dict(span.attributes or {})
    assert attributes == {
        "gen_ai.provider.name": "openai",
        "openai.api.type": "responses",
        "gen_ai.response.id": "resp_t",
        "gen_ai.response.model": MODEL,
        "gen_ai.response.status": "completed",
        "gen_ai.response.finish_reasons": ("stop",),
        "bgwatch.lifecycle.observations": attributes["bgwatch.lifecycle.observations"],
    }
    # The create and the polls up to the first terminal one (in-progress polls whose recording
    # a racing thread's terminal one overtook are not counted: the span had ended).
    assert 2 <= int(attributes["bgwatch.lifecycle.observations"]) <= 42  # type: ignore[call-overload]
    call_ids = {s.get_span_context().span_id for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT}
    assert 2 <= len(span.links) <= MAX_LINKS
    assert {link.context.span_id for link in span.links} <= call_ids
    assert span.links[0].attributes == {"bgwatch.call": "create"}
    assert len(by_name(exporter, "fetch_response")) == 8 * 15


@pytest.mark.parametrize(
    "case",
    [
        ("failed", "rate_limit_exceeded", None, "rate_limit_exceeded"),
        ("failed", "brand_new_code", None, "brand_new_code"),
        ("incomplete", None, "max_output_tokens", "max_output_tokens"),
        ("cancelled", None, None, "cancelled"),
    ],
)
def test_lifecycle_span_is_an_error_when_the_response_did_not_complete(
    fake_api: FakeAPI,
    traced: bgwatch.Watcher,
    exporter: InMemorySpanExporter,
    case: tuple[str, str | None, str | None, str],
) -> None:
    status, code, reason, error_type = case
    fake_api.json("POST /responses", response_body("r1", "queued"))
    fake_api.json("GET /responses/r1", response_body("r1", "in_progress"))
    final = response_body("r1", status, code=code, reason=reason, message=ERROR_MESSAGE)
    if status == "cancelled":
        fake_api.json("POST /responses/r1/cancel", final)
    else:
        fake_api.sequence("GET /responses/r1", [(200, response_body("r1", "in_progress")), (200, final)])
    client = client_for(fake_api, traced)
    client.responses.create(model=REQUEST_MODEL, input=PROMPT, background=True)
    client.responses.retrieve("r1")
    if status == "cancelled":
        client.responses.cancel("r1")
    else:
        client.responses.retrieve("r1")
    span = one(lifecycle_spans(exporter))
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is None  # capture_error_messages is off
    assert (span.attributes or {})["error.type"] == error_type
    assert (span.attributes or {})["gen_ai.response.status"] == status
    assert [e.name for e in span.events] == ["response.queued", "response.in_progress", f"response.{status}"]
    # The call spans that saw it are fine: those calls worked.
    assert all(
        s.status.status_code is StatusCode.UNSET for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT
    )


def test_capture_error_messages_is_opt_in(
    registry: CollectorRegistry, tracer_provider: TracerProvider, exporter: InMemorySpanExporter, fake_api: FakeAPI
) -> None:
    watcher = bgwatch.Watcher(registry=registry, tracer_provider=tracer_provider, capture_error_messages=True)
    fake_api.json("GET /responses/r1", response_body("r1", "failed", code="server_error", message=ERROR_MESSAGE))
    client_for(fake_api, watcher).responses.retrieve("r1")
    span = one(lifecycle_spans(exporter))
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == ERROR_MESSAGE


def test_a_response_first_seen_terminal_gets_a_complete_span(
    fake_api: FakeAPI, traced: bgwatch.Watcher, exporter: InMemorySpanExporter
) -> None:
    fake_api.json("GET /responses/r1", response_body("r1", "completed", completed_at=COMPLETED_AT))
    client = client_for(fake_api, traced)
    for _ in range(3):
        client.responses.retrieve("r1")
    span = one(lifecycle_spans(exporter))
    assert (span.start_time, span.end_time) == (ns(CREATED_AT), ns(COMPLETED_AT))
    assert [e.name for e in span.events] == ["response.completed"]
    assert len(span.links) == 1


def test_evicted_and_expired_responses_end_their_span(
    fake_api: FakeAPI, registry: CollectorRegistry, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    watcher = bgwatch.Watcher(registry=registry, tracer_provider=tracer_provider, max_tracked=2, in_flight_ttl=0.2)
    client = client_for(fake_api, watcher)
    for n in range(3):
        fake_api.json(f"GET /responses/r{n}", response_body(f"r{n}", "in_progress"))
        client.responses.retrieve(f"r{n}")
    evicted = one(lifecycle_spans(exporter))
    assert (evicted.attributes or {})["gen_ai.response.id"] == "r0"
    assert (evicted.attributes or {})["bgwatch.lifecycle.dropped"] == "evicted"
    assert evicted.status.status_code is StatusCode.UNSET
    time.sleep(0.25)
    watcher.sweep()
    dropped = {
        (s.attributes or {})["gen_ai.response.id"]: (s.attributes or {})["bgwatch.lifecycle.dropped"]
        for s in lifecycle_spans(exporter)
    }
    assert dropped == {"r0": "evicted", "r1": "expired", "r2": "expired"}
    assert sample(registry, "bg_response_in_flight") == 0


def test_tracker_attachments_are_made_once_and_released_when_terminal() -> None:
    made: list[object] = []

    class Attached:
        def __init__(self) -> None:
            made.append(self)
            self.reasons: list[str] = []

        def dropped(self, reason: str) -> None:
            self.reasons.append(reason)

    tracker = Tracker()
    barrier = threading.Barrier(8)
    seen: list[object] = []

    def observe() -> None:
        barrier.wait()
        for _ in range(100):
            seen.append(tracker.observe("r", "in_progress", Attached).attachment)

    threads = [threading.Thread(target=observe) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and all(a is made[0] for a in seen)
    final = tracker.observe("r", "completed", Attached)
    assert final.finished and final.attachment is made[0]
    assert tracker.observe("r", "completed", Attached).attachment is None
    assert tracker._ended.get("r").attachment is None  # type: ignore[union-attr]  # a terminal id holds nothing
    assert len(made) == 1


# -- suppression, fail-open, configuration ----------------------------------------------------


@pytest.mark.parametrize("key", ["api", "plain", "instrumentation"])
def test_suppressed_context_makes_no_spans_but_still_counts(
    key: str, fake_api: FakeAPI, registry: CollectorRegistry, traced: bgwatch.Watcher, exporter: InMemorySpanExporter
) -> None:
    fake_api.json("GET /responses/r1", response_body("r1", "failed", code="server_error"))
    client = client_for(fake_api, traced)
    if key == "instrumentation":
        utils = pytest.importorskip("opentelemetry.instrumentation.utils")
        with utils.suppress_instrumentation():
            client.responses.retrieve("r1")
    else:
        name = otel_context._SUPPRESS_INSTRUMENTATION_KEY if key == "api" else "suppress_instrumentation"
        token = otel_context.attach(otel_context.set_value(name, True))
        try:
            client.responses.retrieve("r1")
        finally:
            otel_context.detach(token)
    assert exporter.get_finished_spans() == ()
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1


class _Exploding(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("processor on_start")

    def on_end(self, span: Any) -> None:
        raise RuntimeError("processor on_end")


def test_tracing_fails_open(fake_api: FakeAPI, registry: CollectorRegistry) -> None:
    provider = TracerProvider()
    provider.add_span_processor(_Exploding())
    watcher = bgwatch.Watcher(registry=registry, tracer_provider=provider)
    fake_api.json("POST /responses", response_body("r1", "queued"))
    fake_api.json("GET /responses/r1", response_body("r1", "failed", code="server_error"))
    client = client_for(fake_api, watcher)
    assert client.responses.create(model=REQUEST_MODEL, input=PROMPT, background=True).status == "queued"
    assert client.responses.retrieve("r1").status == "failed"
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1
    assert sample(registry, "bgwatch_internal_errors_total", stage="trace") >= 2


def test_configuration() -> None:
    registry = CollectorRegistry()
    assert bgwatch.Watcher(registry=registry).tracing is None  # default: Prometheus only
    assert bgwatch.Watcher(registry=registry, tracer_provider=TracerProvider()).tracing is not None
    assert bgwatch.Watcher(registry=registry, tracing=True).tracing is not None  # the global provider
    with pytest.raises(ConfigurationError):
        bgwatch.Watcher(registry=registry, tracing=False, tracer_provider=TracerProvider())
    with pytest.raises(ConfigurationError):
        bgwatch.Watcher(registry=registry, meter_provider=MeterProvider())
    only_otel = bgwatch.Watcher(prometheus=False, otel=True, meter_provider=MeterProvider())
    assert [type(s).__name__ for s in only_otel.sinks] == ["OTelMetricsSink"]


# -- coexistence with other instrumentations ---------------------------------------------------


class _LocalAPI(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer(response_body(self.path.rsplit("/", 1)[-1], "completed"))

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self._answer(response_body("resp_local", "queued"))

    def _answer(self, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def local_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LocalAPI)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_httpx_instrumentation_span_nests_under_the_call_span(
    local_api: str, traced: bgwatch.Watcher, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    httpx_instrumentation = pytest.importorskip("opentelemetry.instrumentation.httpx")
    name = "HTTPX2ClientInstrumentor" if SDK_LIBRARY == "httpx2" else "HTTPXClientInstrumentor"
    instrumentor = getattr(httpx_instrumentation, name)()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=MeterProvider())
    try:
        client = openai.OpenAI(api_key=API_KEY, base_url=local_api, http_client=bgwatch.http_client(watcher=traced))
        client.responses.create(model=REQUEST_MODEL, input=PROMPT, background=True)
        client.responses.retrieve("resp_local")
        client.close()
    finally:
        instrumentor.uninstrument()
    ours = {
        s.get_span_context().span_id: s.name
        for s in exporter.get_finished_spans()
        if s.instrumentation_scope and s.instrumentation_scope.name == "bgwatch"
    }
    http_spans = [
        s
        for s in exporter.get_finished_spans()
        if s.instrumentation_scope and s.instrumentation_scope.name.startswith("opentelemetry.instrumentation.httpx")
    ]
    assert sorted(s.name for s in http_spans) == ["GET", "POST"]
    assert sorted(ours[s.parent.span_id] for s in http_spans if s.parent) == [f"chat {REQUEST_MODEL}", "fetch_response"]


def test_openai_v2_instrumentation_coexists_without_duplicates(
    fake_api: FakeAPI, traced: bgwatch.Watcher, tracer_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    openai_v2 = pytest.importorskip("opentelemetry.instrumentation.openai_v2")
    chat = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": OUTPUT}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }  # fmt: skip
    fake_api.json("POST /chat/completions", chat)
    fake_api.json("POST /responses", response_body("r1", "queued"))
    fake_api.sequence(
        "GET /responses/r1", [(200, response_body("r1", "in_progress")), (200, response_body("r1", "completed"))]
    )
    instrumentor = openai_v2.OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=MeterProvider())
    try:
        client = client_for(fake_api, traced)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
        client.responses.create(model=REQUEST_MODEL, input=PROMPT, background=True)
        client.responses.retrieve("r1")
        # An instrumentation that already reports this very poll (as openai-v2 may one day):
        # bgwatch adds no second fetch_response span, and the lifecycle links to that span.
        theirs = tracer_provider.get_tracer("opentelemetry.instrumentation.openai_v2")
        attributes = {"gen_ai.operation.name": "fetch_response", "gen_ai.provider.name": "openai"}
        with theirs.start_as_current_span("fetch_response", kind=SpanKind.CLIENT, attributes=attributes) as their_span:
            client.responses.retrieve("r1")
    finally:
        instrumentor.uninstrument()
    spans = exporter.get_finished_spans()
    ours = sorted(s.name for s in spans if s.instrumentation_scope and s.instrumentation_scope.name == "bgwatch")
    others = sorted(
        s.name for s in spans if not (s.instrumentation_scope and s.instrumentation_scope.name == "bgwatch")
    )
    assert ours == [f"background_response {MODEL}", f"chat {REQUEST_MODEL}", "fetch_response"]
    assert others == ["chat gpt-4o-mini", "fetch_response"]  # the chat completion is theirs alone
    lifecycle = one(lifecycle_spans(exporter))
    assert lifecycle.links[-1].context.span_id == their_span.get_span_context().span_id


# -- metrics --------------------------------------------------------------------------------


def run_workload(client: openai.OpenAI, fake_api: FakeAPI) -> None:
    outcomes = [
        ("completed", None, None),
        ("completed", None, None),
        ("failed", "server_error", None),
        ("failed", "rate_limit_exceeded", None),
        ("incomplete", None, "max_output_tokens"),
        ("cancelled", None, None),
        ("queued", None, None),  # still in flight at the end
    ]
    for n, (status, code, reason) in enumerate(outcomes):
        rid = f"resp_w{n}"
        fake_api.json("POST /responses", response_body(rid, "queued", output_text=""))
        final = response_body(rid, status, code=code, reason=reason, message=ERROR_MESSAGE, output_text=OUTPUT)
        final["usage"] = usage(10 + n, 3 * n)
        fake_api.sequence(f"GET /responses/{rid}", [(200, response_body(rid, "in_progress")), (200, final)])
        client.responses.create(model=REQUEST_MODEL, input=PROMPT, instructions=PROMPT, background=True)
        for _ in range(3):
            client.responses.retrieve(rid)


def usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A Responses API ``usage`` object."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def comparable(exposition: str) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    """Samples without creation timestamps and scope labels; ages (computed at each scrape) in whole minutes."""
    found = set()
    for family in text_string_to_metric_families(exposition):
        if family.name == "target_info":
            continue
        for s in family.samples:
            if s.name.endswith("_created"):  # prometheus_client's creation timestamps
                continue
            labels = frozenset((k, v) for k, v in s.labels.items() if not k.startswith("otel_scope_"))
            value = s.value // 60 if s.name == "bg_response_oldest_in_flight_seconds" else s.value
            found.add((s.name, labels, value))
    return found


def test_otel_mirror_exposes_the_same_prometheus_names_labels_and_values(
    fake_api: FakeAPI, registry: CollectorRegistry
) -> None:
    otel_registry = CollectorRegistry()
    meter_provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=otel_registry)])
    watcher = bgwatch.Watcher(registry=registry, otel=True, meter_provider=meter_provider)
    run_workload(client_for(fake_api, watcher), fake_api)
    watcher.internal_error("trace")
    for sink in watcher.sinks:
        sink.webhook_rejected("bad_signature")  # type: ignore[attr-defined]

    ours = generate_latest(registry).decode()
    theirs = generate_latest(otel_registry).decode()
    assert "otel_scope_name" in theirs and "target_info" in theirs
    assert comparable(ours) == comparable(theirs)
    names = {name for name, _, _ in comparable(theirs)}
    for metric in METRIC_NAMES:  # every contract metric is there, by its exact name
        assert metric in names or f"{metric}_count" in names, metric
    meter_provider.shutdown()


def test_otel_mirror_instruments(fake_api: FakeAPI) -> None:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    watcher = bgwatch.Watcher(prometheus=False, otel=True, meter_provider=meter_provider)
    run_workload(client_for(fake_api, watcher), fake_api)
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert set(metrics) == {
        "bg_response_created", "bg_response_polls", "bg_response_finished", "bg_response_failed",
        "bg_response_incomplete", "bg_response_duration", "bg_response_in_flight",
        "bgwatch_internal_errors",  # every stage exists from the start, at 0
        "bg_response_abandoned",  # at 0 from its model's first create
        "bg_response_queue", "bg_response_tokens", "bg_response_oldest_in_flight",
    }  # fmt: skip
    errors = {p.attributes["stage"]: p.value for p in metrics["bgwatch_internal_errors"].data.data_points}  # type: ignore[union-attr,index]
    assert errors == dict.fromkeys(INTERNAL_ERROR_STAGES, 0)
    duration = metrics["bg_response_duration"]
    assert duration.unit == "s"
    points = list(duration.data.data_points)
    assert all(tuple(p.explicit_bounds) == DURATION_BUCKETS for p in points)  # type: ignore[attr-defined]
    assert sum(p.count for p in points) == 6  # type: ignore[attr-defined]
    failed = {tuple(sorted(p.attributes.items())): p.value for p in metrics["bg_response_failed"].data.data_points}  # type: ignore[union-attr]
    assert failed == {
        (("code", "rate_limit_exceeded"), ("model", MODEL)): 1,
        (("code", "server_error"), ("model", MODEL)): 1,
    }
    in_flight = list(metrics["bg_response_in_flight"].data.data_points)
    assert [p.value for p in in_flight] == [1]  # type: ignore[attr-defined]
    queue = metrics["bg_response_queue"]
    assert queue.unit == "s"
    queue_points = list(queue.data.data_points)
    assert all(tuple(p.explicit_bounds) == QUEUE_BUCKETS for p in queue_points)  # type: ignore[attr-defined]
    assert sum(p.count for p in queue_points) == 7  # type: ignore[attr-defined]  # every create answered queued
    tokens = {tuple(sorted(p.attributes.items())): p.value for p in metrics["bg_response_tokens"].data.data_points}  # type: ignore[union-attr]
    assert sum(v for k, v in tokens.items() if ("type", "input") in k) == sum(10 + n for n in range(6))
    assert sum(v for k, v in tokens.items() if ("type", "output") in k) == sum(3 * n for n in range(6))
    (oldest,) = metrics["bg_response_oldest_in_flight"].data.data_points
    assert oldest.value == pytest.approx(time.time() - CREATED_AT, abs=5)  # type: ignore[attr-defined]
    meter_provider.shutdown()


# -- nothing secret leaves -------------------------------------------------------------------


@pytest.mark.parametrize("capture", [False, True])
def test_no_key_prompt_or_output_is_ever_exported(
    capture: bool,
    fake_api: FakeAPI,
    registry: CollectorRegistry,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
) -> None:
    reader = InMemoryMetricReader()
    otel_registry = CollectorRegistry()
    meter_provider = MeterProvider(metric_readers=[reader, PrometheusMetricReader(registry=otel_registry)])
    watcher = bgwatch.Watcher(
        registry=registry, otel=True, meter_provider=meter_provider, tracer_provider=tracer_provider,
        capture_error_messages=capture,
    )  # fmt: skip
    run_workload(client_for(fake_api, watcher), fake_api)
    spans = exporter.get_finished_spans()
    assert len(spans) > 20
    data = reader.get_metrics_data()
    assert data is not None
    exported = "\n".join(
        [s.to_json() for s in spans]
        + [data.to_json(), generate_latest(registry).decode(), generate_latest(otel_registry).decode()]
    )
    for secret in (API_KEY, PROMPT, OUTPUT, "Bearer"):
        assert secret not in exported
    assert (ERROR_MESSAGE in exported) is capture  # only as a span status description, and only opted in
    meter_provider.shutdown()


# -- the example -------------------------------------------------------------------------------


def test_console_example_runs() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "otel_console.py"
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for expected in (
        '"name": "chat gpt-4.1-mini"',
        '"name": "fetch_response"',
        '"name": "background_response gpt-4.1-mini"',
        '"error.type": "server_error"',
        '"error.type": "max_output_tokens"',
        '"name": "bg_response_finished"',
        ": completed",
        ": failed",
        ": incomplete",
    ):
        assert expected in out, expected
    assert trace.get_tracer_provider().__class__.__name__ == "ProxyTracerProvider"  # we never set the global one
