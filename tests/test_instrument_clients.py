"""Every client class of the SDK, with the SDK's own HTTP client or one the user supplies (httpx2
or legacy httpx, sync or async), records a background response exactly once while instrumented,
and sends untouched after ``uninstrument()``.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import openai
import pytest

from bgwatch import transports
from bgwatch.simulator import Simulator

from .conftest import LIBRARIES
from .test_instrumentation import bgwatch_layers, instrumented

API_VERSION = "2025-04-01-preview"
CLIENTS = ["OpenAI", "AsyncOpenAI", "AzureOpenAI", "AsyncAzureOpenAI"]


@pytest.fixture(scope="module")
def simulator() -> Any:
    with Simulator(seed=2, durations=(0.02, 0.06)) as sim:
        yield sim


def build(name: str, base_url: str, library: str | None) -> Any:
    asynchronous = name.startswith("Async")
    options: dict[str, Any] = {"api_key": "sk", "base_url": base_url}
    if "Azure" in name:
        options["api_version"] = API_VERSION
    if library is not None:
        module = importlib.import_module(library)
        options["http_client"] = module.AsyncClient() if asynchronous else module.Client()
    return getattr(openai, name)(**options)


async def _to_the_end(client: Any) -> Any:
    result = client.responses.create(model="gpt-4.1", input="hi", background=True)
    response = await result if asyncio.iscoroutine(result) else result
    while response.status in ("queued", "in_progress"):
        result = client.responses.retrieve(response.id)
        response = await result if asyncio.iscoroutine(result) else result
    return response


def finished_total(reader: Any) -> float:
    data = reader.get_metrics_data()
    return sum(
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "bg_response_finished"
        for point in metric.data.data_points
    )


@pytest.mark.parametrize("library", [None, *LIBRARIES])
@pytest.mark.parametrize("name", CLIENTS)
def test_each_client_records_once_and_is_restored(simulator: Simulator, name: str, library: str | None) -> None:
    asyncio.run(_each_client(simulator, name, library))  # one loop: async clients keep their pool


async def _each_client(simulator: Simulator, name: str, library: str | None) -> None:
    asynchronous = name.startswith("Async")
    with instrumented() as (_, exporter, reader):
        client = build(name, simulator.base_url, library)
        inner = client._client._transport._inner
        assert bgwatch_layers(client) == 1
        expected = transports.AsyncTransport if asynchronous else transports.Transport
        if library == "httpx" and transports.sdk_library() == "httpx2":  # legacy httpx on openai 3.x
            expected = transports.AsyncHttpxTransport if asynchronous else transports.HttpxTransport
        assert type(client._client._transport) is expected
        response = await _to_the_end(client)
        lifecycle = [s for s in exporter.get_finished_spans() if s.name.startswith("background_response")]
        assert [(s.attributes or {}).get("gen_ai.response.id") for s in lifecycle] == [response.id]
        assert finished_total(reader) == 1.0
        assert simulator.ledger()[response.id].status == response.status
    assert client._client._transport is inner  # restored
    await _to_the_end(client)
    assert finished_total(reader) == 1.0  # not counted once uninstrumented
