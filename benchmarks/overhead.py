"""bgwatch's overhead against the bare openai SDK, a naive wrapper and peer instrumentations.

Run: ``.venv/bin/python benchmarks/overhead.py [--quick] [--rounds N] [--batch-ms MS]``
(``make bench`` runs it with the other benchmarks through ``benchmarks/run.py``).

Every call goes through the real SDK (``client.responses.retrieve()`` and friends) down to
an in-process "server": a transport of the SDK's HTTP library that answers each request
with a fresh response object over prebuilt bytes. Every variant of a case talks to the
same server class with the same bytes; only the layer under test differs:

* ``bare``: ``Client(transport=server)``, the baseline of every ratio;
* ``bgwatch``: ``Client(transport=bgwatch.Httpx2Transport(server, watcher=...))``, metrics
  into a private Prometheus registry (the default configuration, tracing off: bodies are
  recorded when the SDK parses them);
* ``bgwatch-raise``: the same with ``raise_on=("failed",)`` (the bodies here never fail), where
  the transport reads and parses each body itself;
* ``floor``: a do-nothing wrapper transport (what any wrapper at all costs);
* ``rewrap``: a wrapper that reads the body and hands back a fresh response over it,
  parsing nothing (the least a body-reading wrapper can do);
* ``naive``: a wrapper that reads the body and ``json.loads`` all of it (what a
  straightforward implementation does; its cost grows with the body);
* ``bgwatch-again`` (2 KB, API order): a second client exactly like ``bgwatch``, an A/A check:
  how far apart the method puts two identical variants in the same run;

Bodies come in three key orders (``api``: the live API's; ``sdk``: the SDK's own
``Response.model_dump_json()``, as Python gateways forward them; ``sorted``).
* peers (section "peers"): bgwatch with spans, OpenTelemetry's httpx instrumentation,
  OpenInference's OpenAI instrumentation, all exporting into one SDK tracer provider
  whose span processor discards spans (so we time making spans, not shipping them).

Timing: the variants of a case run in short batches (~``--batch-ms``, default 5 ms), in an
order shuffled afresh each round, for ``--rounds`` rounds (default 150), so that drifts and
bursts of load from other processes, and what ran just before, hit every variant alike. A
variant's ratio is taken per round against the baseline's batch of the same round; the
table shows its median over all rounds and, as spread, the lowest and highest median of five consecutive blocks of
rounds (how far a run a fifth as long could have strayed). "added" is the median per-round
difference per call. Nothing is pinned (no root needed). glibc's malloc thresholds are fixed
through ``GLIBC_TUNABLES`` (the script re-executes itself; ``--keep-malloc`` to skip): with
the default, moving threshold a 1 MB body is served from fresh, page-faulting mappings in some
phases of a run and from the heap in others, and the 1 MB timings jump by 2x between runs.

Memory: ``tracemalloc`` over 20,000 creates through the SDK with bgwatch, counting what
bgwatch's own source lines still hold afterwards, per in-flight response.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import openai
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

MODEL = "gpt-4.1-2025-04-14"
RESPONSE_ID = "resp_68c1f0e2a4b88190a1b2c3d4e5f60718293a4b5c6d7e8f90"
SIZES: dict[str, int] = {"2 KB": 2 * 1024, "100 KB": 100 * 1024, "1 MB": 1024 * 1024}
THREADS = 16

MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"

# Targets from the issue: ratio with/without bgwatch.
TARGET_RESPONSES = 1.03
TARGET_UNRELATED = 1.01
TARGET_BYTES_PER_IN_FLIGHT = 300


# -- the in-process "server" ----------------------------------------------------------


def response_document(response_id: str, status: str, size: int = 0) -> dict[str, Any]:
    """A Responses API body in the live API's key order, padded to about ``size`` bytes."""
    terminal = status in ("completed", "failed", "cancelled", "incomplete")
    doc: dict[str, Any] = {
        "id": response_id,
        "object": "response",
        "created_at": 1_760_000_000,
        "status": status,
        "background": True,
        "billing": {"payer": "developer"},
        "completed_at": 1_760_000_042 if terminal else None,
        "error": None,
        "incomplete_details": None,
        "instructions": "You are a careful assistant. Answer in the user's language.",
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": MODEL,
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": {},
    }
    if status == "completed":
        doc["usage"] = {
            "input_tokens": 36,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 87,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 123,
        }
        message = {
            "id": "msg_68c1f0e5b1c8819093c0e4f7a2d6b5e40a1b2c3d4e5f6a7b",
            "type": "message",
            "status": "completed",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": ""}],
            "role": "assistant",
        }
        doc["output"] = [message]
        missing = size - len(json.dumps(doc, separators=(",", ":")))
        if missing > 0:
            words = "The quick brown fox jumps over the lazy dog. "
            message["content"][0]["text"] = (words * (missing // len(words) + 1))[:missing]
    return doc


def encode(document: Any) -> bytes:
    """Compact JSON bytes, as the API sends them."""
    return json.dumps(document, separators=(",", ":")).encode()


ORDERS = ("api", "sdk", "sorted")
"""Key orders of a body: the live API's; the SDK's own ``Response.model_dump_json()`` (what
Python gateways forward: ``status``, ``background`` and ``usage`` after ``output`` and
``tools``); sorted keys (sorted-key serializers)."""


def encode_in_order(document: dict[str, Any], order: str) -> bytes:
    """``document`` serialized in one of :data:`ORDERS`."""
    if order == "api":
        return encode(document)
    if order == "sorted":
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    from openai.types.responses import Response

    # The model's field order is the order of its model_dump_json(); keys it does not know last.
    rank = {name: i for i, name in enumerate(Response.model_fields)}
    return encode(dict(sorted(document.items(), key=lambda item: rank.get(item[0], len(rank)))))


def embedding_body() -> bytes:
    """A small embeddings answer (one 256-dim vector, base64 as the SDK requests by default)."""
    import base64
    import struct

    vector = base64.b64encode(struct.pack("<256f", *(i / 256 for i in range(256)))).decode()
    return encode(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": vector}],
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 5, "total_tokens": 5},
        }
    )


