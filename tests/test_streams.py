"""Streamed background responses: observed as they pass, never buffered (issue 4).

Three layers of evidence:

* recorded streams served by an inner transport in any chunking, through the real transport
  and the real SDK: the client receives the very same chunks, bgwatch counts the same, raise
  mode cuts exactly before the failing event;
* the real SDK against the simulator over real sockets (sync and async, httpx2 and httpx):
  create/retrieve/stream helpers, resume and replay, raise mode, early close, resets, gzip;
* the "done when" check: one seeded workload polled and streamed gives identical metrics,
  equal to the simulator's ledger.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch import _sse, _streams
from bgwatch._classify import Observation
from bgwatch._sse import SSEParser
from bgwatch._tracker import Transition
from bgwatch.metrics import ResponseLabels
from bgwatch.simulator import Mix, Simulator
from bgwatch.tracing import NOOP_CALL_SPAN
from bgwatch.transports import Hook, raise_mode_supported

from .conftest import LIBRARIES, answering, client_class, httpx, httpx2, response_body, sample, total, transport_class


@pytest.fixture(autouse=True)
def _genai_latest_experimental(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the experimental GenAI names (test_instrumentation covers the default)."""
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")


MODEL = "gpt-4.1-2025-04-14"
needs_raise_mode = pytest.mark.skipif(not raise_mode_supported(), reason="raise mode needs openai >= 2.31")


# -- recorded streams ------------------------------------------------------------------------


def sse(event: str | None, data: dict[str, Any], newline: bytes = b"\n") -> bytes:
    """One event as the API writes it (``event:`` line, one ``data:`` line, blank line)."""
    head = b"event: " + event.encode() + newline if event is not None else b""
    return head + b"data: " + json.dumps(data, separators=(",", ":")).encode() + newline + newline


