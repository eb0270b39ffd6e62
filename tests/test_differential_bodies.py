"""Differential tests of non-streamed bodies, with the SDK as the oracle.

Random response bodies (any key order including the SDK's own dump order and sorted keys,
0 to 300 KiB, look-alike nested keys, unicode escapes in keys and values, duplicate keys
also straddling ``"output"``, UTF-8 with and without a byte order mark, UTF-16, UTF-32,
every content type and content coding of issue 11, every status, known, unknown and absent
error codes, values of the wrong type, non-response objects, non-2xx answers) are served to a
real ``OpenAI`` / ``AsyncOpenAI`` client three times: bare, with bgwatch observing, and with
bgwatch raising. For every body:

* what the bgwatch clients' SDK returned (or raised) and the bytes and headers its HTTP
  response held are exactly the bare client's;
* bgwatch recorded exactly the observation the SDK's returned ``Response`` calls for (none
  when the SDK returned no Response), and no internal error;
* the raising client raised bgwatch's typed exception exactly when that observation's status
  is in ``raise_on``, with its code and reason.

httpx2 and legacy httpx, sync and async, retrieve, create and cancel; an in-process transport
for speed (over 5,000 bodies per run) plus a real-socket variant on fewer bodies. The named
``test_regression_*`` tests pin each divergence class of issue 11 on its own.
"""

from __future__ import annotations

import asyncio
import gzip
import http.server
import json
import random
import threading
import tracemalloc
import typing
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseError
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch._classify import STATUSES, Observation, observation_from_mapping

from .conftest import LIBRARIES, answering, client_class, response_body, sample, total, transport_class

try:
    import brotli
except ImportError:  # pragma: no cover - a dev dependency
    brotli = None

RAISE_ON = ("failed", "incomplete", "cancelled")
REQUEST_ID = "req_differential"
KNOWN_CODES = [code for code in typing.get_args(ResponseError.model_fields["code"].annotation) if code]
SDK_ORDER = {name: rank for rank, name in enumerate(Response.model_fields)}
LOOK_ALIKES = (
    '"output": [',
    '"status": "failed"',
    '{"status": "completed", "output": null}',
    '"error": {"code": "server_error"}',
    '\\"status\\": \\"failed\\"',
    "\u00e9\u4e2d\U0001f600",
)
CONTENT_TYPES = (
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    None,
    "text/json",
    "application/x-json",
    "text/html; charset=latin-1",
)
# Codings the HTTP libraries ignore (the body goes through undecoded) and ones they apply.
IGNORED_CODINGS = ("UTF-8", "none", "binary", "x-gzip", "compress", "identity")
APPLIED_CODINGS = ("gzip", "deflate", *(("br",) if brotli is not None else ()))
TEXT_ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le")


# -- bodies ------------------------------------------------------------------------------------


