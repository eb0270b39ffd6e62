"""Quickstart: bgwatch on a sync ``OpenAI`` client, polled by hand, counted on ``/metrics``.

    python examples/quickstart.py                                          # embedded simulator
    OPENAI_API_KEY=sk-... python examples/quickstart.py --base-url https://api.openai.com/v1

Creates a few background responses, polls each with ``client.responses.retrieve`` (honouring
the ``openai-poll-after-ms`` hint) and lets bgwatch raise ``failed`` ones as typed exceptions.
Then it scrapes its own ``/metrics`` as Prometheus would and prints bgwatch's counts. It exits
by itself: 0 when bgwatch counted every response once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import urllib.request
from collections.abc import Iterator

from openai import OpenAI

import bgwatch

TERMINAL = ("completed", "failed", "incomplete", "cancelled")


@contextlib.contextmanager
def api_base_url(base_url: str | None) -> Iterator[str]:
    """The given base URL, or that of an embedded simulator started for the run."""
    if base_url:
        yield base_url
        return
    from bgwatch.simulator import Simulator

    mix = "completed=50,failed=30,incomplete=10,cancelled=10,codes=server_error|rate_limit_exceeded|invalid_prompt"
    with Simulator(seed=3, mix=mix, durations=(0.1, 0.8)) as sim:
        yield sim.base_url


def poll(client: OpenAI, response_id: str) -> str:
    """Poll one background response until it ends; returns a line describing how."""
    while True:
        try:
            raw = client.responses.with_raw_response.retrieve(response_id)
        except bgwatch.ResponseFailed as exc:  # raised by bgwatch from a poll that answered 200
            return f"failed: {type(exc).__name__} code={exc.code} retryable={exc.retryable}"
        response = raw.parse()
        if response.status in TERMINAL:
            return str(response.status)
        time.sleep(int(raw.headers.get("openai-poll-after-ms", "500")) / 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-url", help="OpenAI-compatible base URL (default: start a simulator)")
    parser.add_argument("--count", type=int, default=8, help="background responses to create")
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args(argv)

    # Serve /metrics (port 0: any free port; production uses a fixed one, e.g. 9464).
    server, _ = bgwatch.start_metrics_server(port=0, addr="127.0.0.1")
    metrics_url = f"http://127.0.0.1:{server.server_port}/metrics"

    with api_base_url(args.base_url) as base_url:
        client = OpenAI(
            base_url=base_url,
            api_key=os.environ.get("OPENAI_API_KEY", "sk-simulator"),
            http_client=bgwatch.http_client(raise_on=("failed",)),  # observe everything, raise on failed
        )
        ids = [
            client.responses.create(model=args.model, input=f"Say hello #{n}", background=True).id
            for n in range(args.count)
        ]
        for response_id in ids:
            print(f"{response_id}: {poll(client, response_id)}")
        client.close()

    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        scrape = reply.read().decode()
    server.shutdown()
    print(f"\nwhat Prometheus sees at {metrics_url}:")
    finished = 0.0
    for line in scrape.splitlines():
        if line.startswith(("bg_response_finished_total", "bg_response_failed_total", "bg_response_incomplete_total")):
            print("  " + line)
            if line.startswith("bg_response_finished_total"):
                finished += float(line.rsplit(" ", 1)[1])
    ok = finished == args.count
    print("every response counted once:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
