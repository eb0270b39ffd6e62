"""The embedded Responses API simulator, exercised through the real openai SDK.

No mocks: every test talks HTTP to a simulator on loopback. Nothing sleeps for a fixed
time to let state change; waits poll until a deadline.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, AzureOpenAI, OpenAI
from openai.types.responses import Response, ResponseStreamEvent

from bgwatch.simulator import Faults, Mix, Outcome, Simulator, sdk_error_codes, sdk_incomplete_reasons
from bgwatch.transports import sdk_library

# A connection that breaks while a stream is iterated: openai >= 3 wraps it in
# APIConnectionError, openai 2.x lets the HTTP library's own error through.
if sdk_library() == "httpx2":
    STREAM_BROKEN: tuple[type[BaseException], ...] = (openai.APIConnectionError,)
else:
    import httpx

    STREAM_BROKEN = (openai.APIConnectionError, httpx.TransportError)

TERMINAL = ("completed", "failed", "incomplete", "cancelled")
KEY_ORDER = [
    "id",
    "object",
    "created_at",
    "status",
    "background",
    "completed_at",
    "error",
    "incomplete_details",
    "instructions",
    "max_output_tokens",
    "model",
    "output",
    "parallel_tool_calls",
    "previous_response_id",
    "reasoning",
    "service_tier",
    "store",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_p",
    "truncation",
    "usage",
    "user",
    "metadata",
]
API_ONLY_KEYS = {"store"}
FAST = (0.02, 0.08)
# Long enough that nothing finishes during a test that needs a running response.
LONG = (30.0, 40.0)

# Event type -> SDK class, read from the SDK's own union so a new SDK is checked as is.
_EVENT_CLASSES: dict[str, Any] = {
    typing.get_args(cls.model_fields["type"].annotation)[0]: cls
    for cls in typing.get_args(typing.get_args(ResponseStreamEvent)[0])
}


# -- helpers ---------------------------------------------------------------------------


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    """Start simulators; all are stopped (threads joined) at teardown."""
    started: list[Simulator] = []

    def make(**kwargs: Any) -> Simulator:
        kwargs.setdefault("seed", 1)
        kwargs.setdefault("durations", FAST)
        kwargs.setdefault("poll_after_ms", 20)
        sim = Simulator(**kwargs).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
        assert sim.internal_errors == []
    leftover = [t.name for t in threading.enumerate() if t.name.startswith("bgwatch-sim") and t.is_alive()]
    assert leftover == []


@pytest.fixture
def make_client() -> Iterator[Callable[..., OpenAI]]:
    clients: list[OpenAI] = []

    def make(sim: Simulator, max_retries: int = 0, **kwargs: Any) -> OpenAI:
        kwargs.setdefault("base_url", sim.base_url)
        client = OpenAI(api_key="sk-test", max_retries=max_retries, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def wait_terminal(client: OpenAI, response_id: str, timeout: float = 5.0) -> Response:
    deadline = time.monotonic() + timeout
    while True:
        r = client.responses.retrieve(response_id)
        if r.status in TERMINAL:
            return r
        assert time.monotonic() < deadline, f"{response_id} still {r.status}"
        time.sleep(0.003)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.003)


class Raw:
    """One keep-alive HTTP/1.1 connection, for what the SDK hides (headers, bytes)."""

    def __init__(self, sim: Simulator) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)

    def __call__(
        self, method: str, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        self.conn.request(method, path, body=data, headers=hdrs)
        resp = self.conn.getresponse()
        return resp.status, resp.headers, resp.read()

    def close(self) -> None:
        self.conn.close()


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def check_response_body(body: dict[str, Any]) -> Response:
    """The body is a Response the SDK validates strictly: every key known, none missing,
    keys in the live API's order."""
    assert list(body) == KEY_ORDER
    # The live API sends "store"; this SDK's Response does not model it.
    assert set(body) - set(Response.model_fields) <= API_ONLY_KEYS
    required = {name for name, f in Response.model_fields.items() if f.is_required()}
    assert required <= set(body)
    parsed = Response.model_validate(body)
    assert set(parsed.model_extra or {}) <= API_ONLY_KEYS
    assert re.fullmatch(r"resp_[0-9a-f]{48}", parsed.id)
    assert (parsed.completed_at is not None) == (parsed.status in TERMINAL)
    # Whole seconds, as the live API sends them; usage on every terminal body (what was spent).
    assert type(body["created_at"]) is int and type(body["completed_at"]) in (int, type(None))
    assert (parsed.usage is not None) == (parsed.status in TERMINAL)
    return parsed