class UniqueIds:
    """Bodies of ``document`` with a new response id each time (creates make new responses)."""

    def __init__(self, status: str, size: int = 0) -> None:
        raw = encode(response_document(RESPONSE_ID, status, size))
        self._head, self._tail = raw.split(RESPONSE_ID.encode(), 1)
        self._n = 0
        self._lock = threading.Lock()

    def __call__(self) -> bytes:
        with self._lock:
            self._n += 1
            n = self._n
        return b"%sresp_%048x%s" % (self._head, n, self._tail)


_HEADERS = [
    ("date", "Mon, 13 Oct 2025 09:21:07 GMT"),
    ("content-type", "application/json"),
    ("connection", "keep-alive"),
    ("openai-version", "2020-10-01"),
    ("openai-organization", "org-benchmark"),
    ("openai-project", "proj_benchmark"),
    ("x-request-id", "req_2b7d1e5c9a8f4b3e6d0c1a2b3c4d5e6f"),
    ("openai-processing-ms", "41"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("cf-cache-status", "DYNAMIC"),
    ("x-content-type-options", "nosniff"),
    ("server", "cloudflare"),
    ("cf-ray", "98e1c0a7bd4e2f61-AMS"),
    ("alt-svc", 'h3=":443"; ma=86400'),
]


def server(module: Any, answer: Callable[[], bytes], *, asynchronous: bool = False) -> Any:
    """A transport of ``module`` that answers every request with ``answer()`` as JSON.

    The body is not pre-read (``stream=``), as from a real connection.
    """

    def respond() -> Any:
        body = answer()
        headers = [*_HEADERS, ("content-length", str(len(body)))]
        return module.Response(200, headers=headers, stream=module.ByteStream(body))

    if asynchronous:

        class AsyncServer(module.AsyncBaseTransport):  # type: ignore[misc,name-defined]
            async def handle_async_request(self, request: Any) -> Any:
                return respond()

        return AsyncServer()

    class Server(module.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            return respond()

    return Server()


def fresh_response(module: Any, request: Any, response: Any, body: bytes) -> Any:
    """A new response over ``body`` with the headers (the same object) of ``response``."""
    fresh = module.Response(
        status_code=response.status_code,
        stream=module.ByteStream(body),
        extensions=response.extensions,
        request=request,
    )
    fresh.headers = response.headers
    return fresh


def reading_wrapper(module: Any, inner: Any, look: Callable[[Any, Any, bytes], Any], *, asynchronous: bool) -> Any:
    """A wrapper that reads every Responses body and answers ``look(request, response, body)``."""
    if asynchronous:

        class AsyncReading(module.AsyncBaseTransport):  # type: ignore[misc,name-defined]
            async def handle_async_request(self, request: Any) -> Any:
                response = await inner.handle_async_request(request)
                if "/responses" not in request.url.path:
                    return response
                body = b"".join([chunk async for chunk in response.stream])
                await response.aclose()
                return look(request, response, body)

        return AsyncReading()

    class Reading(module.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            response = inner.handle_request(request)
            if "/responses" not in request.url.path:
                return response
            body = b"".join(response.stream)
            response.close()
            return look(request, response, body)

    return Reading()


def naive_wrapper(module: Any, inner: Any, *, asynchronous: bool = False) -> Any:
    """The straightforward hook: read every Responses body and ``json.loads`` all of it."""
    seen: dict[str, int] = {}

    def look(request: Any, response: Any, body: bytes) -> Any:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("object") == "response":
            status = str(data.get("status"))
            seen[status] = seen.get(status, 0) + 1
        return fresh_response(module, request, response, body)

    return reading_wrapper(module, inner, look, asynchronous=asynchronous)


def floor_wrapper(module: Any, inner: Any, *, asynchronous: bool = False) -> Any:
    """A do-nothing wrapper transport: the cost of any wrapper at all (the floor)."""
    if asynchronous:

        class AsyncFloor(module.AsyncBaseTransport):  # type: ignore[misc,name-defined]
            async def handle_async_request(self, request: Any) -> Any:
                return await inner.handle_async_request(request)

        return AsyncFloor()

    class Floor(module.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            return inner.handle_request(request)

    return Floor()


def rewrap_wrapper(module: Any, inner: Any, *, asynchronous: bool = False) -> Any:
    """Reads every Responses body and hands back a fresh response over it, parsing nothing."""

    def rewrap(request: Any, response: Any, body: bytes) -> Any:
        return fresh_response(module, request, response, body)

    return reading_wrapper(module, inner, rewrap, asynchronous=asynchronous)


# -- clients --------------------------------------------------------------------------


def _module(library: str) -> Any:
    module = httpx2 if library == "httpx2" else httpx
    if module is None:
        raise SystemExit(f"{library} is not installed")
    return module


def sdk_client(http_client: Any, asynchronous: bool) -> Any:
    """An OpenAI client over ``http_client`` (no retries: nothing fails here)."""
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return cls(api_key="sk-benchmark", base_url="https://api.bench.test/v1", http_client=http_client, max_retries=0)


def bgwatch_transport(
    module: Any, inner: Any, watcher: bgwatch.Watcher, asynchronous: bool, raise_on: tuple[str, ...] = ()
) -> Any:
    """The bgwatch transport of ``module`` around ``inner``."""
    if module is httpx2:
        cls = bgwatch.AsyncHttpx2Transport if asynchronous else bgwatch.Httpx2Transport
    else:
        cls = bgwatch.AsyncHttpxTransport if asynchronous else bgwatch.HttpxTransport
    return cls(inner, watcher=watcher, raise_on=raise_on)


def build_client(
    library: str, layer: str, answer: Callable[[], bytes], *, asynchronous: bool, watcher: bgwatch.Watcher | None = None
) -> Any:
    """An SDK client whose HTTP stack is ``layer`` (bare, bgwatch, naive, floor, rewrap) over the server."""
    module = _module(library)
    transport = server(module, answer, asynchronous=asynchronous)
    if layer in ("bgwatch", "bgwatch-again"):
        transport = bgwatch_transport(module, transport, watcher or fresh_watcher(), asynchronous)
    elif layer == "bgwatch-raise":  # raise mode: the transport reads and parses the body itself
        transport = bgwatch_transport(module, transport, watcher or fresh_watcher(), asynchronous, ("failed",))
    elif layer == "naive":
        transport = naive_wrapper(module, transport, asynchronous=asynchronous)
    elif layer == "floor":
        transport = floor_wrapper(module, transport, asynchronous=asynchronous)
    elif layer == "rewrap":
        transport = rewrap_wrapper(module, transport, asynchronous=asynchronous)
    elif layer != "bare":
        raise ValueError(layer)
    http = (module.AsyncClient if asynchronous else module.Client)(transport=transport)
    return sdk_client(http, asynchronous)


def fresh_watcher(**options: Any) -> bgwatch.Watcher:
    """A watcher with its own registry, as a user with default options gets."""
    return bgwatch.Watcher(registry=CollectorRegistry(), **options)


# -- measuring ------------------------------------------------------------------------


def _nothing() -> None:
    return None


@dataclass
class Variant:
    """One way of making the same calls. ``run(n)`` makes ``n`` calls.

    ``enter``/``leave`` run around every batch, outside the timing (a peer that patches
    the SDK class globally is switched on only for its own batches).
    """

    name: str
    run: Callable[[int], None]
    enter: Callable[[], None] = _nothing
    leave: Callable[[], None] = _nothing

    def timed(self, n: int) -> float:
        """Seconds for one batch of ``n`` calls."""
        self.enter()
        try:
            start = time.perf_counter()
            self.run(n)
            return time.perf_counter() - start
        finally:
            self.leave()


@dataclass
class Row:
    """One line of a result table (``unit`` "us" per call, or "B" per in-flight response)."""

    section: str
    case: str
    variant: str
    value: float
    unit: str = "us"
    added_us: float | None = None
    ratio: float | None = None
    ratio_lo: float | None = None
    ratio_hi: float | None = None
    target: float | None = None
    calls: int = 0

    @property
    def met(self) -> bool | None:
        """Whether the target is met (None when there is no target)."""
        if self.target is None:
            return None
        if self.unit == "B":
            return self.value < self.target
        return self.ratio is not None and self.ratio <= self.target


@dataclass
class Settings:
    """How long to measure."""

    rounds: int = 150
    batch_seconds: float = 0.005
    blocks: int = 5
    rows: list[Row] = field(default_factory=list)


def _block_medians(values: list[float], blocks: int) -> list[float]:
    size = max(1, len(values) // blocks)
    return [statistics.median(values[i : i + size]) for i in range(0, len(values) - size + 1, size)]


def compare(
    settings: Settings,
    section: str,
    case: str,
    variants: list[Variant],
    *,
    targets: dict[str, float] | None = None,
    calls_per_unit: int = 1,
) -> list[Row]:
    """Time ``variants`` (the first is the baseline) interleaved; add and return the rows.

    Each round runs one short batch of every variant, in an order shuffled afresh each round
    (seeded: runs repeat), so that slow drifts and bursts of load from other processes hit all
    variants alike, and so does what ran just before. (Alternating A B C, C B A favoured the
    variant at either end, which runs twice in a row at each turn: three copies of the same
    client measured 2-3 us apart at 2 KB, the last one cheapest.) The
    ratio is taken per round, against the baseline's batch of the same round; the table
    shows its median over all rounds, and as spread the lowest and highest median of
    ``settings.blocks`` consecutive blocks of rounds (how far a shorter run could have
    strayed). ``calls_per_unit``: SDK calls one unit of ``run`` makes (the threaded case
    runs one unit per thread), for the per-call column.
    """
    baseline = variants[0]
    for variant in variants:  # warm up: imports, pools, caches, the interpreter's inline caches
        variant.timed(20)
    n = 1
    while True:
        elapsed = min(baseline.timed(n) for _ in range(3))
        if elapsed >= settings.batch_seconds / 2 or n >= 1 << 20:
            break
        n *= 2
    n = max(1, round(n * settings.batch_seconds / max(elapsed, 1e-9)))
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    shuffler = random.Random(len(variants))
    order = list(variants)
    for r in range(settings.rounds):
        if r % 25 == 0:
            gc.collect()
        shuffler.shuffle(order)
        for variant in order:
            times[variant.name].append(variant.timed(n) / (n * calls_per_unit))
    rows = []
    base_times = times[baseline.name]
    for variant in variants:
        mine = times[variant.name]
        per_call = statistics.median(mine) * 1e6
        if variant is baseline:
            rows.append(Row(section, case, variant.name, per_call, calls=n * calls_per_unit))
            continue
        ratios = [m / b for m, b in zip(mine, base_times, strict=True)]
        blocks = _block_medians(ratios, settings.blocks)
        added = statistics.median([(m - b) * 1e6 for m, b in zip(mine, base_times, strict=True)])
        target = (targets or {}).get(variant.name)
        rows.append(
            Row(
                section,
                case,
                variant.name,
                per_call,
                added_us=added,
                ratio=statistics.median(ratios),
                ratio_lo=min(blocks),
                ratio_hi=max(blocks),
                target=target,
                calls=n * calls_per_unit,
            )
        )
    settings.rows.extend(rows)
    print_rows(rows)
    return rows


def print_rows(rows: list[Row]) -> None:
    """Print rows as they come in."""
    for row in rows:
        if row.ratio is None:
            print(f"  {row.case:<34} {row.variant:<16} {row.value:9.1f} us")
            continue
        verdict = "" if row.met is None else ("  ok" if row.met else f"  MISSED (target {row.target:.2f})")
        print(
            f"  {row.case:<34} {row.variant:<16} {row.value:9.1f} us  {row.added_us:+8.1f} us"
            f"  x{row.ratio:.3f} [{row.ratio_lo:.3f}..{row.ratio_hi:.3f}]{verdict}"
        )
    sys.stdout.flush()


def sync_runner(call: Callable[[], Any]) -> Callable[[int], None]:
    """``run(n)`` making ``n`` sync calls."""

    def run(n: int) -> None:
        for _ in range(n):
            call()

    return run


class AsyncRunner:
    """Runs async calls on one long-lived event loop (as an application would)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def runner(self, call: Callable[[], Any]) -> Callable[[int], None]:
        """``run(n)`` awaiting ``n`` calls one after the other."""

        async def batch(n: int) -> None:
            for _ in range(n):
                await call()

        def run(n: int) -> None:
            self.loop.run_until_complete(batch(n))

        return run

    def close(self) -> None:
        """Close the loop."""
        self.loop.close()


class Gang:
    """``size`` persistent threads that run a function together (no thread start-up in the timing)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._start = threading.Barrier(size + 1)
        self._done = threading.Barrier(size + 1)
        self._job: tuple[Callable[[], Any], int] | None = None
        self._errors: list[BaseException] = []
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(size)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            self._start.wait()
            job = self._job
            if job is None:
                return
            call, n = job
            try:
                for _ in range(n):
                    call()
            except BaseException as exc:  # reported by the caller
                self._errors.append(exc)
            self._done.wait()

    def runner(self, call: Callable[[], Any]) -> Callable[[int], None]:
        """``run(n)``: every thread makes ``n`` calls at once."""

        def run(n: int) -> None:
            self._job = (call, n)
            self._start.wait()
            self._done.wait()
            if self._errors:
                raise self._errors[0]

        return run

    def close(self) -> None:
        """Stop the threads."""
        self._job = None
        self._start.wait()
        for thread in self._threads:
            thread.join()


# -- the cases ------------------------------------------------------------------------


def bench_responses(settings: Settings, library: str, aio: AsyncRunner) -> None:
    """retrieve() at each body size, sync and async; create(); bare vs bgwatch vs naive."""
    section = f"responses ({library})"
    print(f"\n== {section}: ratio = time with / time without, median over rounds [lowest..highest block median]")
    targets = {"bgwatch": TARGET_RESPONSES}
    for order in ORDERS:
        for label, size in SIZES.items():
            body = encode_in_order(response_document(RESPONSE_ID, "completed", size), order)
            for asynchronous in (False, True) if order != "sorted" else (False,):
                variants = []
                layers = ["bare", "bgwatch", "bgwatch-raise", "floor", "rewrap", "naive"]
                if label == "2 KB" and order == "api":
                    layers.append("bgwatch-again")  # A/A: the method's resolution, in the same run
                for layer in layers:
                    client = build_client(library, layer, lambda body=body: body, asynchronous=asynchronous)
                    call = lambda client=client: client.responses.retrieve(RESPONSE_ID)  # noqa: E731
                    run = aio.runner(call) if asynchronous else sync_runner(call)
                    variants.append(Variant(layer, run))
                mode = "async" if asynchronous else "sync"
                compare(settings, section, f"retrieve {label} {order} order {mode}", variants, targets=targets)
    for asynchronous in (False, True):
        variants = []
        for layer in ("bare", "bgwatch"):
            client = build_client(library, layer, UniqueIds("queued"), asynchronous=asynchronous)
            call = lambda client=client: client.responses.create(model=MODEL, input="Say hi.", background=True)  # noqa: E731
            run = aio.runner(call) if asynchronous else sync_runner(call)
            variants.append(Variant(layer, run))
        mode = "async" if asynchronous else "sync"
        compare(settings, section, f"create (new id each) {mode}", variants, targets=targets)
    variants = []
    for layer in ("bare", "bgwatch"):
        client = build_client(library, layer, UniqueIds("completed", SIZES["2 KB"]), asynchronous=False)
        call = lambda client=client: client.responses.retrieve(RESPONSE_ID)  # noqa: E731
        variants.append(Variant(layer, sync_runner(call)))
    compare(settings, section, "retrieve 2 KB, new id each, sync", variants, targets=targets)


def bench_unrelated(settings: Settings, library: str, aio: AsyncRunner) -> None:
    """embeddings.create(): bgwatch must pass it through almost for free."""
    section = f"unrelated calls ({library})"
    print(f"\n== {section}")
    body = embedding_body()
    for asynchronous in (False, True):
        variants = []
        for layer in ("bare", "bgwatch"):
            client = build_client(library, layer, lambda: body, asynchronous=asynchronous)
            call = lambda client=client: client.embeddings.create(model="text-embedding-3-small", input="hi")  # noqa: E731
            run = aio.runner(call) if asynchronous else sync_runner(call)
            variants.append(Variant(layer, run))
        mode = "async" if asynchronous else "sync"
        compare(settings, section, f"embeddings.create {mode}", variants, targets={"bgwatch": TARGET_UNRELATED})


def bench_threads(settings: Settings, library: str) -> None:
    """16 threads polling one shared client at once (throughput under the GIL)."""
    section = f"threads ({library})"
    print(f"\n== {section}: {THREADS} threads polling at once, one shared client, time per call")
    gang = Gang(THREADS)
    try:
        for label in ("2 KB", "100 KB"):
            body = encode(response_document(RESPONSE_ID, "completed", SIZES[label]))
            variants = []
            for layer in ("bare", "bgwatch"):
                client = build_client(library, layer, lambda body=body: body, asynchronous=False)
                call = lambda client=client: client.responses.retrieve(RESPONSE_ID)  # noqa: E731
                variants.append(Variant(layer, gang.runner(call)))
            compare(
                settings,
                section,
                f"retrieve {label} x{THREADS} threads",
                variants,
                targets={"bgwatch": TARGET_RESPONSES},
                calls_per_unit=THREADS,
            )
    finally:
        gang.close()


# -- peers ----------------------------------------------------------------------------


class Peers:
    """Peer instrumentations that can be installed, with one discarding tracer provider."""

    def __init__(self) -> None:
        self.available: dict[str, str] = {}
        self.missing: dict[str, str] = {}
        self.tracer_provider: Any = None
        self.meter_provider: Any = None
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
        except ImportError:
            self.missing["opentelemetry-sdk"] = "not installed: no peer can be measured"
            return

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

            def shutdown(self) -> None:
                return None

        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(Discard()))
        # A reader that is never collected: instruments aggregate in memory, as with a real exporter.
        self.meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        for dist in ("opentelemetry-instrumentation-httpx", "openinference-instrumentation-openai"):
            try:
                self.available[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                self.missing[dist] = "not installed"

    def otel_httpx(self, http_client: Any) -> bool:
        """Instrument one client with opentelemetry-instrumentation-httpx; False if it cannot."""
        if "opentelemetry-instrumentation-httpx" not in self.available:
            return False
        from opentelemetry.instrumentation import httpx as otel_httpx_module

        if httpx2 is not None and isinstance(http_client, (httpx2.Client, httpx2.AsyncClient)):
            instrumentor = getattr(otel_httpx_module, "HTTPX2ClientInstrumentor", None)
            if instrumentor is None:
                self.missing["opentelemetry-instrumentation-httpx"] = "this release cannot instrument httpx2"
                return False
        else:
            instrumentor = otel_httpx_module.HTTPXClientInstrumentor
        instrumentor.instrument_client(
            http_client, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )
        return True

    def openinference(self) -> tuple[Callable[[], None], Callable[[], None]] | None:
        """(enter, leave) switching OpenInference's OpenAI instrumentation on and off.

        It patches ``OpenAI.request`` on the class, so it is on only during its own batches.
        """
        if "openinference-instrumentation-openai" not in self.available:
            return None
        from openinference.instrumentation.openai import OpenAIInstrumentor

        instrumentor = OpenAIInstrumentor()

        def enter() -> None:
            instrumentor.instrument(tracer_provider=self.tracer_provider, skip_dep_check=True)

        def leave() -> None:
            instrumentor.uninstrument()

        return enter, leave


def _peer_variants(library: str, body: bytes, asynchronous: bool, aio: AsyncRunner, peers: Peers) -> list[Variant]:
    """bare, bgwatch, bgwatch with spans and every installed peer, over one server each."""
    module = _module(library)

    def fresh() -> Any:
        return server(module, lambda: body, asynchronous=asynchronous)

    def variant(name: str, http: Any, hooks: tuple[Callable[[], None], Callable[[], None]] | None = None) -> Variant:
        client = sdk_client(http, asynchronous)
        call = lambda: client.responses.retrieve(RESPONSE_ID)  # noqa: E731
        run = aio.runner(call) if asynchronous else sync_runner(call)
        enter, leave = hooks or (_nothing, _nothing)
        return Variant(name, run, enter, leave)

    client_cls = module.AsyncClient if asynchronous else module.Client
    traced = fresh_watcher(tracer_provider=peers.tracer_provider)
    variants = [
        variant("bare", client_cls(transport=fresh())),
        variant("bgwatch", client_cls(transport=bgwatch_transport(module, fresh(), fresh_watcher(), asynchronous))),
        variant("bgwatch+spans", client_cls(transport=bgwatch_transport(module, fresh(), traced, asynchronous))),
    ]
    http = client_cls(transport=fresh())
    if peers.otel_httpx(http):
        variants.append(variant("otel-httpx", http))
    hooks = peers.openinference()
    if hooks is not None:
        variants.append(variant("openinference", client_cls(transport=fresh()), hooks))
    return variants


def bench_peers(settings: Settings, library: str, aio: AsyncRunner, peers: Peers) -> None:
    """retrieve() through bgwatch and through peers, each against the bare SDK."""
    section = f"peers ({library})"
    print(f"\n== {section}: {', '.join(f'{k} {v}' for k, v in peers.available.items()) or 'none installed'}")
    for name, why in peers.missing.items():
        print(f"  {name}: {why}")
    if peers.tracer_provider is None:
        return
    cases = [(label, size, False) for label, size in SIZES.items()] + [("2 KB", SIZES["2 KB"], True)]
    for label, size, asynchronous in cases:
        body = encode(response_document(RESPONSE_ID, "completed", size))
        variants = _peer_variants(library, body, asynchronous, aio, peers)
        mode = "async" if asynchronous else "sync"
        compare(settings, section, f"retrieve {label} {mode}", variants)


# -- memory ---------------------------------------------------------------------------


def bench_memory(library: str, count: int = 20_000) -> Row:
    """Bytes bgwatch keeps per in-flight response, traced through the real SDK path.

    ``count`` creates (each a new queued response) go through the SDK with bgwatch; the
    memory still allocated afterwards by bgwatch's own source lines (the tracker's entry,
    the id string the parser made, the ordering node, hash-table slots) is divided by
    ``count``. Allocations made by the SDK and freed are not counted; nothing else is kept.
    """
    print(f"\n== memory ({library}): bytes bgwatch keeps per in-flight response ({count} in flight)")
    watcher = fresh_watcher()
    client = build_client(library, "bgwatch", UniqueIds("queued"), asynchronous=False, watcher=watcher)
    for _ in range(50):  # warm-up: instruments, label children, jiter's key cache, pools
        client.responses.create(model=MODEL, input="hi", background=True)
    package = str(Path(bgwatch.__file__).parent)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    in_flight_before = watcher.tracker.in_flight
    for _ in range(count):
        client.responses.create(model=MODEL, input="hi", background=True)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    added = watcher.tracker.in_flight - in_flight_before
    trace_filter = [tracemalloc.Filter(True, package + os.sep + "*")]
    ours = sum(
        s.size_diff
        for s in after.filter_traces(trace_filter).compare_to(before.filter_traces(trace_filter), "filename")
    )
    everything = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per = ours / added
    row = Row("memory", "bytes kept per in-flight response", f"bgwatch ({library})", per, unit="B")
    row.target = TARGET_BYTES_PER_IN_FLIGHT
    verdict = "ok" if row.met else f"MISSED (target {TARGET_BYTES_PER_IN_FLIGHT})"
    print(
        f"  {added} in flight: {per:.0f} B each in bgwatch's code"
        f" ({everything / added:.0f} B each process-wide)  {verdict}"
    )
    return row


# -- the report -----------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the numbers were taken on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    info = {
        "cpus": str(os.cpu_count()),
        "usable cpus": str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else "?",
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
    }
    for dist in (
        "openai",
        "httpx2",
        "httpx",
        "jiter",
        "pydantic",
        "prometheus-client",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation-httpx",
        "openinference-instrumentation-openai",
    ):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = "-"
    info["bgwatch"] = bgwatch.__version__
    return info


def markdown(rows: list[Row]) -> str:
    """The result rows as a Markdown table."""
    lines = [
        "| section | case | variant | per call | added | ratio | spread | target |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        verdict = "" if r.met is None else ("met" if r.met else "**missed**")
        if r.unit == "B":
            lines.append(
                f"| {r.section} | {r.case} | {r.variant} | {r.value:.0f} B | | | | < {r.target:.0f} B {verdict} |"
            )
            continue
        if r.ratio is None:
            lines.append(f"| {r.section} | {r.case} | {r.variant} | {r.value:.1f} µs | | | | |")
            continue
        target = "" if r.target is None else f"<= {r.target:.2f} {verdict}"
        lines.append(
            f"| {r.section} | {r.case} | {r.variant} | {r.value:.1f} µs | {r.added_us:+.1f} µs"
            f" | {r.ratio:.3f} | {r.ratio_lo:.3f} to {r.ratio_hi:.3f} | {target} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few short rounds (a smoke run, numbers are rough)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 150)")
    parser.add_argument("--batch-ms", type=float, default=None, help="length of one batch (default 5 ms)")
    parser.add_argument(
        "--only",
        default="responses,unrelated,threads,peers,memory",
        help="comma-separated sections: responses, unrelated, threads, peers, memory",
    )
    parser.add_argument("--library", choices=("httpx2", "httpx", "both"), default=None)
    parser.add_argument("--markdown", type=Path, help="also write the results as a Markdown table here")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--keep-malloc",
        action="store_true",
        help="do not fix glibc's malloc thresholds (the 1 MB cases then swing between page-fault regimes)",
    )
    args = parser.parse_args(argv)
    if not args.keep_malloc and sys.platform == "linux" and "GLIBC_TUNABLES" not in os.environ:
        # glibc moves its mmap threshold with the history of frees: a 1 MB body is then
        # sometimes served from fresh (page-faulting) mappings, sometimes from the heap, and
        # the 1 MB timings jump by 2x between runs whatever the code under test. Fixed
        # thresholds (what a long-running process converges to) make them repeatable.
        env = {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES}
        os.execve(sys.executable, [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)], env)
    settings = Settings()
    if args.quick:
        settings.rounds, settings.batch_seconds = 20, 0.003
    if args.rounds is not None:
        settings.rounds = args.rounds
    if args.batch_ms is not None:
        settings.batch_seconds = args.batch_ms / 1000
    sections = set(args.only.split(","))
    if args.library is None:
        libraries = [sdk_library()]
    else:
        libraries = ["httpx2", "httpx"] if args.library == "both" else [args.library]
    info = machine()
    info["GLIBC_TUNABLES"] = os.environ.get("GLIBC_TUNABLES", "-")
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    print(f"rounds {settings.rounds}, batches of ~{settings.batch_seconds * 1000:.0f} ms, interleaved")
    aio = AsyncRunner()
    peers = Peers() if "peers" in sections else None
    try:
        for library in libraries:
            if "responses" in sections:
                bench_responses(settings, library, aio)
            if "unrelated" in sections:
                bench_unrelated(settings, library, aio)
            if "threads" in sections:
                bench_threads(settings, library)
            if peers is not None:
                bench_peers(settings, library, aio, peers)
            if "memory" in sections:
                settings.rows.append(bench_memory(library))
    finally:
        aio.close()
    table = markdown(settings.rows)
    missed = [r for r in settings.rows if r.met is False]
    print("\n" + table)
    print(f"\ntargets missed: {len(missed)}" + "".join(f"\n  {r.case} / {r.variant}" for r in missed))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    if args.json:
        payload = {"machine": info, "rows": [r.__dict__ for r in settings.rows]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
