"""No text that came from the server, and no exception message, ever reaches bgwatch's logs.

Every free-text field the server sends carries a marker: ``error.message`` and extra fields
of bodies, stream events, headers (one of them ends up in an exception message of ours), the
output, and the messages of 401 and 500 answers. The whole workload runs with every logger
at DEBUG: sync and async transports of each HTTP library, raise mode, streams, sync and async
``wait`` with a cancel that fails, the webhook receiver with a follow-up that fails, a sink
that fails with server text in its exception, tracing. No record of a ``bgwatch`` logger may
hold a marker; with ``capture_error_messages=True`` they do appear (the scan can find them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch._classify import Observation
from bgwatch._tracker import Transition
from bgwatch.metrics import ResponseLabels
from bgwatch.simulator.webhooks import build_delivery, new_secret
from bgwatch.webhooks import WebhookReceiver

from .conftest import LIBRARIES, FakeAPI, client_class, response_body, total, transport_class

MARK = "srvtxt"  # every marker starts with it; each field gets its own suffix
SECRET = new_secret()
MODEL = "gpt-4.1"


def marked(field: str) -> str:
    return f"{MARK}-{field}-Incorrect API key provided: sk-{MARK}"


MARKED_HEADERS = {"x-debug-info": marked("header"), "openai-processing-note": marked("header2")}


def error_answer(status: int) -> tuple[int, dict[str, str], bytes]:
    body = {"error": {"message": marked(f"http{status}"), "type": marked("type"), "code": None, "param": None}}
    return status, {**MARKED_HEADERS, "x-should-retry": "false"}, json.dumps(body).encode()


def sse(data: dict[str, Any]) -> bytes:
    return b"event: " + data["type"].encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


def serve_markers(fake_api: FakeAPI) -> None:
    """Answers whose every free-text field carries a marker."""

    def body(response_id: str, status: str, **options: Any) -> dict[str, Any]:
        document = response_body(
            response_id, status, model=MODEL, message=marked("error.message"), output_text=marked("output"), **options
        )
        document["instructions"] = marked("instructions")
        document["metadata"] = {"note": marked("metadata")}
        if document["incomplete_details"] is not None:
            document["incomplete_details"]["message"] = marked("incomplete")
        return document

    def answer(document: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        raw = json.dumps(document).encode()
        return lambda method, path, content: (200, {**MARKED_HEADERS, **(headers or {})}, raw)

    routes = fake_api.routes
    routes["POST /responses"] = answer(body("resp_new", "queued"))
    routes["GET /responses/resp_failed"] = answer(body("resp_failed", "failed", code="server_error"))
    routes["GET /responses/resp_unknown_code"] = answer(body("resp_unknown_code", "failed", code="brand_new_code"))
    routes["GET /responses/resp_incomplete"] = answer(body("resp_incomplete", "incomplete", reason="content_filter"))
    routes["GET /responses/resp_pending"] = answer(body("resp_pending", "in_progress"))
    # A coding nobody knows, named by the server: the HTTP library skips it, and so do we.
    routes["GET /responses/resp_encoding"] = answer(
        body("resp_encoding", "completed"), {"content-encoding": f"x-{MARK}-coding"}
    )
    routes["GET /responses/resp_401"] = lambda method, path, content: error_answer(401)
    routes["GET /responses/resp_500"] = lambda method, path, content: error_answer(500)
    routes["POST /responses/resp_pending/cancel"] = lambda method, path, content: error_answer(401)
    failed = body("resp_stream", "failed", code="server_error")
    stream = b"".join(
        [
            sse({"type": "response.created", "sequence_number": 0, "response": body("resp_stream", "queued")}),
            sse(
                {
                    "type": "response.output_text.delta",
                    "sequence_number": 1,
                    "delta": marked("delta"),
                    "item_id": "m",
                    "output_index": 0,
                    "content_index": 0,
                    "logprobs": [],
                }
            ),
            sse(
                {
                    "type": "error",
                    "sequence_number": 2,
                    "code": "server_error",
                    "message": marked("event"),
                    "param": None,
                }
            ),
            sse({"type": "response.failed", "sequence_number": 3, "response": failed}),
        ]
    )
    routes["GET /responses/resp_stream"] = lambda method, path, content: (
        200,
        {**MARKED_HEADERS, "content-type": "text/event-stream"},
        stream,
    )


class ServerTextSink:
    """A sink with a bug whose exception message carries the server's text."""

    def observed(
        self, observation: Observation, transition: Transition | None, labels: ResponseLabels, duration: float | None
    ) -> None:
        if observation.error_message:
            raise RuntimeError(f"sink choked on {observation.error_message}")

    def adjust_in_flight(self, delta: int) -> None:
        pass

    def abandoned(self, models: Sequence[str]) -> None:
        pass

    def forked(self, in_flight_forgotten: int) -> None:
        pass

    def internal_error(self, stage: str) -> None:
        pass


def make_clients(fake_api: FakeAPI, library: str, watcher: bgwatch.Watcher, raise_on: tuple[str, ...]) -> Any:
    def http(asynchronous: bool) -> Any:
        inner = fake_api.inner_transport(library, asynchronous=asynchronous)
        transport = transport_class(library, asynchronous)(inner, watcher=watcher, raise_on=raise_on)
        return client_class(library, asynchronous)(transport=transport)

    options: dict[str, Any] = {"api_key": "sk-test", "base_url": "http://api.test/v1", "max_retries": 0}
    return openai.OpenAI(http_client=http(False), **options), openai.AsyncOpenAI(http_client=http(True), **options)


