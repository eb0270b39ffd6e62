"""Fuzzing the classifier and the transports with hypothesis.

Two layers:

* the pure classifier (``classify_body``,
  ``observation_from_mapping``) on arbitrary bytes, JSON of any shape, response-like objects
  with wrong types in every field, huge numbers, deep nesting (past jiter's recursion limit),
  invalid UTF-8 and any Content-Encoding: it returns an observation or None and never raises
  (the differential suite, ``test_differential_bodies.py``, checks it equals the SDK);
* the transports, through the real SDK, over an inner transport serving the fuzzed bytes with
  various status codes, content types and encodings: a client with bgwatch behaves exactly as
  a bare client (same bytes to the SDK, same parse, same exception type), in raise mode it
  may in addition raise only bgwatch's typed exceptions, and no internal error is counted
  for an unencoded body.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import zlib
from collections.abc import Callable
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch._classify import (
    STATUSES,
    Observation,
    classify_body,
    observation_from_mapping,
)
from bgwatch._watcher import known_error_codes, known_incomplete_reasons

from .conftest import LIBRARIES, client_class, response_body, total, transport_class

try:
    import brotli
except ImportError:  # pragma: no cover - a dev dependency
    brotli = None

CALLS = st.sampled_from(["create", "retrieve", "cancel"])

# -- strategies -----------------------------------------------------------------------------

HUGE_INTS = st.integers(min_value=-(10**400), max_value=10**400)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | HUGE_INTS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
CODES = st.sampled_from([*known_error_codes(), "brand_new_code", "Not A Code!", "x" * 300, ""])
REASONS = st.sampled_from([*known_incomplete_reasons(), "brand_new_reason", ""])


def _or_junk(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right type, sometimes anything at all."""
    return st.one_of(strategy, strategy, JSON_VALUES)


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": _or_junk(st.text(min_size=1, max_size=60).map(lambda t: f"resp_{t}") | st.just("x" * 300)),
    "object": _or_junk(st.sampled_from(["response", "response", "response", "list", "response.compaction"])),
    "created_at": _or_junk(st.integers(0, 2 * 10**9) | st.floats(0, 2e9) | HUGE_INTS | st.just(1e300)),
    "status": _or_junk(st.sampled_from([*STATUSES, "exploded", "FAILED"])),
    "background": _or_junk(st.booleans() | st.none()),
    "completed_at": _or_junk(st.none() | st.integers(0, 2 * 10**9) | HUGE_INTS),
    "error": _or_junk(
        st.none() | st.fixed_dictionaries({}, optional={"code": _or_junk(CODES), "message": _or_junk(st.text())})
    ),
    "incomplete_details": _or_junk(st.none() | st.fixed_dictionaries({}, optional={"reason": _or_junk(REASONS)})),
    "instructions": st.none() | st.text(max_size=200),
    "model": _or_junk(st.sampled_from(["gpt-4.1-2025-04-14", "ft:gpt-4o:org:x:1", "bad model!", "m" * 300])),
}
# Sizes around the classifier's prefix steps (8 KiB, 128 KiB).
PADDING = st.sampled_from([0, 0, 10, 1000, 8 * 1024 - 300, 9000, 130 * 1024])


