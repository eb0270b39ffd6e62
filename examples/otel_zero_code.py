"""An app with no bgwatch line: ``opentelemetry-instrument`` turns bgwatch on by itself.

    pip install 'openai-bgwatch[otel]' opentelemetry-distro
    OTEL_TRACES_EXPORTER=console OTEL_METRICS_EXPORTER=console OTEL_LOGS_EXPORTER=none \\
        opentelemetry-instrument python examples/otel_zero_code.py

The app builds plain ``OpenAI()`` and ``AsyncOpenAI()`` clients (no ``http_client=``), creates
background responses and polls them to the end. With bgwatch installed, the instrumentor it
registers routes both clients through bgwatch: the console shows a ``chat <model>`` span per
create, a ``fetch_response`` span per poll, a ``background_response <model>`` span per
response, and the ``bg_response_*`` metrics at exit. ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=bgwatch``
turns it off again.

It talks to ``OPENAI_BASE_URL`` (``OPENAI_API_KEY`` as usual); with neither set it starts
bgwatch's embedded simulator (the only bgwatch import, and only for the demo). The app's own
output goes to stderr, so stdout carries the exporters' JSON alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator

from openai import AsyncOpenAI, OpenAI

MODEL = "gpt-4.1-mini"
OUTCOMES = ("completed", "failed:server_error", "incomplete:max_output_tokens", "completed")
PENDING = ("queued", "in_progress")


@contextlib.contextmanager
def api() -> Iterator[None]:
    """Point the SDK at a local simulator unless a base URL is configured."""
    if os.environ.get("OPENAI_BASE_URL"):
        yield
        return
    from bgwatch.simulator import Simulator  # demo only: not how an app would use bgwatch

    with Simulator(seed=7, durations=(0.05, 0.15)) as sim:
        os.environ["OPENAI_BASE_URL"] = sim.base_url
        os.environ.setdefault("OPENAI_API_KEY", "sk-example-not-a-key")
        yield


def run_sync(outcomes: tuple[str, ...]) -> None:
    client = OpenAI()
    created = [
        client.responses.create(model=MODEL, input="Write a haiku.", background=True, metadata={"bgwatch_outcome": o})
        for o in outcomes
    ]
    deadline = time.monotonic() + 20
    for first in created:
        response = first
        while response.status in PENDING and time.monotonic() < deadline:
            time.sleep(0.05)
            response = client.responses.retrieve(response.id)
        print(f"sync {response.id}: {response.status}", file=sys.stderr, flush=True)
    client.close()


async def run_async(outcome: str) -> None:
    client = AsyncOpenAI()
    response = await client.responses.create(
        model=MODEL, input="Write a haiku.", background=True, metadata={"bgwatch_outcome": outcome}
    )
    deadline = time.monotonic() + 20
    while response.status in PENDING and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        response = await client.responses.retrieve(response.id)
    print(f"async {response.id}: {response.status}", file=sys.stderr, flush=True)
    await client.close()


def main() -> None:
    with api():
        run_sync(OUTCOMES)
        asyncio.run(run_async("failed:rate_limit_exceeded"))


if __name__ == "__main__":
    main()