def recorded_stream(
    final: str = "failed",
    *,
    response_id: str = "resp_recorded",
    code: str | None = "server_error",
    error_code: str | None = "",
    reason: str | None = None,
    deltas: int = 6,
    error_event: bool = True,
    event_lines: bool = True,
    newline: bytes = b"\n",
    instructions: str | None = None,
) -> tuple[bytes, int]:
    """A realistic background stream and the offset where its final event starts.

    ``final`` is the terminal status; a cancelled response ends with ``response.incomplete``
    whose response says ``cancelled`` (the SDK has no ``response.cancelled`` event).
    """
    seq = iter(range(1000))

    def lifecycle(kind: str, status: str) -> bytes:
        body = response_body(response_id, status, code=code, reason=reason, model=MODEL)
        if instructions is not None:
            body["instructions"] = instructions
        data = {"type": kind, "sequence_number": next(seq), "response": body}
        return sse(kind if event_lines else None, data, newline)

    def other(kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": next(seq), **fields}
        return sse(kind if event_lines else None, data, newline)

    parts = [
        lifecycle("response.created", "queued"),
        lifecycle("response.queued", "queued"),
        b": keep-alive" + newline + newline,
        lifecycle("response.in_progress", "in_progress"),
        other(
            "response.output_item.added",
            output_index=0,
            item={"id": "msg_1", "type": "message", "status": "in_progress", "content": [], "role": "assistant"},
        ),
    ]
    loc = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    parts += [
        other("response.output_text.delta", **loc, delta=f"chunk {n} ünïcødé ", logprobs=[]) for n in range(deltas)
    ]
    if final == "failed" and error_event:
        code_sent = code if error_code == "" else error_code
        parts.append(other("error", code=code_sent, message="The model failed (recorded).", param=None))
    start = len(b"".join(parts))
    kind = {"cancelled": "response.incomplete"}.get(final, f"response.{final}")
    parts.append(lifecycle(kind, final))
    return b"".join(parts), start


def one_byte_chunks(body: bytes) -> list[bytes]:
    return [body[i : i + 1] for i in range(len(body))]


def random_chunks(body: bytes, rng: random.Random, largest: int = 200) -> list[bytes]:
    chunks, i = [], 0
    while i < len(body):
        size = rng.randint(1, largest)
        chunks.append(body[i : i + size])
        i += size
    return chunks


class Recorder:
    """A watcher sink that keeps what it was told, to compare runs observation by observation."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, str | None, str | None, str | None]] = []
        self.errors: list[str] = []

    def observed(
        self, observation: Observation, transition: Transition | None, labels: ResponseLabels, duration: float | None
    ) -> None:
        o = observation
        self.seen.append((o.call, o.response_id, o.status, o.error_code, o.incomplete_reason, o.model))

    def adjust_in_flight(self, delta: int) -> None:
        pass

    def abandoned(self, models: object) -> None:
        pass

    def forked(self, in_flight_forgotten: int) -> None:
        pass

    def internal_error(self, stage: str) -> None:
        self.errors.append(stage)


def recording_watcher() -> tuple[bgwatch.Watcher, Recorder]:
    recorder = Recorder()
    return bgwatch.Watcher(prometheus=False, sinks=[recorder]), recorder


def module_of(library: str) -> Any:
    module = httpx2 if library == "httpx2" else httpx
    assert module is not None
    return module


class Served:
    """Inner transports (sync and async) answering every request with one recorded stream."""

    def __init__(self, library: str, chunks: list[bytes], *, gzip: bool = False, encoding: str | None = None) -> None:
        self.module = module_of(library)
        self.chunks = chunks
        self.headers = {"content-type": "text/event-stream; charset=utf-8", "x-request-id": "req_recorded"}
        if gzip:
            self.headers["content-encoding"] = "gzip"
        if encoding:
            self.headers["content-encoding"] = encoding
        self.streams: list[Any] = []
        self.requests: list[str] = []

    def _stream(self, asynchronous: bool) -> Any:
        module, chunks = self.module, self.chunks

        class Source(module.AsyncByteStream if asynchronous else module.SyncByteStream):  # type: ignore[misc,name-defined]
            """Hands out the chunks one per pull, counting pulls, remembering close."""

            def __init__(self) -> None:
                self.pulled = 0
                self.closed = False

            def __iter__(self) -> Iterator[bytes]:
                for chunk in chunks:
                    self.pulled += 1
                    yield chunk

            async def __aiter__(self) -> AsyncIterator[bytes]:
                for chunk in chunks:
                    self.pulled += 1
                    yield chunk

            def close(self) -> None:
                self.closed = True

            async def aclose(self) -> None:
                self.closed = True

        stream = Source()
        self.streams.append(stream)
        return stream

    def _response(self, request: Any, asynchronous: bool) -> Any:
        self.requests.append(f"{request.method} {request.url.path}")
        return self.module.Response(200, headers=self.headers, stream=self._stream(asynchronous), request=request)

    def transport(self, asynchronous: bool = False) -> Any:
        return answering(self.module, asynchronous, lambda request: self._response(request, asynchronous))


def sdk_client(
    library: str, inner: Any, watcher: bgwatch.Watcher, *, raise_on: tuple[str, ...] = (), asynchronous: bool = False
) -> Any:
    transport = transport_class(library, asynchronous)(inner, watcher=watcher, raise_on=raise_on)
    http = client_class(library, asynchronous)(transport=transport)
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0)


def sdk_events(client: Any, *, resumed: bool = False) -> tuple[list[str], BaseException | None]:
    """Iterate a streamed create (or a resumed retrieve) through the SDK: event types, exception."""
    types: list[str] = []
    try:
        if resumed:
            stream = client.responses.retrieve("resp_recorded", stream=True, starting_after=0)
        else:
            stream = client.responses.create(model=MODEL, input="hi", background=True, stream=True)
        for event in stream:
            types.append(event.type)
    except Exception as exc:
        return types, exc
    return types, None


async def async_sdk_events(client: Any) -> tuple[list[str], BaseException | None]:
    types: list[str] = []
    try:
        stream = await client.responses.create(model=MODEL, input="hi", background=True, stream=True)
        async for event in stream:
            types.append(event.type)
    except Exception as exc:
        return types, exc
    return types, None


def plain_sdk_events(library: str, body: bytes) -> list[str]:
    """What the SDK yields for ``body`` without bgwatch: the reference."""
    served = Served(library, [body])
    http = client_class(library)(transport=served.transport())
    client = openai.OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0)
    return [event.type for event in client.responses.create(model=MODEL, input="hi", background=True, stream=True)]


def raw_chunks(
    library: str, served: Served, watcher: bgwatch.Watcher, raise_on: tuple[str, ...] = (), *, decoded: bool = True
) -> tuple[list[bytes], BaseException | None]:
    """The chunks an HTTP client reads through bgwatch's transport: ``iter_bytes()``, as the SDK
    iterates them, or (``decoded=False``, to see a compressed stream's cut) ``iter_raw()``."""
    transport = transport_class(library)(served.transport(), watcher=watcher, raise_on=raise_on)
    got: list[bytes] = []
    with (
        client_class(library)(transport=transport) as http,
        http.stream("POST", "http://api.test/v1/responses", json={"stream": True}) as response,
    ):
        try:
            for chunk in response.iter_bytes() if decoded else response.iter_raw():
                got.append(chunk)
        except bgwatch.BackgroundResponseError as exc:
            return got, exc
    return got, None


# -- byte identity and chunking ----------------------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_sdk_gets_every_chunk_unchanged_and_counts_do_not_depend_on_chunking(library: str, asynchronous: bool) -> None:
    body, _ = recorded_stream("failed", code="rate_limit_exceeded")
    reference = plain_sdk_events(library, body)
    assert reference[-2:] == ["error", "response.failed"]
    rng = random.Random(4)
    expected: list[Any] | None = None
    for chunks in ([body], one_byte_chunks(body), random_chunks(body, rng), random_chunks(body, rng, 2000)):
        watcher, recorder = recording_watcher()
        served = Served(library, chunks)
        client = sdk_client(library, served.transport(asynchronous), watcher, asynchronous=asynchronous)
        types, error = asyncio.run(async_sdk_events(client)) if asynchronous else sdk_events(client)
        assert error is None
        assert types == reference
        assert served.streams[0].pulled == len(chunks) and served.streams[0].closed
        assert recorder.errors == []
        expected = expected or recorder.seen
        assert recorder.seen == expected
    assert expected is not None
    assert [status for _, _, status, *_ in expected] == ["queued", "queued", "in_progress", "failed"]
    assert expected[-1] == ("create", "resp_recorded", "failed", "rate_limit_exceeded", None, MODEL)


def test_every_split_point_passes_the_same_bytes_and_counts_the_same(library: str) -> None:
    body, _ = recorded_stream("completed", deltas=2)
    watcher, recorder = recording_watcher()
    served = Served(library, [body])
    assert raw_chunks(library, served, watcher) == ([body], None)
    expected = list(recorder.seen)
    assert len(expected) == 4
    for cut in range(1, len(body)):
        recorder.seen.clear()
        served.chunks = [body[:cut], body[cut:]]
        assert raw_chunks(library, served, watcher) == (served.chunks, None)
        assert recorder.seen == expected, cut
    assert recorder.errors == []


@needs_raise_mode
def test_every_split_point_in_raise_mode_stops_right_before_the_failing_event(library: str) -> None:
    body, failure = recorded_stream("failed", deltas=2)
    watcher, recorder = recording_watcher()
    served = Served(library, [body])
    for cut in range(len(body)):
        recorder.seen.clear()
        served.chunks = [body[:cut], body[cut:]] if cut else [body]
        got, error = raw_chunks(library, served, watcher, raise_on=("failed",))
        assert isinstance(error, bgwatch.ServerError), cut
        if cut <= failure:  # the chunk holding the failing event is cut right after the event before it
            assert got == [c for c in (body[:cut], body[cut:failure]) if c], cut
        else:  # a chunk that only starts the failing event may pass; the client never completes it
            delivered = b"".join(got)
            assert body.startswith(delivered) and len(delivered) < len(body), cut
            assert events_of(delivered) == events_of(body[:failure]), cut
        assert recorder.seen[-1][2] == "failed" and len(recorder.seen) == 4
        assert served.streams[-1].closed


@needs_raise_mode
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("chunking", ["whole", "bytes", "random"])
def test_raise_mode_through_the_sdk_yields_every_event_before_the_failure(
    library: str, asynchronous: bool, chunking: str
) -> None:
    body, _ = recorded_stream("failed", code="rate_limit_exceeded")
    reference = plain_sdk_events(library, body)
    chunks = {"whole": [body], "bytes": one_byte_chunks(body), "random": random_chunks(body, random.Random(9))}[
        chunking
    ]
    watcher, recorder = recording_watcher()
    served = Served(library, chunks)
    client = sdk_client(
        library, served.transport(asynchronous), watcher, raise_on=("failed",), asynchronous=asynchronous
    )
    types, error = asyncio.run(async_sdk_events(client)) if asynchronous else sdk_events(client)
    assert types == reference[:-1]  # everything up to the error event, not response.failed
    assert isinstance(error, bgwatch.RateLimitExceeded)
    assert (error.code, error.response_id, error.request_id) == ("rate_limit_exceeded", "resp_recorded", "req_recorded")
    assert error.body is not None and error.body["status"] == "failed"
    assert served.requests == ["POST /v1/responses"]  # exactly one POST, no retry
    assert served.streams[0].closed
    assert [s for _, _, s, *_ in recorder.seen] == ["queued", "queued", "in_progress", "failed"]


line_endings = st.sampled_from([b"\n", b"\r\n", b"\r"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    final=st.sampled_from(["completed", "failed", "incomplete", "cancelled"]),
    newline=line_endings,
    event_lines=st.booleans(),
    raising=st.booleans(),
    data=st.data(),
)
def test_any_split_gives_the_same_observations(
    final: str, newline: bytes, event_lines: bool, raising: bool, data: st.DataObject
) -> None:
    reason = "max_output_tokens" if final == "incomplete" else None
    body, failure = recorded_stream(final, reason=reason, newline=newline, event_lines=event_lines, deltas=3)
    module = httpx2 if httpx2 is not None else httpx
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(body) - 1), max_size=12))))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    raise_on = ("failed", "incomplete", "cancelled") if raising and raise_mode_supported() else ()

    def run(pieces: list[bytes]) -> tuple[list[Any], list[bytes], BaseException | None]:
        watcher, recorder = recording_watcher()
        hook = Hook(watcher, raise_on)
        observer = _streams.StreamObserver(hook, "create", NOOP_CALL_SPAN, {})
        inner = _ClosingList(pieces)
        stream = _streams._stream_class(module, False)(inner, observer)
        got: list[bytes] = []
        error = None
        try:
            for chunk in stream:
                got.append(chunk)
        except bgwatch.BackgroundResponseError as exc:
            error = exc
        assert recorder.errors == [] and inner.closed and not observer.observing
        return recorder.seen, got, error

    expected, _, expected_error = run([body])
    seen, got, error = run(chunks)
    assert seen == expected
    assert [s for _, _, s, *_ in seen][-1] == final
    if raise_on and final != "completed":
        assert type(error) is type(expected_error) and error is not None
        # The caller got every event before the failing one, and not that one.
        delivered = b"".join(got)
        assert body.startswith(delivered) and len(delivered) >= failure
        assert events_of(delivered) == events_of(body[:failure])
    else:
        assert error is None
        assert got == chunks


