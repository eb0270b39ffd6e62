"""Zero-code instrumentation: ``opentelemetry-instrument`` over an app with no bgwatch line.

The subprocess tests run the real ``opentelemetry-instrument`` (opentelemetry-distro) with the
console exporters over examples/otel_zero_code.py against the simulator, and check bgwatch's
spans and ``bg_response_*`` metrics against the simulator's ledger and request log. The
in-process tests drive :class:`BgwatchInstrumentor` with SDK providers and in-memory readers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
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
from bgwatch.instrumentation import BgwatchInstrumentor
from bgwatch.simulator import Simulator
from bgwatch.transports import _AsyncAdapter, _SyncAdapter, sdk_library

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "examples" / "otel_zero_code.py"
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
POLL = re.compile(r"^/v1/responses/[^/]+$")


def _json_objects(text: str) -> Iterator[Any]:
    """The JSON documents the console exporters printed one after another."""
    decoder = json.JSONDecoder()
    index = 0
    while True:
        start = text.find("{", index)
        if start < 0:
            return
        value, index = decoder.raw_decode(text, start)
        yield value


def run_instrumented(base_url: str, **env: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the zero-code app under opentelemetry-instrument; its spans and last metrics dump."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OTEL_"))}
    environment.update(
        OPENAI_BASE_URL=base_url,
        OPENAI_API_KEY="sk-test-not-a-key",
        OTEL_SERVICE_NAME="zero-code-test",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
        OTEL_LOGS_EXPORTER="none",
        OTEL_METRIC_EXPORT_INTERVAL="600000",  # one dump, at shutdown
        **env,
    )
    done = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(APP)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    spans: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    for document in _json_objects(done.stdout):
        if "resource_metrics" in document:
            metrics = [
                {**metric, "scope": scope["scope"]}
                for resource in document["resource_metrics"]
                for scope in resource["scope_metrics"]
                for metric in scope["metrics"]
            ]
        elif "context" in document and "name" in document:
            spans.append(document)
    return spans, metrics


def _points(metrics: list[dict[str, Any]], name: str) -> dict[tuple[tuple[str, Any], ...], float]:
    for metric in metrics:
        if metric["name"] == name:
            return {
                tuple(sorted(point["attributes"].items())): point.get("value", point.get("count"))
                for point in metric["data"]["data_points"]
            }
    return {}


def _bgwatch_spans(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if s["attributes"].get("openai.api.type") == "responses"]


EXPERIMENTAL = {"OTEL_SEMCONV_STABILITY_OPT_IN": "http, gen_ai_latest_experimental"}
CAPTURE = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}


def _histogram_counts(metrics: list[dict[str, Any]], name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    for metric in metrics:
        if metric["name"] == name:
            return {
                tuple(sorted(point["attributes"].items())): (
                    point["count"],
                    point["sum"],
                    tuple(point["explicit_bounds"]),
                )
                for point in metric["data"]["data_points"]
            }
    return {}


def test_opentelemetry_instrument_reports_spans_and_metrics_with_exact_counts() -> None:
    with Simulator(seed=3, durations=(0.05, 0.15)) as sim:
        spans, metrics = run_instrumented(sim.base_url, **EXPERIMENTAL, **CAPTURE)
        ledger = sim.ledger()
        creates = sim.request_log.count("POST", "/v1/responses")
        polls = sim.request_log.count("GET", POLL)
    assert creates == len(ledger) == 5
    ours = _bgwatch_spans(spans)
    names = Counter(s["name"] for s in ours)
    assert names == {
        "chat gpt-4.1-mini": creates,
        "fetch_response": polls,
        "background_response gpt-4.1-mini": len(ledger),
    }
    assert Counter(s["attributes"].get("gen_ai.operation.name") for s in ours) == {
        "chat": creates,
        "fetch_response": polls,
        None: len(ledger),
    }
    # opentelemetry-instrument also loaded the httpx and OpenInference instrumentations (and
    # openai-v2, which has no Responses spans): each reports once, bgwatch's call span is the
    # parent of exactly one HTTP span, and no bgwatch span is doubled.
    others = Counter(s["name"] for s in spans if s not in ours)
    assert others == {"Response": creates + polls, "POST": creates, "GET": polls}
    calls = {s["context"]["span_id"] for s in ours if not s["name"].startswith("background_response")}
    http_parents = Counter(s["parent_id"] for s in spans if s["name"] in ("GET", "POST"))
    assert set(http_parents) == calls and set(http_parents.values()) == {1}
    lifecycle = {s["attributes"]["gen_ai.response.id"]: s for s in ours if s["name"].startswith("background_response")}
    assert {rid: s["attributes"]["gen_ai.response.status"] for rid, s in lifecycle.items()} == {
        rid: outcome.status for rid, outcome in ledger.items()
    }
    polled = [s for s in ours if s["name"] == "fetch_response"]
    assert not [s for s in polled if "gen_ai.usage.input_tokens" in s["attributes"]]  # no inference in a poll
    assert {s["attributes"].get("openai.response.service_tier") for s in polled} == {"default"}
    for rid, outcome in ledger.items():
        attributes = lifecycle[rid]["attributes"]
        assert attributes["gen_ai.usage.input_tokens"] == outcome.input_tokens
        assert attributes["gen_ai.usage.output_tokens"] == outcome.output_tokens
        assert attributes["openai.response.service_tier"] == "default"
        description = lifecycle[rid]["status"].get("description")
        if outcome.status == "failed":  # the capture variable puts the API's error message there
            assert description is not None and description.endswith("(simulated)")
        else:
            assert not description

    statuses = Counter(outcome.status for outcome in ledger.values())
    finished = _points(metrics, "bg_response_finished")
    assert finished == {(("model", "gpt-4.1-mini"), ("status", s)): float(n) for s, n in statuses.items()}
    failed = Counter(outcome.code for outcome in ledger.values() if outcome.status == "failed")
    assert _points(metrics, "bg_response_failed") == {
        (("code", code), ("model", "gpt-4.1-mini")): float(n) for code, n in failed.items()
    }
    assert _points(metrics, "bg_response_created") == {(("model", "gpt-4.1-mini"),): float(creates)}
    assert sum(_points(metrics, "bg_response_polls").values()) == polls
    assert sum(_points(metrics, "bg_response_in_flight").values()) == 0
    scopes = {
        (m["scope"]["name"], m["scope"]["version"], m["scope"]["schema_url"])
        for m in metrics
        if m["name"].startswith(("bg_", "gen_ai."))
    }
    assert len(scopes) == 1 and next(iter(scopes))[1] == bgwatch.__version__

    # The GenAI conventions' metrics: a duration per call, the tokens once per response.
    durations = _histogram_counts(metrics, "gen_ai.client.operation.duration")
    by_operation = Counter()
    for attributes, (count, _, bounds) in durations.items():
        attrs = dict(attributes)
        assert attrs["gen_ai.provider.name"] == "openai" and attrs["server.address"] == "127.0.0.1"
        assert bounds[0] == 0.01 and bounds[-1] == 81.92
        by_operation[attrs["gen_ai.operation.name"]] += count
    assert by_operation == {"chat": creates, "fetch_response": polls}
    tokens = _histogram_counts(metrics, "gen_ai.client.token.usage")
    by_type = {dict(a)["gen_ai.token.type"]: (count, total) for a, (count, total, _) in tokens.items()}
    assert by_type == {
        "input": (len(ledger), sum(o.input_tokens for o in ledger.values())),
        "output": (len(ledger), sum(o.output_tokens for o in ledger.values())),
    }


def test_default_semconv_mode_leaves_out_experimental_attributes_and_messages() -> None:
    with Simulator(seed=3, durations=(0.05, 0.15)) as sim:
        spans, metrics = run_instrumented(sim.base_url)
        ledger = sim.ledger()
        polls = sim.request_log.count("GET", POLL)
    ours = _bgwatch_spans(spans)
    assert Counter(s["name"] for s in ours)["fetch_response"] == polls
    for span in ours:
        attributes = span["attributes"]
        assert "gen_ai.response.status" not in attributes and "gen_ai.request.stream_cursor" not in attributes
        assert attributes.get("gen_ai.operation.name") in (None, "chat")
        assert not span["status"].get("description")  # no error message without the capture variable
        for event in span["events"]:
            assert "gen_ai.response.status" not in event["attributes"]
    finish = {
        s["attributes"]["gen_ai.response.id"]: s["attributes"]["gen_ai.response.finish_reasons"][0]
        for s in ours
        if s["name"].startswith("background_response")
    }
    assert sorted(finish) == sorted(ledger)
    failed = [rid for rid, outcome in ledger.items() if outcome.status == "failed"]
    assert failed and all(finish[rid] == "error" for rid in failed)
    assert sum(_points(metrics, "bg_response_finished").values()) == len(ledger)


def test_disabled_instrumentations_env_turns_bgwatch_off() -> None:
    with Simulator(seed=3, durations=(0.05, 0.15)) as sim:
        spans, metrics = run_instrumented(sim.base_url, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="bgwatch")
        assert len(sim.ledger()) == 5  # the app ran all the same
    assert _bgwatch_spans(spans) == []
    assert not [m for m in metrics if m["name"].startswith("bg_")]


# -- in process -------------------------------------------------------------------------


@pytest.fixture
def providers() -> Iterator[tuple[TracerProvider, InMemorySpanExporter, MeterProvider, InMemoryMetricReader]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield tracer_provider, exporter, meter_provider, reader
    instrumentor = BgwatchInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def _finished(reader: InMemoryMetricReader) -> float:
    data = reader.get_metrics_data()
    total = 0.0
    if data is None:
        return total
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "bg_response_finished":
                    total += sum(point.value for point in metric.data.data_points)  # type: ignore[union-attr]
    return total


def _run_to_end(client: openai.OpenAI) -> str:
    response = client.responses.create(model="gpt-4o-mini", input="hi", background=True)
    while response.status in ("queued", "in_progress"):
        response = client.responses.retrieve(response.id)
    return response.status


def _adapters(http: Any) -> list[Any]:
    transports = [http._transport, *http._mounts.values()]
    return [t for t in transports if isinstance(t, (_SyncAdapter, _AsyncAdapter))]


def test_instrument_wraps_default_and_user_clients_once_and_uninstrument_restores(providers: Any) -> None:
    tracer_provider, exporter, meter_provider, reader = providers
    with Simulator(seed=1, durations=(0.02, 0.05)) as sim:
        before = openai.OpenAI(api_key="sk-test", base_url=sim.base_url)
        untouched_transport = before._client._transport
        BgwatchInstrumentor().instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)

        default = openai.OpenAI(api_key="sk-test", base_url=sim.base_url)
        assert len(_adapters(default._client)) == 1
        http_module = __import__(sdk_library())
        user_http = http_module.Client()
        user = openai.OpenAI(api_key="sk-test", base_url=sim.base_url, http_client=user_http)
        assert user._client is user_http and len(_adapters(user_http)) == 1
        user_transport = _adapters(user_http)[0]._inner
        # A client on bgwatch already keeps its own transport; with_options shares the client.
        own = bgwatch.http_client(watcher=bgwatch.Watcher(prometheus=False))
        own_adapter = own._transport
        mine = openai.OpenAI(api_key="sk-test", base_url=sim.base_url, http_client=own)
        assert mine._client._transport is own_adapter and own_adapter._inner is not own_adapter
        copied = default.with_options(timeout=30)
        assert copied._client is default._client and len(_adapters(copied._client)) == 1
        assert isinstance(
            openai.AzureOpenAI(
                api_key="k", api_version="2025-03-01-preview", azure_endpoint=sim.url
            )._client._transport,
            (_SyncAdapter,),
        )
        asynchronous = openai.AsyncOpenAI(api_key="sk-test", base_url=sim.base_url)
        assert isinstance(asynchronous._client._transport, _AsyncAdapter)
        status = asyncio.run(_async_run(asynchronous))

        statuses = [_run_to_end(default), _run_to_end(user), status]
        _run_to_end(before)  # built before instrument(): not observed
        assert before._client._transport is untouched_transport
        assert _finished(reader) == 3.0
        lifecycles = [s for s in exporter.get_finished_spans() if s.name.startswith("background_response")]
        assert sorted(s.attributes["gen_ai.response.status"] for s in lifecycles) == sorted(statuses)  # type: ignore[index]

        for span in exporter.get_finished_spans():
            assert span.instrumentation_scope is not None
            assert span.instrumentation_scope.version == bgwatch.__version__
            assert span.instrumentation_scope.schema_url == "https://opentelemetry.io/schemas/1.37.0"
        BgwatchInstrumentor().uninstrument()
        assert _adapters(default._client) == [] and user_http._transport is user_transport
        after = openai.OpenAI(api_key="sk-test", base_url=sim.base_url)
        assert _adapters(after._client) == []
        _run_to_end(default)
        _run_to_end(after)
        assert _finished(reader) == 3.0  # nothing counted once uninstrumented
        assert mine._client._transport is own_adapter
        default.close()
        user.close()
        after.close()
        before.close()


async def _async_run(client: openai.AsyncOpenAI) -> str:
    response = await client.responses.create(model="gpt-4o-mini", input="hi", background=True)
    while response.status in ("queued", "in_progress"):
        response = await client.responses.retrieve(response.id)
    await client.close()
    return response.status
