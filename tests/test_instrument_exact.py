"""More of the zero-code run, counted exactly: polls, nesting beside the other instrumentations,
and error messages under the GenAI capture variable (values of both GenAI instrumentations).

Reuses the ``opentelemetry-instrument`` runner of tests/test_instrumentation.py.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import openai
import pytest

from bgwatch.simulator import Mix, Simulator

from .test_instrumentation import instrumented, run_zero_code

POLL = re.compile(r"^/v1/responses/[^/]+$")
FAILED_ONLY = Mix(completed=50, failed=50, incomplete=0, cancelled=0)


@pytest.fixture
def simulator() -> Any:
    sim = Simulator(seed=5, mix=FAILED_ONLY).start()
    yield sim
    sim.stop()


def test_every_call_counted_once_beside_httpx_and_openinference(simulator: Simulator) -> None:
    spans, ids, points = run_zero_code(
        simulator,
        OTEL_SEMCONV_STABILITY_OPT_IN="gen_ai_latest_experimental",
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true",
    )
    creates = simulator.request_log.count("POST", "/v1/responses")
    polls = simulator.request_log.count("GET", POLL)
    ledger = simulator.ledger()
    assert creates == len(ids) == len(ledger)

    ours = [s for s in spans if s["attributes"].get("openai.api.type") == "responses"]
    assert Counter(s["name"].split(" ")[0] for s in ours) == {
        "chat": creates,
        "fetch_response": polls,
        "background_response": creates,
    }
    # The httpx instrumentation's span of each call nests under bgwatch's call span, once;
    # OpenInference reports each SDK call once (its "Response" spans); openai-v2 has none here.
    others = Counter(s["name"] for s in spans if s not in ours)
    assert others == {"POST": creates, "GET": polls, "Response": creates + polls}
    calls = {s["context"]["span_id"] for s in ours if s["kind"] == "SpanKind.CLIENT"}
    http_parents = Counter(s["parent_id"] for s in spans if s["name"] in ("GET", "POST"))
    assert set(http_parents) == calls and set(http_parents.values()) == {1}

    assert sum(value for _, value in points["bg_response_polls"]) == polls
    assert sum(value for _, value in points["bg_response_in_flight"]) == 0

    # Opted in: the lifecycle span says the status; the capture variable adds the API's message.
    lifecycle = {s["attributes"]["gen_ai.response.id"]: s for s in ours if s["name"].startswith("background_response")}
    for response_id, outcome in ledger.items():
        span = lifecycle[response_id]
        assert span["attributes"]["gen_ai.response.status"] == outcome.status
        description = span["status"].get("description")
        if outcome.status == "failed":
            assert description and description.endswith("(simulated)")
        else:
            assert not description
    assert {o.status for o in ledger.values()} == {"completed", "failed"}


@pytest.mark.parametrize(
    ("value", "captured"),
    [
        ("true", True),
        ("SPAN_ONLY", True),
        ("span_and_event", True),
        ("EVENT_ONLY", False),
        ("false", False),
        ("", False),
    ],
)
def test_capture_variable_puts_error_messages_on_spans(
    simulator: Simulator, monkeypatch: pytest.MonkeyPatch, value: str, captured: bool
) -> None:
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", value)
    with instrumented() as (instrumentor, exporter, _):
        assert instrumentor.watcher is not None and instrumentor.watcher.tracing is not None
        assert instrumentor.watcher.tracing.capture_error_messages is captured
        client = openai.OpenAI(base_url=simulator.base_url, api_key="sk")
        response = client.responses.create(
            model="gpt-4.1", input="a prompt", background=True, metadata={"bgwatch_outcome": "failed:server_error"}
        )
        while response.status in ("queued", "in_progress"):
            response = client.responses.retrieve(response.id)
        client.close()
    assert response.status == "failed"
    lifecycle = next(s for s in exporter.get_finished_spans() if s.name.startswith("background_response"))
    message = response.error.message if response.error else None
    assert message
    assert lifecycle.status.description == (message if captured else None)
    for span in exporter.get_finished_spans():  # never the prompt, whatever the variable says
        values = [*(span.attributes or {}).values(), *(a for e in span.events for a in (e.attributes or {}).values())]
        assert "a prompt" not in values
