"""Streaming a large event stream through bgwatch's transport versus without it.

Run: ``.venv/bin/python benchmarks/stream.py [--mb 100] [--sdk-mb 10] [--chunk 65536]``

The "server" is an in-process inner transport of the SDK's HTTP library whose response
stream *generates* a ``text/event-stream`` lazily: ``response.created``/``.queued``/
``.in_progress``, then ``response.output_text.delta`` events of a few tokens each (as the API
sends them) up to the requested size, then ``response.completed``. It cycles over one
prebuilt 1 MiB block of events, cut into ``--chunk``-byte chunks at arbitrary offsets, so
the source holds ~1 MiB whatever the stream size and costs next to nothing per byte.

Each case runs the same stream with and without bgwatch in one process (interleaved, best
of ``--repeat``):

* ``bytes``: ``client.stream(...).iter_bytes()``, the exact iterator the SDK consumes,
  with nothing else on top; the hook's cost is most visible here;
* ``bytes, raise mode``: the same with ``raise_on=("failed",)`` (it costs the same until a
  failure has to be cut out of a chunk, once per stream);
* ``SDK``: ``for event in client.responses.create(..., stream=True)``, end to end.

Memory: a separate pass of each variant under ``tracemalloc`` reports the peak of
allocations made while streaming (the source's block is allocated before tracing starts).
Unbuffered means: the peak with the hook stays within a few MiB of the peak without it,
whatever the stream size.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import openai
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch.transports import sdk_library

MiB = 1024 * 1024
MODEL = "gpt-4.1-2025-04-14"
TOKENS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".", " Über", "…")


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def _response(status: str) -> dict[str, Any]:
    return {
        "id": "resp_bench",
        "object": "response",
        "created_at": 1_760_000_000,
        "status": status,
        "background": True,
        "completed_at": 1_760_000_100 if status == "completed" else None,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "model": MODEL,
        "output": [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def _delta_block(size: int) -> bytes:
    """~``size`` bytes of realistic delta events (a whole number of events)."""
    events: list[bytes] = []
    total = 0
    seq = 3
    while total < size:
        delta = "".join(TOKENS[(seq + i) % len(TOKENS)] for i in range(1 + seq % 3))
        data = {
            "type": "response.output_text.delta",
            "sequence_number": seq,
            "item_id": "msg_bench",
            "output_index": 0,
            "content_index": 0,
            "delta": delta,
            "logprobs": [],
        }
        event = _event("response.output_text.delta", data)
        events.append(event)
        total += len(event)
        seq += 1
    return b"".join(events)


class StreamSource:
    """Generates one event stream of ``size`` bytes lazily, in ``chunk``-byte chunks."""

    def __init__(self, size: int, chunk: int) -> None:
        if not 0 < chunk <= MiB:
            raise ValueError("chunk must be between 1 byte and 1 MiB")
        self.size = size
        self.chunk = chunk
        self.head = b"".join(
            _event(kind, {"type": kind, "sequence_number": n, "response": _response(status)})
            for n, (kind, status) in enumerate(
                (("response.created", "queued"), ("response.queued", "queued"), ("response.in_progress", "in_progress"))
            )
        )
        self.tail = _event(
            "response.completed",
            {"type": "response.completed", "sequence_number": 10**9, "response": _response("completed")},
        )
        self.block = _delta_block(MiB)

    def events(self) -> int:
        """About how many events the stream holds."""
        return 4 + (self.size - len(self.head) - len(self.tail)) * self.block.count(b"\n\n") // len(self.block)

    def chunks(self) -> Iterator[bytes]:
        """The stream: head, deltas cycling over the block, tail; cut every ``chunk`` bytes."""
        yield self.head
        block, chunk = self.block, self.chunk
        remaining = self.size - len(self.head) - len(self.tail)
        offset = 0
        while remaining > 0:
            take = min(chunk, remaining)
            end = offset + take
            # Wrap around at the block's end (the block is a whole number of events).
            piece = block[offset:end] if end <= len(block) else block[offset:] + block[: end - len(block)]
            offset = end % len(block)
            remaining -= take
            yield piece
        # Finish the delta event the size cut may have left open, then the terminal event.
        if offset:
            yield block[offset : block.index(b"\n\n", offset) + 2]
        yield self.tail


def make_inner(module: Any, source: StreamSource) -> Any:
    """An inner transport answering every request with a fresh generated stream."""

    class Generated(module.SyncByteStream):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Iterator[bytes]:
            return source.chunks()

    class Inner(module.BaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            headers = {"content-type": "text/event-stream; charset=utf-8", "x-request-id": "req_bench"}
            return module.Response(200, headers=headers, stream=Generated(), request=request)

    return Inner()


def make_http(module: Any, source: StreamSource, variant: str) -> Any:
    inner = make_inner(module, source)
    if variant == "bare":
        return module.Client(transport=inner)
    watcher = bgwatch.Watcher(registry=CollectorRegistry())
    transport_cls = bgwatch.Httpx2Transport if module.__name__ == "httpx2" else bgwatch.HttpxTransport
    raise_on = ("failed",) if variant == "raise" else ()
    return module.Client(transport=transport_cls(inner, watcher=watcher, raise_on=raise_on))


def run_bytes(http: Any) -> int:
    n = 0
    # The request asks for a stream, as the SDK's does: that is what makes the answer one.
    with http.stream("POST", "http://api.test/v1/responses", json={"stream": True}) as response:
        for chunk in response.iter_bytes():
            n += len(chunk)
    return n


def run_sdk(http: Any) -> int:
    client = openai.OpenAI(api_key="sk-bench", base_url="http://api.test/v1", http_client=http, max_retries=0)
    n = 0
    for event in client.responses.create(model=MODEL, input="hi", background=True, stream=True):
        n += 1
        last = event
    assert last.type == "response.completed"
    return n


def timed(run: Callable[[Any], int], http: Any) -> float:
    gc.collect()
    start = time.perf_counter()
    run(http)
    return time.perf_counter() - start


def peak(run: Callable[[Any], int], http: Any) -> int:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        run(http)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def case(
    name: str, module: Any, source: StreamSource, run: Callable[[Any], int], variants: list[str], *, repeat: int
) -> None:
    clients = {variant: make_http(module, source, variant) for variant in variants}
    warm_up = StreamSource(MiB, source.chunk)
    for variant in variants:  # imports, caches and pools, on a small stream
        run(make_http(module, warm_up, variant))
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeat):
        for variant in variants:  # interleaved, so drift hits every variant alike
            best[variant] = min(best[variant], timed(run, clients[variant]))
    peaks = {variant: peak(run, clients[variant]) for variant in variants}
    mb = source.size / 1e6
    base = best["bare"]
    events = source.events()
    for variant in variants:
        label = {"bare": "without bgwatch", "observe": "with bgwatch", "raise": "with bgwatch, raise mode"}[variant]
        added = (best[variant] - base) / events * 1e6
        print(
            f"{name:<6} {label:<26} {mb / best[variant]:>9.0f} MB/s  ratio {best[variant] / base:>6.2f}x"
            f"  {added:>+6.2f} us/event  peak {peaks[variant] / MiB:>6.2f} MiB"
            f" ({(peaks[variant] - peaks['bare']) / MiB:+.2f})"
        )


def main() -> None:
    """Print throughput, ratio and peak memory with and without the hook."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=100, help="stream size of the byte-level cases, in MB")
    ap.add_argument(
        "--sdk-mb", type=float, default=10, help="stream size of the SDK case, in MB (0 skips it; the SDK does ~4 MB/s)"
    )
    ap.add_argument("--chunk", type=int, default=64 * 1024, help="chunk size the inner transport yields")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per variant (best is shown)")
    args = ap.parse_args()
    library = sdk_library()
    module = __import__(library)
    print(f"openai {openai.__version__}, {library} {module.__version__}, chunks of {args.chunk} bytes")
    source = StreamSource(int(args.mb * 1e6), args.chunk)
    per_event = len(source.block) // source.block.count(b"\n\n")
    print(f"delta events of ~{per_event} bytes; {args.mb:g} MB = ~{int(args.mb * 1e6) // per_event:,} events")
    case("bytes", module, source, run_bytes, ["bare", "observe", "raise"], repeat=args.repeat)
    print("       (the bytes baseline only hands chunk references on; the hook's cost is parsing the stream)")
    if args.sdk_mb > 0:
        case(
            "SDK",
            module,
            StreamSource(int(args.sdk_mb * 1e6), args.chunk),
            run_sdk,
            ["bare", "observe"],
            repeat=args.repeat,
        )


if __name__ == "__main__":
    main()
