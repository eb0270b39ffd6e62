"""bgwatch.webhooks: verification, rejection, counting once, follow-ups, ASGI (uvicorn) and WSGI (wsgiref).

Deliveries are signed by bgwatch.simulator.webhooks, which is itself checked against the SDK's
own ``client.webhooks.unwrap``. Servers run for real on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from types import SimpleNamespace
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import openai
import pytest
import uvicorn
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch._tracker import RecentIds
from bgwatch.simulator import Simulator
from bgwatch.simulator.webhooks import WebhookSender, build_delivery, new_secret
from bgwatch.webhooks import WebhookReceiver, asgi_app, wsgi_app
from tests.conftest import sample, total

try:
    import fastapi
except ImportError:  # pragma: no cover - fastapi is a dev dependency
    fastapi = None  # type: ignore[assignment]

MODEL = "gpt-4o-mini"
SECRET = new_secret()
OTHER_SECRET = new_secret()


def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.005)


def rejected(registry: CollectorRegistry, reason: str) -> float:
    return sample(registry, "bgwatch_webhook_rejected_total", reason=reason)


def outcomes_recorded(registry: CollectorRegistry) -> float:
    return total(registry, "bg_response_finished_total")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=5, durations=(0.01, 0.03), poll_after_ms=10) as simulator:
        yield simulator


def finished_response(sim: Simulator, client: openai.OpenAI, outcome: str) -> str:
    """Create a response and wait (on the simulator's ground truth, not by polling) until it ended."""
    response_id = client.responses.create(
        model=MODEL, input="x", background=True, metadata={"bgwatch_outcome": outcome}
    ).id
    until(lambda: response_id in sim.ledger())
    return response_id


def delivery(
    event_type: str = "response.failed", response_id: str = "resp_1", **options: Any
) -> tuple[bytes, dict[str, str]]:
    secret = options.pop("secret", SECRET)
    built = build_delivery(secret, event_type, response_id, time.time(), **options)
    return built.body, built.headers


# -- the sender is what the platform sends -------------------------------------------------


def test_sender_deliveries_verify_with_the_sdk() -> None:
    body, headers = delivery("response.incomplete", "resp_abc")
    event = openai.OpenAI(api_key="k").webhooks.unwrap(body, headers, secret=SECRET)
    assert event.type == "response.incomplete"
    assert event.data.id == "resp_abc"
    assert set(json.loads(body)) == {"id", "object", "created_at", "type", "data"}
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="k").webhooks.verify_signature(body, headers, secret=OTHER_SECRET)


# -- receiver: accepted deliveries ----------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("response.completed", "completed"),
        ("response.failed", "failed"),
        ("response.cancelled", "cancelled"),
        ("response.incomplete", "incomplete"),
    ],
)
def test_without_follow_up_a_webhook_counts_at_once_with_code_unknown(
    registry: CollectorRegistry, watcher: bgwatch.Watcher, event_type: str, status: str
) -> None:
    receiver = WebhookReceiver(secret=SECRET, watcher=watcher)
    result = receiver.handle(*delivery(event_type, "resp_w1"))
    assert (result.status_code, result.outcome, result.response_id, result.event_type) == (
        200,
        "accepted",
        "resp_w1",
        event_type,
    )
    assert type(result.event).__name__.endswith("WebhookEvent") and result.event.data.id == "resp_w1"
    assert sample(registry, "bg_response_finished_total", status=status, model="unknown") == 1
    if status == "failed":
        assert sample(registry, "bg_response_failed_total", code="unknown", model="unknown") == 1
    if status == "incomplete":
        assert sample(registry, "bg_response_incomplete_total", reason="unknown", model="unknown") == 1
    # no body: no tokens (a follow-up retrieve brings them)
    assert total(registry, "bg_response_tokens_total") == 0
    # no start time is known: no duration is made up, and a webhook is never a poll
    assert total(registry, "bg_response_duration_seconds_count") == 0
    assert total(registry, "bg_response_polls_total") == 0
    assert sample(registry, "bg_response_in_flight") == 0


