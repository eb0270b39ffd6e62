"""``python -m bgwatch.simulator``: serve a fake Responses API until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, cast

from ._model import FAULT_KINDS, FaultKind, Faults, Mix
from ._server import Simulator


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH seconds, got {text!r}") from None
    return lo, hi


def _mix(text: str) -> Mix:
    try:
        return Mix.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _kinds(text: str) -> tuple[FaultKind, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in FAULT_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"fault kinds must be among {', '.join(FAULT_KINDS)}")
    return cast(tuple[FaultKind, ...], kinds)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (also used by ``bgwatch demo``)."""
    parser = argparse.ArgumentParser(
        prog="python -m bgwatch.simulator",
        description="Serve a fake OpenAI Responses API (background responses) on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--mix", type=_mix, default=Mix(), help='e.g. "completed=60,failed=25,incomplete=10,cancelled=5"'
    )
    parser.add_argument(
        "--durations", type=_pair, default=(1.0, 10.0), help="LOW,HIGH seconds a response runs (default 1,10)"
    )
    parser.add_argument(
        "--queue-seconds",
        type=_pair,
        default=None,
        help="LOW,HIGH seconds a response waits queued before it runs (default: a share of --durations)",
    )
    parser.add_argument("--poll-after-ms", type=int, default=500)
    parser.add_argument("--output-bytes", type=int, default=64)
    parser.add_argument("--fault-rate", type=float, default=0.0, help="probability of a random fault per request")
    parser.add_argument("--fault-kinds", type=_kinds, default=None, help=f"comma list of {','.join(FAULT_KINDS)}")
    parser.add_argument("--gzip", action="store_true", help="gzip every body the client accepts gzip for")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until interrupted; returns the exit status."""
    args = build_parser().parse_args(argv)
    faults = None
    if args.fault_rate > 0:
        faults = (
            Faults(rate=args.fault_rate, kinds=args.fault_kinds) if args.fault_kinds else Faults(rate=args.fault_rate)
        )
    sim = Simulator(
        seed=args.seed,
        mix=args.mix,
        durations=args.durations,
        queue_seconds=args.queue_seconds,
        host=args.host,
        port=args.port,
        poll_after_ms=args.poll_after_ms,
        output_bytes=args.output_bytes,
        faults=faults,
        gzip_responses=args.gzip,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    # Installed explicitly: a shell starting us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sim.start()
    print(sim.base_url, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sim.stop()
        done = len(sim.ledger())
        print(f"served {len(sim.request_log)} requests, {done} responses finished", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
