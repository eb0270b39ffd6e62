"""Zero-code OpenTelemetry: the ``bgwatch`` instrumentor under a real ``opentelemetry-instrument``.

``examples/otel_zero_code.py`` builds ``OpenAI()`` with no ``http_client`` and imports nothing of
bgwatch; ``opentelemetry-instrument`` (opentelemetry-distro) loads every installed
instrumentation, bgwatch's through its ``opentelemetry_instrumentor`` entry point, next to the
httpx instrumentation and OpenInference's. Console exporters print the spans and metrics, which
are compared with the simulator's ledger.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import bgwatch
from bgwatch import transports
from bgwatch._sdk import sdk_http_module
from bgwatch.instrumentation import BgwatchInstrumentor
from bgwatch.simulator import Mix, Simulator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "otel_zero_code.py"
INSTRUMENT = Path(sys.executable).parent / "opentelemetry-instrument"
RESPONSES = 6


def printed_objects(text: str) -> list[Any]:
    """Every JSON object the console exporters printed (one after another, pretty-printed)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    index = 0
    while (start := text.find("{", index)) >= 0:
        try:
            value, index = decoder.raw_decode(text, start)
        except ValueError:
            index = start + 1
            continue
        found.append(value)
    return found


def metric_points(objects: list[Any]) -> dict[str, list[tuple[dict[str, Any], float]]]:
    """name -> [(attributes, value)] of the last metrics export (cumulative)."""
    points: dict[str, list[tuple[dict[str, Any], float]]] = {}
    exports = [o for o in objects if "resource_metrics" in o]
    for resource in exports[-1]["resource_metrics"] if exports else []:
        for scope in resource["scope_metrics"]:
            for metric in scope["metrics"]:
                points[metric["name"]] = [
                    (point.get("attributes", {}), point.get("value", point.get("count", 0)))
                    for point in metric["data"]["data_points"]
                ]
    return points


def run_zero_code(simulator: Simulator, **env: str) -> tuple[list[Any], list[Any], dict[str, Any]]:
    environment = {
        **os.environ,
        "OPENAI_BASE_URL": simulator.base_url,
        "OPENAI_API_KEY": "sk-simulator",
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "zero-code-test",
        "RESPONSES": str(RESPONSES),
        **env,
    }
    result = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(EXAMPLE)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    code = EXAMPLE.read_text()
    assert "import bgwatch" not in code and "from bgwatch" not in code, "the app itself imports bgwatch"
    objects = printed_objects(result.stdout)
    spans = [o for o in objects if "context" in o and "name" in o]
    ids = json.loads(result.stdout.split("RESPONSES ", 1)[1].splitlines()[0])
    return spans, ids, metric_points(objects)


@pytest.fixture
def simulator() -> Any:
    sim = Simulator(seed=11, mix=Mix(completed=40, failed=40, incomplete=20, cancelled=0)).start()
    yield sim
    sim.stop()


def test_opentelemetry_instrument_reports_bgwatch_spans_and_metrics_with_no_bgwatch_line(simulator: Simulator) -> None:
    spans, ids, points = run_zero_code(simulator)
    ledger = {rid: simulator.ledger()[rid] for rid in ids}
    names = Counter(span["name"].split(" ")[0] for span in spans)

    lifecycle = [s for s in spans if s["name"].startswith("background_response")]
    assert sorted(s["attributes"]["gen_ai.response.id"] for s in lifecycle) == sorted(ids)
    failed_codes = Counter(
        s["attributes"].get("error.type") for s in lifecycle if s["status"]["status_code"] == "ERROR"
    )
    expected = Counter(o.code if o.status == "failed" else o.reason for o in ledger.values() if o.status != "completed")
    assert failed_codes == expected

    # One bgwatch span per call, beside the httpx instrumentation's and OpenInference's: no duplicates.
    assert names["chat"] == names["POST"] == RESPONSES
    assert names["fetch_response"] == names["GET"] > 0

    created = sum(value for _, value in points["bg_response_created"])
    finished = Counter({attrs["status"]: value for attrs, value in points["bg_response_finished"] if value})
    failed = Counter({attrs["code"]: value for attrs, value in points["bg_response_failed"] if value})
    assert created == RESPONSES
    assert finished == Counter(o.status for o in ledger.values())
    assert failed == Counter(o.code for o in ledger.values() if o.status == "failed")


def test_disabled_through_the_otel_environment(simulator: Simulator) -> None:
    spans, _, points = run_zero_code(simulator, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="bgwatch")
    names = {span["name"].split(" ")[0] for span in spans}
    assert names.isdisjoint({"chat", "fetch_response", "background_response"})
    assert "GET" in names  # the others still run
    assert not any(name.startswith("bg_response") for name in points)


def in_memory() -> tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return tracer_provider, exporter, MeterProvider(metric_readers=[reader]), reader


def bgwatch_layers(client: Any) -> int:
    """How many bgwatch transports the client's HTTP client goes through."""
    transport, layers = client._client._transport, 0
    while isinstance(transport, transports._Adapter):
        transport, layers = transport._inner, layers + 1
    return layers