def check_event(event_type: str, data: dict[str, Any]) -> Any:
    """The event is exactly one of the SDK's stream event types."""
    assert data["type"] == event_type
    cls = _EVENT_CLASSES[event_type]
    event = cls.model_validate(data)
    assert not event.model_extra
    if "response" in data:
        check_response_body(data["response"])
    return event


# -- response bodies and the lifecycle -------------------------------------------------


def test_bodies_parse_with_the_sdk_and_carry_the_headers(make_sim, make_client) -> None:
    sim = make_sim(mix="completed=1,failed=1,incomplete=1,cancelled=1")
    client = make_client(sim)
    raw = client.responses.with_raw_response.create(model="gpt-4o-mini", input="hi", background=True)
    created = raw.parse()
    assert created.status in ("queued", "in_progress")
    assert raw.headers["openai-poll-after-ms"] == "20"
    assert re.fullmatch(r"req_[0-9a-f]{32}", raw.headers["x-request-id"])
    assert raw.headers["content-length"] == str(len(raw.http_response.content))
    check_response_body(raw.http_response.json())

    statuses = set()
    for i in range(12):
        forced = ["completed", "failed:server_error", "incomplete:max_output_tokens", "cancelled"][i % 4]
        r = client.responses.create(model="m", input="x", background=True, metadata={"bgwatch_outcome": forced})
        final = wait_terminal(client, r.id)
        raw_final = client.responses.with_raw_response.retrieve(r.id)
        body = raw_final.http_response.json()
        check_response_body(body)
        statuses.add(final.status)
        if final.status == "completed":
            assert final.output_text and body["usage"]["output_tokens"] > 0
        if final.status == "failed":
            assert final.error is not None and final.error.code == "server_error" and final.error.message
        if final.status == "incomplete":
            assert final.incomplete_details is not None
            assert final.incomplete_details.reason == "max_output_tokens"
        assert final.completed_at is not None and final.completed_at >= final.created_at
    assert statuses == set(TERMINAL)


def test_a_response_walks_queued_in_progress_terminal(make_sim, make_client) -> None:
    sim = make_sim(durations=(0.05, 0.4))
    client = make_client(sim)
    walks = []
    for _ in range(5):
        r = client.responses.create(model="m", input="x", background=True)
        seen = [r.status]
        deadline = time.monotonic() + 5
        while seen[-1] not in TERMINAL:
            assert time.monotonic() < deadline
            status = client.responses.retrieve(r.id).status
            if status != seen[-1]:
                seen.append(status)
        walks.append(seen)
    order = ["queued", "in_progress", "terminal"]
    for walk in walks:
        ranks = [order.index(s if s in order else "terminal") for s in walk]
        assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
        assert walk[-1] in TERMINAL
    assert all(w[0] == "queued" for w in walks)
    assert any("in_progress" in w for w in walks)


def test_foreground_create_returns_the_terminal_response(make_sim, make_client) -> None:
    sim = make_sim(durations=LONG)
    client = make_client(sim)
    r = client.responses.create(model="m", input="x")
    assert r.status in TERMINAL and r.background is False
    assert sim.ledger()[r.id].status == r.status
    with pytest.raises(openai.BadRequestError):
        client.responses.retrieve(r.id, stream=True)


def test_same_seed_same_outcomes_and_the_mix_is_honoured(make_sim, make_client) -> None:
    def run(seed: int, n: int = 40) -> list[tuple[str, str | None, str | None]]:
        sim = make_sim(seed=seed, mix="completed=1,failed=1,incomplete=1,cancelled=1")
        client = make_client(sim)
        ids = [client.responses.create(model="m", input="x").id for _ in range(n)]
        outcomes = sim.outcomes()
        return [(outcomes[i].status, outcomes[i].code, outcomes[i].reason) for i in ids]

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c
    assert {s for s, _, _ in a} == set(TERMINAL)

    # Every code the installed SDK knows, plus the unknown ones, and nothing else.
    sim = make_sim(seed=3, mix=Mix.parse("failed=1"))
    client = make_client(sim)
    codes = set()
    for _ in range(300):
        r = client.responses.create(model="m", input="x")
        assert r.status == "failed" and r.error is not None
        codes.add(r.error.code)
    assert codes == set(sdk_error_codes()) | {"model_overloaded_v2"}
    assert len(sdk_error_codes()) >= 10

    last = sdk_incomplete_reasons()[-1]  # "steered" on openai 3.x, absent from 2.x
    sim = make_sim(seed=3, mix=Mix.parse(f"incomplete=1,reasons=content_filter|{last}"))
    client = make_client(sim)
    reasons = {client.responses.create(model="m", input="x").incomplete_details.reason for _ in range(30)}
    assert reasons == {"content_filter", last}


