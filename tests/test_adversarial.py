"""Adversarial input: label cardinality, a flood of ids that never finish, secrets in messages.

* 100,000 distinct unknown error codes, incomplete reasons and models: the number of label
  values (counted as series in the Prometheus registry and as attribute sets in the
  OpenTelemetry mirror) stays under the caps, and every response is still counted.
* Ids that never finish, through the whole watcher (sinks and lifecycle spans included, the
  bare tracker is covered by tests/test_tracker.py): memory stays flat at the cap.
* An ``error.message`` holding a secret or a prompt, a prompt in the request, the API key in
  the headers: none of them appears in a label, a span, a metric attribute or a log line
  (bgwatch's logger captured at DEBUG), while the typed exception still carries the message.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
import tracemalloc
from collections import defaultdict
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

import bgwatch
from bgwatch._classify import Observation
from bgwatch._watcher import known_error_codes, known_incomplete_reasons
from bgwatch.transports import Hook

from .conftest import BrokenSink, FakeAPI, client_class, response_body, total, transport_class

MAX_EXTRA = 50
FLOOD = 100_000
METRIC_PREFIXES = ("bg_response_", "bgwatch_")


def series(registry: CollectorRegistry) -> dict[str, set[tuple[tuple[str, str], ...]]]:
    """Sample name -> the distinct label sets it has in ``registry``."""
    found: dict[str, set[tuple[tuple[str, str], ...]]] = defaultdict(set)
    for metric in registry.collect():
        for s in metric.samples:
            if s.name.startswith(METRIC_PREFIXES):
                found[s.name].add(tuple(sorted(s.labels.items())))
    return found


def label_values(registry: CollectorRegistry, label: str) -> set[str]:
    return {dict(labels)[label] for sets in series(registry).values() for labels in sets if label in dict(labels)}


def otel_attribute_sets(reader: InMemoryMetricReader) -> dict[str, set[tuple[tuple[str, Any], ...]]]:
    found: dict[str, set[tuple[tuple[str, Any], ...]]] = defaultdict(set)
    data = reader.get_metrics_data()
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                for point in metric.data.data_points:
                    found[metric.name].add(tuple(sorted((point.attributes or {}).items())))
    return found


class Template:
    """Bodies of one shape with a few fields swapped in by byte substitution (fast enough for 100k)."""

    def __init__(self, status: str, **fields: Any) -> None:
        marker = {"id": "@ID@", "model": "@MODEL@"}
        body = response_body("@ID@", status, model="@MODEL@", **fields)
        if status == "failed":
            body["error"]["code"] = "@CODE@"
        if status == "incomplete":
            body["incomplete_details"]["reason"] = "@CODE@"
        self.raw = json.dumps(body).encode()
        assert all(m.encode() in self.raw for m in marker.values())

    def __call__(self, response_id: str, model: str, code: str) -> bytes:
        return (
            self.raw.replace(b"@ID@", response_id.encode())
            .replace(b"@MODEL@", model.encode())
            .replace(b"@CODE@", code.encode())
        )


def test_a_flood_of_unknown_codes_reasons_and_models_stays_under_the_caps() -> None:
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    watcher = bgwatch.Watcher(
        registry=registry,
        otel=True,
        meter_provider=MeterProvider(metric_readers=[reader]),
        max_extra_codes=MAX_EXTRA,
        max_extra_models=MAX_EXTRA,
    )
    hook = Hook(watcher)
    failed, incomplete = Template("failed"), Template("incomplete")
    headers = {"content-type": "application/json"}
    started = time.monotonic()
    for n in range(FLOOD):
        template = incomplete if n % 4 == 0 else failed
        # Codes that look like codes (admitted until the cap), and some that do not ("other" at once).
        code = f"new_code_{n}" if n % 10 else f"Not A Code {n}!"
        model = f"model-{n}" if n % 10 else f"not a model {n}"
        assert hook.inspect("retrieve", 200, headers, template(f"resp_{n:08d}", model, code)) is None
    elapsed = time.monotonic() - started

    codes = label_values(registry, "code")
    reasons = label_values(registry, "reason")
    models = label_values(registry, "model")
    assert len(codes - set(known_error_codes())) <= MAX_EXTRA + 2  # + other, unknown
    assert len(reasons - set(known_incomplete_reasons())) <= MAX_EXTRA + 2
    assert len(models) <= MAX_EXTRA + 2
    assert {"other"} <= codes and {"other"} <= reasons and {"other"} <= models
    # Every response counted once whatever its labels; the overflow went to "other".
    assert total(registry, "bg_response_finished_total") == FLOOD
    assert total(registry, "bg_response_failed_total") == FLOOD - FLOOD // 4
    assert total(registry, "bg_response_incomplete_total") == FLOOD // 4
    assert total(registry, "bgwatch_internal_errors_total") == 0
    # The whole registry stays small: every metric's series are bounded by the caps' product.
    per_metric = {name: len(sets) for name, sets in series(registry).items()}
    bound = (len(known_error_codes()) + MAX_EXTRA + 2) * (MAX_EXTRA + 2)
    assert max(per_metric.values()) <= bound
    assert sum(per_metric.values()) < 2_000, per_metric  # what a scrape of this process serves
    # The OpenTelemetry mirror applies the same caps.
    mirror = otel_attribute_sets(reader)
    for attributes in mirror.values():
        values = defaultdict(set)
        for attribute_set in attributes:
            for key, value in attribute_set:
                values[key].add(value)
        assert all(len(v) <= len(known_error_codes()) + MAX_EXTRA + 2 for v in values.values()), values.keys()
    print(f"\n{FLOOD} responses with new codes/models in {elapsed:.1f} s; series per metric: {per_metric}")


class Discard(SpanExporter):
    """Counts the spans it is given and keeps none of them."""

    def __init__(self) -> None:
        self.ended = 0
        self.dropped = 0

    def export(self, spans: Any) -> SpanExportResult:
        for span in spans:
            self.ended += 1
            self.dropped += "bgwatch.lifecycle.dropped" in (span.attributes or {})
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def test_ids_that_never_finish_keep_the_whole_watcher_flat() -> None:
    cap, rounds = 2_000, 15
    exporter = Discard()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry, max_tracked=cap, tracer_provider=provider)

    def flood(start: int, count: int) -> None:
        for n in range(start, start + count):
            watcher.record(
                Observation(
                    "retrieve", f"resp_{n:048x}", "in_progress", model="gpt-4.1", created_at=1.76e9, background=True
                )
            )

    flood(0, 2 * cap)  # reach the cap, let every cache and pool settle
    gc.collect()
    tracemalloc.start()
    readings = []
    for r in range(rounds):
        flood((r + 2) * cap, cap)
        if r % 5 == 4:
            gc.collect()
            readings.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    seen = (rounds + 2) * cap
    assert len(watcher.tracker) == cap and watcher.tracker.in_flight == cap
    assert registry.get_sample_value("bg_response_in_flight") == cap
    assert watcher.tracker.stats().evicted_in_flight == seen - cap
    # Every evicted response's lifecycle span was ended (as dropped) and let go.
    assert exporter.dropped == exporter.ended == seen - cap
    assert readings[-1] <= readings[0] * 1.02 + 4096, readings


SECRET = "sk-proj-Zx81SECRETqv04Bn"
PROMPT = "PROMPT-7f3e: my bank PIN is 0451"
API_KEY = "sk-live-APIKEYabcdef0123456789"
NEEDLES = (SECRET, PROMPT, API_KEY, "0451", "APIKEY")


def scan(texts: list[str]) -> list[str]:
    """The texts that contain any needle."""
    return [text for text in texts if any(needle in text for needle in NEEDLES)]


def span_texts(spans: tuple[ReadableSpan, ...]) -> list[str]:
    texts = []
    for span in spans:
        texts.append(span.name)
        texts.append(repr(span.attributes))
        texts.append(repr(span.status.description))
        texts.extend(f"{event.name} {event.attributes!r}" for event in span.events)
        texts.extend(repr(link.attributes) for link in span.links)
    return texts


@pytest.mark.parametrize("library", ["httpx2", "httpx"])
def test_messages_prompts_and_keys_never_reach_labels_spans_or_logs(
    library: str, fake_api: FakeAPI, caplog: pytest.LogCaptureFixture
) -> None:
    if library == "httpx2":
        pytest.importorskip("httpx2")
    registry = CollectorRegistry()
    reader = InMemoryMetricReader()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    watcher = bgwatch.Watcher(
        registry=registry,
        otel=True,
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=provider,
        sinks=[BrokenSink()],  # internal errors, logged at DEBUG with a traceback
    )
    message = f"The model leaked {SECRET} while answering: {PROMPT}"
    fake_api.json("POST /responses", response_body("resp_s1", "queued"))
    fake_api.json("GET /responses/resp_s1", response_body("resp_s1", "failed", code="server_error", message=message))
    fake_api.json("GET /responses/resp_s2", response_body("resp_s2", "failed", code="brand_new_code", message=message))
    fake_api.json("GET /responses/resp_s3", response_body("resp_s3", "failed", code=None, message=message))
    body = response_body("resp_s4", "incomplete", reason="max_output_tokens")
    body["incomplete_details"]["message"] = message  # extra fields of any kind
    fake_api.json("GET /responses/resp_s4", body)
    # A coding the HTTP library ignores (the SDK reads the body as is) and a corrupt body.
    fake_api.json("GET /responses/resp_s5", {"x": message}, headers={"content-encoding": "compress"})
    fake_api.json("GET /responses/resp_s6", {"x": message}, headers={"content-encoding": "gzip"})

    def client(raise_on: tuple[str, ...]) -> openai.OpenAI:
        transport = transport_class(library)(fake_api.inner_transport(library), watcher=watcher, raise_on=raise_on)
        http = client_class(library)(transport=transport)
        return openai.OpenAI(api_key=API_KEY, base_url="http://api.test/v1", http_client=http, max_retries=0)

    observing, raising = client(()), client(("failed", "incomplete"))
    with caplog.at_level(logging.DEBUG, logger="bgwatch"):
        observing.responses.create(model="gpt-4.1", input=PROMPT, instructions=SECRET, background=True)
        for n in range(1, 5):
            observing.responses.retrieve(f"resp_s{n}")
        for n in (5, 6):
            with contextlib.suppress(openai.APIError):  # the SDK cannot decode the corrupt one either
                observing.responses.retrieve(f"resp_s{n}")
        for n in range(1, 5):
            with pytest.raises(bgwatch.BackgroundResponseError) as info:
                raising.responses.retrieve(f"resp_s{n}")
            if n < 4:
                assert SECRET in info.value.message  # the caller's exception does carry it

    # The broken sink, once per observation (resp_s5 is no response; the corrupt gzip of
    # resp_s6 already fails inside the inner transport)
    assert (registry.get_sample_value("bgwatch_internal_errors_total", {"stage": "sink"}) or 0) >= 9
    assert any("File " in record.getMessage() for record in caplog.records), "internal errors are logged with frames"
    assert not any(record.exc_info for record in caplog.records), "a traceback's last line is the message"
    formatter = logging.Formatter("%(message)s %(exc_text)s")
    logs = [formatter.format(record) for record in caplog.records]
    assert scan(logs) == []
    assert scan([generate_latest(registry).decode()]) == []
    assert scan([repr(sets) for sets in otel_attribute_sets(reader).values()]) == []
    spans = exporter.get_finished_spans()
    assert len(spans) >= 10
    assert scan(span_texts(spans)) == []

    # The scan does find a needle where one is allowed to be: spans with capture_error_messages.
    exporter.clear()
    captured = bgwatch.Watcher(registry=CollectorRegistry(), tracer_provider=provider, capture_error_messages=True)
    transport = transport_class(library)(fake_api.inner_transport(library), watcher=captured)
    http = client_class(library)(transport=transport)
    openai.OpenAI(api_key=API_KEY, base_url="http://api.test/v1", http_client=http).responses.retrieve("resp_s2")
    assert scan(span_texts(exporter.get_finished_spans()))
