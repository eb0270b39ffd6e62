"""Differential tests of event streams, with the SDK as the oracle (issue 11, streams).

Random Server-Sent Event streams (LF, CRLF, CR line endings; comments, ``retry:``, ``id:``,
multi-line data; matching, mismatched, trailing-space and missing ``event:`` lines; an
unterminated last event; ``[DONE]`` with events after it; invalid JSON; both shapes of
``error`` events with known and unknown codes; lifecycle events with random key order, big
fields before or after ``status``/``model``, duplicate ``type`` keys and unicode escapes in
the type) go to a real ``OpenAI`` / ``AsyncOpenAI`` client bare and through bgwatch,
streamed in random chunks (down to single bytes) and as an already loaded body. For every
stream:

* what the bgwatch client's SDK yields (event types and response statuses) and whether it
  raised are exactly the bare client's;
* bgwatch recorded one observation per lifecycle event the SDK yielded, with its status, and
  none for anything the SDK did not yield; no internal error (fresh watcher per stream);
* with ``raise_on=("failed",)`` the SDK yields exactly the bare client's events up to the
  first failed lifecycle event, then bgwatch's typed exception.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bgwatch

from .conftest import LIBRARIES, client_class, response_body, transport_class
from .test_streams import MODEL, Recorder, recording_watcher

LIFECYCLE = (
    "response.created",
    "response.queued",
    "response.in_progress",
    "response.completed",
    "response.failed",
    "response.incomplete",
)
STATUS_OF = {"response.created": "queued", "response.queued": "queued", "response.in_progress": "in_progress"}
STATUS_OF |= {"response.completed": "completed", "response.failed": "failed", "response.incomplete": "incomplete"}
CODES = ("server_error", "rate_limit_exceeded", "invalid_prompt", "brand_new_code", None)
EXAMPLES = int(os.environ.get("BGWATCH_STREAM_EXAMPLES", "1300"))  # per library; x4 streams each
SETTINGS = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, max_examples=EXAMPLES)


def dump(items: list[tuple[str, Any]]) -> str:
    """A JSON object from key/value pairs in this order, duplicates kept."""
    return "{" + ",".join(json.dumps(k) + ":" + json.dumps(v) for k, v in items) + "}"


@st.composite
def lifecycle_data(draw: st.DrawFn) -> tuple[str, str]:
    kind = draw(st.sampled_from(LIFECYCLE))
    status = STATUS_OF[kind]
    body = response_body("resp_diff", status, code=draw(st.sampled_from(CODES)) if status == "failed" else None)
    body["model"] = MODEL
    big = draw(st.sampled_from([0] * 8 + [70_000, 140_000]))
    if big:
        body[draw(st.sampled_from(["instructions", "tools", "output"]))] = (
            "x" * big if draw(st.booleans()) else [{"type": "function", "name": "f", "pad": "p" * big}]
        )
        if not isinstance(body.get("instructions", ""), (str, type(None))):
            body["instructions"] = None
        if not isinstance(body.get("tools", []), list) or not isinstance(body.get("output", []), list):
            body["tools"], body["output"] = [], []
    items = list(body.items())
    order = draw(st.sampled_from(["api", "sorted", "shuffled", "status_last"]))
    if order == "sorted":
        items.sort()
    elif order == "shuffled":
        random.Random(draw(st.integers(0, 1000))).shuffle(items)
    elif order == "status_last":
        items = [kv for kv in items if kv[0] != "status"] + [("status", status)]
    type_value = json.dumps(kind)
    if draw(st.booleans()):
        type_value = type_value.replace("e", "\\u0065", 1)
    outer = [("sequence_number", 0), ("response", "@RESPONSE@")]
    position = draw(st.integers(0, 2))
    pieces = [json.dumps(k) + ":" + (dump(items) if k == "response" else json.dumps(v)) for k, v in outer]
    pieces.insert(position, '"type":' + type_value)
    if draw(st.integers(0, 5)) == 0:  # a duplicate type: json keeps the last one
        pieces.insert(0 if draw(st.booleans()) else len(pieces), '"type":"response.output_text.delta"')
    return kind, "{" + ",".join(pieces) + "}"


def other_data(draw: st.DrawFn) -> tuple[str, str]:
    choice = draw(st.integers(0, 9))
    if choice < 5:
        return "delta", dump([("type", "response.output_text.delta"), ("delta", draw(st.text(max_size=20)))])
    if choice == 5:
        code = draw(st.sampled_from(CODES))
        return "error", dump([("type", "error"), ("code", code), ("message", "m"), ("param", None)])
    if choice == 6:
        return "error", dump([("type", "error"), ("error", {"code": draw(st.sampled_from(CODES)), "message": "m"})])
    if choice == 7:
        return "done", "[DONE]"
    if choice == 8:
        return "junk", draw(st.sampled_from(["{not json", "", "[1, 2]", '"text"', '{"error": 0}']))
    return "delta", dump([("type", "response.output_text.done"), ("text", "t")])


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    out: list[str] = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.integers(0, 2)) == 0:
            kind, data = draw(lifecycle_data())
        else:
            kind, data = other_data(draw)
        name = draw(st.sampled_from([None, "same", "same ", "response.output_text.delta", "message", ""]))
        lines: list[str] = []
        if draw(st.integers(0, 6)) == 0:
            lines.append(draw(st.sampled_from([": keep-alive", "retry: 100", "retry: x", "id: 7", "id:", "bogus: 1"])))
        if name is not None:
            lines.append("event: " + (kind + name[4:] if name.startswith("same") else name))
        if data.startswith("{") and "," in data and draw(st.integers(0, 4)) == 0:
            cut = data.index(",") + 1  # multi-line data: the SDK joins the lines with "\n"
            lines += ["data: " + data[:cut], "data:" + data[cut:]]
        else:
            lines.append("data: " + data)
        out.append(newline.join(lines) + newline + newline)
    if draw(st.integers(0, 4)) == 0:
        out[-1] = out[-1][: -len(newline)]  # the last event is not terminated
    return "".join(out).encode()


def client_for(library: str, transport: Any, asynchronous: bool) -> Any:
    http = client_class(library, asynchronous)(transport=transport)
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0)


def inner_transport(library: str, body: bytes, chunks: list[bytes] | None, asynchronous: bool) -> Any:
    """Serves ``body`` in ``chunks``, or as an already loaded body when ``chunks`` is None."""
    module = __import__(library)
    headers = {"content-type": "text/event-stream"}

    def respond(request: Any) -> Any:
        if chunks is None:
            return module.Response(200, headers=headers, content=body)
        stream_class = module.AsyncByteStream if asynchronous else module.SyncByteStream

        class Chunks(stream_class):  # type: ignore[misc,valid-type]
            def __iter__(self) -> Any:
                yield from chunks

            async def __aiter__(self) -> Any:
                for chunk in chunks:
                    yield chunk

        return module.Response(200, headers=headers, stream=Chunks())

    if asynchronous:

        async def async_respond(request: Any) -> Any:
            return respond(request)

        return module.MockTransport(async_respond)
    return module.MockTransport(respond)


def consume(client: Any, asynchronous: bool) -> tuple[list[tuple[str, str | None]], str | None]:
    """What the SDK yields (type, response status) and the class of what it raised."""
    got: list[tuple[str, str | None]] = []

    def note(event: Any) -> None:
        response = getattr(event, "response", None)
        got.append((getattr(event, "type", type(event).__name__), getattr(response, "status", None)))

    async def run_async() -> None:
        stream = await client.responses.create(model=MODEL, input="hi", background=True, stream=True)
        async for event in stream:
            note(event)

    try:
        if asynchronous:
            asyncio.run(run_async())
        else:
            for event in client.responses.create(model=MODEL, input="hi", background=True, stream=True):
                note(event)
    except Exception as exc:
        name = "bgwatch" if isinstance(exc, bgwatch.BackgroundResponseError) else "sdk"
        return got, name
    return got, None


def chunked(body: bytes, rng: random.Random) -> list[bytes]:
    if len(body) < 4000 and rng.random() < 0.2:
        return [body[i : i + 1] for i in range(len(body))]
    cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(0, 12)))) if len(body) > 1 else []
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def check(library: str, body: bytes, seed: int) -> None:
    rng = random.Random(seed)
    asynchronous = rng.random() < 0.3
    chunks = None if rng.random() < 0.3 else chunked(body, rng)
    expected, raised = consume(client_for(library, inner_transport(library, body, [body], False), False), False)
    lifecycle = [status for kind, status in expected if kind in STATUS_OF]
    watcher, recorder = recording_watcher()
    transport = transport_class(library, asynchronous)(
        inner_transport(library, body, chunks, asynchronous), watcher=watcher
    )
    assert consume(client_for(library, transport, asynchronous), asynchronous) == (expected, raised)
    assert [seen[2] for seen in recorder.seen] == lifecycle
    assert recorder.errors == []
    # raise mode: the same events up to the first failed lifecycle event, then our exception
    watcher, recorder = recording_watcher()
    inner = inner_transport(library, body, chunks, asynchronous)
    transport = transport_class(library, asynchronous)(inner, watcher=watcher, raise_on=("failed",))
    got, got_raised = consume(client_for(library, transport, asynchronous), asynchronous)
    if "failed" in lifecycle:
        cut = next(i for i, (kind, status) in enumerate(expected) if kind in STATUS_OF and status == "failed")
        assert (got, got_raised) == (expected[:cut], "bgwatch")
    else:
        assert (got, got_raised) == (expected, raised)
    assert isinstance(recorder, Recorder) and recorder.errors == []


@pytest.mark.slow
@pytest.mark.parametrize("library", LIBRARIES)
@SETTINGS
@given(body=streams(), seed=st.integers(0, 2**32))
def test_bgwatch_counts_what_the_sdk_yields(library: str, body: bytes, seed: int) -> None:
    check(library, body, seed)