def test_mix_parse() -> None:
    m = Mix.parse("completed=60,failed=25,incomplete=10,cancelled=5")
    assert m.weights() == (60, 25, 10, 5)
    assert Mix.parse("failed=1").weights() == (0, 1, 0, 0)
    assert Mix.parse("").weights() == Mix().weights()
    m = Mix.parse("failed=1,codes=server_error|rate_limit_exceeded,unknown=")
    assert m.failure_codes() == ("server_error", "rate_limit_exceeded")
    assert Mix.parse("failed=1,unknown=").failure_codes() == sdk_error_codes()
    assert {"max_output_tokens", "content_filter"} <= set(sdk_incomplete_reasons())
    for bad in ("completed", "bogus=1", "failed=x", "failed=-1", "completed=0"):
        with pytest.raises(ValueError):
            Mix.parse(bad)


def test_an_unknown_error_code_reaches_the_client(make_sim, make_client) -> None:
    sim = make_sim(mix=Mix(completed=0, failed=1, incomplete=0, cancelled=0, codes=("model_overloaded_v2",)))
    client = make_client(sim)
    r = wait_terminal(client, client.responses.create(model="m", input="x", background=True).id)
    assert r.status == "failed" and r.error is not None
    assert r.error.code == "model_overloaded_v2"  # type: ignore[comparison-overlap]


# -- streaming ---------------------------------------------------------------------------


@pytest.mark.parametrize("background", [True, False])
def test_stream_create_yields_sdk_events_ending_in_the_terminal_event(make_sim, make_client, background) -> None:
    sim = make_sim(stream_error_events=True)
    client = make_client(sim)
    expected_last = {
        "completed": "response.completed",
        "failed:server_error": "response.failed",
        "incomplete:content_filter": "response.incomplete",
        "cancelled": "response.incomplete",
    }
    for forced, last_type in expected_last.items():
        stream = client.responses.create(
            model="m", input="x", stream=True, background=background, metadata={"bgwatch_outcome": forced}
        )
        events = list(stream)
        for e in events:
            assert isinstance(e, _EVENT_CLASSES[e.type])
        assert [e.sequence_number for e in events] == list(range(len(events)))
        types = [e.type for e in events]
        assert types[0] == "response.created"
        assert ("response.queued" in types) == background
        assert "response.in_progress" in types
        assert types[-1] == last_type
        final = events[-1].response  # type: ignore[union-attr]
        assert final.status == forced.split(":")[0]
        assert sim.ledger()[final.id].status == final.status
        assert sim.seen()[final.id] == final.status
        if forced == "completed":
            deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")  # type: ignore[union-attr]
            assert deltas == final.output_text
        if forced.startswith("failed"):
            assert types[-2] == "error"


def test_raw_sse_events_validate_strictly(make_sim) -> None:
    sim = make_sim(stream_error_events=True)
    raw = Raw(sim)
    try:
        for forced in ("completed", "failed:invalid_prompt", "incomplete:max_output_tokens", "cancelled"):
            status, headers, body = raw(
                "POST",
                "/v1/responses",
                {
                    "model": "m",
                    "input": "x",
                    "stream": True,
                    "background": True,
                    "metadata": {"bgwatch_outcome": forced},
                },
            )
            assert status == 200 and headers["content-type"].startswith("text/event-stream")
            assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])
            events = parse_sse(body)
            for seq, (event_type, data) in enumerate(events):
                assert data["sequence_number"] == seq
                check_event(event_type, data)
            assert events[-1][1]["response"]["status"] == forced.split(":")[0]
    finally:
        raw.close()