@st.composite
def response_like(draw: st.DrawFn) -> dict[str, Any]:
    """A response-shaped object: the wanted fields (each maybe missing or of a wrong type) in
    any order before ``output`` (padded around the prefix steps), some fields after it."""
    names = draw(st.permutations(list(FIELDS)))
    doc: dict[str, Any] = {}
    for name in names:
        if name in ("id", "object") or draw(st.integers(0, 5)):
            doc[name] = draw(FIELDS[name])
    padding = draw(PADDING)
    if draw(st.integers(0, 9)):
        text = "lorem ipsum " * (padding // 12 + 1)
        doc["output"] = [{"type": "message", "content": [{"type": "output_text", "text": text[:padding]}]}]
    for name in draw(st.lists(st.sampled_from(["usage", "metadata", "tools"]), unique=True, max_size=2)):
        doc[name] = draw(JSON_VALUES)
    return doc


def dumps(doc: Any, style: int) -> bytes:
    """JSON in one of the styles servers use: compact, spaced, pretty-printed, non-ASCII kept."""
    if style == 0:
        return json.dumps(doc, separators=(",", ":")).encode()
    if style == 1:
        return json.dumps(doc).encode()
    if style == 2:
        return json.dumps(doc, indent=2).encode()
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def compress(raw: bytes, encoding: str | None) -> bytes:
    """``raw`` encoded as the Content-Encoding says (None and identity: as is)."""
    if encoding in (None, "identity"):
        return raw
    if encoding == "gzip":
        return gzip.compress(raw)
    if encoding == "deflate":
        return zlib.compress(raw)
    if encoding == "br":
        assert brotli is not None
        return bytes(brotli.compress(raw))
    raise AssertionError(encoding)


ENCODINGS = st.sampled_from([None, "identity", "gzip", "deflate", *(["br"] if brotli is not None else [])])
JUNK_ENCODINGS = st.sampled_from(
    ["gzip", "deflate", "br", "zstd", "compress", "gzip, br", "identity, gzip", "x-gzip", " GZIP ", ",", "\x00"]
) | st.text(max_size=12)


def with_invalid_utf8(raw: bytes, position: int, junk: bytes) -> bytes:
    """``raw`` with ``junk`` (bytes that are not UTF-8) spliced in at ``position``."""
    at = position % (len(raw) + 1)
    return raw[:at] + junk + raw[at:]


INVALID_UTF8 = st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80\x80"])


def check_observation(obs: Observation | None) -> None:
    """An observation holds only bounded values of the declared types."""
    if obs is None:
        return
    assert isinstance(obs.response_id, str) and 0 < len(obs.response_id) <= 256
    assert obs.status is None or obs.status in STATUSES
    for text, limit in (
        (obs.error_code, 256),
        (obs.incomplete_reason, 256),
        (obs.model, 256),
        (obs.error_message, 4096),
    ):
        assert text is None or (isinstance(text, str) and len(text) <= limit)
    for seconds in (obs.created_at, obs.completed_at):
        assert seconds is None or (isinstance(seconds, float) and 0 <= seconds < 1e11)
    assert obs.background is None or isinstance(obs.background, bool)


# -- the classifier -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=3000), call=CALLS, status=st.sampled_from([200, 201, 204, 299]))
def test_arbitrary_bytes_never_raise(body: bytes, call: str, status: int) -> None:
    obs = classify_body(call, status, body)  # type: ignore[arg-type]
    check_observation(obs)


@settings(max_examples=300, deadline=None)
@given(doc=JSON_VALUES, style=st.integers(0, 3), call=CALLS)
def test_json_of_any_shape_never_raises(doc: Any, style: int, call: str) -> None:
    check_observation(classify_body(call, 200, dumps(doc, style)))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=response_like(), style=st.integers(0, 3), encoding=ENCODINGS, call=CALLS)
def test_a_prefix_reads_what_a_full_parse_reads(
    doc: dict[str, Any], style: int, encoding: str | None, call: str
) -> None:
    raw = dumps(doc, style)
    obs = classify_body(call, 200, compress(raw, encoding), content_encoding=encoding)  # type: ignore[arg-type]
    check_observation(obs)
    expected = observation_from_mapping(call, json.loads(raw))  # type: ignore[arg-type]
    assert obs == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(doc=response_like(), position=st.integers(0, 10**6), junk=INVALID_UTF8, call=CALLS)
def test_invalid_utf8_anywhere_never_raises(doc: dict[str, Any], position: int, junk: bytes, call: str) -> None:
    check_observation(classify_body(call, 200, with_invalid_utf8(dumps(doc, 0), position, junk)))  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=2000) | response_like().map(lambda d: dumps(d, 0)), header=JUNK_ENCODINGS)
def test_any_content_encoding_never_raises(body: bytes, header: str) -> None:
    check_observation(classify_body("retrieve", 200, body, content_encoding=header))


@settings(max_examples=300, deadline=None)
@given(mapping=st.dictionaries(st.sampled_from([*FIELDS, "output", "other"]), JSON_VALUES, max_size=12), call=CALLS)
@example(mapping={"object": "response", "id": "r", "status": ["unhashable"]}, call="retrieve")
@example(mapping={"object": "response", "id": "r", "created_at": 10**400, "completed_at": -(10**400)}, call="retrieve")
def test_observation_from_any_mapping(mapping: dict[str, Any], call: str) -> None:
    mapping.setdefault("object", "response")
    check_observation(observation_from_mapping(call, mapping))  # type: ignore[arg-type]


def test_bodies_jiter_refuses_but_the_sdk_reads_are_still_counted() -> None:
    # A lone surrogate escape (json and so the SDK accept it, jiter does not) and a UTF-8 BOM.
    body = response_body("resp_sur", "failed", code="server_error")
    body["instructions"] = "\ud800 broken"
    raw = json.dumps(body).encode()
    assert b"\\ud800" in raw
    for data in (raw, b"\xef\xbb\xbf" + json.dumps(response_body("resp_bom", "completed")).encode()):
        obs = classify_body("retrieve", 200, data)
        assert obs is not None and obs.status in ("failed", "completed"), data[:40]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [10, 100, 1_000, 10_000, 200_000])
