"""Observe mode without spans records a body when the client parses it, as the SDK parses it.

The transport reads nothing there (``Hook.defers``): the inner transport's response object goes
back to the client, and its ``json()``, the call the SDK makes, hands the parse to bgwatch.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch._hook import Hook, raise_mode_supported

from .conftest import FakeAPI, answering, client_class, httpx, httpx2, response_body, sample, transport_class
from .test_transport import make_client

MODEL = "gpt-4.1-2025-04-14"
# Observe mode records as the client reads (deferred); raise mode reads in the transport (eager).
BOTH_PATHS: list[tuple[str, ...]] = [(), ("incomplete",)] if raise_mode_supported() else [()]


def failed_api() -> FakeAPI:
    api = FakeAPI()
    api.json("GET /responses/resp_f", response_body("resp_f", "failed", code="server_error"))
    return api


def test_a_raw_response_counts_when_its_body_is_parsed(
    library: str, watcher: bgwatch.Watcher, registry: CollectorRegistry
) -> None:
    client = make_client(failed_api(), library, watcher)
    response = client.responses.with_raw_response.retrieve("resp_f")
    # Headers alone: the SDK has not seen the body, and neither has bgwatch.
    assert response.headers["content-type"] == "application/json"
    assert sample(registry, "bg_response_polls_total", status="failed") == 0
    assert response.parse().status == "failed"
    assert sample(registry, "bg_response_polls_total", status="failed") == 1
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1
    # Parsed again (the user's own json()): one poll is one poll.
    assert response.http_response.json()["status"] == "failed"
    assert response.parse().status == "failed"
    assert sample(registry, "bg_response_polls_total", status="failed") == 1


def test_async_raw_response_counts_when_its_body_is_parsed(
    library: str, watcher: bgwatch.Watcher, registry: CollectorRegistry
) -> None:
    client = make_client(failed_api(), library, watcher, asynchronous=True)

    async def scenario() -> None:
        response = await client.responses.with_raw_response.retrieve("resp_f")
        assert sample(registry, "bg_response_polls_total", status="failed") == 0
        assert response.parse().status == "failed"  # the legacy raw response parses synchronously
        assert sample(registry, "bg_response_polls_total", status="failed") == 1

    asyncio.run(scenario())


def test_the_client_gets_the_inner_transports_own_response(library: str, watcher: bgwatch.Watcher) -> None:
    api = failed_api()
    seen: list[Any] = []
    inner = api.inner_transport(library)
    original = inner.handle_request

    def keep(request: Any) -> Any:
        response = original(request)
        seen.append(response)
        return response

    inner.handle_request = keep
    http = client_class(library)(transport=transport_class(library)(inner, watcher=watcher))
    response = http.get("http://api.test/v1/responses/resp_f")
    assert response is seen[0]
    assert type(response).__name__ == "Response"
    assert response.content == json.dumps(response_body("resp_f", "failed", code="server_error")).encode()


def _module(library: str) -> Any:
    return httpx2 if library == "httpx2" else httpx


@pytest.mark.parametrize(
    ("inner_raises", "outer_raises"), [((), ()), (("incomplete",), ()), ((), ("incomplete",))], ids=str
)
def test_nested_bgwatch_transports_each_record(library: str, inner_raises: Any, outer_raises: Any) -> None:
    """Deferred in deferred, eager (raise mode) in deferred, deferred in eager: both watchers count."""
    module = _module(library)
    body = json.dumps(response_body("resp_n", "failed", code="rate_limit_exceeded")).encode()
    inner = answering(module, False, lambda request: module.Response(200, content=body))
    registries = [CollectorRegistry(), CollectorRegistry()]
    transport = transport_class(library)(inner, watcher=bgwatch.Watcher(registry=registries[0]), raise_on=inner_raises)
    transport = transport_class(library)(
        transport, watcher=bgwatch.Watcher(registry=registries[1]), raise_on=outer_raises
    )
    for _ in range(2):
        response = module.Client(transport=transport).get("http://api.test/v1/responses/resp_n")
        assert response.json()["status"] == "failed"
        assert response.json()["status"] == "failed"
    for registry in registries:
        assert sample(registry, "bg_response_failed_total", code="rate_limit_exceeded", model=MODEL) == 1
        assert sample(registry, "bg_response_polls_total", status="failed") == 2


def _shy(module: Any) -> type[Any]:
    class ShyResponse(module.Response):  # type: ignore[misc,name-defined]
        """A response class whose instances refuse a new class (bgwatch cannot defer on it)."""

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "__class__":
                raise TypeError("no")
            super().__setattr__(name, value)

    return ShyResponse


def _fancy(module: Any) -> type[Any]:
    class FancyResponse(module.Response):  # type: ignore[misc,name-defined]
        """A subclass of the library's response (a caching or recording transport's)."""

        fancy = True

    return FancyResponse


def _get_through_bgwatch(
    library: str, response_class: type[Any], body: dict[str, Any], watcher: bgwatch.Watcher
) -> Any:
    """GET a response through bgwatch from an inner transport that answers with ``response_class``."""
    module, raw = _module(library), json.dumps(body).encode()
    inner = answering(module, False, lambda request: response_class(200, content=raw))
    http = module.Client(transport=transport_class(library)(inner, watcher=watcher))
    return http.get(f"http://api.test/v1/responses/{body['id']}")


def test_a_response_subclass_is_observed_and_keeps_its_class(
    library: str, watcher: bgwatch.Watcher, registry: CollectorRegistry
) -> None:
    fancy = _fancy(_module(library))
    body = response_body("resp_s", "incomplete", reason="max_output_tokens")
    response = _get_through_bgwatch(library, fancy, body, watcher)
    assert isinstance(response, fancy) and response.fancy
    response.json()
    assert sample(registry, "bg_response_incomplete_total", reason="max_output_tokens", model=MODEL) == 1


def test_a_response_that_cannot_be_extended_passes_unobserved_and_counted(
    library: str, watcher: bgwatch.Watcher, registry: CollectorRegistry
) -> None:
    shy = _shy(_module(library))
    response = _get_through_bgwatch(library, shy, response_body("resp_s", "failed", code="server_error"), watcher)
    assert type(response) is shy
    assert response.json()["status"] == "failed"
    assert sample(registry, "bgwatch_internal_errors_total", stage="classify") == 1
    assert sample(registry, "bg_response_polls_total", status="failed") == 0


def test_raise_mode_and_spans_read_the_body_in_the_transport(library: str, registry: CollectorRegistry) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    watcher = bgwatch.Watcher(registry=registry)
    assert Hook(watcher).defers
    assert not Hook(watcher, ("failed",)).defers
    assert not Hook(bgwatch.Watcher(registry=CollectorRegistry(), tracer_provider=TracerProvider())).defers
    # Eager: counted before anybody parses.
    client = make_client(failed_api(), library, watcher, raise_on=("incomplete",))
    client.responses.with_raw_response.retrieve("resp_f")
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1


def _failed_stream(response_id: str) -> bytes:
    response = response_body(response_id, "failed", code="server_error")
    created = {**response, "status": "in_progress", "error": None, "completed_at": None}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": created},
        {"type": "response.failed", "sequence_number": 1, "response": response},
    ]
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


@pytest.mark.parametrize("raise_on", BOTH_PATHS, ids=["deferred", "eager"][: len(BOTH_PATHS)])
def test_a_stream_is_what_the_sdk_streams_whatever_its_content_type(
    library: str, watcher: bgwatch.Watcher, registry: CollectorRegistry, raise_on: tuple[str, ...]
) -> None:
    """The SDK reads an answer as events because it asked for a stream, not because of the
    Content-Type: a gateway that labels the stream ``application/json`` changes nothing for it,
    nor for bgwatch."""
    api = FakeAPI()
    raw = _failed_stream("resp_mislabeled")
    api.routes["POST /responses"] = lambda method, path, content: (200, {"content-type": "application/json"}, raw)
    client = make_client(api, library, watcher, raise_on=raise_on)
    events = [event.type for event in client.responses.create(model=MODEL, input="hi", background=True, stream=True)]
    assert events == ["response.created", "response.failed"]
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1


@pytest.mark.parametrize("raise_on", BOTH_PATHS, ids=["deferred", "eager"][: len(BOTH_PATHS)])
def test_a_json_answer_is_what_the_sdk_parses_whatever_its_content_type(
    library: str, watcher: bgwatch.Watcher, registry: CollectorRegistry, raise_on: tuple[str, ...]
) -> None:
    """A poll answered with a JSON body labeled ``text/event-stream``: the SDK asked for no
    stream, parses the JSON and returns the failed response; bgwatch counts it."""
    api = FakeAPI()
    body = json.dumps(response_body("resp_labeled", "failed", code="server_error")).encode()
    api.routes["GET /responses/resp_labeled"] = lambda method, path, content: (
        200,
        {"content-type": "text/event-stream"},
        body,
    )
    client = make_client(api, library, watcher, raise_on=raise_on)
    assert client.responses.retrieve("resp_labeled").status == "failed"
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1
