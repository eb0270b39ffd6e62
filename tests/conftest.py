"""Shared fixtures: a private Prometheus registry per test and an in-process fake API.

``FakeAPI`` is the *server* side (it plays api.openai.com inside the inner transport); the
client side is always the real ``openai`` SDK over bgwatch's real transport.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter as CallCounter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch.transports import sdk_library

try:
    import httpx2
except ImportError:  # openai 2.x environment
    httpx2 = None  # type: ignore[assignment]
try:
    import httpx
except ImportError:
    httpx = None  # type: ignore[assignment]

LIBRARIES = [name for name, module in (("httpx2", httpx2), ("httpx", httpx)) if module is not None]
# openai >= 3 speaks httpx2 and accepts a legacy httpx client too; openai 2.x only httpx.
if sdk_library() == "httpx":
    LIBRARIES = ["httpx"]


def response_body(
    response_id: str,
    status: str,
    *,
    code: str | None = None,
    message: str | None = None,
    reason: str | None = None,
    model: str = "gpt-4.1-2025-04-14",
    background: bool | None = True,
    created_at: float = 1_760_000_000.0,
    completed_at: float | None = None,
    output_text: str = "",
) -> dict[str, Any]:
    """A Responses API body with keys in the real API's order."""
    terminal = status in ("completed", "failed", "cancelled", "incomplete")
    body: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": background,
        "completed_at": (completed_at if completed_at is not None else created_at + 12.5) if terminal else None,
        "error": {"code": code, "message": message or f"{code} happened"} if status == "failed" else None,
        "incomplete_details": {"reason": reason} if status == "incomplete" else None,
        "instructions": None,
        "max_output_tokens": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "metadata": {},
    }
    if background is None:
        del body["background"]
    if output_text:
        body["output"] = [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": output_text, "annotations": []}],
            }
        ]
    return body


Handler = Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]


class FakeAPI:
    """An in-process stand-in for the API server, usable as a MockTransport handler.

    ``routes`` maps ``"METHOD /path"`` (path after the base URL) to a handler; it records every
    request so tests can count what the SDK really sent.
    """

    def __init__(self) -> None:
        self.calls: CallCounter[str] = CallCounter()
        self._lock = threading.Lock()
        self.routes: dict[str, Handler] = {}
        self.request_ids = (f"req_{n:06d}" for n in itertools.count())

    def json(self, key: str, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """Answer ``key`` with a fixed JSON body."""
        raw = json.dumps(body).encode()
        extra = headers or {}
        self.routes[key] = lambda method, path, content: (status, dict(extra), raw)

    def sequence(self, key: str, answers: list[tuple[int, Any]]) -> None:
        """Answer ``key`` with each (status, body) in turn, repeating the last one."""
        it = iter(answers)
        last: list[tuple[int, Any]] = [answers[-1]]

        def handler(method: str, path: str, content: bytes) -> tuple[int, dict[str, str], bytes]:
            with self._lock:
                status, body = next(it, last[0])
            headers = {"x-should-retry": "true", "retry-after-ms": "1"} if status >= 500 or status == 429 else {}
            return status, headers, json.dumps(body).encode()

        self.routes[key] = handler

    def handle(self, method: str, path: str, content: bytes) -> tuple[int, dict[str, str], bytes]:
        key = f"{method} {path}"
        with self._lock:
            self.calls[key] += 1
            request_id = next(self.request_ids)
        handler = self.routes.get(key)
        if handler is None:
            status, headers, raw = (
                404,
                {},
                b'{"error": {"message": "not found", "type": "invalid_request_error"}}',
            )
        else:
            status, headers, raw = handler(method, path, content)
        headers.setdefault("content-type", "application/json")
        headers.setdefault("x-request-id", request_id)
        return status, headers, raw

    def inner_transport(self, library: str, *, asynchronous: bool = False) -> Any:
        """A MockTransport of ``library`` that serves this fake API."""
        module = httpx2 if library == "httpx2" else httpx
        assert module is not None

        def sync_handler(request: Any) -> Any:
            path = request.url.path.removeprefix("/v1")
            status, headers, raw = self.handle(request.method, path, request.read())
            return module.Response(status, headers=headers, content=raw)

        if not asynchronous:
            return module.MockTransport(sync_handler)

        async def async_handler(request: Any) -> Any:
            path = request.url.path.removeprefix("/v1")
            status, headers, raw = self.handle(request.method, path, await request.aread())
            return module.Response(status, headers=headers, content=raw)

        return module.MockTransport(async_handler)


@pytest.fixture
def registry() -> CollectorRegistry:
    """A private Prometheus registry: tests never touch the global one."""
    return CollectorRegistry()


@pytest.fixture
def watcher(registry: CollectorRegistry) -> bgwatch.Watcher:
    return bgwatch.Watcher(registry=registry)


@pytest.fixture
def fake_api() -> FakeAPI:
    return FakeAPI()


@pytest.fixture(params=LIBRARIES)
def library(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def answering(module: Any, asynchronous: bool, respond: Callable[[Any], Any]) -> Any:
    """An inner transport of ``module`` (httpx2 or httpx, sync or async) answering ``respond(request)``."""
    if asynchronous:

        class AsyncServer(module.AsyncBaseTransport):  # type: ignore[misc,name-defined]
            async def handle_async_request(self, request: Any) -> Any:
                return respond(request)

        return AsyncServer()

    class Server(module.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            return respond(request)

    return Server()


def client_class(library: str, asynchronous: bool = False) -> Any:
    module = httpx2 if library == "httpx2" else httpx
    assert module is not None
    return module.AsyncClient if asynchronous else module.Client


def transport_class(library: str, asynchronous: bool = False) -> Any:
    if library == "httpx2":
        return bgwatch.AsyncHttpx2Transport if asynchronous else bgwatch.Httpx2Transport
    return bgwatch.AsyncHttpxTransport if asynchronous else bgwatch.HttpxTransport


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0.0 when the series does not exist yet."""
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def total(registry: CollectorRegistry, name: str) -> float:
    """Sum of every series of a metric (``name`` with its ``_total`` suffix)."""
    found = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == name:
                found += s.value
    return found


@pytest.fixture
def no_env_proxies(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    yield


class BrokenSink:
    """A sink whose every method fails (its errors are internal errors, logged once per stage)."""

    def observed(self, *args: Any) -> None:
        raise RuntimeError("sink bug")

    def adjust_in_flight(self, delta: int) -> None:
        raise RuntimeError("sink bug")

    def abandoned(self, models: object) -> None:
        raise RuntimeError("sink bug")

    def forked(self, in_flight_forgotten: int) -> None:
        raise RuntimeError("sink bug")

    def internal_error(self, stage: str) -> None:
        raise RuntimeError("sink bug")
