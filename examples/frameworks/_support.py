"""What the three framework recipes share: a base URL (or an embedded simulator) and the report.

Not part of a recipe: the recipes are the other files of this folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest

MIX = "completed=60,failed=40,codes=server_error|rate_limit_exceeded"
API_KEY = os.environ.get("OPENAI_API_KEY", "sk-simulator")


def arguments(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The recipes' command line: --base-url, --count, --model."""
    parser = argparse.ArgumentParser(description=doc.split("\n", 1)[0])
    parser.add_argument("--base-url", help="OpenAI-compatible base URL (default: start a simulator)")
    parser.add_argument("--count", type=int, default=4, help="background responses per path")
    parser.add_argument("--model", default="gpt-4o-mini")
    return parser.parse_args(argv)


@contextlib.contextmanager
def api_base_url(base_url: str | None) -> Iterator[str]:
    """The given base URL, or that of an embedded simulator started for the run."""
    if base_url:
        yield base_url
        return
    from bgwatch.simulator import Simulator

    with Simulator(seed=2, mix=MIX, durations=(0.05, 0.3)) as sim:
        yield sim.base_url


def report(registry: CollectorRegistry, expected_finished: int) -> int:
    """Print bgwatch's series; 0 when it counted each of ``expected_finished`` responses once."""
    print("metrics:")
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith(("bg_response_created_total", "bg_response_finished_total", "bg_response_failed_total")):
            print("  " + line)
    finished = sum(s.value for m in registry.collect() for s in m.samples if s.name == "bg_response_finished_total")
    ok = finished == expected_finished and registry.get_sample_value("bg_response_in_flight") == 0
    print("every response counted once:", ok)
    return 0 if ok else 1