def test_deep_nesting(depth: int) -> None:
    """Never an exception; counted exactly when json.loads (the SDK's parser) can read it."""
    body = response_body("resp_deep", "failed", code="server_error")
    deep_output = json.dumps(body).replace('"output": []', f'"output": {nested(depth)}')
    obs = classify_body("retrieve", 200, deep_output.encode())
    try:
        json.loads(deep_output)
    except RecursionError:  # the SDK raises too: it returns no response
        assert obs is None
    else:
        assert obs is not None and obs.status == "failed" and obs.error_code == "server_error"
    deep_error = json.dumps(body).replace('"error": {', f'"deep": {nested(depth)}, "error": {{')
    check_observation(classify_body("retrieve", 200, deep_error.encode()))
    for raw in (nested(depth).encode(), ('{"a":' * depth + "1" + "}" * depth).encode()):
        for encoding in (None, "gzip"):
            assert classify_body("retrieve", 200, compress(raw, encoding), content_encoding=encoding) is None


def test_fields_after_output_are_read_in_a_small_body() -> None:
    # pydantic's model_dump order (a proxy that re-serializes) puts status after output.
    body = response_body("resp_dump", "incomplete", reason="max_output_tokens", output_text="hi")
    reordered = {k: v for k, v in body.items() if k not in ("status", "incomplete_details")}
    reordered |= {"status": "incomplete", "incomplete_details": body["incomplete_details"]}
    obs = classify_body("retrieve", 200, json.dumps(reordered).encode())
    assert obs is not None and obs.status == "incomplete" and obs.incomplete_reason == "max_output_tokens"


# -- the transports, through the real SDK --------------------------------------------------


class Served:
    """What the fake server answers next (set per example)."""

    status = 200
    headers: list[tuple[str, str]] = []
    body = b""


SERVED = Served()
RAISE_ON = ("failed", "incomplete", "cancelled")
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/problem+json",
        "text/plain",
        "text/html",
        "text/event-stream",
        "",
    ]
)


def _inner(library: str, asynchronous: bool) -> Any:
    module = __import__(library)

    def respond(request: Any) -> Any:
        return module.Response(SERVED.status, headers=list(SERVED.headers), content=SERVED.body)

    if asynchronous:

        async def async_respond(request: Any) -> Any:
            return respond(request)

        return module.MockTransport(async_respond)
    return module.MockTransport(respond)


@functools.cache
def clients(library: str) -> tuple[Any, Any, Any, CollectorRegistry]:
    """(bare, observing, raising) sync clients over the same server, and bgwatch's registry."""
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)

    def make(raise_on: tuple[str, ...] | None) -> Any:
        inner = _inner(library, False)
        transport = inner if raise_on is None else transport_class(library)(inner, watcher=watcher, raise_on=raise_on)
        http = client_class(library)(transport=transport)
        return openai.OpenAI(api_key="sk-fuzz", base_url="http://api.test/v1", http_client=http, max_retries=0)

    return make(None), make(()), make(RAISE_ON), registry


Outcome = tuple[str, Any]


def outcome(call: Callable[[], Any]) -> Outcome:
    """What the SDK made of the answer: the bytes and the parse, or the exception's type."""
    try:
        raw = call()
    except Exception as exc:
        return ("raised", exc)
    content = raw.http_response.content
    try:
        parsed = raw.parse()
    except Exception as exc:
        return ("parse failed", (content, type(exc)))
    return ("ok", (content, type(parsed), repr(parsed)))


def same(bare: Outcome, hooked: Outcome) -> bool:
    if bare[0] == "raised" or hooked[0] == "raised":
        return bare[0] == hooked[0] and type(bare[1]) is type(hooked[1])
    return bare == hooked


def check_against_bare(bare: Outcome, observing: Outcome, raising: Outcome) -> None:
    assert same(bare, observing), (bare, observing)
    if raising[0] == "raised" and isinstance(raising[1], bgwatch.BgwatchError):
        assert isinstance(raising[1], bgwatch.BackgroundResponseError)
        assert raising[1].status in RAISE_ON
        assert bare[0] in ("ok", "parse failed"), bare  # bgwatch raised only on a body the SDK got
    else:
        assert same(bare, raising), (bare, raising)