def run_workload(fake_api: FakeAPI, watcher: bgwatch.Watcher) -> None:
    ids = ["resp_failed", "resp_unknown_code", "resp_incomplete", "resp_pending", "resp_encoding"]
    for library in LIBRARIES:
        for raise_on in ((), ("failed", "incomplete")):
            sync, async_ = make_clients(fake_api, library, watcher, raise_on)
            sync.responses.create(model=MODEL, input="x", background=True)
            for response_id in [*ids, "resp_401", "resp_500"]:
                with contextlib.suppress(openai.OpenAIError):
                    sync.responses.retrieve(response_id)
            with contextlib.suppress(openai.OpenAIError):
                for _ in sync.responses.retrieve("resp_stream", stream=True):
                    pass

            async def asynchronously(client: openai.AsyncOpenAI) -> None:
                for response_id in [*ids, "resp_401", "resp_500"]:
                    with contextlib.suppress(openai.OpenAIError):
                        await client.responses.retrieve(response_id)
                with contextlib.suppress(openai.OpenAIError):
                    async for _ in await client.responses.retrieve("resp_stream", stream=True):
                        pass
                with contextlib.suppress(openai.OpenAIError):
                    await bgwatch.async_wait(
                        client, "resp_pending", timeout=0.05, poll_interval=0.01, cancel_on_timeout=True
                    )

            asyncio.run(asynchronously(async_))
            with contextlib.suppress(openai.OpenAIError):
                bgwatch.wait(sync, "resp_pending", timeout=0.05, poll_interval=0.01, cancel_on_timeout=True)
    # The webhook receiver: a follow-up retrieve that fails (401 with the server's text).
    follow_up, _ = make_clients(fake_api, LIBRARIES[0], watcher, ())
    receiver = WebhookReceiver(secret=SECRET, client=follow_up, watcher=watcher)
    built = build_delivery(SECRET, "response.failed", "resp_401", time.time())
    assert receiver.handle(built.body, built.headers).ok
    # A signed event whose id is not an id: the follow-up (404) fails; the "id" is never logged.
    odd_id = f"resp {marked('data.id')}"
    fake_api.routes[f"GET /responses/{odd_id}"] = lambda method, path, content: error_answer(404)
    built = build_delivery(SECRET, "response.failed", odd_id, time.time())
    assert receiver.handle(built.body, built.headers).ok
    assert receiver.join(5)
    receiver.close()
    forged = build_delivery(new_secret(), "response.failed", "resp_401", time.time())
    assert not receiver.handle(forged.body, forged.headers).ok


def bgwatch_log_texts(records: list[logging.LogRecord]) -> list[str]:
    formatter = logging.Formatter("%(name)s %(message)s %(exc_text)s %(stack_info)s")
    return [formatter.format(record) for record in records if record.name.startswith("bgwatch")]


def run_logged(caplog: pytest.LogCaptureFixture, capture: bool) -> tuple[list[str], CollectorRegistry]:
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(
        registry=registry,
        sinks=[ServerTextSink()],
        tracer_provider=TracerProvider(),
        capture_error_messages=capture,
    )
    fake_api = FakeAPI()
    serve_markers(fake_api)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):  # the root logger: every logger, every level
        run_workload(fake_api, watcher)
    return bgwatch_log_texts(caplog.records), registry


def test_no_server_text_or_exception_message_in_any_log_record(caplog: pytest.LogCaptureFixture) -> None:
    texts, registry = run_logged(caplog, capture=False)
    # The workload did fail in every way that logs: the scan reads real records.
    joined = "\n".join(texts)
    expected_lines = ("follow-up retrieve of resp_401", "follow-up retrieve of <not an id>", "cancelling resp_pending")
    for expected in (*expected_lines, "stage 'sink'"):
        assert expected in joined, expected
    assert total(registry, "bgwatch_internal_errors_total") > 0
    leaks = [text for text in texts if MARK in text]
    assert leaks == [], f"{len(leaks)} of {len(texts)} bgwatch log records hold server text"
    assert "status=401" in joined and "AuthenticationError" in joined  # what is said instead


def test_capture_error_messages_lets_the_text_through(caplog: pytest.LogCaptureFixture) -> None:
    texts, _ = run_logged(caplog, capture=True)
    assert any(MARK in text and "cancelling" in text for text in texts)
    assert any(MARK in text and "follow-up" in text for text in texts)


def test_describe_keeps_type_status_and_request_id_only() -> None:
    from bgwatch._safe_log import describe

    request = __import__("httpx").Request("GET", "http://api.test/v1/responses/r")
    response = __import__("httpx").Response(401, request=request, headers={"x-request-id": "req_abc123"})
    error = openai.AuthenticationError(marked("message"), response=response, body=None)
    try:
        raise ValueError(marked("cause")) from error
    except ValueError as exc:
        text = describe(exc, frames=True)
    assert text.startswith("ValueError from AuthenticationError(status=401, request_id=req_abc123)")
    assert "test_logs.py" in text and MARK + "-message" not in text and MARK + "-cause" not in text
    spoofed = openai.AuthenticationError("m", response=response, body=None)
    spoofed.request_id = "req_1 " + marked("id")  # not an id: dropped
    assert describe(spoofed) == "AuthenticationError(status=401)"