def test_other_event_types_are_acknowledged_and_ignored(registry: CollectorRegistry, watcher: bgwatch.Watcher) -> None:
    receiver = WebhookReceiver(secret=SECRET, watcher=watcher)
    body, headers = delivery("batch.completed", "batch_1")
    result = receiver.handle(body, headers)
    assert (result.status_code, result.outcome) == (200, "ignored")
    assert outcomes_recorded(registry) == 0 and total(registry, "bgwatch_webhook_rejected_total") == 0


def test_secret_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, watcher: bgwatch.Watcher) -> None:
    monkeypatch.setenv("OPENAI_WEBHOOK_SECRET", SECRET)
    assert WebhookReceiver(watcher=watcher).handle(*delivery()).status_code == 200
    monkeypatch.delenv("OPENAI_WEBHOOK_SECRET")
    with pytest.raises(bgwatch.ConfigurationError, match="OPENAI_WEBHOOK_SECRET"):
        WebhookReceiver(watcher=watcher)


# -- receiver: refused deliveries -------------------------------------------------------------


def _tampered() -> tuple[bytes, dict[str, str]]:
    body, headers = delivery()
    return body.replace(b"resp_1", b"resp_2"), headers


def _without(name: str) -> tuple[bytes, dict[str, str]]:
    body, headers = delivery()
    del headers[name]
    return body, headers


def _signed_body(body: bytes) -> tuple[bytes, dict[str, str]]:
    return delivery(body=body)