def test_retrieve_stream_replays_after_starting_after(make_sim, make_client) -> None:
    sim = make_sim()
    client = make_client(sim)
    r = client.responses.create(model="m", input="x", background=True, metadata={"bgwatch_outcome": "completed"})
    wait_terminal(client, r.id)
    full = list(client.responses.retrieve(r.id, stream=True))
    assert [e.sequence_number for e in full] == list(range(len(full)))
    assert full[-1].type == "response.completed"
    tail = list(client.responses.retrieve(r.id, stream=True, starting_after=4))
    assert [e.sequence_number for e in tail] == list(range(5, len(full)))
    assert [e.model_dump() for e in tail] == [e.model_dump() for e in full[5:]]
    assert list(client.responses.retrieve(r.id, stream=True, starting_after=len(full) + 5)) == []


def test_retrieve_stream_goes_live_until_the_terminal_event(make_sim, make_client) -> None:
    sim = make_sim(durations=(0.1, 0.3))
    client = make_client(sim)
    r = client.responses.create(model="m", input="x", background=True)
    events = list(client.responses.retrieve(r.id, stream=True, starting_after=0))
    assert events[0].sequence_number == 1
    assert events[-1].type in ("response.completed", "response.failed", "response.incomplete")
    assert events[-1].response.status == sim.ledger()[r.id].status  # type: ignore[union-attr]


def test_sdk_stream_helper_with_response_id(make_sim, make_client) -> None:
    sim = make_sim()
    client = make_client(sim)
    r = client.responses.create(model="m", input="x", background=True, metadata={"bgwatch_outcome": "completed"})
    with client.responses.stream(response_id=r.id) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.id == r.id and final.status == "completed" and final.output_text
    assert events[-1].type == "response.completed"
    with client.responses.stream(response_id=r.id, starting_after=3) as stream:
        assert [e.sequence_number for e in stream] == [e.sequence_number for e in events[4:]]
    with client.responses.stream(model="m", input="x", background=True) as stream:
        assert stream.until_done() is stream


def test_async_client_streams_and_polls(make_sim) -> None:
    sim = make_sim()

    async def main() -> None:
        async with AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0) as client:
            stream = await client.responses.create(model="m", input="x", stream=True, background=True)
            types = [e.type async for e in stream]
            assert types[0] == "response.created" and types[-1].startswith("response.")
            r = await client.responses.create(model="m", input="x", background=True)
            while r.status not in TERMINAL:
                await asyncio.sleep(0.003)
                r = await client.responses.retrieve(r.id)
            assert sim.ledger()[r.id].status == r.status

    asyncio.run(main())


# -- cancel ------------------------------------------------------------------------------


