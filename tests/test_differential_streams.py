"""Differential tests of Server-Sent Event streams, with the SDK as the oracle.

Random event streams are served to a real ``OpenAI`` / ``AsyncOpenAI`` client three times:
bare, with bgwatch observing, and with bgwatch raising (``raise_on``). The streams mix
lifecycle events (any key order, big ``instructions`` and ``tools``, known, unknown and absent
error codes, ``type`` given twice or with unicode escapes), text deltas, ``error`` events of
both shapes, data that is no JSON, empty data, ``[DONE]`` with events after it, missing,
matching, mismatched and trailing-space ``event:`` lines, ``id:``, valid and invalid
``retry:``, comments, multi-line data, a byte order mark, invalid UTF-8, LF, CRLF or CR line
endings or all mixed (with ``\r\r\n``), a persisting ``id:`` from the start, blank lines
more after some events (after a non-empty ``id:`` each dispatches a dataless event, which the
SDK fails to parse: in raise mode also right after the failing event, in its chunk), and an
unterminated last event; each is cut into chunks at random places, often inside a CRLF (where openai 2.x may read
two line endings), and served either as a stream or as a body the inner transport already
loaded. For every stream:

* the events the bgwatch clients' SDK yielded, and what it raised, are exactly the bare one's
  (the raising client: up to the first event whose status ``raise_on`` names, then the typed
  exception);
* bgwatch recorded exactly one observation per lifecycle event the SDK yielded, with the SDK's
  values (an ``error`` event's code fills in a following ``failed`` response that has none),
  and nothing for what the SDK never yielded (the raising client: nothing after the raising
  event), and no internal error, observing or raising.

The named ``test_regression_*`` tests pin each stream class of issue 11 on its own.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch._classify import Observation, observation_from_mapping
from bgwatch._streams import LIFECYCLE_EVENTS

from .conftest import LIBRARIES, answering, client_class, transport_class
from .test_differential_bodies import KNOWN_CODES, SDK_ORDER, Recorder, sdk_view
from .test_differential_streams_independent import SDK_2, mixed_endings

RAISE_ON = ("failed", "incomplete", "cancelled")
REQUEST_ID = "req_stream_differential"
LOOP = asyncio.new_event_loop()
STATUS_OF = {
    "response.created": "queued",
    "response.queued": "queued",
    "response.in_progress": "in_progress",
    "response.completed": "completed",
    "response.failed": "failed",
    "response.incomplete": "incomplete",
    "response.cancelled": "cancelled",
}
EXAMPLES = 1300  # per library and sync/async: >= 5,200 streams per run on openai 3.x


# -- streams -----------------------------------------------------------------------------------


def response_object(rng: random.Random, kind: str, big: int) -> dict[str, Any]:
    status = STATUS_OF[kind] if rng.random() < 0.9 else rng.choice(list(STATUS_OF.values()))
    doc: dict[str, Any] = {
        "id": f"resp_{rng.randrange(4):02d}",
        "object": "response",
        "created_at": 1_760_000_000,
        "status": status,
        "background": True,
        "error": None,
        "incomplete_details": None,
        "instructions": "i" * big if rng.random() < 0.5 else None,
        "model": rng.choice(["gpt-4.1", "o3-deep-research", "gpt-\u00e9"]),
        "output": [],
        "tools": [{"type": "function", "name": "f", "description": "t" * big}] if rng.random() < 0.5 else [],
        "usage": None,
    }
    if status == "failed":
        code = rng.choice([*KNOWN_CODES[:6], "brand_new_code", None])
        doc["error"] = {"code": code, "message": "boom"} if code or rng.random() < 0.5 else None
    if status == "incomplete":
        doc["incomplete_details"] = {"reason": rng.choice(["max_output_tokens", "content_filter", "new_reason"])}
    order = rng.choice(["api", "sdk", "random"])
    keys = list(doc)
    if order == "sdk":
        keys.sort(key=lambda k: SDK_ORDER.get(k, len(SDK_ORDER)))
    elif order == "random":
        rng.shuffle(keys)
    return {k: doc[k] for k in keys}


def event_data(rng: random.Random, sequence: int) -> tuple[str | None, str]:
    """(the ``type`` the SDK will see or None, the data text) of one random event."""
    roll = rng.random()
    if roll < 0.45:
        kind = rng.choice([*sorted(LIFECYCLE_EVENTS), "response.cancelled"])  # the last: unknown to the SDK
        big = rng.choice([0, 0, 0, 200, 70 * 1024])
        payload: dict[str, Any] = {
            "type": kind,
            "sequence_number": sequence,
            "response": response_object(rng, kind, big),
        }
        if rng.random() < 0.3:  # type last, as a sorted-key or re-serializing gateway sends it
            payload = {"sequence_number": sequence, "response": payload["response"], "type": kind}
        text = json.dumps(payload, indent=rng.choice([None, None, 1]))
        if rng.random() < 0.1:  # the type twice: json.loads (and so the SDK) keeps the last
            decoy = rng.choice(["response.output_text.delta", "response.completed", "response.failed"])
            text = '{"type": "' + decoy + '", ' + text[1:]
        if rng.random() < 0.1:  # unicode escapes in the type's value
            text = text.replace(f'"{kind}"', '"' + "".join(f"\\u{ord(c):04x}" for c in kind) + '"', 1)
        return kind, text
    if roll < 0.75:
        return "response.output_text.delta", json.dumps(
            {
                "type": "response.output_text.delta",
                "delta": rng.choice(["hi", "\u00e9\u4e2d", '"x"']),
                "sequence_number": sequence,
            }
        )
    if roll < 0.82:
        code = rng.choice(["server_error", "rate_limit_exceeded", "invented", None])
        return "error", json.dumps(
            {"type": "error", "code": code, "message": "m", "param": None, "sequence_number": sequence}
        )
    return None, rng.choice(
        [
            '{"type": "error", "error": {"code": "server_error", "message": "m"}}',  # the SDK raises APIError
            '{"type": "response.failed", "error": {"code": "x"}}',
            '{"error": {}}',
            "not json",
            "",
            "[DONE]",
            "[DONE] and more",
            "[1, 2]",
            '"text"',
            "{" * 3000 + "}" * 3000,
        ]
    )


def event_bytes(rng: random.Random, kind: str | None, text: str, newline: str) -> str:
    lines: list[str] = []
    if rng.random() < 0.1:
        lines.append(": keep-alive comment")
    name_roll = rng.random()
    if name_roll < 0.5 and kind:
        lines.append(f"event: {kind}")
    elif name_roll < 0.6:
        lines.append(f"event: {rng.choice(['response.completed', 'response.output_text.delta', 'message'])}")
    elif name_roll < 0.65 and kind:
        lines.append(f"event: {kind} ")  # a trailing space
    elif name_roll < 0.67:
        lines.append("event: thread.message.delta")
    if rng.random() < 0.1:
        lines.append(rng.choice(["id: 7", "id: 7", "id:", "retry: 1000", "retry: soon"]))
    data_lines = text.split("\n") if text else [""]
    lines.extend(("data: " if rng.random() < 0.9 else "data:") + line for line in data_lines)
    return newline.join(lines) + newline


@st.composite
def streams(draw: Any) -> tuple[bytes, list[int], bool]:
    """(stream bytes, chunk cut points, served as a loaded body)."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    mixed = rng.random() < 0.2  # every line ending drawn on its own: "\r\r\n", "\n\r", ...
    newline = "\n" if mixed else rng.choice(["\n", "\n", "\r\n", "\r"])
    text = "\ufeff" if rng.random() < 0.03 else ""
    if rng.random() < (0.5 if mixed else 0.2):
        text += "id: 1\n"  # persists: an extra blank line (see below and the cuts) then dispatches
    extra = rng.random() < 0.3  # blank lines more after some events (raise mode: after the failing one)
    for sequence in range(rng.randint(0, 7)):
        kind, data = event_data(rng, sequence)
        text += event_bytes(rng, kind, data, newline) + newline
        if extra and rng.random() < 0.4:
            text += newline * rng.randint(1, 2)  # after a non-empty id: a dataless event, the SDK raises
    if rng.random() < 0.2:  # a last event with no blank line after it: the SDK never yields it
        kind, data = event_data(rng, 99)
        text += event_bytes(rng, kind, data, newline).rstrip("\r\n")
    if mixed:
        text = re.sub("\n", lambda _: rng.choice(["\n", "\r\n", "\r", "\r"]), text)
    raw = text.encode("utf-8")
    if rng.random() < 0.03 and raw:
        at = rng.randrange(len(raw))
        raw = raw[:at] + b"\xff" + raw[at:]
    if rng.random() < 0.03:
        cuts = list(range(1, len(raw)))  # byte by byte
    else:
        cuts = sorted(rng.sample(range(1, max(2, len(raw))), min(max(0, len(raw) - 1), rng.randint(0, 8))))
    if rng.random() < 0.3:  # inside CRLFs too: openai 2.x may read the halves as two (see _sse),
        # above all in "\r\r\n", where it does when the first CR ends a line of text
        inside = [match.end() - 1 for match in re.finditer(b"\r\r?\n", raw)]
        doubled = [match.end() - 1 for match in re.finditer(b"\r\r\n", raw)]
        cuts = sorted({*cuts, *rng.sample(doubled or inside, min(len(doubled or inside), rng.randint(1, 6)))})
    return raw, cuts, rng.random() < 0.3