REFUSALS: dict[str, tuple[Callable[[], tuple[bytes, dict[str, str]]], int, str]] = {
    "forged": (lambda: delivery(secret=OTHER_SECRET), 401, "signature"),
    "tampered body": (_tampered, 401, "signature"),
    "garbage signature": (
        lambda: (delivery()[0], {**delivery()[1], "webhook-signature": "v1,AAAA"}),
        401,
        "signature",
    ),
    "stale": (lambda: delivery(timestamp=int(time.time()) - 301), 400, "timestamp"),
    "future": (lambda: delivery(timestamp=int(time.time()) + 400), 400, "timestamp"),
    "timestamp not a number": (
        lambda: (delivery()[0], {**delivery()[1], "webhook-timestamp": "soon"}),
        400,
        "timestamp",
    ),
    "no id": (lambda: _without("webhook-id"), 400, "headers"),
    "no signature": (lambda: _without("webhook-signature"), 400, "headers"),
    "no timestamp": (lambda: _without("webhook-timestamp"), 400, "headers"),
    "not json": (lambda: _signed_body(b"{not json"), 400, "malformed"),
    "not utf-8": (lambda: _signed_body(b'{"type": "\xff"}'), 400, "malformed"),
    "array": (lambda: _signed_body(b"[1, 2]"), 400, "malformed"),
    "no type": (lambda: _signed_body(b'{"data": {"id": "resp_1"}}'), 400, "malformed"),
    "no data.id": (lambda: _signed_body(b'{"type": "response.failed", "data": {}}'), 400, "malformed"),
    "data.id not a string": (
        lambda: _signed_body(b'{"type": "response.failed", "data": {"id": 7}}'),
        400,
        "malformed",
    ),
    "too large": (lambda: _signed_body(b" " * 2_000_000), 413, "too_large"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_deliveries_are_refused_counted_and_never_recorded(
    registry: CollectorRegistry, watcher: bgwatch.Watcher, case: str
) -> None:
    make, status_code, reason = REFUSALS[case]
    receiver = WebhookReceiver(secret=SECRET, watcher=watcher)
    result = receiver.handle(*make())
    assert (result.status_code, result.outcome, result.reason) == (status_code, "rejected", reason)
    assert not result.ok and json.loads(result.content)["reason"] == reason
    assert rejected(registry, reason) == 1
    assert total(registry, "bgwatch_webhook_rejected_total") == 1
    assert outcomes_recorded(registry) == 0
    assert total(registry, "bgwatch_internal_errors_total") == 0


def test_a_forged_delivery_does_not_burn_the_genuine_webhook_id(
    registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    receiver = WebhookReceiver(secret=SECRET, watcher=watcher)
    assert receiver.handle(*delivery(secret=OTHER_SECRET, webhook_id="wh_same")).status_code == 401
    assert receiver.handle(*delivery(webhook_id="wh_same")).status_code == 200
    assert outcomes_recorded(registry) == 1


def test_replays_are_refused_and_counted_once(registry: CollectorRegistry, watcher: bgwatch.Watcher) -> None:
    receiver = WebhookReceiver(secret=SECRET, watcher=watcher)
    body, headers = delivery("response.failed", "resp_r")
    assert receiver.handle(body, headers).status_code == 200
    again = receiver.handle(body, headers)
    assert (again.status_code, again.reason) == (409, "replay")
    # a platform retry: same webhook-id, new timestamp and signature
    retry = receiver.handle(*delivery("response.failed", "resp_r", webhook_id=headers["webhook-id"]))
    assert retry.status_code == 409
    assert rejected(registry, "replay") == 2
    assert sample(registry, "bg_response_finished_total", status="failed", model="unknown") == 1
    # acknowledging duplicates instead
    ack = WebhookReceiver(secret=SECRET, watcher=watcher, duplicate_status=200)
    assert ack.handle(body, headers).status_code == 200
    duplicate = ack.handle(body, headers)
    assert (duplicate.status_code, duplicate.reason, duplicate.ok) == (200, "replay", True)
    assert sample(registry, "bg_response_finished_total", status="failed", model="unknown") == 1


def test_recent_ids_are_bounded_expire_and_are_thread_safe() -> None:
    now = [0.0]
    ids = RecentIds(3, 10.0, clock=lambda: now[0])
    assert ids.add("a") and not ids.add("a")
    for key in "bcd":
        assert ids.add(key)
    assert len(ids) == 3 and "a" not in ids  # oldest evicted
    now[0] = 10.5
    assert len(ids) == 3 and "b" not in ids and len(ids) == 0
    ids.discard("nothing")
    shared = RecentIds(100_000, 60.0)
    wins: list[int] = []

    def race() -> None:
        wins.append(sum(shared.add(f"k{i}") for i in range(2000)))

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(wins) == 2000


# -- follow-ups: the code comes from a retrieve, counted once -------------------------------------


@pytest.mark.parametrize("instrumented", [True, False], ids=["transport", "plain"])
def test_follow_up_retrieve_supplies_the_code_and_counts_once(
    sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher, instrumented: bool
) -> None:
    creator = openai.OpenAI(base_url=sim.base_url, api_key="k")
    response_id = finished_response(sim, creator, "failed:vector_store_timeout")
    follow_up = openai.OpenAI(
        base_url=sim.base_url,
        api_key="k",
        http_client=bgwatch.http_client(watcher=watcher) if instrumented else None,
    )
    receiver = WebhookReceiver(secret=SECRET, client=follow_up, watcher=watcher)
    assert receiver.watcher is watcher
    result = receiver.handle(*delivery("response.failed", response_id))
    assert (result.status_code, result.detail) == (200, "follow-up queued")
    assert receiver.join(5)
    assert sim.request_log.count("GET", f"/v1/responses/{response_id}") == 1
    assert sample(registry, "bg_response_failed_total", code="vector_store_timeout", model=MODEL) == 1
    assert sample(registry, "bg_response_failed_total", code="unknown", model="unknown") == 0
    assert outcomes_recorded(registry) == 1
    assert sample(registry, "bg_response_duration_seconds_count", status="failed", model=MODEL) == 1
    assert total(registry, "bg_response_polls_total") == 1
    # the follow-up's body carries the usage: the tokens the failed response cost, as the ledger says
    outcome = sim.ledger()[response_id]
    for kind, tokens in (("input", outcome.input_tokens), ("output", outcome.output_tokens)):
        assert sample(registry, "bg_response_tokens_total", type=kind, status="failed", model=MODEL) == tokens
    assert outcome.input_tokens > 0
    # first seen finished: no queue wait is made up
    assert total(registry, "bg_response_queue_seconds_count") == 0
    receiver.close()


def test_a_failed_follow_up_falls_back_to_the_webhook(registry: CollectorRegistry, watcher: bgwatch.Watcher) -> None:
    with Simulator() as sim:
        client = openai.OpenAI(base_url=sim.base_url, api_key="k", max_retries=0)
        receiver = WebhookReceiver(secret=SECRET, client=client, watcher=watcher)
        assert receiver.handle(*delivery("response.failed", "resp_unknown_to_the_api")).status_code == 200
        assert receiver.join(5)
    assert sample(registry, "bg_response_failed_total", code="unknown", model="unknown") == 1
    assert sample(registry, "bgwatch_internal_errors_total", stage="webhook") == 1


def test_seen_by_polling_and_by_webhook_is_counted_once(
    sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key="k", http_client=bgwatch.http_client(watcher=watcher))
    with_follow_up = WebhookReceiver(secret=SECRET, client=client, watcher=watcher)
    without = WebhookReceiver(secret=SECRET, watcher=watcher)
    # polled to the end first, then the webhooks arrive
    first = finished_response(sim, client, "failed:server_error")
    with pytest.raises(bgwatch.ServerError):
        bgwatch.wait(client, first, timeout=5)
    assert without.handle(*delivery("response.failed", first)).ok
    assert with_follow_up.handle(*delivery("response.failed", first)).ok
    # the webhook first (its follow-up counts), the poll afterwards
    second = finished_response(sim, client, "failed:server_error")
    assert with_follow_up.handle(*delivery("response.failed", second)).ok
    assert with_follow_up.join(5)
    with pytest.raises(bgwatch.ServerError):
        bgwatch.wait(client, second, timeout=5)
    assert without.handle(*delivery("response.failed", second)).ok
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 2
    assert outcomes_recorded(registry) == 2
    assert total(registry, "bg_response_duration_seconds_count") == 2
    with_follow_up.close()


class BlockingClient:
    """A follow-up client whose retrieve blocks until released, then fails."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.responses = SimpleNamespace(with_raw_response=SimpleNamespace(retrieve=self._retrieve))

    def _retrieve(self, response_id: str, timeout: float | None = None) -> Any:
        self.calls += 1
        self.release.wait(5)
        raise RuntimeError("the API is down")


def test_a_full_backlog_answers_503_and_the_retry_is_taken_later(
    registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = BlockingClient()
    receiver = WebhookReceiver(secret=SECRET, client=client, watcher=watcher, max_workers=1, max_queue=1)  # type: ignore[arg-type]
    assert receiver.handle(*delivery("response.failed", "resp_a")).status_code == 200
    body, headers = delivery("response.failed", "resp_b")
    started = time.monotonic()
    full = receiver.handle(body, headers)
    assert time.monotonic() - started < 0.5  # answered at once, never blocked on the backlog
    assert (full.status_code, full.reason, full.retry_after) == (503, "overloaded", 30)
    assert ("retry-after", "30") in full.headers
    assert rejected(registry, "overloaded") == 1
    client.release.set()
    assert receiver.join(5)
    # the platform's retry of the refused delivery (same webhook-id) is not a replay
    retry = receiver.handle(*delivery("response.failed", "resp_b", webhook_id=headers["webhook-id"]))
    assert retry.status_code == 200
    assert receiver.join(5)
    assert sample(registry, "bg_response_failed_total", code="unknown", model="unknown") == 2
    receiver.close()


def test_an_async_follow_up_client_without_a_loop_counts_at_once(
    registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    receiver = WebhookReceiver(secret=SECRET, client=openai.AsyncOpenAI(api_key="k"), watcher=watcher)
    assert receiver.handle(*delivery("response.cancelled", "resp_c")).status_code == 200
    assert sample(registry, "bg_response_finished_total", status="cancelled", model="unknown") == 1


def test_invalid_configuration_is_refused(watcher: bgwatch.Watcher) -> None:
    with pytest.raises(bgwatch.ConfigurationError, match="base64"):
        WebhookReceiver(secret="whsec_%%%", watcher=watcher)
    invalid: list[dict[str, Any]] = [{"tolerance": 0}, {"max_queue": 0}, {"max_workers": -1}, {"duplicate_status": 500}]
    for options in invalid:
        with pytest.raises(bgwatch.ConfigurationError):
            WebhookReceiver(secret=SECRET, watcher=watcher, **options)
    with pytest.raises(TypeError):
        WebhookReceiver(secret=SECRET, client=object(), watcher=watcher)  # type: ignore[arg-type]
    with pytest.raises(bgwatch.ConfigurationError, match="AsyncOpenAI"):
        wsgi_app(secret=SECRET, client=openai.AsyncOpenAI(api_key="k"), watcher=watcher)
    with pytest.raises(bgwatch.ConfigurationError):
        asgi_app(WebhookReceiver(secret=SECRET, watcher=watcher), secret=SECRET)


def test_a_bug_inside_the_receiver_answers_500_and_counts(
    registry: CollectorRegistry, watcher: bgwatch.Watcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = WebhookReceiver(secret=SECRET, watcher=watcher)
    monkeypatch.setattr(receiver, "_parse", lambda payload: 1 / 0)
    result = receiver.handle(*delivery())
    assert (result.status_code, result.reason) == (500, "error")
    assert sample(registry, "bgwatch_internal_errors_total", stage="webhook") == 1
    assert outcomes_recorded(registry) == 0


# -- real servers on loopback -------------------------------------------------------------------


def post(url: str, body: bytes, headers: dict[str, str], method: str = "POST") -> tuple[int, dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body if method == "POST" else None, headers=headers, method=method)
    try:
        with opener.open(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@contextlib.contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_asgi_app_under_uvicorn_with_an_async_follow_up_client(
    sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    creator = openai.OpenAI(base_url=sim.base_url, api_key="k")
    response_id = finished_response(sim, creator, "incomplete:content_filter")
    follow_up = openai.AsyncOpenAI(
        base_url=sim.base_url, api_key="k", http_client=bgwatch.async_http_client(watcher=watcher)
    )
    app = asgi_app(secret=SECRET, client=follow_up, watcher=watcher, max_body_bytes=4096)
    with uvicorn_server(app) as url:
        sender = WebhookSender(url + "/hooks/openai", SECRET)
        sent = sender.send("response.incomplete", response_id, time.time())
        assert (sent.status, sent.attempts) == (200, 1)
        until(lambda: sample(registry, "bg_response_incomplete_total", reason="content_filter", model=MODEL) == 1)
        forged = WebhookSender(url, OTHER_SECRET).send("response.failed", "resp_x", time.time())
        assert (forged.status, forged.attempts) == (401, 1)  # a 4xx is never retried
        body, headers = delivery("response.failed", "resp_y", timestamp=int(time.time()) - 3600)
        assert post(url, body, headers) == (
            400,
            {"status": "rejected", "detail": "webhook-timestamp older than 300s", "reason": "timestamp"},
        )
        body, headers = delivery("response.cancelled", "resp_z")
        assert post(url, body, headers)[0] == 200
        assert post(url, body, headers)[0] == 409
        assert post(url, b"", {}, method="GET")[0] == 405
        assert post(url, b"x" * 10_000, headers)[0] == 413  # small enough to be sent before the answer
    assert outcomes_recorded(registry) == 2
    # resp_z is unknown to the API: its follow-up failed (404) and the webhook's status was kept
    assert sample(registry, "bg_response_finished_total", status="cancelled", model="unknown") == 1
    assert sample(registry, "bgwatch_internal_errors_total", stage="webhook") == 1
    for reason in ("signature", "timestamp", "replay", "method", "too_large"):
        assert rejected(registry, reason) == 1, reason
    assert app.receiver.outstanding == 0


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextlib.contextmanager
def wsgiref_server(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_wsgi_app_under_wsgiref_with_a_follow_up_client(
    sim: Simulator, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    client = openai.OpenAI(base_url=sim.base_url, api_key="k")
    response_id = finished_response(sim, client, "failed:server_error")
    app = wsgi_app(secret=SECRET, client=client, watcher=watcher)
    with wsgiref_server(app) as url:
        sent = WebhookSender(url, SECRET).send_status("failed", response_id, time.time())
        assert sent.status == 200
        assert app.receiver.join(5)
        body, headers = delivery("response.failed", "resp_q", secret=OTHER_SECRET)
        assert post(url, body, headers)[0] == 401
        body, headers = delivery("response.failed", "resp_q", body=b"[]")
        assert post(url, body, headers)[0] == 400
        assert post(url, b"", {}, method="GET")[0] == 405
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1
    assert outcomes_recorded(registry) == 1
    assert rejected(registry, "signature") == 1 and rejected(registry, "malformed") == 1
    app.receiver.close()


def test_sender_retries_like_the_platform(registry: CollectorRegistry, watcher: bgwatch.Watcher) -> None:
    receiver = WebhookReceiver(secret=SECRET, watcher=watcher)
    seen: list[str] = []

    def flaky(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["HTTP_WEBHOOK_ID"])
        if len(seen) == 1:
            start_response("503 Service Unavailable", [("Retry-After", "0")])
            return [b"{}"]
        return wsgi_app(receiver)(environ, start_response)

    with wsgiref_server(flaky) as url:
        sender = WebhookSender(url, SECRET)
        assert sender.submit("response.completed", "resp_s", time.time())
        assert sender.join(5)
        sender.close()
    assert [(s.status, s.attempts) for s in sender.sent] == [(200, 2)]
    assert seen[0] == seen[1] == sender.sent[0].webhook_id
    assert sample(registry, "bg_response_finished_total", status="completed", model="unknown") == 1


def test_asgi_app_works_inside_fastapi(watcher: bgwatch.Watcher, registry: CollectorRegistry) -> None:
    if fastapi is None:
        pytest.skip("fastapi is not installed")
    from starlette.testclient import TestClient

    api = fastapi.FastAPI()
    receiver = WebhookReceiver(secret=SECRET, watcher=watcher)
    # Starlette routes an ASGI app given as endpoint as such (its stubs only name functions).
    api.add_route("/webhooks/openai", asgi_app(receiver), methods=["POST"])  # type: ignore[arg-type]
    api.mount("/mounted", asgi_app(receiver))

    @api.post("/custom")
    async def custom(request: fastapi.Request) -> fastapi.Response:
        result = receiver.handle(await request.body(), request.headers)
        return fastapi.Response(result.content, result.status_code, dict(result.headers))

    with TestClient(api) as http:
        for path in ("/webhooks/openai", "/mounted/", "/custom"):
            body, headers = delivery("response.completed", f"resp{path.replace('/', '_')}")
            assert http.post(path, content=body, headers=headers).status_code == 200, path
        assert http.post("/custom", content=b"{}", headers={}).status_code == 400
    assert sample(registry, "bg_response_finished_total", status="completed", model="unknown") == 3


def test_async_receiver_closes_cleanly() -> None:
    async def main() -> None:
        receiver = WebhookReceiver(secret=SECRET, client=openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:9"))
        await receiver.aclose(timeout=1)

    asyncio.run(main())


def test_the_simulator_sends_signed_webhooks_that_match_its_ledger(
    registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    """The platform's path end to end: the simulator signs and POSTs one webhook per response
    when it ends (a cancel at once); the receiver's follow-up retrieve supplies the codes;
    a client polling the same responses too changes no count."""
    # The receiver needs the simulator's URL for its follow-up client and the simulator needs
    # the receiver's URL: the server dispatches to an app installed once both exist.
    apps: list[Any] = []
    with wsgiref_server(lambda environ, start_response: apps[0](environ, start_response)) as url, Simulator(
        seed=11, mix="completed=40,failed=40,incomplete=10,cancelled=10", durations=(0.01, 0.05),
        webhook_url=url, webhook_secret=SECRET,
    ) as sim:  # fmt: skip
        follow_up = openai.OpenAI(base_url=sim.base_url, api_key="k", http_client=bgwatch.http_client(watcher=watcher))
        app = wsgi_app(secret=SECRET, client=follow_up, watcher=watcher)
        apps.append(app)
        poller = openai.OpenAI(base_url=sim.base_url, api_key="k", http_client=bgwatch.http_client(watcher=watcher))
        ids = [poller.responses.create(model=MODEL, input="x", background=True).id for _ in range(30)]
        cancelled = poller.responses.cancel(ids[-1]).id
        until(lambda: len(sim.ledger()) == len(ids))
        for response_id in ids[:10]:  # seen by polling and by webhook
            poller.responses.retrieve(response_id)
        assert sim.webhooks is not None
        until(lambda: len(sim.webhooks.sent) == len(ids), timeout=10)  # type: ignore[union-attr]
        assert all(s.status == 200 for s in sim.webhooks.sent)
        assert app.receiver.join(10)
        ledger = sim.ledger()
    app.receiver.close()
    assert ledger[cancelled].status == "cancelled"
    for status in ("completed", "failed", "incomplete", "cancelled"):
        expected = sum(1 for o in ledger.values() if o.status == status)
        assert sample(registry, "bg_response_finished_total", status=status, model=MODEL) == expected, status
    for code in {o.code for o in ledger.values() if o.status == "failed"}:
        expected = sum(1 for o in ledger.values() if o.code == code)
        assert sample(registry, "bg_response_failed_total", code=str(code), model=MODEL) == expected, code
    assert sample(registry, "bg_response_in_flight") == 0


def absurd_bodies(depth: int = 100_000) -> list[bytes]:
    """Signed JSON nested far deeper than any event: alone, beside a real event's fields, under data."""
    event = json.loads(delivery("response.failed", "resp_deep")[0])
    deep_list = "[" * depth + "]" * depth
    deep_object = '{"a":' * depth + "1" + "}" * depth
    return [
        deep_list.encode(),
        json.dumps(event)[:-1].encode() + f', "extra": {deep_object}}}'.encode(),
        json.dumps({**event, "data": "PLACEHOLDER"}).replace('"PLACEHOLDER"', deep_object).encode(),
    ]


@pytest.mark.parametrize("server", ["asgi", "wsgi"])
def test_signed_but_absurdly_nested_payloads_are_malformed_never_a_500(
    server: str, registry: CollectorRegistry, watcher: bgwatch.Watcher
) -> None:
    receiver = WebhookReceiver(secret=SECRET, watcher=watcher, max_body_bytes=4 * 1024 * 1024)
    bodies = absurd_bodies()
    serve = uvicorn_server(asgi_app(receiver)) if server == "asgi" else wsgiref_server(wsgi_app(receiver))
    with serve as url:
        for body in bodies:
            _, headers = delivery("response.failed", "resp_deep", body=body)
            assert post(url, body, headers) == (
                400,
                {"status": "rejected", "detail": "body nested too deeply", "reason": "malformed"},
            )
    assert rejected(registry, "malformed") == len(bodies)
    assert rejected(registry, "error") == 0
    assert total(registry, "bgwatch_internal_errors_total") == 0
    assert outcomes_recorded(registry) == 0