def test_cancel_running_response_and_400_on_terminal(make_sim, make_client) -> None:
    sim = make_sim(durations=LONG)
    client = make_client(sim)
    r = client.responses.create(model="m", input="x", background=True, metadata={"bgwatch_outcome": "completed"})
    before = time.time()
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(r.id).status == "cancelled"
    outcome = sim.ledger()[r.id]
    assert outcome == Outcome(status="cancelled", model="m")
    assert outcome.finished_at is not None and before - 1 <= outcome.finished_at <= time.time() + 1
    assert sim.outcomes()[r.id].status == "cancelled"

    with pytest.raises(openai.BadRequestError) as excinfo:
        client.responses.cancel(r.id)
    body = excinfo.value.body
    assert isinstance(body, dict) and "cancel" in body["message"] and body["type"] == "invalid_request_error"

    fg = client.responses.create(model="m", input="x")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(fg.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.cancel("resp_" + "0" * 48)


def test_cancel_ends_a_live_stream_with_a_cancelled_event(make_sim, make_client) -> None:
    sim = make_sim(durations=LONG)
    client = make_client(sim)
    r = client.responses.create(model="m", input="x", background=True)
    stream = client.responses.retrieve(r.id, stream=True)
    first = next(iter(stream))
    assert first.type == "response.created"
    wait_until(lambda: sim.seen().get(r.id) == "queued")
    client.responses.cancel(r.id)
    rest = list(stream)
    assert rest[-1].type == "response.incomplete"
    assert rest[-1].response.status == "cancelled"  # type: ignore[union-attr]
    assert rest[-1].response.incomplete_details is None  # type: ignore[union-attr]

    # The replay numbers the events exactly as the live stream did.
    replay = list(client.responses.retrieve(r.id, stream=True))
    assert [(e.sequence_number, e.type) for e in replay] == [(e.sequence_number, e.type) for e in [first, *rest]]


# -- faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["500", "429", "503"])
def test_an_http_error_is_retried_and_does_not_create(make_sim, make_client, fault) -> None:
    sim = make_sim()
    client = make_client(sim, max_retries=2)
    sim.inject(fault, match=r"^POST .*/responses$")
    r = client.responses.create(model="m", input="x", background=True)
    assert sim.request_log.count("POST", "/v1/responses") == 2
    assert sim.request_log.count("POST", "/v1/responses", status=int(fault), fault=fault) == 1
    assert list(sim.outcomes()) == [r.id]

    sim.inject(fault, count=2, match="^GET ")
    wait_terminal(client, r.id)
    assert sim.request_log.count("GET", status=int(fault)) == 2


def test_an_http_error_body_is_openai_shaped(make_sim, make_client) -> None:
    sim = make_sim()
    client = make_client(sim)
    sim.inject("429")
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.responses.create(model="m", input="x", background=True)
    err = excinfo.value
    assert err.code == "rate_limit_exceeded" and err.request_id and err.request_id.startswith("req_")
    assert err.response.headers["x-should-retry"] == "true"
    assert err.response.headers["retry-after-ms"] == "10"
    assert sim.outcomes() == {}
    with pytest.raises(openai.NotFoundError) as not_found:
        client.responses.retrieve("resp_missing")
    assert not_found.value.body == {
        "message": "Response with id 'resp_missing' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": None,
    }


@pytest.mark.parametrize("fault", ["reset", "truncate"])
def test_connection_faults_are_retried_and_change_nothing(make_sim, make_client, fault) -> None:
    sim = make_sim()
    client = make_client(sim)
    sim.inject(fault, match="^POST ")
    with pytest.raises(openai.APIConnectionError):
        client.responses.create(model="m", input="x", background=True)
    assert sim.outcomes() == {}
    assert sim.request_log.count("POST", fault=fault) == 1

    retrying = make_client(sim, max_retries=2)
    sim.inject(fault, match="^POST ")
    r = retrying.responses.create(model="m", input="x", background=True)
    assert list(sim.outcomes()) == [r.id]
    assert sim.request_log.count("POST", "/v1/responses") == 3

    # A faulted poll does not count as the client having seen the response.
    seen_before = sim.seen()[r.id]
    wait_until(lambda: r.id in sim.ledger())
    sim.inject(fault, match="^GET ")
    with pytest.raises(openai.APIConnectionError):
        client.responses.retrieve(r.id)
    assert sim.seen()[r.id] == seen_before
    assert retrying.responses.retrieve(r.id).status == sim.ledger()[r.id].status


def test_truncated_and_reset_streams_change_nothing(make_sim, make_client) -> None:
    sim = make_sim()
    client = make_client(sim)
    for fault in ("truncate", "reset"):
        sim.inject(fault)
        with pytest.raises(STREAM_BROKEN):
            list(client.responses.create(model="m", input="x", stream=True, background=True))
    assert sim.outcomes() == {}


def test_gzip_bodies_decode(make_sim, make_client) -> None:
    sim = make_sim(output_bytes=5000)
    client = make_client(sim)
    r = client.responses.create(model="m", input="x", background=True, metadata={"bgwatch_outcome": "completed"})
    sim.inject("gzip", match="^GET ")
    raw = client.responses.with_raw_response.retrieve(r.id)
    assert raw.headers["content-encoding"] == "gzip"
    assert int(raw.headers["content-length"]) < 5000
    assert raw.parse().id == r.id

    # Every body, SSE included, when asked for.
    zipped = make_sim(gzip_responses=True, output_bytes=5000)
    zclient = make_client(zipped)
    events = list(zclient.responses.create(model="m", input="x", stream=True, background=True))
    assert events[-1].type.startswith("response.")
    done = wait_terminal(zclient, zclient.responses.create(model="m", input="x", background=True).id)
    assert done.status in TERMINAL
    conn = Raw(zipped)
    try:
        status, headers, body = conn("GET", f"/v1/responses/{done.id}", headers={"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert int(headers["content-length"]) == len(body)
        check_response_body(json.loads(gzip.decompress(body)))
        status, headers, body = conn("GET", f"/v1/responses/{done.id}")  # no Accept-Encoding: plain
        assert "content-encoding" not in headers and json.loads(body)["id"] == done.id
    finally:
        conn.close()


def test_slow_delays_the_reply(make_sim, make_client) -> None:
    sim = make_sim(slow_seconds=0.3)
    client = make_client(sim)
    sim.inject("slow")
    start = time.monotonic()
    client.responses.create(model="m", input="x", background=True)
    assert time.monotonic() - start >= 0.3
    assert sim.request_log.count("POST", fault="slow") == 1


def test_cut_takes_effect_and_loses_the_reply(make_sim, make_client) -> None:
    sim = make_sim()
    client = make_client(sim)
    sim.inject("cut", match="^POST ")
    with pytest.raises(openai.APIConnectionError):
        client.responses.create(model="m", input="x", background=True)
    assert len(sim.outcomes()) == 1  # the hazard: a retry would create a second one

    # A cut stream resumes with starting_after and sees every event exactly once.
    sim.inject("cut", match="^POST ")
    got: list[Any] = []
    with pytest.raises(STREAM_BROKEN):
        for event in client.responses.create(
            model="m", input="x", stream=True, background=True, metadata={"bgwatch_outcome": "completed"}
        ):
            got.append(event)
    assert [e.sequence_number for e in got] == [0, 1]
    rid = got[0].response.id
    got += list(client.responses.retrieve(rid, stream=True, starting_after=got[-1].sequence_number))
    assert [e.sequence_number for e in got] == list(range(len(got)))
    assert got[-1].type == "response.completed"


def test_random_faults_never_break_the_ledger(make_sim, make_client) -> None:
    sim = make_sim(faults=Faults(rate=0.3, kinds=("500", "429", "503")), retry_after_ms=1)
    client = make_client(sim, max_retries=20)
    ids = [client.responses.create(model="m", input="x", background=True).id for _ in range(15)]
    finals = {rid: wait_terminal(client, rid) for rid in ids}
    ledger = sim.ledger()
    assert set(sim.outcomes()) == set(ids)
    for rid, r in finals.items():
        assert (r.status, r.error.code if r.error else None) == (ledger[rid].status, ledger[rid].code)
    assert sim.request_log.count(status=500) + sim.request_log.count(status=429) > 0


def test_inject_validates_and_clears(make_sim) -> None:
    sim = make_sim()
    with pytest.raises(ValueError):
        sim.inject("teapot")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Faults(rate=2)
    sim.inject("500", count=3)
    assert sim.clear_faults() == 3


# -- ground truth, paths, neighbours -----------------------------------------------------


def test_ledger_matches_what_concurrent_clients_saw(make_sim) -> None:
    sim = make_sim(durations=(0.01, 0.1))

    async def main() -> dict[str, Response]:
        async with AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0) as client:

            async def one() -> Response:
                r = await client.responses.create(model="m", input="x", background=True)
                while r.status not in TERMINAL:
                    await asyncio.sleep(0.005)
                    r = await client.responses.retrieve(r.id)
                return r

            return {r.id: r for r in await asyncio.gather(*(one() for _ in range(30)))}

    seen = asyncio.run(main())
    ledger = sim.ledger()
    assert set(ledger) == set(seen)
    for rid, r in seen.items():
        outcome = ledger[rid]
        assert outcome.status == r.status
        assert outcome.code == (r.error.code if r.error else None)
        assert outcome.reason == (r.incomplete_details.reason if r.incomplete_details else None)
        assert r.completed_at == int(outcome.finished_at)  # whole seconds, as the live API sends
        assert r.created_at == int(outcome.created_at)
        assert r.usage is not None
        assert (r.usage.input_tokens, r.usage.output_tokens) == (outcome.input_tokens, outcome.output_tokens)
    assert sim.seen() == {rid: r.status for rid, r in seen.items()}


@pytest.mark.parametrize("prefix", ["/openai/v1", "/proxy/abc/v1", ""])
def test_any_path_prefix_works(make_sim, make_client, prefix) -> None:
    sim = make_sim()
    client = make_client(sim, base_url=sim.url + prefix)
    r = client.responses.create(model="m", input="x", background=True)
    assert wait_terminal(client, r.id).status in TERMINAL
    assert list(client.responses.retrieve(r.id, stream=True))[-1].sequence_number > 0
    assert sim.request_log.count("POST", f"{prefix}/responses") == 1


def test_azure_client(make_sim) -> None:
    sim = make_sim()
    client = AzureOpenAI(azure_endpoint=sim.url, api_version="2025-04-01-preview", api_key="k", max_retries=0)
    try:
        r = client.responses.create(model="my-deployment", input="x", background=True)
        deadline = time.monotonic() + 5
        while r.status not in TERMINAL:
            assert time.monotonic() < deadline
            r = client.responses.retrieve(r.id)
        assert sim.request_log.count("POST", "/openai/responses") == 1
        assert sim.ledger()[r.id].model == "my-deployment"
    finally:
        client.close()


def test_neighbouring_endpoints_are_not_responses(make_sim, make_client) -> None:
    sim = make_sim()
    client = make_client(sim)
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])  # base64 on the wire
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 16
    floats = client.embeddings.create(model="e", input="a", encoding_format="float", dimensions=4)
    assert len(floats.data[0].embedding) == 4
    chat = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert chat.object == "chat.completion" and chat.choices[0].message.content

    r = client.responses.create(model="m", input="what is up", background=True)
    items = list(client.responses.input_items.list(r.id))
    assert items[0].type == "message" and items[0].content[0].text == "what is up"  # type: ignore[union-attr]
    count = client.responses.input_tokens.count(model="m", input="hello world")
    assert count.object == "response.input_tokens" and count.input_tokens > 0
    compacted = client.responses.compact(model="m", input="hello")
    assert compacted.object == "response.compaction" and compacted.output[0].type == "compaction"
    assert sim.outcomes().keys() == {r.id}
    with pytest.raises(openai.NotFoundError):
        client.get("/nope", cast_to=object)


