"""A polling worker: create background responses and wait for each with ``bgwatch``.

Every outcome that is not ``completed`` arrives as a typed exception (``bgwatch.ServerError``,
``bgwatch.MaxOutputTokensReached``, ``bgwatch.ResponseCancelled``, ...), a wait that runs out
of time as ``bgwatch.WaitTimeout`` (optionally cancelling the response), and the counters
(``bg_response_failed_total{code}`` ...) count each response once.

    python examples/polling_worker.py                     # runs against an embedded simulator
    python examples/polling_worker.py --base-url http://127.0.0.1:8080/v1 --count 20

It exits by itself: 0 when every response was waited for and counted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI
from prometheus_client import CollectorRegistry, generate_latest

import bgwatch


@contextlib.contextmanager
def api_base_url(base_url: str | None) -> Iterator[str]:
    """The given base URL, or that of an embedded simulator started for the run."""
    if base_url:
        yield base_url
        return
    from bgwatch.simulator import Simulator

    mix = "completed=50,failed=30,incomplete=10,cancelled=10"
    with Simulator(seed=7, mix=mix, durations=(0.05, 0.4), poll_after_ms=50) as sim:
        yield sim.base_url


def work(client: OpenAI, number: int, timeout: float) -> str:
    """One job: create a background response and wait for its end; returns a one-word outcome."""
    try:
        response = bgwatch.create_and_wait(
            client,
            model="gpt-4o-mini",
            input=f"Summarise document #{number}",
            timeout=timeout,
            cancel_on_timeout=True,
        )
    except bgwatch.ResponseFailed as exc:
        note = "retry later" if exc.retryable else "give up"
        return f"failed:{exc.code} ({type(exc).__name__}, {note})"
    except bgwatch.ResponseIncomplete as exc:
        return f"incomplete:{exc.reason} ({type(exc).__name__})"
    except bgwatch.ResponseCancelled:
        return "cancelled"
    except bgwatch.WaitTimeout as exc:
        return f"timeout after {exc.elapsed:.1f}s (cancelled={exc.cancelled})"
    return f"{response.status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-url", help="OpenAI-compatible base URL (default: start a simulator)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "sk-simulator"))
    parser.add_argument("--count", type=int, default=12, help="background responses to create")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each response")
    args = parser.parse_args(argv)

    registry = CollectorRegistry()  # a private registry keeps the printout to bgwatch's series
    with api_base_url(args.base_url) as base_url:
        client = OpenAI(base_url=base_url, api_key=args.api_key, http_client=bgwatch.http_client(registry=registry))
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda n: work(client, n, args.timeout), range(args.count)))
        client.close()

    for number, result in enumerate(results):
        print(f"job {number:3d}: {result}")
    print("summary:", dict(collections.Counter(r.split(":")[0].split(" ")[0] for r in results)))
    print("metrics:")
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(("bg_response_finished_total", "bg_response_failed_total", "bg_response_in_flight")):
            print("  " + line)
    finished = sum(s.value for m in registry.collect() for s in m.samples if s.name == "bg_response_finished_total")
    timeouts = sum(r.startswith("timeout") and "cancelled=True" not in r for r in results)
    ok = finished == args.count - timeouts
    print("every response counted once:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