# -- the clients ---------------------------------------------------------------------------------


class Rig:
    """Bare, observing and raising SDK clients of one library; ``served`` is what they get next."""

    def __init__(self, library: str, asynchronous: bool) -> None:
        self.library = library
        self.asynchronous = asynchronous
        self.module = __import__(library)
        self.served: tuple[bytes, list[int], bool] = (b"", [], False)
        self.observed: list[Observation] = []
        self.recorder = Recorder()
        self.watcher = bgwatch.Watcher(registry=CollectorRegistry(), sinks=[self.recorder])
        cls = transport_class(library, asynchronous)
        sdk = openai.AsyncOpenAI if asynchronous else openai.OpenAI

        def client(transport: Any) -> Any:
            http = client_class(library, asynchronous)(transport=transport)
            return sdk(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0)

        self.bare = client(self.server())
        self.observing = client(cls(self.server(), watcher=self.watcher))
        self.raising = client(cls(self.server(), watcher=self.watcher, raise_on=RAISE_ON))

    def respond(self) -> Any:
        raw, cuts, loaded = self.served
        headers = {"content-type": "text/event-stream; charset=utf-8", "x-request-id": REQUEST_ID}
        if loaded:
            return self.module.Response(200, headers=headers, content=raw)
        chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True) if raw[a:b]]
        stream = (AsyncChunks if self.asynchronous else Chunks)(self.module, chunks)
        return self.module.Response(200, headers=headers, stream=stream)

    def server(self) -> Any:
        return answering(self.module, self.asynchronous, lambda request: self.respond())

    def events(self, client: Any) -> tuple[list[Any], BaseException | None]:
        """What iterating ``responses.create(stream=True)`` yielded, and what it raised."""
        got: list[Any] = []

        async def run_async() -> None:
            stream = await client.responses.create(model="gpt-4.1", input="hi", background=True, stream=True)
            async for event in stream:
                got.append(event)

        try:
            if self.asynchronous:
                LOOP.run_until_complete(run_async())
            else:
                for event in client.responses.create(model="gpt-4.1", input="hi", background=True, stream=True):
                    got.append(event)
        except Exception as exc:
            return got, exc
        return got, None