def test_keep_alive_and_content_length(make_sim) -> None:
    sim = make_sim()
    conn = Raw(sim)
    try:
        status, headers, body = conn("POST", "/v1/responses", {"model": "m", "input": "x", "background": True})
        assert status == 200 and int(headers["content-length"]) == len(body)
        rid = json.loads(body)["id"]
        for path in (f"/v1/responses/{rid}", "/v1/responses/resp_unknown", "/v1/nothing"):
            status, headers, body = conn("GET", path)  # same socket each time
            assert int(headers["content-length"]) == len(body)
            assert headers["x-request-id"].startswith("req_")
            assert "error" in json.loads(body) or status == 200
        status, _, body = conn("POST", "/v1/responses", {"input": "no model"})
        assert status == 400 and json.loads(body)["error"]["param"] == "model"
    finally:
        conn.close()
    assert sim.request_log.count("GET") == 3 and len(sim.request_log) == 5


def test_large_bodies(make_sim, make_client) -> None:
    sim = make_sim(output_bytes=1_000_000, durations=(0.0, 0.0))
    client = make_client(sim)
    r = client.responses.create(model="m", input="x", background=True, metadata={"bgwatch_outcome": "completed"})
    raw = client.responses.with_raw_response.retrieve(r.id)
    assert 1_000_000 < len(raw.http_response.content) < 1_100_000
    assert len(raw.parse().output_text) == 1_000_000