@dataclass
class Served:
    """One answer of the fake server."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def _value(draw: Any, choices: list[Any]) -> Any:
    return draw(st.sampled_from(choices))


@st.composite
def documents(draw: Any) -> dict[str, Any]:
    """A response-like object: realistic most of the time, wrong in any field some of the time."""
    n = draw(st.integers(0, 2**32))
    status = _value(draw, [*STATUSES, *STATUSES, "exploded", 3, None])
    doc: dict[str, Any] = {
        "id": _value(draw, [f"resp_{n:08x}"] * 8 + ["", 5, None, "x" * 257, "r\u00e9sp\ud83d\ude00"]),
        "object": _value(draw, ["response"] * 12 + ["response.input_tokens", "list", "Response", None]),
        "created_at": _value(draw, [1_760_000_000, 1_760_000_000.25, True, "1760000000", 10**400, -3, None]),
        "status": status,
        "background": _value(draw, [True, True, True, False, None, "yes", 1, 2, "maybe"]),
        "completed_at": _value(draw, [None, 1_760_000_042, 1_760_000_042.5, "12", True, 10**400, 1e300]),
        "error": None,
        "incomplete_details": None,
        "instructions": draw(st.sampled_from(["", *LOOK_ALIKES])) * draw(st.integers(0, 3)),
        "model": _value(draw, ["gpt-4.1-2025-04-14", "o3-deep-research", "m" * 300, 5, None]),
        "output": [],
        "service_tier": _value(draw, ["default", "flex", "priority", None, 3, "t" * 80]),
        "tools": [],
        "usage": None,
        "metadata": {},
    }
    if status == "failed" or draw(st.integers(0, 9)) == 0:
        code = _value(draw, [*KNOWN_CODES, "brand_new_code", "Bad Code!", None, 42, "c" * 300])
        doc["error"] = _value(
            draw,
            [
                {"code": code, "message": draw(st.sampled_from(["boom", "", *LOOK_ALIKES]))},
                {"code": code},
                {"message": "no code"},
                "server_error",
                [code],
            ],
        )
    if status == "incomplete" or draw(st.integers(0, 9)) == 0:
        reason = _value(draw, ["max_output_tokens", "content_filter", "max_messages", "steered", "new_reason", 1])
        doc["incomplete_details"] = _value(draw, [{"reason": reason}, {"reason": reason}, reason, None])
    if draw(st.booleans()):
        doc["usage"] = _value(
            draw,
            [
                {"input_tokens": 36, "output_tokens": 87, "total_tokens": 123},
                {
                    "input_tokens": "36",
                    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                    "output_tokens": 87,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": 123,
                },
                {"input_tokens": 3.0, "output_tokens": True},
                {"input_tokens": 10**15},
                [1, 2],
            ],
        )
    if draw(st.booleans()):  # look-alike keys nested in output items and tools
        item_status = _value(draw, list(STATUSES))
        doc["output"] = [
            {
                "id": f"msg_{n:x}",
                "type": "message",
                "status": item_status,
                "role": "assistant",
                "content": [{"type": "output_text", "text": draw(st.sampled_from(LOOK_ALIKES)), "annotations": []}],
            }
        ]
        doc["tools"] = [{"type": "function", "name": "f", "parameters": {"status": "failed", "output": {"id": "x"}}}]
    size = _value(draw, [0] * 12 + [2_000, 9_000, 70_000, 300 * 1024])
    if size:  # long text inside output (the bulk of real bodies) or instructions
        padding = 'The quick brown fox \\ " jumps. ' * (size // 32 + 1)
        target = draw(st.sampled_from(["output", "instructions", "tools"]))
        if target == "output":
            doc["output"].append({"type": "message", "status": "completed", "content": padding[:size]})
        elif target == "tools":
            doc["tools"].append({"type": "function", "name": "g", "description": padding[:size]})
        else:
            doc["instructions"] = padding[:size]
    for key in draw(st.sets(st.sampled_from(list(doc)), max_size=3)):
        if key not in ("id", "object"):
            del doc[key]
    if draw(st.integers(0, 30)) == 0:
        del doc["object"]
    return doc


def _key_text(key: str, draw: Any) -> str:
    """A JSON key, sometimes with unicode escapes that json.loads folds back."""
    if draw(st.integers(0, 9)):
        return json.dumps(key)
    return '"' + "".join(f"\\u{ord(c):04x}" if draw(st.booleans()) else c for c in key) + '"'


@st.composite
def serialized(draw: Any, doc: dict[str, Any]) -> str:
    """``doc`` as JSON text: any key order, escapes, duplicates and whitespace."""
    keys = list(doc)
    order = draw(st.sampled_from(["api", "sdk", "sorted", "random"]))
    if order == "sdk":
        keys.sort(key=lambda k: SDK_ORDER.get(k, len(SDK_ORDER)))
    elif order == "sorted":
        keys.sort()
    elif order == "random":
        keys = draw(st.permutations(keys))
    ensure_ascii = draw(st.booleans())
    separator = draw(st.sampled_from([(",", ":"), (", ", ": "), (",\n  ", " : ")]))
    members = [(k, json.dumps(doc[k], ensure_ascii=ensure_ascii)) for k in keys]
    for _ in range(draw(st.integers(0, 2)) if draw(st.integers(0, 3)) == 0 else 0):
        # A duplicate of a field bgwatch reads, anywhere (before or after "output"): json.loads
        # keeps the last one, and so does the SDK.
        key = draw(st.sampled_from(["status", "error", "id", "object", "model", "usage", "background"]))
        other = draw(
            st.sampled_from(
                ["completed", "failed", "cancelled", None, {"code": "server_error", "message": "dup"}, "response"]
            )
        )
        members.insert(draw(st.integers(0, len(members))), (key, json.dumps(other)))
    parts = [f"{_key_text(k, draw)}{separator[1]}{v}" for k, v in members]
    return "{" + separator[0].join(parts) + "}"


def _compress(data: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(data, compresslevel=1)
    if coding == "deflate":
        return zlib.compress(data, 1)
    assert brotli is not None
    return bytes(brotli.compress(data, quality=0))


@st.composite
def answers(draw: Any) -> Served:
    """A whole answer: status, headers (content type, coding, request id) and body bytes."""
    if draw(st.integers(0, 40)) == 0:
        text = draw(st.sampled_from(["", "null", "[1]", '"response"', "{", "not json", "NaN"]))
    else:
        text = draw(serialized(draw(documents())))
    encoding = draw(st.sampled_from(list(TEXT_ENCODINGS[:1] * 6 + TEXT_ENCODINGS)))
    try:
        body = text.encode(encoding)
    except UnicodeEncodeError:  # a lone surrogate from an escape-free dump: keep it escaped
        body = text.encode("utf-8", "surrogatepass")
    headers = [("x-request-id", REQUEST_ID)]
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if content_type is not None:
        headers.append(("content-type", content_type))
    coding_kind = draw(st.sampled_from(["none"] * 4 + ["applied", "stacked", "ignored", "corrupt"]))
    if coding_kind == "applied":
        coding = draw(st.sampled_from(APPLIED_CODINGS))
        body = _compress(body, coding)
        headers.append(("content-encoding", coding))
    elif coding_kind == "stacked":
        layers = draw(st.integers(2, 7))
        codings = [draw(st.sampled_from(APPLIED_CODINGS)) for _ in range(layers)]
        if len(body) > 20_000:
            codings = codings[:3]
        for coding in codings:
            body = _compress(body, coding)
        if draw(st.booleans()):
            headers.append(("content-encoding", ", ".join(codings)))
        else:  # one header line per coding
            headers.extend(("content-encoding", coding) for coding in codings)
    elif coding_kind == "ignored":
        coding = draw(st.sampled_from(IGNORED_CODINGS))
        if draw(st.booleans()):
            body = gzip.compress(body, compresslevel=1)  # the library will not undo it
        headers.append(("content-encoding", coding))
    elif coding_kind == "corrupt":
        body = gzip.compress(body, compresslevel=1)
        body = body[: draw(st.integers(0, len(body) - 1))]
        headers.append(("content-encoding", "gzip"))
    status = draw(st.sampled_from([200] * 30 + [201, 202, 400, 404, 500]))
    return Served(status, headers, body)


# -- the clients ---------------------------------------------------------------------------------


class Recorder:
    """A watcher sink keeping every observation and internal error it is told about."""

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.internal_errors: list[str] = []

    def observed(self, observation: Observation, *args: Any) -> None:
        self.observations.append(observation)

    def adjust_in_flight(self, delta: int) -> None:
        return None

    def internal_error(self, stage: str) -> None:
        self.internal_errors.append(stage)

    def clear(self) -> None:
        self.observations.clear()
        self.internal_errors.clear()


class Rig:
    """Bare, observing and raising SDK clients of one library over one served answer."""

    def __init__(self, library: str, asynchronous: bool, transport_factory: Callable[[str, bool], Any]) -> None:
        self.asynchronous = asynchronous
        self.recorder = Recorder()
        self.watcher = bgwatch.Watcher(registry=CollectorRegistry(), sinks=[self.recorder])
        self.seen: dict[str, Any] = {}
        cls = transport_class(library, asynchronous)
        sdk = openai.AsyncOpenAI if asynchronous else openai.OpenAI

        def client(name: str, transport: Any) -> Any:
            hooks = {"response": [self._capture(name)]}
            http = client_class(library, asynchronous)(transport=transport, event_hooks=hooks)
            return sdk(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0)

        self.bare = client("bare", transport_factory(library, asynchronous))
        self.observing = client("observing", cls(transport_factory(library, asynchronous), watcher=self.watcher))
        self.raising = client(
            "raising", cls(transport_factory(library, asynchronous), watcher=self.watcher, raise_on=RAISE_ON)
        )

    def _capture(self, name: str) -> Callable[[Any], Any]:
        if self.asynchronous:

            async def capture_async(response: Any) -> None:
                self.seen[name] = response

            return capture_async

        def capture(response: Any) -> None:
            self.seen[name] = response

        return capture

    def call(self, client: Any, call: str) -> Any:
        """What ``client.responses.<call>`` returned, or the exception it raised."""
        return call_sdk(client, call, self.asynchronous)


def call_sdk(client: Any, call: str, asynchronous: bool = False) -> Any:
    """What ``client.responses.<call>`` returned, or the exception it raised."""
    if call == "retrieve":
        make = lambda: client.responses.retrieve("resp_asked")  # noqa: E731
    elif call == "cancel":
        make = lambda: client.responses.cancel("resp_asked")  # noqa: E731
    else:
        make = lambda: client.responses.create(model="gpt-4.1", input="hi", background=True)  # noqa: E731
    try:
        if asynchronous:
            return LOOP.run_until_complete(make())
        return make()
    except Exception as exc:
        return exc


LOOP = asyncio.new_event_loop()
SERVED = Served()


def serving(library: str, asynchronous: bool, answer: Served) -> Any:
    """An inner transport answering ``answer`` from memory, its body as a stream (as from a socket)."""
    module = __import__(library)
    return answering(
        module,
        asynchronous,
        lambda request: module.Response(answer.status, headers=answer.headers, stream=module.ByteStream(answer.body)),
    )


def in_process(library: str, asynchronous: bool) -> Any:
    """An inner transport answering whatever ``SERVED`` holds when asked."""
    return serving(library, asynchronous, SERVED)


# -- the oracle ----------------------------------------------------------------------------------


def sdk_view(result: Any) -> dict[str, Any] | None:
    """The fields of the ``Response`` the SDK returned, as plain values (None: no Response)."""
    if not isinstance(result, Response):
        return None
    view: dict[str, Any] = {}
    for name, value in result.__dict__.items():
        view[name] = dict(value.__dict__) if isinstance(value, openai.BaseModel) else value
    return view


def expected_observation(call: str, result: Any) -> Observation | None:
    """What bgwatch must record for what the SDK returned: the SDK's values under bgwatch's types."""
    view = sdk_view(result)
    if view is None:
        return None
    return observation_from_mapping(call, view, REQUEST_ID)  # type: ignore[arg-type]


def summary(result: Any) -> tuple[str, str]:
    """A comparable form of what a call returned or raised."""
    if isinstance(result, BaseException):
        return type(result).__name__, str(result)
    if isinstance(result, openai.BaseModel):
        return type(result).__name__, repr(result.__dict__)
    return type(result).__name__, repr(result)


def check(rig: Rig, call: str) -> None:
    """One served answer through the three clients; every assertion of the module's docstring."""
    rig.recorder.clear()
    rig.seen.clear()
    bare = rig.call(rig.bare, call)
    expected = expected_observation(call, bare)

    observed = rig.call(rig.observing, call)
    assert summary(observed) == summary(bare)
    assert rig.recorder.observations == ([expected] if expected is not None else [])
    assert rig.recorder.internal_errors == []
    seen, reference = rig.seen.get("observing"), rig.seen.get("bare")
    assert (seen is None) == (reference is None)
    if seen is not None and hasattr(reference, "_content"):
        assert seen.content == reference.content
        assert _stable(seen.headers.raw) == _stable(reference.headers.raw)

    rig.recorder.clear()
    raised = rig.call(rig.raising, call)
    must_raise = (
        expected is not None
        and expected.status in RAISE_ON
        and not (call == "cancel" and expected.status == "cancelled")
    )
    if must_raise:
        assert expected is not None
        assert isinstance(raised, bgwatch.BackgroundResponseError), summary(raised)
        assert (raised.status, raised.code, raised.reason, raised.response_id) == (
            expected.status,
            expected.error_code if expected.status == "failed" else None,
            expected.incomplete_reason if expected.status == "incomplete" else None,
            expected.response_id,
        )
    else:
        assert not isinstance(raised, bgwatch.BackgroundResponseError)
        assert summary(raised) == summary(bare)
    assert rig.recorder.observations == ([expected] if expected is not None else [])
    assert rig.recorder.internal_errors == []