def Chunks(module: Any, chunks: list[bytes]) -> Any:
    class _Chunks(module.SyncByteStream):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Iterator[bytes]:
            yield from chunks

    return _Chunks()


def AsyncChunks(module: Any, chunks: list[bytes]) -> Any:
    class _Chunks(module.AsyncByteStream):  # type: ignore[misc,name-defined]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

    return _Chunks()


# -- the oracle ----------------------------------------------------------------------------------


def expected_observations(events: list[Any]) -> list[Observation]:
    """One observation per lifecycle event the SDK yielded, with its values; error codes filled in."""
    expected: list[Observation] = []
    error_code: str | None = None
    error_for: str | None = None
    last_id: str | None = None
    for event in events:
        kind = getattr(event, "type", None)
        if kind == "error":
            code = getattr(event, "code", None)
            error_code = code[:256] if isinstance(code, str) and code else None
            error_for = last_id
            continue
        response = getattr(event, "response", None)
        if kind not in LIFECYCLE_EVENTS or not isinstance(response, Response):
            continue
        observation = observation_from_mapping("create", sdk_view(response), REQUEST_ID)  # type: ignore[arg-type]
        if observation is None:
            continue
        last_id = observation.response_id
        if (
            observation.status == "failed"
            and observation.error_code is None
            and error_code is not None
            and error_for in (None, observation.response_id)
        ):
            observation = replace(observation, error_code=error_code)
        expected.append(observation)
    return expected