def test_cli_serves_until_interrupted() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgwatch.simulator", "--seed", "3", "--mix", "failed=1", "--durations", "0,0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
        with OpenAI(base_url=base_url, api_key="sk-test", max_retries=0) as client:
            assert client.responses.create(model="m", input="x").status == "failed"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_reset_is_an_abortive_close(make_sim) -> None:
    sim = make_sim()
    sim.inject("reset")
    conn = Raw(sim)
    try:
        with pytest.raises(ConnectionResetError):
            conn("GET", "/v1/responses/resp_x")
    finally:
        conn.close()
    assert sim.request_log.count("GET", status=0, fault="reset") == 1


def test_stop_closes_open_connections_and_live_streams() -> None:
    sim = Simulator(seed=1, durations=LONG).start()
    client = OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    idle = Raw(sim)
    try:
        idle("GET", "/v1/responses/resp_x")  # leaves an idle keep-alive connection
        r = client.responses.create(model="m", input="x", background=True)
        stream = client.responses.retrieve(r.id, stream=True)
        assert next(iter(stream)).type == "response.created"
        start = time.monotonic()
        sim.stop()
        assert time.monotonic() - start < 3
        alive = [t.name for t in threading.enumerate() if t.name.startswith("bgwatch-sim") and t.is_alive()]
        assert alive == []
        with pytest.raises(STREAM_BROKEN):
            list(stream)
    finally:
        idle.close()
        client.close()
        sim.stop()
