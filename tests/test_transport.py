"""The transport hook through the real openai SDK: counting, raising, pass-through, fail-open."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry, Counter

import bgwatch
from bgwatch._watcher import known_error_codes, known_incomplete_reasons
from bgwatch.transports import raise_mode_supported

from .conftest import (
    BrokenSink,
    FakeAPI,
    answering,
    client_class,
    httpx,
    httpx2,
    response_body,
    sample,
    total,
    transport_class,
)

MODEL = "gpt-4.1-2025-04-14"


def make_client(
    fake_api: FakeAPI,
    library: str,
    watcher: bgwatch.Watcher | None,
    *,
    raise_on: tuple[str, ...] = (),
    asynchronous: bool = False,
    max_retries: int = 2,
    instrumented: bool = True,
) -> Any:
    inner = fake_api.inner_transport(library, asynchronous=asynchronous)
    transport = (
        transport_class(library, asynchronous)(inner, watcher=watcher, raise_on=raise_on) if instrumented else inner
    )
    http = client_class(library, asynchronous)(transport=transport)
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=max_retries)


def terminal_cases() -> list[tuple[str, str | None, str | None]]:
    cases: list[tuple[str, str | None, str | None]] = [("completed", None, None), ("cancelled", None, None)]
    cases += [("failed", code, None) for code in known_error_codes()]
    cases += [("incomplete", None, reason) for reason in known_incomplete_reasons()]
    return cases


def test_every_terminal_state_and_code_counts_once_per_response(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = make_client(fake_api, library, watcher)
    cases = terminal_cases()
    for n, (status, code, reason) in enumerate(cases):
        fake_api.json(f"GET /responses/resp_{n}", response_body(f"resp_{n}", status, code=code, reason=reason))
        for _ in range(5):
            assert client.responses.retrieve(f"resp_{n}").status == status

    for status, code, reason in cases:
        expected = sum(1 for s, c, r in cases if (s, c, r) == (status, code, reason))
        if code is not None:
            assert sample(registry, "bg_response_failed_total", code=code, model=MODEL) == expected
        if reason is not None:
            assert sample(registry, "bg_response_incomplete_total", reason=reason, model=MODEL) == expected
    for status in ("completed", "failed", "incomplete", "cancelled"):
        expected = sum(1 for s, _, _ in cases if s == status)
        assert sample(registry, "bg_response_finished_total", status=status, model=MODEL) == expected
        assert sample(registry, "bg_response_polls_total", status=status) == 5 * expected
        assert sample(registry, "bg_response_duration_seconds_count", status=status, model=MODEL) == expected
    # completed_at - created_at = 12.5 s lands in the (5, 15] bucket for every response.
    assert sample(registry, "bg_response_duration_seconds_sum", status="completed", model=MODEL) == 12.5
    assert total(registry, "bg_response_failed_total") == len(known_error_codes())
    assert sample(registry, "bg_response_in_flight") == 0


def test_lifecycle_create_poll_finish_and_in_flight(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = make_client(fake_api, library, watcher)
    fake_api.json("POST /responses", response_body("resp_a", "queued"))
    fake_api.sequence(
        "GET /responses/resp_a",
        [
            (200, response_body("resp_a", "queued")),
            (200, response_body("resp_a", "in_progress")),
            (200, response_body("resp_a", "failed", code="server_error")),
        ],
    )
    created = client.responses.create(model=MODEL, input="hi", background=True)
    assert created.status == "queued"
    assert sample(registry, "bg_response_created_total", model=MODEL) == 1
    assert sample(registry, "bg_response_in_flight") == 1
    statuses = [client.responses.retrieve("resp_a").status for _ in range(4)]
    assert statuses == ["queued", "in_progress", "failed", "failed"]
    assert sample(registry, "bg_response_in_flight") == 0
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1
    assert sample(registry, "bg_response_polls_total", status="queued") == 1
    assert sample(registry, "bg_response_polls_total", status="in_progress") == 1
    assert sample(registry, "bg_response_polls_total", status="failed") == 2
    assert sample(registry, "bg_response_created_total", model=MODEL) == 1


def test_cancel_counts_cancelled_once(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = make_client(fake_api, library, watcher, raise_on=("cancelled",))
    fake_api.json("POST /responses", response_body("resp_c", "in_progress"))
    fake_api.json("POST /responses/resp_c/cancel", response_body("resp_c", "cancelled"))
    fake_api.json("GET /responses/resp_c", response_body("resp_c", "cancelled"))
    client.responses.create(model=MODEL, input="x", background=True)
    # Cancelling is what the caller asked for: no exception from cancel() itself...
    assert client.responses.cancel("resp_c").status == "cancelled"
    # ...but a later retrieve under raise_on=("cancelled",) raises.
    with pytest.raises(bgwatch.ResponseCancelled):
        client.responses.retrieve("resp_c")
    assert sample(registry, "bg_response_finished_total", status="cancelled", model=MODEL) == 1
    assert sample(registry, "bg_response_in_flight") == 0


def test_non_background_responses_are_not_counted_but_still_raise(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = make_client(fake_api, library, watcher, raise_on=("incomplete",))
    fake_api.json(
        "POST /responses",
        response_body("resp_fg", "incomplete", reason="max_output_tokens", background=False),
    )
    with pytest.raises(bgwatch.MaxOutputTokensReached) as caught:
        client.responses.create(model=MODEL, input="x")
    assert caught.value.reason == "max_output_tokens"
    assert total(registry, "bg_response_finished_total") == 0
    assert total(registry, "bg_response_created_total") == 0


def test_concurrent_polling_from_16_threads_counts_exactly(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = make_client(fake_api, library, watcher)
    ids = [f"resp_t{n}" for n in range(40)]
    for n, rid in enumerate(ids):
        fake_api.json(f"GET /responses/{rid}", response_body(rid, "failed", code=known_error_codes()[n % 5]))
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for rid in ids:
                client.responses.retrieve(rid)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert total(registry, "bg_response_failed_total") == len(ids)
    assert sample(registry, "bg_response_polls_total", status="failed") == 16 * len(ids)
    assert sample(registry, "bg_response_in_flight") == 0


def test_concurrent_polling_from_16_async_tasks_counts_exactly(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = make_client(fake_api, library, watcher, asynchronous=True)
    ids = [f"resp_a{n}" for n in range(40)]
    for rid in ids:
        fake_api.json(f"GET /responses/{rid}", response_body(rid, "incomplete", reason="content_filter"))

    async def main() -> None:
        async def task() -> None:
            for rid in ids:
                await client.responses.retrieve(rid)

        await asyncio.gather(*(task() for _ in range(16)))
        await client.close()

    asyncio.run(main())
    assert sample(registry, "bg_response_incomplete_total", reason="content_filter", model=MODEL) == len(ids)
    assert sample(registry, "bg_response_polls_total", status="incomplete") == 16 * len(ids)


@pytest.mark.parametrize("http_status", [500, 429, 503])
def test_sdk_retries_do_not_double_count(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher, http_status: int
) -> None:
    client = make_client(fake_api, library, watcher)
    error = {"error": {"message": "try again", "type": "server_error"}}
    fake_api.sequence(
        "GET /responses/resp_r",
        [
            (http_status, error),
            (http_status, error),
            (200, response_body("resp_r", "failed", code="server_error")),
        ],
    )
    assert client.responses.retrieve("resp_r").status == "failed"
    assert fake_api.calls["GET /responses/resp_r"] == 3
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1
    assert sample(registry, "bg_response_polls_total", status="failed") == 1


@pytest.mark.skipif(not raise_mode_supported(), reason="raise mode needs openai >= 2.31")
def test_raise_mode_raises_typed_exception_and_sends_exactly_one_request(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = make_client(fake_api, library, watcher, raise_on=("failed",), max_retries=5)
    body = response_body("resp_x", "failed", code="rate_limit_exceeded", message="slow down")
    fake_api.json("POST /responses", body)
    fake_api.json("GET /responses/resp_x", body)
    with pytest.raises(bgwatch.RateLimitExceeded) as caught:
        client.responses.create(model=MODEL, input="hi", background=True)
    assert fake_api.calls["POST /responses"] == 1
    exc = caught.value
    assert isinstance(exc, openai.OpenAIError)
    assert (exc.code, exc.message, exc.response_id, exc.status) == (
        "rate_limit_exceeded",
        "slow down",
        "resp_x",
        "failed",
    )
    assert exc.request_id is not None and exc.request_id.startswith("req_")
    assert exc.retryable is True
    assert exc.body is not None and exc.body["id"] == "resp_x"
    with pytest.raises(bgwatch.ResponseFailed):
        client.responses.retrieve("resp_x")
    assert fake_api.calls["GET /responses/resp_x"] == 1
    # Raising does not stop counting, and counting stays once per response.
    assert sample(registry, "bg_response_failed_total", code="rate_limit_exceeded", model=MODEL) == 1


def test_raise_mode_never_fires_for_active_or_completed(
    fake_api: FakeAPI, library: str, watcher: bgwatch.Watcher
) -> None:
    client = make_client(fake_api, library, watcher, raise_on=("failed", "incomplete", "cancelled"))
    for status in ("queued", "in_progress", "completed"):
        fake_api.json(f"GET /responses/resp_{status}", response_body(f"resp_{status}", status))
        assert client.responses.retrieve(f"resp_{status}").status == status


def _elapsed(response: Any) -> str:
    try:
        return "set" if response.elapsed.total_seconds() >= 0 else "negative"
    except RuntimeError:
        return "unavailable"


def test_observe_mode_returns_identical_response(fake_api: FakeAPI, library: str, watcher: bgwatch.Watcher) -> None:
    body = response_body("resp_same", "failed", code="invalid_prompt", output_text="partial answer")
    fake_api.json("GET /responses/resp_same", body, headers={"openai-poll-after-ms": "250", "x-custom": "1"})
    bare = make_client(fake_api, library, None, instrumented=False)
    hooked = make_client(fake_api, library, watcher)
    plain = bare.responses.with_raw_response.retrieve("resp_same")
    seen = hooked.responses.with_raw_response.retrieve("resp_same")
    assert seen.http_response.content == plain.http_response.content == json.dumps(body).encode()
    strip = {"x-request-id"}
    assert [(k, v) for k, v in seen.headers.items() if k not in strip] == [
        (k, v) for k, v in plain.headers.items() if k not in strip
    ]
    assert seen.parse().model_dump() == plain.parse().model_dump()
    # The very response object of the inner transport: elapsed is there exactly when it is without bgwatch
    # (a MockTransport's loaded response never gets one).
    assert _elapsed(seen.http_response) == _elapsed(plain.http_response)
    assert hooked.responses.retrieve("resp_same")._request_id.startswith("req_")
    with hooked.responses.with_streaming_response.retrieve("resp_same") as streamed:
        assert json.loads(b"".join(streamed.iter_bytes())) == body


UNRELATED_CALLS: dict[str, tuple[str, dict[str, Any], Any]] = {
    "embeddings": (
        "POST /embeddings",
        {"object": "list", "data": [], "model": "e", "usage": {"prompt_tokens": 1, "total_tokens": 1}},
        lambda c: c.embeddings.with_raw_response.create(model="e", input="x"),
    ),
    "input_items": (
        "GET /responses/resp_1/input_items",
        {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False},
        lambda c: c.responses.input_items.with_raw_response.list("resp_1"),
    ),
    "input_tokens": (
        "POST /responses/input_tokens",
        {"object": "response.input_tokens", "input_tokens": 3},
        lambda c: c.responses.input_tokens.with_raw_response.count(model=MODEL, input="x"),
    ),
    "chat": (
        "POST /chat/completions",
        {"id": "c", "object": "chat.completion", "created": 1, "model": "m", "choices": []},
        lambda c: c.chat.completions.with_raw_response.create(model="m", messages=[]),
    ),
}


@pytest.mark.parametrize("name", sorted(UNRELATED_CALLS))
def test_unrelated_endpoints_move_no_counter(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher, name: str
) -> None:
    client = make_client(fake_api, library, watcher)
    key, body, call = UNRELATED_CALLS[name]
    fake_api.json(key, body)
    response = call(client)
    assert fake_api.calls[key] == 1
    assert json.loads(response.http_response.content) == body
    for metric in bgwatch.metrics.METRIC_NAMES:
        assert total(registry, metric) == 0, metric


def test_a_response_object_on_an_unexpected_path_is_not_a_poll(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    # The path decides nothing alone, but the body alone decides nothing either:
    # a response-shaped body from chat/completions is not a Responses API call.
    client = make_client(fake_api, library, watcher)
    fake_api.json("POST /chat/completions", response_body("resp_z", "failed", code="server_error"))
    client.chat.completions.with_raw_response.create(model="m", messages=[])
    assert total(registry, "bg_response_failed_total") == 0


def test_fail_open_errors_inside_bgwatch_are_counted_and_the_response_passes(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry
) -> None:
    watcher = bgwatch.Watcher(registry=registry, sinks=[BrokenSink()])
    client = make_client(fake_api, library, watcher)
    body = response_body("resp_f", "failed", code="server_error")
    fake_api.json("GET /responses/resp_f", body)
    assert client.responses.retrieve("resp_f").error.code == "server_error"  # type: ignore[union-attr]
    assert sample(registry, "bgwatch_internal_errors_total", stage="sink") == 1
    # The healthy Prometheus sink still counted.
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_request_bgwatch_cannot_classify_passes_and_is_counted(
    library: str, asynchronous: bool, registry: CollectorRegistry
) -> None:
    # A hand-made request without a URL: reading it to select the call fails, the request
    # still reaches the inner transport (which needs no URL here) and its answer comes back.
    module = httpx2 if library == "httpx2" else httpx
    request = module.Request("GET", "https://api.test/v1/responses/resp_odd")
    request.url = None
    answer = module.Response(200, json=response_body("resp_odd", "failed", code="server_error"))
    transport = transport_class(library, asynchronous)(
        answering(module, asynchronous, lambda request: answer), registry=registry
    )
    got = asyncio.run(transport.handle_async_request(request)) if asynchronous else transport.handle_request(request)
    assert got is answer
    assert sample(registry, "bgwatch_internal_errors_total", stage="request") == 1
    assert total(registry, "bg_response_polls_total") == 0


def test_an_unknown_content_encoding_is_ignored_as_the_sdk_ignores_it(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    # The HTTP library skips codings it does not know, so the SDK reads the failure: so do we.
    client = make_client(fake_api, library, watcher)
    raw = json.dumps(response_body("resp_e", "failed", code="server_error")).encode()
    fake_api.routes["GET /responses/resp_e"] = lambda m, p, c: (200, {"content-encoding": "x-unknown"}, raw)
    assert client.responses.retrieve("resp_e").status == "failed"
    assert total(registry, "bgwatch_internal_errors_total") == 0
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1


def test_garbage_bodies_pass_untouched(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = make_client(fake_api, library, watcher)
    for n, raw in enumerate(
        [b"not json", b'{"object": "response", "id": 5}', b'{"object": "respo', b"[1,2]", b"\xff\xfe"]
    ):
        fake_api.routes[f"GET /responses/resp_g{n}"] = lambda m, p, c, raw=raw: (200, {}, raw)
        response = client.responses.with_raw_response.retrieve(f"resp_g{n}")
        assert response.http_response.content == raw
    assert total(registry, "bg_response_polls_total") == 0
    assert total(registry, "bgwatch_internal_errors_total") == 0


# --- configuration -------------------------------------------------------------------------


def test_bad_raise_on_values_are_refused() -> None:
    with pytest.raises(bgwatch.ConfigurationError, match="bogus"):
        bgwatch.http_client(raise_on=("bogus",))
    with pytest.raises(bgwatch.ConfigurationError, match="not the string"):
        bgwatch.http_client(raise_on="failed")
    with pytest.raises(bgwatch.ConfigurationError, match="never raises"):
        bgwatch.http_client(raise_on=("completed",))


@pytest.mark.skipif(len({"httpx", "httpx2"} & set(__import__("sys").modules)) < 2, reason="needs both libraries")
def test_inner_transport_of_the_wrong_library_is_refused() -> None:
    import httpx
    import httpx2

    with pytest.raises(bgwatch.ConfigurationError, match=r"httpx2\.BaseTransport"):
        bgwatch.Httpx2Transport(httpx.HTTPTransport())
    with pytest.raises(bgwatch.ConfigurationError, match=r"httpx\.BaseTransport"):
        bgwatch.HttpxTransport(httpx2.HTTPTransport())
    with pytest.raises(bgwatch.ConfigurationError, match="AsyncBaseTransport"):
        bgwatch.AsyncHttpx2Transport(httpx2.HTTPTransport())  # type: ignore[arg-type]


def test_registry_holding_a_conflicting_metric_is_refused(registry: CollectorRegistry) -> None:
    Counter("bg_response_failed", "someone else's", registry=registry)
    with pytest.raises(bgwatch.ConfigurationError, match="already holds"):
        bgwatch.Watcher(registry=registry)


def test_two_watchers_on_one_registry_share_instruments(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry
) -> None:
    first, second = bgwatch.Watcher(registry=registry), bgwatch.Watcher(registry=registry)
    fake_api.json("GET /responses/resp_1", response_body("resp_1", "failed", code="server_error"))
    fake_api.json("GET /responses/resp_2", response_body("resp_2", "failed", code="server_error"))
    make_client(fake_api, library, first).responses.retrieve("resp_1")
    make_client(fake_api, library, second).responses.retrieve("resp_2")
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 2


def test_clients_without_a_watcher_share_the_registry_default(
    fake_api: FakeAPI, library: str, registry: CollectorRegistry
) -> None:
    fake_api.json("GET /responses/resp_s", response_body("resp_s", "failed", code="server_error"))
    for _ in range(3):  # three clients, one process-wide watcher for the registry: one count
        transport = transport_class(library)(fake_api.inner_transport(library), registry=registry)
        client = openai.OpenAI(
            api_key="k", base_url="http://api.test/v1", http_client=client_class(library)(transport=transport)
        )
        client.responses.retrieve("resp_s")
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1


def test_raise_mode_is_refused_on_sdks_that_would_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not raise_mode_supported("1.99.0")
    assert not raise_mode_supported("2.30.0")
    assert raise_mode_supported("2.31.0")
    assert raise_mode_supported("3.57.0")
    monkeypatch.setattr(openai, "__version__", "2.30.0")
    with pytest.raises(bgwatch.ConfigurationError, match="re-send"):
        bgwatch.http_client(raise_on=("failed",))
    bgwatch.http_client().close()  # observe mode works on any version


def test_http_client_has_openai_defaults(library: str, no_env_proxies: None) -> None:
    client = bgwatch.http_client(library=library)  # type: ignore[arg-type]
    assert isinstance(client, client_class(library))
    assert client.timeout.read == 600 and client.timeout.connect == 5
    assert client.follow_redirects is True
    pool = client._transport._inner._pool
    assert pool._max_connections == openai.DEFAULT_CONNECTION_LIMITS.max_connections
    assert pool._max_keepalive_connections == openai.DEFAULT_CONNECTION_LIMITS.max_keepalive_connections
    client.close()


def test_http_client_honours_environment_proxies(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    client = bgwatch.http_client(library=library)  # type: ignore[arg-type]
    mounted = [t for t in client._mounts.values() if t is not None]
    assert mounted, "the environment proxy was not mounted"
    assert all(isinstance(t, transport_class(library)) for t in mounted)
    client.close()


def test_async_http_client_type(library: str) -> None:
    client = bgwatch.async_http_client(library=library)  # type: ignore[arg-type]
    assert isinstance(client, client_class(library, asynchronous=True))
    asyncio.run(client.aclose())