def essentials(observation: Observation) -> tuple[Any, ...]:
    o = observation
    return (o.call, o.response_id, o.status, o.error_code, o.incomplete_reason, o.model, o.request_id)


def dumped(events: list[Any]) -> list[Any]:
    return [event.model_dump() if isinstance(event, openai.BaseModel) else event for event in events]


def failure(exc: BaseException | None) -> tuple[str, str] | None:
    return None if exc is None else (type(exc).__name__, str(exc))


def check(rig: Rig) -> None:
    bare, bare_exc = rig.events(rig.bare)
    expected = expected_observations(bare)

    rig.recorder.clear()
    observed, observed_exc = rig.events(rig.observing)
    assert dumped(observed) == dumped(bare)
    assert failure(observed_exc) == failure(bare_exc)
    assert [essentials(o) for o in rig.recorder.observations] == [essentials(o) for o in expected]
    assert rig.recorder.internal_errors == []
    rig.observed = list(rig.recorder.observations)

    rig.recorder.clear()
    raised, raised_exc = rig.events(rig.raising)
    assert rig.recorder.internal_errors == []
    first = next((i for i, o in enumerate(expected) if o.status in RAISE_ON), None)
    counted = expected if first is None else expected[: first + 1]  # nothing after the raise
    assert [essentials(o) for o in rig.recorder.observations] == [essentials(o) for o in counted]
    if first is None:
        assert dumped(raised) == dumped(bare)
        assert failure(raised_exc) == failure(bare_exc)
        return
    before = dumped(bare[: _position_of(bare, expected[first])])
    if SDK_2 and mixed_endings(rig.served[0]):
        # openai 2.x may still hold the events before the failing one (see _streams, raise_on).
        assert dumped(raised) == before[: len(raised)]
    else:
        assert dumped(raised) == before
    assert isinstance(raised_exc, bgwatch.BackgroundResponseError)
    assert raised_exc.status == expected[first].status
    assert raised_exc.response_id == expected[first].response_id
    if expected[first].status == "failed":
        assert raised_exc.code == expected[first].error_code


def _position_of(events: list[Any], observation: Observation) -> int:
    """Index of the event the observation came from (the first lifecycle event that gives it)."""
    for index, event in enumerate(events):
        response = getattr(event, "response", None)
        if getattr(event, "type", None) in LIFECYCLE_EVENTS and isinstance(response, Response):
            seen = observation_from_mapping("create", sdk_view(response), REQUEST_ID)  # type: ignore[arg-type]
            if seen is not None and (seen.response_id, seen.status) == (observation.response_id, observation.status):
                return index
    raise AssertionError("no event gave the observation")


RIGS: dict[tuple[str, bool], Rig] = {}


def rig_for(library: str, asynchronous: bool) -> Rig:
    key = (library, asynchronous)
    if key not in RIGS:
        RIGS[key] = Rig(library, asynchronous)
    return RIGS[key]


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("library", LIBRARIES)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
@given(stream=streams())
def test_streams_agree_with_the_sdk(library: str, asynchronous: bool, stream: tuple[bytes, list[int], bool]) -> None:
    rig = rig_for(library, asynchronous)
    rig.served = stream
    check(rig)


# -- named regressions, one per stream class of issue 11 ----------------------------------------


def one_stream(library: str, raw: bytes, *, loaded: bool = False, cuts: list[int] | None = None) -> Rig:
    rig = Rig(library, asynchronous=False)
    rig.served = (raw, cuts or [], loaded)
    check(rig)
    return rig


