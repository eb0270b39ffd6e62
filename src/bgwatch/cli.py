"""The ``bgwatch`` command (also ``python -m bgwatch``).

``bgwatch demo`` runs background responses through a real ``openai`` client with bgwatch
installed, against the embedded simulator, serves ``/metrics`` and ends with bgwatch's counts
beside the simulator's ledger (exit status 1 when they differ). ``bgwatch demo --help`` lists
the options.

``bgwatch export --out DIR`` writes the Grafana dashboards, the Prometheus rules (optionally as a
prometheus-operator ``PrometheusRule``), their promtool unit tests and the runbook, adapted to a
deployment (data source, selector, runbook and Grafana URLs, uids, titles, thresholds).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ._demo import DEFAULT_MIX, DEFAULT_MODEL, DemoOptions, check_durations, run_demo
from .errors import ConfigurationError, validate_raise_on

__all__ = ["build_parser", "main"]


def _raise_on(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        validate_raise_on(chosen)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return chosen


def _mix(text: str) -> str:
    from .simulator import Mix

    try:
        Mix.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _durations(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(part) for part in text.split(","))
        return check_durations((lo, hi))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH seconds: {exc}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0 (a free port) .. 65535")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _add_export(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ._export import FORMATS
    from ._rules import DEFAULT_GRAFANA_URL, DEFAULT_RUNBOOK_URL, Thresholds

    export = commands.add_parser(
        "export",
        help="write the dashboards, Prometheus rules, their promtool tests and the runbook to a directory",
        description=(
            "Write dashboards/*.json (Grafana), rules/bgwatch.rules.yml (Prometheus), rules/tests/*.yml"
            " (promtool test rules, written for the same options) and runbook.md under --out."
        ),
    )
    export.add_argument("--out", "-o", type=Path, required=True, metavar="DIR", help="output directory")
    export.add_argument(
        "--format",
        choices=FORMATS,
        default="prometheus",
        help="rules as a plain rule file, or also as a PrometheusRule manifest for kubectl apply (default prometheus)",
    )
    export.add_argument(
        "--selector",
        default="",
        metavar="MATCHERS",
        help="PromQL matchers every rule and panel query adds, e.g. 'namespace=\"prod\"' or 'job=~\"api|worker\"'",
    )
    export.add_argument(
        "--datasource-uid",
        default=None,
        metavar="UID",
        help="pin the dashboards to this Prometheus data source uid (default: a data source picker variable)",
    )
    export.add_argument("--runbook-url", default=DEFAULT_RUNBOOK_URL, metavar="URL", help="base URL of runbook.md")
    export.add_argument(
        "--grafana-url", default=DEFAULT_GRAFANA_URL, metavar="URL", help="Grafana's base URL, for dashboard_url"
    )
    export.add_argument("--uid-prefix", default="bgwatch", help="dashboard uids are PREFIX-overview, PREFIX-failures")
    export.add_argument("--title-prefix", default="bgwatch", help='dashboard titles are "PREFIX / ..."')
    export.add_argument(
        "--threshold",
        type=_key_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an alert threshold (repeatable): "
        + ", ".join(f"{n}={getattr(Thresholds(), n)}" for n in Thresholds.names()),
    )
    k8s = export.add_argument_group("--format prometheus-operator")
    k8s.add_argument("--namespace", default=None, help="metadata.namespace of the PrometheusRule")
    k8s.add_argument(
        "--label",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata.labels of the PrometheusRule, e.g. release=prometheus (repeatable)",
    )


def _run_export(args: argparse.Namespace) -> int:
    from ._export import ExportOptions, export
    from ._rules import RuleOptions, Thresholds

    try:
        options = ExportOptions(
            rules=RuleOptions(
                selector=args.selector,
                runbook_url=args.runbook_url,
                grafana_url=args.grafana_url,
                uid_prefix=args.uid_prefix,
                thresholds=Thresholds().with_values(dict(args.threshold)),
            ),
            title_prefix=args.title_prefix,
            datasource_uid=args.datasource_uid,
            format=args.format,
            namespace=args.namespace,
            labels=dict(args.label),
        )
    except ValueError as exc:
        print(f"bgwatch export: {exc}", file=sys.stderr)
        return 2
    for path in export(args.out, options):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bgwatch`` command."""
    parser = argparse.ArgumentParser(
        prog="bgwatch", description="Observability for OpenAI background responses (openai-bgwatch)."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run background responses against the embedded simulator and compare counts with its ledger",
        description=(
            "Start the embedded Responses API simulator, serve /metrics, run background responses"
            " through a real openai client with bgwatch installed, and compare what bgwatch counted"
            " with the simulator's ledger. Exit status 1 on a mismatch."
        ),
    )
    work = demo.add_argument_group("workload")
    work.add_argument(
        "--responses",
        "-n",
        type=_positive,
        metavar="N",
        default=None,
        help="background responses to run (default 200; 10 with --base-url)",
    )
    work.add_argument(
        "--concurrency", "-c", type=_positive, default=32, metavar="N", help="threads or tasks (default 32)"
    )
    work.add_argument(
        "--async", dest="asynchronous", action="store_true", help="AsyncOpenAI and asyncio tasks instead of threads"
    )
    work.add_argument(
        "--raise-on",
        type=_raise_on,
        default=(),
        metavar="STATUSES",
        help="install bgwatch in raise mode for these statuses, e.g. failed,incomplete (default: observe only)",
    )
    work.add_argument(
        "--cancel-every",
        type=int,
        default=25,
        metavar="N",
        help="cancel every N-th response through the API right after creating it (0: never; default 25)",
    )
    work.add_argument("--model", default=DEFAULT_MODEL, help=f"model name to send (default {DEFAULT_MODEL})")
    work.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS", help="seconds one response may take (default 120)"
    )
    sim = demo.add_argument_group("simulator")
    sim.add_argument(
        "--seed", type=int, default=None, help="seed of the outcome draws (default: a random one, printed)"
    )
    sim.add_argument(
        "--mix",
        type=_mix,
        default=DEFAULT_MIX,
        help=f'terminal-state weights (default "{DEFAULT_MIX}"), optionally codes=a|b, unknown=x|y, reasons=a|b',
    )
    sim.add_argument(
        "--durations", type=_durations, default=(0.5, 3.0), metavar="LOW,HIGH", help="seconds a response runs (0.5,3)"
    )
    sim.add_argument(
        "--queue-seconds",
        type=_durations,
        default=None,
        metavar="LOW,HIGH",
        help="seconds a response waits queued before it runs (default: a share of --durations)",
    )
    sim.add_argument(
        "--poll-after-ms", type=int, default=250, metavar="MS", help="openai-poll-after-ms the simulator sends (250)"
    )
    sim.add_argument(
        "--fault-rate",
        type=_rate,
        default=0.0,
        metavar="P",
        help="probability of an HTTP fault (500/429/503/reset/truncate) per request",
    )
    api = demo.add_argument_group("a real API instead of the simulator")
    api.add_argument(
        "--base-url",
        default=None,
        help="e.g. https://api.openai.com/v1 (key from OPENAI_API_KEY); no ledger comparison then",
    )
    metrics = demo.add_argument_group("/metrics")
    metrics.add_argument(
        "--metrics-port",
        type=_port,
        default=9464,
        metavar="PORT",
        help="port of /metrics (default 9464; 0 picks a free one)",
    )
    metrics.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to bind (default 127.0.0.1; 0.0.0.0 for a Prometheus in Docker)",
    )
    metrics.add_argument(
        "--keep-serving", action="store_true", help="keep /metrics and the simulator up after the run until Ctrl-C"
    )
    metrics.add_argument(
        "--private-registry",
        action="store_true",
        help="count into a private registry instead of prometheus_client's global one (for tests and embedding)",
    )
    _add_export(commands)
    output = demo.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    output.add_argument(
        "--progress",
        choices=("auto", "tty", "lines", "none"),
        default="auto",
        help="an updating line on a terminal, a line every 2 s otherwise (auto)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``bgwatch`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "export":
        return _run_export(args)
    if args.command != "demo":
        parser.print_help(sys.stderr)
        return 2
    if args.cancel_every < 0:
        parser.error("--cancel-every must be >= 0")
    responses = args.responses if args.responses is not None else (10 if args.base_url else 200)
    options = DemoOptions(
        responses=responses,
        concurrency=args.concurrency,
        asynchronous=args.asynchronous,
        raise_on=args.raise_on,
        seed=args.seed,
        mix=args.mix,
        durations=args.durations,
        queue_seconds=args.queue_seconds,
        poll_after_ms=args.poll_after_ms,
        cancel_every=args.cancel_every,
        fault_rate=args.fault_rate,
        model=args.model,
        base_url=args.base_url,
        api_key=os.environ.get("OPENAI_API_KEY") if args.base_url else None,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        keep_serving=args.keep_serving,
        private_registry=args.private_registry,
        timeout=args.timeout,
        progress=args.progress,
        json=args.json,
    )
    try:
        summary = run_demo(options)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