def events_of(data: bytes) -> list[Any]:
    """The events a client dispatches from ``data`` (no end-of-stream flush)."""
    return SSEParser().feed(data)


class _ClosingList:
    """An inner stream over a list, remembering close()."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


fragments = st.sampled_from(
    [
        b"data: x",
        b"data:",
        b"data",
        b"event: e",
        b": c",
        b"id: 1",
        b"id:",
        b"retry: 5",
        b"retry: x",
        b"dat",
        b"a: y",
        b"\n",
        b"\r",
        b"\r\n",
        b"\r\r\n",
        b"x",
        b"\xef\xbb\xbf",
    ]
)


def check_dispatch_positions(chunks: list[bytes], sdk: bool, split: bool, window: int | None) -> None:
    """``feed(chunk, dispatched_at)`` names each event's line ending in ``chunk``.

    Checked by feeding a replica (same earlier chunks, so also openai 2.x's block split) the
    chunk up to the start of that line ending, which must not complete the event, and up to its
    end, which must. ``window`` replaces the parser's window size (None: keep it).
    """

    def parser() -> SSEParser:
        return SSEParser(sdk_compatible=sdk, split_crlf_after_block=split)

    saved = _sse._WINDOW
    _sse._WINDOW = window or saved
    try:
        tested = parser()
        for number, chunk in enumerate(chunks):
            dispatched_at: list[int] = []
            events = tested.feed(chunk, dispatched_at)
            assert len(dispatched_at) == len(events)
            assert dispatched_at == sorted(dispatched_at)
            endings = _sse.line_endings(chunk)
            for index, at in enumerate(dispatched_at):
                start, end = endings[at]
                for size, count in ((start, index), (end, index + 1)):
                    replica = parser()
                    for earlier in chunks[:number]:
                        replica.feed(earlier)
                    assert replica.feed(chunk[:size]) == events[:count]
    finally:
        _sse._WINDOW = saved


MODES = [(False, False), (True, False), (True, True)]


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(fragments, max_size=40),
    mode=st.sampled_from(MODES),
    window=st.sampled_from([None, 1, 2, 3, 7]),
    data=st.data(),
)
def test_the_parser_says_at_which_line_ending_it_dispatched(
    parts: list[bytes], mode: tuple[bool, bool], window: int | None, data: st.DataObject
) -> None:
    """Arbitrary SSE byte soup, any chunking, any mode, small windows."""
    stream = b"".join(parts)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=6))))
    chunks = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)]) if stream[a:b]]
    check_dispatch_positions(chunks, *mode, window)


@pytest.mark.parametrize(
    "stream",
    [
        b"data: x\r\n\ndata: y\r\n\r\nid: 1\rdata: z\r\r\r\n\n\r",
        b"id: 7\ndata: a\n\n\n\r\n\r\rretry: 1\r\n\r\nevent: e\r\r",
    ],
)
def test_dispatch_positions_with_crlfs_across_every_window_and_chunk_boundary(stream: bytes) -> None:
    """Every window size and every split in two: CRLFs cut between windows and between chunks."""
    for window, cut, mode in itertools.product(range(1, 12), range(len(stream) + 1), MODES):
        chunks = [piece for piece in (stream[:cut], stream[cut:]) if piece]
        check_dispatch_positions(chunks, *mode, window)


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_regression_persisting_id_and_extra_blank_line_after_the_failing_event(library: str, compressed: bool) -> None:
    """Raise mode: ``id:`` before the failing event and a blank line more after it, in one chunk
    with an earlier event: the SDK dispatches a dataless event at the extra blank line. The cut
    still falls right after the earlier event: the caller gets it, then the typed exception."""
    import zlib

    delta = json.dumps({"type": "response.output_text.delta", "delta": "hi", "sequence_number": 0})
    response = response_body("resp_cut", "failed", code="server_error", model=MODEL)
    failed = json.dumps({"type": "response.failed", "sequence_number": 1, "response": response})
    body = f"data: {delta}\n\nid: 7\ndata: {failed}\n\n\n".encode()
    start, limit = body.index(b"id: 7"), len(body) - 3
    served = Served(library, [body])
    if compressed:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        served = Served(library, [compressor.compress(body) + compressor.flush()], gzip=True)
    watcher, recorder = recording_watcher()
    got, error = raw_chunks(library, served, watcher, raise_on=("failed",), decoded=False)
    passed = zlib.decompressobj(31).decompress(b"".join(got)) if compressed else b"".join(got)
    assert body.startswith(passed)
    assert len(passed) == start if not compressed else start <= len(passed) <= limit
    assert isinstance(error, bgwatch.ServerError)
    assert [s[2] for s in recorder.seen] == ["failed"]
    assert recorder.errors == []


def test_regression_large_instructions_before_model_keep_the_model(library: str) -> None:
    """200 KiB of instructions before ``model`` (past the old 64 KiB prefix): the model label is the SDK's."""
    body, _ = recorded_stream("failed", instructions="x" * (200 * 1024), deltas=1)
    watcher, recorder = recording_watcher()
    got, _ = raw_chunks(library, Served(library, random_chunks(body, random.Random(1), 9000)), watcher)
    assert b"".join(got) == body
    assert recorder.seen[-1] == ("create", "resp_recorded", "failed", "server_error", None, MODEL)


def test_an_event_past_the_memory_bound_stops_observing_and_is_counted(
    library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event larger than MAX_EVENT_DATA is not guessed at: nothing from it on, one internal error."""
    monkeypatch.setattr(_streams, "MAX_EVENT_DATA", 64 * 1024)
    body, _ = recorded_stream("failed", instructions="x" * (100 * 1024), deltas=1)
    registry = CollectorRegistry()
    got, _ = raw_chunks(
        library, Served(library, random_chunks(body, random.Random(1), 9000)), bgwatch.Watcher(registry=registry)
    )
    assert b"".join(got) == body
    assert total(registry, "bg_response_finished_total") == 0
    assert registry.get_sample_value("bgwatch_internal_errors_total", {"stage": "stream"}) == 1


# -- the error event ---------------------------------------------------------------------------


def test_error_event_is_attributed_not_counted() -> None:
    """``error`` then ``response.failed`` counts once; ``error`` alone counts nothing."""
    library = LIBRARIES[0]
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    body, _ = recorded_stream("failed", code="server_error")
    raw_chunks(library, Served(library, [body]), watcher)
    assert sample(registry, "bg_response_failed_total", code="server_error", model=MODEL) == 1
    assert total(registry, "bg_response_finished_total") == 1

    # The failed response carries no code: the error event's code fills it in.
    body, _ = recorded_stream("failed", response_id="resp_nocode", code=None, error_code="vector_store_timeout")
    raw_chunks(library, Served(library, [body]), watcher)
    assert sample(registry, "bg_response_failed_total", code="vector_store_timeout", model=MODEL) == 1

    # A stream that ends after the error event, without a terminal event, counts nothing:
    # in background mode the response may still finish; a poll or the TTL settles it.
    body, failure = recorded_stream("failed", response_id="resp_open")
    raw_chunks(library, Served(library, [body[:failure]]), watcher)
    assert total(registry, "bg_response_finished_total") == 2
    assert sample(registry, "bg_response_in_flight") == 1
    assert watcher.tracker.status_of("resp_open") == "in_progress"


# -- fail open ---------------------------------------------------------------------------------


def test_a_bug_while_observing_never_touches_the_bytes(library: str, monkeypatch: pytest.MonkeyPatch) -> None:
    body, _ = recorded_stream("failed")
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    calls = Counter[str]()

    def broken(self: Any, event: Any) -> None:
        calls["event"] += 1
        if calls["event"] == 2:
            raise RuntimeError("bug in bgwatch")

    monkeypatch.setattr(_streams.StreamObserver, "_on_event", broken)
    chunks = random_chunks(body, random.Random(2), 300)
    for raise_on in ((), ("failed",)) if raise_mode_supported() else ((),):
        calls.clear()
        assert raw_chunks(library, Served(library, chunks), watcher, raise_on) == (chunks, None)
        assert calls["event"] == 2  # stopped observing after the error
    assert sample(registry, "bgwatch_internal_errors_total", stage="stream") == (2 if raise_mode_supported() else 1)


@pytest.mark.skipif(not raise_mode_supported(), reason="the transport reads streams itself in raise mode only")
def test_an_encoding_we_cannot_decode_passes_untouched(library: str) -> None:
    """Raise mode observes the raw stream in the transport: a coding it cannot undo passes as is.
    (Observe mode reads what the library decoded for the client, whatever the coding.)"""
    body, _ = recorded_stream("failed")
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    served = Served(library, [body], encoding="br")
    transport = transport_class(library)(served.transport(), watcher=watcher, raise_on=("failed",))
    with (
        client_class(library)(transport=transport) as http,
        http.stream("POST", "http://api.test/v1/responses", json={"stream": True}) as r,
    ):
        assert list(r.iter_raw()) == [body]
    assert sample(registry, "bgwatch_internal_errors_total", stage="stream") == 1
    assert total(registry, "bg_response_finished_total") == 0


# -- the real SDK against the simulator, over real sockets ---------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with Simulator(seed=7, durations=(0.0, 0.02), stream_error_events=True, poll_after_ms=5) as simulator:
        yield simulator


def sim_client(
    sim: Simulator,
    library: str,
    watcher: bgwatch.Watcher,
    *,
    raise_on: tuple[str, ...] = (),
    asynchronous: bool = False,
) -> Any:
    """An SDK client on the simulator; sync ones are closed after the test, async ones by it."""
    factory = bgwatch.async_http_client if asynchronous else bgwatch.http_client
    http = factory(watcher=watcher, raise_on=raise_on, library=library)
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    client = cls(api_key="sk-test", base_url=sim.base_url, http_client=http, max_retries=0)
    if not asynchronous:
        _open_clients.append(client)
    return client


_open_clients: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _open_clients:
        _open_clients.pop().close()


OUTCOMES = ["completed", "failed:server_error", "incomplete:max_output_tokens", "cancelled"]


def forced(outcome: str) -> dict[str, str]:
    return {"bgwatch_outcome": outcome}


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_streamed_creates_count_like_polls_and_replays_count_nothing_new(
    sim: Simulator, library: str, asynchronous: bool
) -> None:
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    client = sim_client(sim, library, watcher, asynchronous=asynchronous)

    async def run_async() -> list[str]:
        ids = []
        for outcome in OUTCOMES:
            stream = await client.responses.create(
                model="m", input="x", background=True, stream=True, metadata=forced(outcome)
            )
            events = [e async for e in stream]
            ids.append(events[0].response.id)
        for rid in ids:  # replay from the start and resume mid-way: nothing new to count
            assert [e async for e in await client.responses.retrieve(rid, stream=True)]
            assert [e async for e in await client.responses.retrieve(rid, stream=True, starting_after=1)]
        await client.close()
        return ids

    if asynchronous:
        ids = asyncio.run(run_async())
    else:
        ids = []
        for outcome in OUTCOMES:
            events = list(
                client.responses.create(model="m", input="x", background=True, stream=True, metadata=forced(outcome))
            )
            ids.append(events[0].response.id)
        for rid in ids:
            assert list(client.responses.retrieve(rid, stream=True))
            assert list(client.responses.retrieve(rid, stream=True, starting_after=1))
            with client.responses.stream(response_id=rid) as helper:  # the SDK's stream helper
                assert list(helper)
    assert sample(registry, "bg_response_created_total", model="m") == 4
    for status in ("completed", "failed", "incomplete", "cancelled"):
        assert sample(registry, "bg_response_finished_total", status=status, model="m") == 1
    assert sample(registry, "bg_response_failed_total", code="server_error", model="m") == 1
    assert sample(registry, "bg_response_incomplete_total", reason="max_output_tokens", model="m") == 1
    assert sample(registry, "bg_response_duration_seconds_count", status="completed", model="m") == 1
    assert total(registry, "bg_response_polls_total") == 0  # a stream is not a poll
    assert sample(registry, "bg_response_in_flight") == 0
    # Polling the same responses afterwards counts polls, never a second outcome.
    if not asynchronous:
        for rid in ids:
            client.responses.retrieve(rid)
        assert total(registry, "bg_response_polls_total") == 4
        assert total(registry, "bg_response_finished_total") == 4
    assert total(registry, "bgwatch_internal_errors_total") == 0


@needs_raise_mode
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_raise_mode_on_live_streams(sim: Simulator, library: str, asynchronous: bool) -> None:
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    client = sim_client(
        sim, library, watcher, raise_on=("failed", "incomplete", "cancelled"), asynchronous=asynchronous
    )
    expected = {
        "failed:rate_limit_exceeded": (
            bgwatch.RateLimitExceeded,
            ["response.created", "response.queued", "response.in_progress", "error"],
        ),
        "incomplete:content_filter": (bgwatch.ResponseContentFiltered, None),
        "cancelled": (bgwatch.ResponseCancelled, ["response.created", "response.queued", "response.in_progress"]),
    }

    async def collect_async(outcome: str) -> tuple[list[str], BaseException | None, str | None]:
        types: list[str] = []
        rid = None
        try:
            stream = await client.responses.create(
                model="m", input="x", background=True, stream=True, metadata=forced(outcome)
            )
            async for event in stream:
                types.append(event.type)
                rid = rid or event.response.id
        except bgwatch.BackgroundResponseError as exc:
            return types, exc, rid
        return types, None, rid

    def collect(outcome: str) -> tuple[list[str], BaseException | None, str | None]:
        types: list[str] = []
        rid = None
        try:
            for event in client.responses.create(
                model="m", input="x", background=True, stream=True, metadata=forced(outcome)
            ):
                types.append(event.type)
                rid = rid or event.response.id
        except bgwatch.BackgroundResponseError as exc:
            return types, exc, rid
        return types, None, rid

    async def collect_all_async() -> list[tuple[list[str], BaseException | None, str | None]]:
        try:
            return [await collect_async(outcome) for outcome in expected]
        finally:
            await client.close()

    posts = sim.request_log.count("POST", "/v1/responses")
    results = asyncio.run(collect_all_async()) if asynchronous else [collect(outcome) for outcome in expected]
    ids = {}
    for (outcome, (cls, types_before)), (types, error, rid) in zip(expected.items(), results, strict=True):
        ids[outcome] = rid
        assert type(error) is cls, (outcome, types)
        assert error.response_id == rid and error.request_id  # type: ignore[union-attr]
        if types_before is not None:
            assert types == types_before
        else:  # incomplete: every output event came through, then the exception
            assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
            assert types[-1] == "response.output_item.done"
    assert sim.request_log.count("POST", "/v1/responses") == posts + 3  # one POST each, no retry
    assert total(registry, "bg_response_finished_total") == 3
    if not asynchronous:  # a replayed stream of the failed response raises again, counts nothing new
        failed = ids["failed:rate_limit_exceeded"]
        with pytest.raises(bgwatch.RateLimitExceeded):
            list(client.responses.retrieve(failed, stream=True, starting_after=0))
        with pytest.raises(bgwatch.RateLimitExceeded), client.responses.stream(response_id=failed) as helper:
            list(helper)
        assert total(registry, "bg_response_finished_total") == 3


def traced_watcher() -> tuple[bgwatch.Watcher, CollectorRegistry, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = CollectorRegistry()
    return bgwatch.Watcher(registry=registry, tracer_provider=provider), registry, exporter


def call_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(("chat", "fetch_response"))]


def wrapper_of(stream: Any) -> Any:
    """bgwatch's byte stream under the SDK stream (the client wraps it once more for timing)."""
    bound = stream.response.stream
    return getattr(bound, "_stream", bound)


def test_early_close_break_and_exit_release_everything(sim: Simulator, library: str) -> None:
    watcher, registry, exporter = traced_watcher()
    client = sim_client(sim, library, watcher)
    slow = {"bgwatch_outcome": "completed"}
    sim.durations = (0.3, 0.3)  # long enough that every stream below is left before its end
    try:
        # close()
        stream = client.responses.create(model="m", input="x", background=True, stream=True, metadata=slow)
        first = next(iter(stream))
        wrapper = wrapper_of(stream)
        assert wrapper._observer is not None and wrapper._observer.observing
        stream.close()
        assert wrapper._observer is None and wrapper._inner_closed
        # break out of the loop, then the context manager's exit
        with client.responses.create(model="m", input="x", background=True, stream=True, metadata=slow) as stream:
            for _ in stream:
                break
            wrapper = wrapper_of(stream)
        assert wrapper._observer is None and wrapper._inner_closed
        # abandoned mid-way and garbage collected: the generator's finally closes the stream
        stream = client.responses.create(model="m", input="x", background=True, stream=True, metadata=slow)
        next(iter(stream))
        wrapper = wrapper_of(stream)
        del stream
        gc.collect()
        assert wrapper._observer is None and wrapper._inner_closed
    finally:
        sim.durations = (0.0, 0.02)
    spans = call_spans(exporter)
    assert len(spans) == 3 and all(s.status.status_code is StatusCode.UNSET for s in spans)
    assert {(s.attributes or {}).get("gen_ai.response.status") for s in spans} == {"queued"}
    assert sample(registry, "bg_response_created_total", model="m") == 3
    assert sample(registry, "bg_response_in_flight") == 3  # left to polls or the TTL
    time.sleep(0.35)
    client.responses.retrieve(first.response.id)  # a later poll settles one of them
    assert sample(registry, "bg_response_in_flight") == 2
    assert total(registry, "bgwatch_internal_errors_total") == 0


@pytest.mark.parametrize("fault", ["cut", "truncate"])
def test_a_stream_broken_mid_way_ends_its_span_and_resumes_without_double_counting(
    sim: Simulator, library: str, fault: str
) -> None:
    watcher, registry, exporter = traced_watcher()
    client = sim_client(sim, library, watcher)
    sim.inject(fault, match="POST /v1/responses$")  # type: ignore[arg-type]
    got: list[Any] = []
    with pytest.raises(Exception) as caught:
        for event in client.responses.create(
            model="m", input="x", background=True, stream=True, metadata=forced("failed:server_error")
        ):
            got.append(event)
    assert not isinstance(caught.value, bgwatch.BgwatchError)
    span = call_spans(exporter)[-1]
    assert span.status.status_code is StatusCode.ERROR
    if fault == "truncate":  # half an event, and nothing took effect
        assert got == [] and total(registry, "bg_response_created_total") == 0
        return
    assert [e.type for e in got] == ["response.created", "response.queued"]
    assert sample(registry, "bg_response_in_flight") == 1
    rid, last = got[0].response.id, got[-1].sequence_number
    resumed = list(client.responses.retrieve(rid, stream=True, starting_after=last))
    assert resumed[-1].type == "response.failed"
    list(client.responses.retrieve(rid, stream=True))  # replayed in full
    assert sample(registry, "bg_response_failed_total", code="server_error", model="m") == 1
    assert sample(registry, "bg_response_created_total", model="m") == 1
    assert sample(registry, "bg_response_in_flight") == 0


@pytest.mark.parametrize("raising", [False, True])
def test_gzip_streams_are_observed(sim: Simulator, library: str, raising: bool) -> None:
    if raising and not raise_mode_supported():
        pytest.skip("raise mode needs openai >= 2.31")
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    client = sim_client(sim, library, watcher, raise_on=("failed",) if raising else ())
    sim.inject("gzip", match="POST /v1/responses$")
    types: list[str] = []
    with pytest.raises(bgwatch.ServerError) if raising else _nothing():
        for event in client.responses.create(
            model="m", input="x", background=True, stream=True, metadata=forced("failed:server_error")
        ):
            types.append(event.type)
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert types[3:] == (["error"] if raising else ["error", "response.failed"])
    assert sim.request_log.count("POST", "/v1/responses", fault="gzip") >= 1
    assert sample(registry, "bg_response_failed_total", code="server_error", model="m") == 1
    assert total(registry, "bgwatch_internal_errors_total") == 0


@needs_raise_mode
def test_gzip_chunk_holding_several_events_is_cut_before_the_failure(library: str) -> None:
    import zlib

    body, _ = recorded_stream("failed")
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    gz = compressor.compress(body) + compressor.flush()
    watcher, _ = recording_watcher()
    served = Served(library, [gz[:40], gz[40:]], gzip=True)
    client = sdk_client(library, served.transport(), watcher, raise_on=("failed",))
    types, error = sdk_events(client)
    assert isinstance(error, bgwatch.ServerError)
    assert types == plain_sdk_events(library, body)[:-1]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


# -- latency: no read-ahead --------------------------------------------------------------------


class _GatedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _GatedHandler)
        self.gate = threading.Event()
        self.released_in_time: list[bool] = []


class _GatedHandler(BaseHTTPRequestHandler):
    """Sends the first event, then waits for the client to say it got it before the rest."""

    protocol_version = "HTTP/1.1"
    server: _GatedServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body, _ = recorded_stream("completed", deltas=1)
        events = re.split(rb"(?<=\n\n)", body)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(events[0]), events[0]))
        self.wfile.flush()
        self.server.released_in_time.append(self.server.gate.wait(5))
        rest = b"".join(events[1:])
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        self.wfile.flush()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_the_first_event_reaches_the_caller_before_the_server_sends_the_second(
    library: str, asynchronous: bool
) -> None:
    server = _GatedServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    watcher, recorder = recording_watcher()
    try:
        if asynchronous:

            async def run() -> list[str]:
                http = bgwatch.async_http_client(watcher=watcher, library=library)
                client = openai.AsyncOpenAI(api_key="sk-test", base_url=base_url, http_client=http, max_retries=0)
                stream = await client.responses.create(model=MODEL, input="x", background=True, stream=True)
                first = await stream.__anext__()
                server.gate.set()  # only now may the server send the rest
                rest = [e.type async for e in stream]
                await client.close()
                return [first.type, *rest]

            types = asyncio.run(run())
        else:
            http = bgwatch.http_client(watcher=watcher, library=library)
            client = openai.OpenAI(api_key="sk-test", base_url=base_url, http_client=http, max_retries=0)
            stream = client.responses.create(model=MODEL, input="x", background=True, stream=True)
            first = next(stream)
            server.gate.set()
            types = [first.type, *(e.type for e in stream)]
            client.close()
    finally:
        server.gate.set()
        server.shutdown()
        server.server_close()
    assert server.released_in_time == [True]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [s for _, _, s, *_ in recorder.seen] == ["queued", "queued", "in_progress", "completed"]