def failed_event(code: str = "server_error", *, instructions: int = 0, tools: int = 0, sdk_order: bool = False) -> str:
    response: dict[str, Any] = {
        "id": "resp_regression",
        "object": "response",
        "created_at": 1_760_000_000,
        "status": "failed",
        "background": True,
        "error": {"code": code, "message": "boom"},
        "incomplete_details": None,
        "instructions": "i" * instructions or None,
        "model": "gpt-4.1",
        "output": [],
        "tools": [{"type": "function", "name": "f", "description": "t" * tools}] if tools else [],
    }
    if sdk_order:
        response = dict(sorted(response.items(), key=lambda kv: SDK_ORDER.get(kv[0], len(SDK_ORDER))))
    return json.dumps({"type": "response.failed", "sequence_number": 3, "response": response})


def created_event() -> str:
    """The ``response.created`` (queued) event of the response :func:`failed_event` fails."""
    created = json.loads(failed_event())
    created.update(type="response.created", sequence_number=0)
    created["response"].update(status="queued", error=None)
    return json.dumps(created)


def failed_codes(rig: Rig) -> list[tuple[str | None, str | None]]:
    return [(o.error_code, o.model) for o in rig.observed if o.status == "failed"]


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_type_from_data_not_the_event_line(library: str) -> None:
    raw = f"event: response.output_text.delta\ndata: {failed_event()}\n\n".encode()
    assert failed_codes(one_stream(library, raw)) == [("server_error", "gpt-4.1")]


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_trailing_space_event_line(library: str) -> None:
    raw = f"event: response.failed \ndata: {failed_event()}\n\n".encode()
    assert failed_codes(one_stream(library, raw)) == [("server_error", "gpt-4.1")]


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_no_event_line_type_late_in_data(library: str) -> None:
    data = json.loads(failed_event())
    late = {"sequence_number": 3, "response": data["response"], "type": "response.failed"}
    raw = f"data: {json.dumps(late)}\n\n".encode()
    assert failed_codes(one_stream(library, raw)) == [("server_error", "gpt-4.1")]


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_unterminated_last_event_is_not_counted(library: str) -> None:
    raw = f"event: response.failed\ndata: {failed_event()}\n".encode()
    assert failed_codes(one_stream(library, raw)) == []


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_nothing_after_done_counts(library: str) -> None:
    raw = f"data: [DONE]\n\nevent: response.failed\ndata: {failed_event()}\n\n".encode()
    assert failed_codes(one_stream(library, raw)) == []


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_nothing_after_an_event_the_sdk_cannot_parse(library: str) -> None:
    for bad in (
        "data: not json\n\n",
        "event: response.failed\n\n",
        'data: {"error": {"code": "x"}}\n\n',
        "data: \xff\n\n",
    ):
        raw = bad.encode("latin-1") + f"data: {failed_event()}\n\n".encode()
        assert failed_codes(one_stream(library, raw)) == [], bad


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_large_instructions_before_model_keep_the_model(library: str) -> None:
    raw = f"data: {failed_event(instructions=200 * 1024)}\n\n".encode()
    assert failed_codes(one_stream(library, raw, cuts=list(range(4096, len(raw), 4096)))) == [
        ("server_error", "gpt-4.1")
    ]


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_sdk_order_with_large_tools_is_counted(library: str) -> None:
    raw = f"data: {failed_event(tools=200 * 1024, sdk_order=True)}\n\n".encode()
    assert failed_codes(one_stream(library, raw, cuts=list(range(4096, len(raw), 4096)))) == [
        ("server_error", "gpt-4.1")
    ]


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_a_loaded_event_stream_is_observed(library: str) -> None:
    raw = f"event: response.failed\ndata: {failed_event()}\n\n".encode()
    assert failed_codes(one_stream(library, raw, loaded=True)) == [("server_error", "gpt-4.1")]


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_a_byte_order_mark_hides_the_first_event_from_the_sdk(library: str) -> None:
    raw = f"\ufeffdata: {failed_event()}\n\ndata: {failed_event('rate_limit_exceeded')}\n\n".encode()
    assert failed_codes(one_stream(library, raw)) == [("rate_limit_exceeded", "gpt-4.1")]


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_crlf_split_where_openai_2_ended_a_block(library: str) -> None:
    # openai 2.x yields its buffer at "\r\r" and splits each block into lines on its own, so
    # the LF starting the next chunk is one more blank line: after "id: 1" it dispatches an
    # empty event, which the SDK fails to parse; it never yields the failed response.
    # openai 3.x reads "\r" + "\n" as one CRLF and yields it.
    first = f"id: 1\ndata: {created_event()}\r\r".encode()
    raw = first + f"\ndata: {failed_event()}\n\n".encode()
    rig = one_stream(library, raw, cuts=[len(first)])
    events, exc = rig.events(rig.bare)
    assert [event.type for event in events][:1] == ["response.created"]
    if openai.__version__.startswith("2."):
        assert [event.type for event in events] == ["response.created"]
        assert isinstance(exc, json.JSONDecodeError)
        assert failed_codes(rig) == []
    else:
        assert [event.type for event in events] == ["response.created", "response.failed"]
        assert exc is None
        assert failed_codes(rig) == [("server_error", "gpt-4.1")]
    assert [o.status for o in rig.observed] == ["queued", *(["failed"] if events[1:] else [])]