def _stable(raw_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers without ``Date`` (a real server's clock moves between the calls)."""
    return [(k, v) for k, v in raw_headers if k.lower() != b"date"]


RIGS: dict[tuple[str, bool], Rig] = {}


def rig_for(library: str, asynchronous: bool) -> Rig:
    key = (library, asynchronous)
    if key not in RIGS:
        RIGS[key] = Rig(library, asynchronous, in_process)
    return RIGS[key]


CALLS = st.sampled_from(["retrieve", "retrieve", "create", "cancel"])
DIFFERENTIAL = settings(
    max_examples=1_300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("library", LIBRARIES)
@DIFFERENTIAL
@given(answer=answers(), call=CALLS)
def test_differential(library: str, asynchronous: bool, answer: Served, call: str) -> None:
    SERVED.__dict__.update(answer.__dict__)
    check(rig_for(library, asynchronous), call)


# -- over real sockets -----------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(SERVED.status)
        for name, value in SERVED.headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(SERVED.body)))
        self.end_headers()
        self.wfile.write(SERVED.body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def socket_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("library", LIBRARIES)
def test_differential_over_real_sockets(library: str, asynchronous: bool, socket_url: str) -> None:
    module = __import__(library)

    def over_socket(library: str, asynchronous: bool) -> Any:
        transport = module.AsyncHTTPTransport() if asynchronous else module.HTTPTransport()
        return _Rebase(transport, socket_url, module, asynchronous)

    rig = Rig(library, asynchronous, over_socket)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(answer=answers(), call=CALLS)
    def run(answer: Served, call: str) -> None:
        SERVED.__dict__.update(answer.__dict__)
        check(rig, call)

    run()


def _Rebase(transport: Any, base: str, module: Any, asynchronous: bool) -> Any:
    """The real HTTP transport, with ``http://api.test`` requests sent to the loopback server."""

    def moved(request: Any) -> Any:
        url = module.URL(base).copy_with(path=request.url.path, query=request.url.query)
        return module.Request(request.method, url, headers=request.headers, content=request.content)

    if asynchronous:

        class AsyncRebase(module.AsyncBaseTransport):  # type: ignore[misc,name-defined]
            async def handle_async_request(self, request: Any) -> Any:
                return await transport.handle_async_request(moved(request))

        return AsyncRebase()

    class Rebase(module.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            return transport.handle_request(moved(request))

    return Rebase()


# -- one named regression test per divergence class of issue 11 ------------------------------------


def served_client(library: str, answer: Served, **options: Any) -> tuple[openai.OpenAI, CollectorRegistry]:
    """A sync SDK client with bgwatch over ``answer`` and the registry it counts into."""
    registry = CollectorRegistry()
    transport = transport_class(library)(serving(library, False, answer), registry=registry, **options)
    http = client_class(library)(transport=transport)
    return openai.OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0), registry


def failed_body(response_id: str, size: int = 0) -> dict[str, Any]:
    return response_body(response_id, "failed", code="server_error", output_text="x" * size)


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_field_order_sdk_dump(library: str) -> None:
    """Class 1: status, error, id, object, model after a large output (the SDK's own dump order)."""
    shapes = [("sdk", 0), ("sdk", 200_000), ("sorted", 0), ("sorted", 200_000)]  # tool schemas push status back
    for n, (order, output_size) in enumerate(shapes):
        body = failed_body(f"resp_order{n}", output_size)
        body["tools"] = [{"type": "function", "name": "f", "description": "d" * 20_000, "parameters": {}}]
        body["prompt"] = {"id": "pmpt_1", "variables": {"context": "c" * 20_000}}  # sorts between output and status
        keys = sorted(body, key=lambda k: SDK_ORDER.get(k, 99)) if order == "sdk" else sorted(body)
        raw = json.dumps({k: body[k] for k in keys}).encode()
        assert raw.index(b'"status": "failed"') > raw.index(b'"output"') and raw.index(b'"status": "failed"') > 8 * 1024
        answer = Served(200, [("content-type", "application/json")], raw)
        client, registry = served_client(library, answer)
        assert client.responses.retrieve(f"resp_order{n}").status == "failed"
        assert sample(registry, "bg_response_failed_total", code="server_error", model=body["model"]) == 1
        raising, _ = served_client(library, answer, raise_on=("failed",))
        with pytest.raises(bgwatch.ServerError):
            raising.responses.retrieve(f"resp_order{n}")


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("content_type", ["text/plain", None, "text/json", "application/x-json"])
def test_regression_content_type_is_not_the_sdks_criterion(library: str, content_type: str | None) -> None:
    """Class 4: the SDK parses a Response's JSON whatever the Content-Type says."""
    headers = [] if content_type is None else [("content-type", content_type)]
    answer = Served(200, headers, json.dumps(failed_body("resp_ct")).encode())
    client, registry = served_client(library, answer)
    assert client.responses.retrieve("resp_ct").status == "failed"
    assert total(registry, "bg_response_failed_total") == 1
    # A body the SDK cannot parse: an error under a JSON-ish type, else the text; nothing counted.
    client, registry = served_client(library, Served(200, headers, b"<html>busy</html>"))
    if content_type is not None and content_type.endswith("json"):
        with pytest.raises(ValueError):
            client.responses.retrieve("resp_ct")
    else:
        assert client.responses.retrieve("resp_ct") == "<html>busy</html>"
    assert total(registry, "bg_response_polls_total") == 0


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_content_encoding_as_the_http_library(library: str) -> None:
    """Class 5: ignored codings ignored, unknown ones leave the body unparsed, stacking capped."""
    raw = json.dumps(failed_body("resp_ce")).encode()
    for coding in ("UTF-8", "none", "binary"):
        client, registry = served_client(library, Served(200, [("content-encoding", coding)], raw))
        assert client.responses.retrieve("resp_ce").status == "failed"
        assert total(registry, "bg_response_failed_total") == 1, coding
    # x-gzip is no coding either library knows: the gzipped bytes reach json.loads, which fails.
    headers = [("content-type", "application/json"), ("content-encoding", "x-gzip")]
    client, registry = served_client(library, Served(200, headers, gzip.compress(raw)))
    with pytest.raises(ValueError, match="decode"):
        client.responses.retrieve("resp_ce")
    assert total(registry, "bg_response_polls_total") == 0
    assert total(registry, "bgwatch_internal_errors_total") == 0


def test_regression_six_stacked_gzips_are_not_decoded() -> None:
    """Class 5: a small body gzipped six times (128 MiB decoded): httpx2 refuses, and so does bgwatch."""
    pytest.importorskip("httpx2")
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # a gzip stream, written piecewise
    layer = compressor.compress(json.dumps(failed_body("resp_bomb")).encode())
    spaces = b" " * (1024 * 1024)  # trailing whitespace: valid JSON once decoded
    for _ in range(128):
        layer += compressor.compress(spaces)
    layer += compressor.flush()
    for _ in range(5):
        layer = gzip.compress(layer, 9)
    assert len(layer) < 64 * 1024
    answer = Served(200, [("content-type", "application/json"), ("content-encoding", ", ".join(["gzip"] * 6))], layer)
    client, registry = served_client("httpx2", answer, raise_on=("failed",))
    tracemalloc.start()
    try:
        with pytest.raises(openai.APIConnectionError):  # httpx2's DecodingError, as the SDK reports it
            client.responses.retrieve("resp_bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024
    assert total(registry, "bg_response_polls_total") == 0


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32", "utf-32-le"])
def test_regression_bom_utf16_utf32(library: str, encoding: str) -> None:
    """Class 6: json.loads detects a UTF-8 BOM, UTF-16 and UTF-32; the SDK reads them, so do we."""
    raw = json.dumps(failed_body("resp_enc")).encode(encoding)
    client, registry = served_client(library, Served(200, [("content-type", "application/json")], raw))
    assert client.responses.retrieve("resp_enc").status == "failed"
    assert total(registry, "bg_response_failed_total") == 1


@pytest.mark.parametrize("library", LIBRARIES)
def test_regression_duplicate_keys_straddling_output(library: str) -> None:
    """Class 7: the last of duplicate keys wins, also across ``"output"``."""
    fields = (
        '"id": "resp_dup", "object": "response", "created_at": 1760000000, "completed_at": null,'
        ' "background": true, "incomplete_details": null, "model": "gpt-4.1",'
    )
    failure = '"error": {"code": "server_error", "message": "m"}'
    padding = '{"padding": "' + "p" * 100_000 + '"}'
    cases = {
        # every field bgwatch reads before "output", then the status the SDK keeps after it
        "{" + fields + '"status": "in_progress", "error": null, "output": [], "status": "failed",' + failure + "}": (
            "failed",
            1,
        ),
        "{" + fields + '"status": "failed",' + failure + ', "output": [' + padding + '], "status": "completed"}': (
            "completed",
            0,
        ),
        "{" + fields + '"status": "completed", "error": null, "output": [{"status": "completed"}],'
        ' "status": "failed", ' + failure + "}": ("failed", 1),
    }
    for text, (status, failures) in cases.items():
        client, registry = served_client(library, Served(200, [("content-type", "application/json")], text.encode()))
        assert client.responses.retrieve("resp_dup").status == status
        assert total(registry, "bg_response_failed_total") == failures
        assert sample(registry, "bg_response_polls_total", status=status) == 1


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(answer=answers(), call=CALLS, seed=st.integers(0, 2**16))
def test_differential_counters_from_a_fresh_registry(answer: Served, call: str, seed: int) -> None:
    """The Prometheus counters of a fresh registry say what the SDK returned (one call each)."""
    library = random.Random(seed).choice(LIBRARIES)
    client, registry = served_client(library, answer)
    http = client_class(library)(transport=serving(library, False, answer))
    bare = openai.OpenAI(api_key="sk-test", base_url="http://api.test/v1", http_client=http, max_retries=0)
    expected = expected_observation(call, call_sdk(bare, call))
    call_sdk(client, call)
    assert total(registry, "bgwatch_internal_errors_total") == 0
    polls = total(registry, "bg_response_polls_total")
    created = total(registry, "bg_response_created_total")
    finished = total(registry, "bg_response_finished_total")
    if expected is None:
        assert polls == created == finished == 0
        return
    if call == "retrieve":
        assert polls == 1
        assert sample(registry, "bg_response_polls_total", status=expected.status or "unknown") == 1
    else:
        assert polls == 0
    if call == "create":
        assert created == (1 if expected.background is True and expected.status is not None else 0)
    counted = (
        expected.terminal
        and expected.background is not False
        and not (call == "create" and expected.background is None)
    )
    assert finished == (1 if counted else 0)
    if counted and expected.status == "failed":
        assert total(registry, "bg_response_failed_total") == 1
