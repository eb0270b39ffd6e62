"""Throughput of bgwatch's incremental SSE parser.

Run: ``.venv/bin/python benchmarks/sse_parser.py [--mb 32]``

Builds an OpenAI-Responses-like event stream (``event:`` + one ``data:`` JSON
line per event) for several event sizes, cuts it into fixed-size chunks as a
transport would, and reports MB/s of ``SSEParser.feed`` (best of a few runs).
"""

from __future__ import annotations

import argparse
import json
import time

from bgwatch._sse import SSEParser


def make_stream(event_size: int, total: int, line_ending: bytes = b"\n") -> bytes:
    """A stream of ~``total`` bytes made of events of ~``event_size`` bytes."""
    events = []
    size = 0
    seq = 0
    while size < total:
        head = {"type": "response.output_text.delta", "sequence_number": seq, "item_id": "msg_0", "delta": ""}
        pad = max(0, event_size - 60 - len(json.dumps(head)))
        head["delta"] = ("lorem ipsum " * (pad // 12 + 1))[:pad]
        ev = (
            b"event: response.output_text.delta" + line_ending + b"data: " + json.dumps(head).encode()
        ) + line_ending * 2
        events.append(ev)
        size += len(ev)
        seq += 1
    return b"".join(events)


def bench(stream: bytes, chunk_size: int, repeat: int = 5) -> tuple[float, int]:
    """Best MB/s over ``repeat`` runs, and the number of events parsed."""
    chunks = [stream[i : i + chunk_size] for i in range(0, len(stream), chunk_size)]
    best = float("inf")
    count = 0
    for _ in range(repeat):
        parser = SSEParser()
        feed = parser.feed
        start = time.perf_counter()
        count = 0
        for chunk in chunks:
            count += len(feed(chunk))
        count += len(parser.close())
        best = min(best, time.perf_counter() - start)
    return len(stream) / best / 1e6, count


def main() -> None:
    """Print a throughput table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mb", type=float, default=32, help="stream size per case, in MB")
    args = ap.parse_args()
    total = int(args.mb * 1e6)
    print(f"{'event size':>10} {'endings':>7} {'chunk':>6} {'MB/s':>8} {'events/s':>10}")
    for event_size in (200, 1000, 10_000):
        for ending_name, ending in (("LF", b"\n"), ("CRLF", b"\r\n")):
            stream = make_stream(event_size, total, ending)
            for chunk_size in (1024, 16 * 1024, 64 * 1024):
                mbps, n = bench(stream, chunk_size)
                print(
                    f"{event_size:>10} {ending_name:>7} {chunk_size // 1024:>5}K {mbps:>8.0f}"
                    f" {n / (len(stream) / mbps / 1e6):>10.0f}"
                )


if __name__ == "__main__":
    main()