# -- the "done when" check -----------------------------------------------------------------------


def run_workload(library: str, *, streaming: bool, count: int = 60) -> tuple[dict[str, float], dict[str, float]]:
    """One seeded workload of background responses, observed by polling or by streaming.

    Returns (bgwatch's metrics, the simulator's ledger) in the same shape.
    """
    mix = Mix(
        completed=50,
        failed=30,
        incomplete=10,
        cancelled=10,
        codes=("server_error", "rate_limit_exceeded", "model_overloaded_v2"),
    )
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)
    with Simulator(seed=2024, mix=mix, durations=(0.0, 0.03), poll_after_ms=5) as simulator:
        client = sim_client(simulator, library, watcher)

        def one(_: int) -> None:
            if streaming:
                for _event in client.responses.create(model="m", input="x", background=True, stream=True):
                    pass
                return
            response = client.responses.create(model="m", input="x", background=True)
            while response.status in ("queued", "in_progress"):
                time.sleep(0.005)
                response = client.responses.retrieve(response.id)

        with ThreadPoolExecutor(12) as pool:
            list(pool.map(one, range(count)))
        ledger = simulator.ledger()
        client.close()
    assert len(ledger) == count
    observed: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    for outcome in ledger.values():
        expected[f"finished/{outcome.status}"] += 1
        expected["created"] += 1
        if outcome.code:
            expected[f"failed/{outcome.code}"] += 1
        if outcome.reason:
            expected[f"incomplete/{outcome.reason}"] += 1
    for metric in registry.collect():
        for s in metric.samples:
            if not s.value:
                continue
            if s.name == "bg_response_finished_total":
                observed[f"finished/{s.labels['status']}"] += s.value
            elif s.name == "bg_response_created_total":
                observed["created"] += s.value
            elif s.name == "bg_response_failed_total":
                observed[f"failed/{s.labels['code']}"] += s.value
            elif s.name == "bg_response_incomplete_total":
                observed[f"incomplete/{s.labels['reason']}"] += s.value
            elif s.name in ("bg_response_in_flight", "bgwatch_internal_errors_total"):
                observed[s.name] += s.value
    return dict(observed), dict(expected)