BODIES = (
    st.binary(max_size=2000)
    | JSON_VALUES.map(lambda d: dumps(d, 1))
    | st.tuples(response_like(), st.integers(0, 3)).map(lambda t: dumps(*t))
    | st.tuples(response_like(), st.integers(0, 10**6), INVALID_UTF8).map(
        lambda t: with_invalid_utf8(dumps(t[0], 0), t[1], t[2])
    )
)


@st.composite
def answers(draw: st.DrawFn) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    """(status, headers, body bytes, whether the body is sent unencoded)."""
    raw = draw(BODIES)
    status = draw(st.sampled_from([200, 200, 200, 201, 400, 404, 500]))
    headers = [("x-request-id", draw(st.sampled_from(["req_1", "", "r\u00e9q", "a" * 500])))]
    content_type = draw(CONTENT_TYPES)
    if content_type:
        headers.append(("content-type", content_type))
    encoding = draw(st.sampled_from([None, None, "gzip", "deflate", "br", "junk"]))
    plain = True
    if encoding == "junk":
        headers.append(("content-encoding", draw(JUNK_ENCODINGS)))
        plain = False
    elif encoding is not None and (encoding != "br" or brotli is not None):
        right = draw(st.booleans())  # a body that matches its header, or one that does not
        raw = compress(raw, encoding) if right else raw
        headers.append(("content-encoding", encoding))
        plain = False
    return status, headers, raw, plain


@pytest.mark.parametrize("library", LIBRARIES)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(answer=answers(), kind=st.sampled_from(["retrieve", "create", "cancel", "embeddings"]))
def test_transport_changes_nothing_the_sdk_sees(library: str, answer: Any, kind: str) -> None:
    status, headers, body, plain = answer
    bare, observing, raising, registry = clients(library)
    errors_before = total(registry, "bgwatch_internal_errors_total")
    SERVED.status, SERVED.headers, SERVED.body = status, headers, body

    def calling(client: Any) -> Callable[[], Any]:
        raw = client.with_raw_response
        if kind == "retrieve":
            return lambda: raw.responses.retrieve("resp_fuzz")
        if kind == "cancel":
            return lambda: raw.responses.cancel("resp_fuzz")
        if kind == "create":
            return lambda: raw.responses.create(model="gpt-4.1", input="hi", background=True)
        return lambda: raw.embeddings.create(model="text-embedding-3-small", input="hi")

    check_against_bare(outcome(calling(bare)), outcome(calling(observing)), outcome(calling(raising)))
    if plain and not any(k == "content-type" and "event-stream" in v for k, v in headers):
        assert total(registry, "bgwatch_internal_errors_total") == errors_before


@pytest.mark.parametrize("library", LIBRARIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(answer=answers())
def test_async_transport_changes_nothing_the_sdk_sees(library: str, answer: Any) -> None:
    status, headers, body, _ = answer
    SERVED.status, SERVED.headers, SERVED.body = status, headers, body
    registry = CollectorRegistry()
    watcher = bgwatch.Watcher(registry=registry)

    async def run() -> list[Outcome]:
        results = []
        for raise_on in (None, (), RAISE_ON):
            inner = _inner(library, True)
            transport = (
                inner if raise_on is None else transport_class(library, True)(inner, watcher=watcher, raise_on=raise_on)
            )
            async with client_class(library, True)(transport=transport) as http:
                client = openai.AsyncOpenAI(
                    api_key="sk-fuzz", base_url="http://api.test/v1", http_client=http, max_retries=0
                )
                try:
                    raw = await client.responses.with_raw_response.retrieve("resp_fuzz")
                except Exception as exc:
                    results.append(("raised", exc))
                    continue
                results.append(outcome(lambda raw=raw: raw))
        return results

    bare, observing, raising = asyncio.run(run())
    check_against_bare(bare, observing, raising)


def test_a_fuzzed_failed_body_raises_the_typed_exception() -> None:
    """The raise-mode branch of the property above, on purpose once (hypothesis may miss it)."""
    library = LIBRARIES[0]
    bare, observing, raising, _ = clients(library)
    body = json.dumps(response_body("resp_f", "failed", code="brand_new_code", message="m")).encode()
    SERVED.status, SERVED.headers, SERVED.body = 200, [("content-type", "application/json")], body
    with pytest.raises(bgwatch.UnrecognizedFailure) as info:
        raising.responses.retrieve("resp_f")
    assert info.value.code == "brand_new_code" and info.value.response_id == "resp_f"
    assert bare.responses.retrieve("resp_f").status == observing.responses.retrieve("resp_f").status == "failed"