def delta_event(sequence: int = 0) -> str:
    return json.dumps({"type": "response.output_text.delta", "delta": "hi", "sequence_number": sequence})


@pytest.mark.parametrize(
    ("newline", "gap", "head"),
    [
        ("\n", "", ""),
        ("\r\n", "", ""),
        ("\r", "", ""),
        ("\n", "\n\n", ""),  # blank lines more after the earlier event (no id yet: nothing dispatched)
        ("\r\n", "\r\n", "\r\n\r"),  # a chunk before, ending inside a CRLF: one CRLF for both SDKs
        ("\r\n", "", "\r\r"),  # the LF after "\r\r" in the next chunk: a blank line more for openai 2.x
    ],
    ids=["lf", "crlf", "cr", "lf-gap", "crlf-split", "crlf-split-after-block"],
)
@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_persisting_id_and_extra_blank_line_after_the_failing_event(
    library: str, newline: str, gap: str, head: str
) -> None:
    # In one chunk: an earlier event, then "id: 7" and the failing event, then one blank line
    # more. The last event id persists, so the SDK dispatches a dataless event at that extra
    # blank line (and fails to parse it). The raise-mode cut used to expect dispatches only
    # after data lines, gave up (an internal error) and passed the failing event on. ``head``
    # puts a created event, ending so, in a chunk of its own before.
    first = b""
    if head:
        first = f"data: {created_event()}{head}".encode()
    lead = "\n" if head.endswith("\r") else ""
    rest = f"{lead}data: {delta_event(1)}{newline * 2}{gap}id: 7{newline}data: {failed_event()}{newline * 3}"
    raw = first + rest.encode()
    rig = one_stream(library, raw, cuts=[len(first)] if first else None)
    bare, bare_exc = rig.events(rig.bare)
    assert [event.type for event in bare] == [*(["response.created"] if head else []), *DELTA_FAILED]
    assert isinstance(bare_exc, json.JSONDecodeError)  # the dataless event after the failed one

    rig.recorder.clear()
    raised, raised_exc = rig.events(rig.raising)
    assert dumped(raised) == dumped(bare[:-1])  # what the SDK yields before the exception
    assert isinstance(raised_exc, bgwatch.ServerError)
    assert raised_exc.code == "server_error"
    counted = [essentials(o) for o in rig.recorder.observations]
    assert counted == [essentials(o) for o in expected_observations(bare)]  # what bgwatch counted
    assert [o.status for o in rig.recorder.observations] == [*(["queued"] if head else []), "failed"]
    assert rig.recorder.internal_errors == []


DELTA_FAILED = ["response.output_text.delta", "response.failed"]


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_failing_event_first_in_a_chunk_that_finishes_a_crlf(library: str) -> None:
    # The chunk before ends inside the CRLF of a blank line: openai 2.x still holds the created
    # event then (its buffer ends in "\r\n\r"), until the LF arrives. The failing event is the
    # first of the next chunk: the cut passes that chunk's leading LF before raising.
    first = f"data: {created_event()}\r\n\r".encode()
    raw = first + f"\ndata: {failed_event()}\r\n\r\n".encode()
    rig = one_stream(library, raw, cuts=[len(first)])
    rig.recorder.clear()
    raised, raised_exc = rig.events(rig.raising)
    assert [event.type for event in raised] == ["response.created"]
    assert isinstance(raised_exc, bgwatch.ServerError)
    assert rig.recorder.internal_errors == []
