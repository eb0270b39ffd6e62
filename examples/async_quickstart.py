"""Async quickstart: bgwatch on an ``AsyncOpenAI`` client, background responses waited for
concurrently with ``bgwatch.async_create_and_wait``.

    python examples/async_quickstart.py                                    # embedded simulator
    OPENAI_API_KEY=sk-... python examples/async_quickstart.py --base-url https://api.openai.com/v1

Every outcome other than ``completed`` arrives as a typed exception (``bgwatch.ServerError``,
``bgwatch.MaxOutputTokensReached``, ``bgwatch.ResponseCancelled``, ...), and the counters
count each response once. It exits by itself: 0 when bgwatch counted every response once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import Iterator

from openai import AsyncOpenAI
from prometheus_client import CollectorRegistry, generate_latest

import bgwatch


@contextlib.contextmanager
def api_base_url(base_url: str | None) -> Iterator[str]:
    """The given base URL, or that of an embedded simulator started for the run."""
    if base_url:
        yield base_url
        return
    from bgwatch.simulator import Simulator

    mix = "completed=50,failed=30,incomplete=10,cancelled=10,codes=server_error|rate_limit_exceeded|invalid_prompt"
    with Simulator(seed=5, mix=mix, durations=(0.1, 0.8)) as sim:
        yield sim.base_url


async def one(client: AsyncOpenAI, number: int, model: str) -> str:
    """Create one background response and wait for its end; returns its outcome."""
    try:
        response = await bgwatch.async_create_and_wait(client, model=model, input=f"Say hello #{number}", timeout=120)
    except bgwatch.ResponseFailed as exc:
        return f"failed:{exc.code}"
    except bgwatch.ResponseIncomplete as exc:
        return f"incomplete:{exc.reason}"
    except bgwatch.ResponseCancelled:
        return "cancelled"
    return str(response.status)


async def run(base_url: str, count: int, model: str, registry: CollectorRegistry) -> list[str]:
    client = AsyncOpenAI(
        base_url=base_url,
        api_key=os.environ.get("OPENAI_API_KEY", "sk-simulator"),
        http_client=bgwatch.async_http_client(registry=registry),
    )
    async with client:
        return await asyncio.gather(*(one(client, n, model) for n in range(count)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-url", help="OpenAI-compatible base URL (default: start a simulator)")
    parser.add_argument("--count", type=int, default=10, help="background responses to create")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args(argv)

    registry = CollectorRegistry()  # private here, to print only bgwatch's series; usually the global one
    with api_base_url(args.base_url) as base_url:
        outcomes = asyncio.run(run(base_url, args.count, args.model, registry))

    for number, outcome in enumerate(outcomes):
        print(f"response {number:2d}: {outcome}")
    print("outcomes:", dict(Counter(o.split(":")[0] for o in outcomes)))
    print("metrics:")
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(("bg_response_finished_total", "bg_response_failed_total", "bg_response_in_flight")):
            print("  " + line)
    finished = sum(s.value for m in registry.collect() for s in m.samples if s.name == "bg_response_finished_total")
    ok = finished == args.count and registry.get_sample_value("bg_response_in_flight") == 0
    print("every response counted once:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