def test_instrument_wraps_every_client_once_and_uninstrument_restores(simulator: Simulator) -> None:
    tracer_provider, exporter, meter_provider, _ = in_memory()
    instrumentor = BgwatchInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        plain = openai.OpenAI(base_url=simulator.base_url, api_key="sk")
        azure = openai.AzureOpenAI(azure_endpoint=simulator.base_url, api_key="sk", api_version="2025-04-01-preview")
        async_plain = openai.AsyncOpenAI(base_url=simulator.base_url, api_key="sk")
        user_http = sdk_http_module().Client()
        own = openai.OpenAI(base_url=simulator.base_url, api_key="sk", http_client=bgwatch.http_client())
        assert [bgwatch_layers(c) for c in (plain, azure, async_plain, own)] == [1, 1, 1, 1]
        assert bgwatch_layers(plain.with_options(timeout=5)) == 1  # a copy shares the wrapped client
        supplied = openai.OpenAI(base_url=simulator.base_url, api_key="sk", http_client=user_http)
        assert bgwatch_layers(supplied) == 1
        response = plain.responses.create(model="gpt-4.1", input="hi", background=True)
        plain.responses.retrieve(response.id)
        assert {span.name.split(" ")[0] for span in exporter.get_finished_spans()} >= {"chat", "fetch_response"}
    finally:
        instrumentor.uninstrument()
    assert bgwatch_layers(plain) == 0  # unwrapped
    assert bgwatch_layers(openai.OpenAI(base_url=simulator.base_url, api_key="sk")) == 0
    assert bgwatch_layers(own) == 1  # the constructor hook is the user's, not the instrumentor's


@contextlib.contextmanager
def instrumented() -> Iterator[tuple[BgwatchInstrumentor, InMemorySpanExporter, InMemoryMetricReader]]:
    """The instrumentor on in-memory providers, uninstrumented afterwards."""
    tracer_provider, exporter, meter_provider, reader = in_memory()
    instrumentor = BgwatchInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield instrumentor, exporter, reader
    finally:
        instrumentor.uninstrument()


def run_in_process(simulator: Simulator) -> tuple[list[Any], Any]:
    with instrumented() as (_, exporter, reader):
        client = openai.OpenAI(base_url=simulator.base_url, api_key="sk")
        response = client.responses.create(model="gpt-4.1", input="hi", background=True)
        while client.responses.retrieve(response.id).status in ("queued", "in_progress"):
            pass
    return list(exporter.get_finished_spans()), reader.get_metrics_data()


@pytest.mark.parametrize("opt_in", ["", "gen_ai_latest_experimental"])
def test_experimental_genai_names_only_with_the_semconv_opt_in(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch, opt_in: str
) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", opt_in)
    spans, _ = run_in_process(simulator)
    polls = [span for span in spans if span.name == "fetch_response"]
    lifecycle = next(span for span in spans if span.name.startswith("background_response"))
    assert polls
    for span in polls:
        attributes = dict(span.attributes or {})
        if opt_in:
            assert attributes["gen_ai.operation.name"] == "fetch_response"
            assert "gen_ai.response.status" in attributes and "bgwatch.response.status" not in attributes
        else:
            assert "gen_ai.operation.name" not in attributes and attributes["bgwatch.operation"] == "fetch_response"
            assert "bgwatch.response.status" in attributes and "gen_ai.response.status" not in attributes
    status_key = "gen_ai.response.status" if opt_in else "bgwatch.response.status"
    assert (lifecycle.attributes or {})[status_key] in ("completed", "failed", "incomplete", "cancelled")


def test_terminal_span_carries_usage_and_service_tier_and_scopes_carry_version_and_schema(
    simulator: Simulator,
) -> None:
    spans, metrics = run_in_process(simulator)
    lifecycle = next(span for span in spans if span.name.startswith("background_response"))
    outcome = simulator.ledger()[(lifecycle.attributes or {})["gen_ai.response.id"]]
    attributes = dict(lifecycle.attributes or {})
    assert attributes["gen_ai.usage.input_tokens"] == outcome.input_tokens
    assert attributes["gen_ai.usage.output_tokens"] == outcome.output_tokens
    assert attributes["openai.response.service_tier"] == "default"
    for span in spans:
        if span.instrumentation_scope.name == "bgwatch":
            assert span.instrumentation_scope.version == bgwatch.__version__
            assert span.instrumentation_scope.schema_url.startswith("https://opentelemetry.io/schemas/")
    scopes = [scope.scope for resource in metrics.resource_metrics for scope in resource.scope_metrics]
    ours = [scope for scope in scopes if scope.name == "bgwatch"]
    assert ours and all(s.version == bgwatch.__version__ and s.schema_url for s in ours)


def test_genai_client_histograms_for_responses_calls(simulator: Simulator) -> None:
    spans, metrics = run_in_process(simulator)
    found = {
        metric.name: metric
        for resource in metrics.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    duration = found["gen_ai.client.operation.duration"]
    calls = [span for span in spans if span.instrumentation_scope.name == "bgwatch" and span.kind.name == "CLIENT"]
    assert sum(point.count for point in duration.data.data_points) == len(calls)
    assert duration.unit == "s"
    assert list(duration.data.data_points[0].explicit_bounds)[:3] == [0.01, 0.02, 0.04]
    tokens = found["gen_ai.client.token.usage"]
    by_type = {point.attributes["gen_ai.token.type"]: point.sum for point in tokens.data.data_points}
    lifecycle = next(span for span in spans if span.name.startswith("background_response"))
    outcome = simulator.ledger()[(lifecycle.attributes or {})["gen_ai.response.id"]]
    assert by_type == {"input": outcome.input_tokens, "output": outcome.output_tokens}