def test_polling_and_streaming_the_same_seeded_workload_give_identical_metrics() -> None:
    library = LIBRARIES[0]
    polled, polled_ledger = run_workload(library, streaming=False)
    streamed, streamed_ledger = run_workload(library, streaming=True)
    assert polled_ledger == streamed_ledger  # the seed drew the same outcomes
    assert polled == streamed == polled_ledger
    assert sum(v for k, v in polled.items() if k.startswith("failed/")) > 5  # a real failure mix


# -- spans and the OpenTelemetry mirror --------------------------------------------------------


def test_stream_call_spans_end_with_the_stream_and_feed_the_lifecycle_span(library: str) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    watcher = bgwatch.Watcher(
        prometheus=False,
        otel=True,
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracer_provider=tracer_provider,
    )
    body, _ = recorded_stream("failed", code="server_error")
    client = sdk_client(library, Served(library, [body]).transport(), watcher)
    stream = client.responses.create(model=MODEL, input="hi", background=True, stream=True)
    next(stream)
    assert call_spans(exporter) == []  # open while the stream is
    assert [e.type for e in stream][-1] == "response.failed"
    replay = client.responses.retrieve("resp_recorded", stream=True, starting_after=0)
    assert [e.type for e in replay][-1] == "response.failed"
    create, fetch = sorted(call_spans(exporter), key=lambda span: span.name)
    assert create.name == f"chat {MODEL}" and fetch.name == "fetch_response"
    assert (create.attributes or {})["gen_ai.request.stream"] is True
    for span in (create, fetch):
        assert span.status.status_code is StatusCode.UNSET  # the stream itself worked
        assert (span.attributes or {})["gen_ai.response.status"] == "failed"
        assert (span.attributes or {})["gen_ai.response.finish_reasons"] == ("error",)
    lifecycle = [s for s in exporter.get_finished_spans() if s.name.startswith("background_response")]
    assert len(lifecycle) == 1 and lifecycle[0].status.status_code is StatusCode.ERROR
    # One link per lifecycle event of the create stream; the replay came after the end.
    assert [link.attributes for link in lifecycle[0].links] == [{"bgwatch.call": "create"}] * 4
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        m.name: [(dict(p.attributes or {}), getattr(p, "value", None)) for p in m.data.data_points]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert points["bg_response_created"] == [({"model": MODEL}, 1)]
    assert points["bg_response_failed"] == [({"code": "server_error", "model": MODEL}, 1)]
    assert sum(value for _, value in points.get("bg_response_polls", [])) == 0  # a stream is no poll
