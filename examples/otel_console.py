"""bgwatch with OpenTelemetry: spans and metrics printed to the console.

    python examples/otel_console.py

Three background responses (one completes, one fails with ``server_error``, one ends
incomplete) are created and polled through the real ``openai`` SDK against a local fake
Responses API: bgwatch's embedded simulator on loopback when it is installed, otherwise an
in-process mock (a ``MockTransport`` behind bgwatch's transport). No network, no key.

You will see, per response, a ``chat <model>`` span for the create, a ``fetch_response``
span per poll, and one ``background_response <model>`` lifecycle span from ``created_at`` to
the terminal state (ERROR with ``error.type`` for the failed and the incomplete one); then
the metrics (``bg_response_finished``, ``bg_response_failed``, ...) on shutdown.

In production, swap the console exporters for OTLP ones and ``SimpleSpanProcessor`` for
``BatchSpanProcessor``; see docs/opentelemetry.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import bgwatch

MODEL = "gpt-4.1-mini"
OUTCOMES = ("completed", "failed:server_error", "incomplete:max_output_tokens")


@contextlib.contextmanager
def local_api() -> Iterator[tuple[str, dict[str, Any]]]:
    """A base URL and extra client options for a local fake Responses API."""
    try:
        from bgwatch.simulator import Simulator
    except ImportError:
        yield "http://api.invalid/v1", {"transport": _mock_transport()}
        return
    with Simulator(seed=7, durations=(0.05, 0.15)) as sim:
        yield sim.base_url, {}


def _mock_transport() -> Any:
    """An in-process stand-in: each response is queued, then in progress, then its outcome."""
    import importlib

    from bgwatch.transports import sdk_library

    http = importlib.import_module(sdk_library())  # httpx2 for openai >= 3, httpx for 2.x

    ids = (f"resp_example_{n}" for n in itertools.count(1))
    state: dict[str, tuple[str, int]] = {}  # id -> (outcome, polls so far)

    def body(response_id: str, outcome: str, polls: int) -> bytes:
        status, _, detail = outcome.partition(":")
        now = time.time()
        if polls < 2:
            status = ("queued", "in_progress")[polls]
        terminal = polls >= 2
        return json.dumps(
            {
                "id": response_id,
                "object": "response",
                "created_at": now - 1.0,
                "status": status,
                "background": True,
                "completed_at": now if terminal else None,
                "error": {"code": detail, "message": "The server had an error."} if status == "failed" else None,
                "incomplete_details": {"reason": detail} if status == "incomplete" else None,
                "model": MODEL,
                "output": [],
            }
        ).encode()

    def handler(request: Any) -> Any:
        if request.method == "POST":
            response_id = next(ids)
            outcome = json.loads(request.content)["metadata"]["bgwatch_outcome"]
            state[response_id] = (outcome, 0)
        else:
            response_id = request.url.path.rsplit("/", 1)[-1]
            outcome, polls = state[response_id]
            state[response_id] = (outcome, polls + 1)
        outcome, polls = state[response_id]
        return http.Response(
            200, headers={"content-type": "application/json"}, content=body(response_id, outcome, polls)
        )

    return http.MockTransport(handler)


def main() -> None:
    resource = Resource.create({"service.name": "bgwatch-example"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=60_000)
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)

    # OpenTelemetry only: no prometheus_client metrics, OTel metrics and spans.
    watcher = bgwatch.Watcher(
        prometheus=False, otel=True, meter_provider=meter_provider, tracer_provider=tracer_provider
    )
    with local_api() as (base_url, options):
        client = openai.OpenAI(
            api_key="sk-example-not-a-key",
            base_url=base_url,
            http_client=bgwatch.http_client(watcher=watcher, **options),
        )
        created = [
            client.responses.create(
                model=MODEL, input="Write a haiku.", background=True, metadata={"bgwatch_outcome": outcome}
            )
            for outcome in OUTCOMES
        ]
        deadline = time.monotonic() + 10
        for first in created:
            response = first
            while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
                time.sleep(0.05)
                response = client.responses.retrieve(response.id)
            print(f"# {response.id}: {response.status}", flush=True)
        client.close()
    meter_provider.shutdown()  # exports the metrics once more, to the console
    tracer_provider.shutdown()


if __name__ == "__main__":
    main()
