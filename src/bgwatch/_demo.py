"""``bgwatch demo``: background responses through a real openai client, counted by bgwatch.

The demo starts the embedded simulator (unless ``base_url`` points elsewhere), serves
``/metrics``, runs a workload of background responses through a real ``openai`` client with
bgwatch installed (a pool of threads, or asyncio tasks), and ends with what bgwatch counted
(read back from the Prometheus registry it counted into) beside the simulator's ground-truth
ledger. They must match: every response counted once, whatever its fate.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import math
import queue
import random
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TextIO

import openai
from prometheus_client import REGISTRY, CollectorRegistry

from . import _locks
from ._wait import async_wait, wait
from .errors import BackgroundResponseError
from .exposition import start_metrics_server
from .transports import async_http_client, http_client

__all__ = ["DEFAULT_MIX", "Counts", "DemoOptions", "DemoSummary", "read_counts", "run_demo"]

DEFAULT_MIX = "completed=60,failed=25,incomplete=10,cancelled=5"
DEFAULT_MODEL = "gpt-4o-mini"
TERMINAL = ("completed", "failed", "incomplete", "cancelled")
ProgressMode = Literal["auto", "tty", "lines", "none"]

_POLL_PATH = re.compile(r"/responses/[^/]+$")


@dataclass(frozen=True)
class DemoOptions:
    """Everything ``bgwatch demo`` can be told (the CLI flags, one for one)."""

    responses: int = 200
    concurrency: int = 32
    asynchronous: bool = False
    raise_on: tuple[str, ...] = ()
    seed: int | None = None
    """None draws one (printed, so a run can be repeated)."""
    mix: str = DEFAULT_MIX
    durations: tuple[float, float] = (0.5, 3.0)
    """Seconds a simulated response runs (low, high)."""
    queue_seconds: tuple[float, float] | None = None
    """Seconds a simulated response waits queued (low, high); None: a share of ``durations``."""
    poll_after_ms: int = 250
    """The simulator's ``openai-poll-after-ms`` hint, which the polling honours."""
    cancel_every: int = 25
    """Cancel every n-th response through the API right after creating it (0: never)."""
    fault_rate: float = 0.0
    """Probability of an HTTP fault (500, 429, 503, reset, truncated body) per request."""
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    """A real (or external) API instead of the embedded simulator: no ledger to compare."""
    api_key: str | None = None
    metrics_port: int | None = 9464
    """Port of ``/metrics`` (0: a free one; None: no server)."""
    metrics_addr: str = "127.0.0.1"
    keep_serving: bool = False
    private_registry: bool = False
    """Count into a fresh registry instead of prometheus_client's global one (tests)."""
    timeout: float = 120.0
    """Seconds one response may take before the wait gives up."""
    progress: ProgressMode = "auto"
    json: bool = False


@dataclass
class Counts:
    """Outcome counts: what bgwatch counted, or what the simulator's ledger says."""

    finished: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    incomplete: dict[str, int] = field(default_factory=dict)
    created: int = 0
    polls: int = 0
    in_flight: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    """``"input completed"`` etc.: tokens of finished responses by type and terminal status."""
    queue_waits: int = 0
    """Responses whose queue wait was measured (bgwatch) / shown past ``queued`` (ledger).
    Their summed seconds are in :class:`QueueWait`: compared within a tolerance, not here."""

    def minus(self, before: Counts) -> Counts:
        """The counters' increase since ``before`` (``in_flight`` is a gauge: kept as is)."""

        def sub(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
            out = {k: v - b.get(k, 0) for k, v in a.items()}
            return {k: v for k, v in out.items() if v}

        return Counts(
            finished=sub(self.finished, before.finished),
            failed=sub(self.failed, before.failed),
            incomplete=sub(self.incomplete, before.incomplete),
            created=self.created - before.created,
            polls=self.polls - before.polls,
            in_flight=self.in_flight,
            tokens=sub(self.tokens, before.tokens),
            queue_waits=self.queue_waits - before.queue_waits,
        )

    def rows(self) -> Iterator[tuple[str, int]]:
        """``(row name, value)`` pairs, the shape the table and the comparison use."""
        for status in TERMINAL:
            yield f"finished {status}", self.finished.get(status, 0)
        for status in sorted(set(self.finished) - set(TERMINAL)):
            yield f"finished {status}", self.finished[status]
        for code, n in sorted(self.failed.items()):
            yield f"failed {code}", n
        for reason, n in sorted(self.incomplete.items()):
            yield f"incomplete {reason}", n
        for kind in sorted(self.tokens):
            yield f"tokens {kind}", self.tokens[kind]
        yield "created", self.created
        yield "polls", self.polls
        yield "in flight", self.in_flight
        yield "queue waits", self.queue_waits


def read_counts(registry: CollectorRegistry) -> Counts:
    """What bgwatch has counted in ``registry`` (summed over models)."""
    finished: collections.Counter[str] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()
    incomplete: collections.Counter[str] = collections.Counter()
    tokens: collections.Counter[str] = collections.Counter()
    created = polls = in_flight = queue_waits = 0.0
    for metric in registry.collect():
        if not metric.name.startswith("bg_response_"):
            continue
        for s in metric.samples:
            if s.name == "bg_response_finished_total":
                finished[s.labels["status"]] += int(s.value)
            elif s.name == "bg_response_failed_total":
                failed[s.labels["code"]] += int(s.value)
            elif s.name == "bg_response_incomplete_total":
                incomplete[s.labels["reason"]] += int(s.value)
            elif s.name == "bg_response_created_total":
                created += s.value
            elif s.name == "bg_response_polls_total":
                polls += s.value
            elif s.name == "bg_response_in_flight":
                in_flight += s.value
            elif s.name == "bg_response_tokens_total":
                tokens[f"{s.labels['type']} {s.labels['status']}"] += int(s.value)
            elif s.name == "bg_response_queue_seconds_count":
                queue_waits += s.value
    return Counts(
        dict(finished),
        dict(failed),
        dict(incomplete),
        int(created),
        int(polls),
        int(in_flight),
        dict(tokens),
        int(queue_waits),
    )


def read_queue_seconds(registry: CollectorRegistry) -> float:
    """The summed ``bg_response_queue_seconds`` in ``registry`` (over models)."""
    return math.fsum(
        s.value
        for metric in registry.collect()
        if metric.name == "bg_response_queue_seconds"
        for s in metric.samples
        if s.name == "bg_response_queue_seconds_sum"
    )


def _ledger_counts(sim: Any) -> Counts:
    """The simulator's ground truth in the shape of :class:`Counts`."""
    outcomes = sim.outcomes()
    ledger = sim.ledger()
    finished: collections.Counter[str] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()
    incomplete: collections.Counter[str] = collections.Counter()
    tokens: collections.Counter[str] = collections.Counter()
    for outcome in ledger.values():
        finished[outcome.status] += 1
        if outcome.status == "failed":
            failed[outcome.code or "unknown"] += 1
        elif outcome.status == "incomplete":
            incomplete[outcome.reason or "unknown"] += 1
        tokens[f"input {outcome.status}"] += outcome.input_tokens
        tokens[f"output {outcome.status}"] += outcome.output_tokens
    log = sim.request_log
    # A poll bgwatch can count is one whose body arrived whole: a truncated body never does.
    polls = log.count("GET", _POLL_PATH, status=200) - log.count("GET", _POLL_PATH, status=200, fault="truncate")
    shown = [o.queue_seen_seconds for o in outcomes.values() if o.queue_seen_seconds is not None]
    return Counts(
        dict(finished),
        dict(failed),
        dict(incomplete),
        len(outcomes),
        polls,
        len(outcomes) - len(ledger),
        {kind: n for kind, n in tokens.items() if n},  # as bgwatch's increase: no zero rows
        len(shown),
    )


QUEUE_TOLERANCE_PER_RESPONSE = 0.1
"""Seconds per response that bgwatch's summed queue wait may differ from the ledger's.

The ledger's wait ends when the simulator sent a body past ``queued``, bgwatch's when the
client read it; bgwatch's starts when it read the create's answer (``created_at`` is whole
seconds): two loopback round trips, a few milliseconds each. A wait measured from the whole
second would be off by 0.5 s on average and fail this."""


@dataclass
class QueueWait:
    """Summed queue waits: bgwatch's histogram beside the simulator's ledger."""

    bgwatch_seconds: float
    ledger_seconds: float | None = None
    """Up to when a client was first sent each response past ``queued`` (what polling sees)."""
    really_queued_seconds: float | None = None
    """How long they really stayed queued (polling sees the end up to a poll late)."""
    tolerance_seconds: float | None = None

    @property
    def matches(self) -> bool:
        """Whether bgwatch's sum is within the tolerance of the ledger's (True without one)."""
        if self.ledger_seconds is None or self.tolerance_seconds is None:
            return True
        return abs(self.bgwatch_seconds - self.ledger_seconds) <= self.tolerance_seconds


def _ledger_queue_wait(sim: Any, bgwatch_seconds: float) -> QueueWait:
    outcomes = sim.outcomes().values()
    shown = [o.queue_seen_seconds for o in outcomes if o.queue_seen_seconds is not None]
    return QueueWait(
        bgwatch_seconds,
        math.fsum(shown),
        math.fsum(o.queue_seconds for o in outcomes if o.queue_seconds is not None),
        QUEUE_TOLERANCE_PER_RESPONSE * len(shown),
    )


def _faults_injected(sim: Any) -> int:
    from .simulator import FAULT_KINDS

    return sum(sim.request_log.count(fault=kind) for kind in FAULT_KINDS)


# -- what the client saw -------------------------------------------------------------------


@dataclass
class ExceptionExample:
    """One typed exception the workload caught (raise mode)."""

    cls: str
    status: str
    code: str | None
    reason: str | None
    response_id: str | None
    retryable: bool


class Tally:
    """What the workload's own code saw: returned statuses, typed exceptions, errors."""

    def __init__(self) -> None:
        self._lock = _locks.Lock()
        self.returned: collections.Counter[str] = collections.Counter()
        self.raised: collections.Counter[str] = collections.Counter()
        self.raised_by_class: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, ExceptionExample] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.cancelled_via_api = 0

    def got(self, status: str) -> None:
        with self._lock:
            self.returned[status] += 1

    def caught(self, exc: BackgroundResponseError) -> None:
        name = type(exc).__name__
        with self._lock:
            self.raised[exc.status] += 1
            self.raised_by_class[name] += 1
            self.examples.setdefault(
                name,
                ExceptionExample(name, exc.status, exc.code, exc.reason, exc.response_id, exc.retryable),
            )

    def error(self, exc: BaseException) -> None:
        with self._lock:
            self.errors[type(exc).__name__] += 1

    def cancelled(self) -> None:
        with self._lock:
            self.cancelled_via_api += 1


def _wants_cancel(index: int, options: DemoOptions) -> bool:
    return options.cancel_every > 0 and index % options.cancel_every == options.cancel_every - 1


def _create_kwargs(index: int, options: DemoOptions) -> dict[str, Any]:
    return {
        "model": options.model,
        "input": f"bgwatch demo request #{index}: reply with one word.",
        "background": True,
        "max_output_tokens": 16,
    }


def _job_sync(client: openai.OpenAI, index: int, options: DemoOptions, tally: Tally) -> None:
    try:
        response = client.responses.create(**_create_kwargs(index, options))
        if _wants_cancel(index, options):
            try:
                client.responses.cancel(response.id)
                tally.cancelled()
            except openai.BadRequestError:
                pass  # it reached a terminal state first: nothing to cancel
        final = wait(client, response.id, timeout=options.timeout, raise_on=(), max_poll_interval=5.0)
        tally.got(final.status or "unknown")
    except BackgroundResponseError as exc:
        tally.caught(exc)
    except Exception as exc:  # WaitTimeout, API errors left after the SDK's retries: reported at the end
        tally.error(exc)


async def _job_async(client: openai.AsyncOpenAI, index: int, options: DemoOptions, tally: Tally) -> None:
    try:
        response = await client.responses.create(**_create_kwargs(index, options))
        if _wants_cancel(index, options):
            try:
                await client.responses.cancel(response.id)
                tally.cancelled()
            except openai.BadRequestError:
                pass
        final = await async_wait(client, response.id, timeout=options.timeout, raise_on=(), max_poll_interval=5.0)
        tally.got(final.status or "unknown")
    except BackgroundResponseError as exc:
        tally.caught(exc)
    except Exception as exc:  # WaitTimeout, API errors left after the SDK's retries: reported at the end
        tally.error(exc)


def _run_sync(options: DemoOptions, client_kwargs: dict[str, Any], registry: CollectorRegistry, tally: Tally) -> None:
    """A pool of ``concurrency`` daemon threads (Ctrl-C never waits for them)."""
    client = openai.OpenAI(http_client=http_client(raise_on=options.raise_on, registry=registry), **client_kwargs)
    jobs: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(options.responses):
        jobs.put(index)

    def worker() -> None:
        while True:
            try:
                index = jobs.get_nowait()
            except queue.Empty:
                return
            _job_sync(client, index, options, tally)

    threads = [
        threading.Thread(target=worker, name=f"bgwatch-demo-{n}", daemon=True)
        for n in range(max(1, min(options.concurrency, options.responses)))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    finally:
        client.close()


async def _run_async(
    options: DemoOptions, client_kwargs: dict[str, Any], registry: CollectorRegistry, tally: Tally
) -> None:
    """``concurrency`` asyncio tasks at a time on one AsyncOpenAI client."""
    client = openai.AsyncOpenAI(
        http_client=async_http_client(raise_on=options.raise_on, registry=registry), **client_kwargs
    )
    gate = asyncio.Semaphore(max(1, options.concurrency))

    async def one(index: int) -> None:
        async with gate:
            await _job_async(client, index, options, tally)

    try:
        await asyncio.gather(*(one(i) for i in range(options.responses)))
    finally:
        await client.close()


# -- progress ------------------------------------------------------------------------------


class _Progress:
    """Live progress from the registry: an updating line on a TTY, a line every few seconds otherwise."""

    def __init__(
        self, registry: CollectorRegistry, before: Counts, total: int, stream: TextIO, mode: ProgressMode
    ) -> None:
        if mode == "auto":
            isatty = getattr(stream, "isatty", None)
            mode = "tty" if callable(isatty) and isatty() else "lines"
        self.mode = mode
        self._registry = registry
        self._before = before
        self._total = total
        self._stream = stream
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="bgwatch-demo-progress", daemon=True)

    def __enter__(self) -> _Progress:
        if self.mode != "none":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        if self.mode == "tty":
            self._stream.write("\r" + self.line() + "\x1b[K\n")
            self._stream.flush()

    def line(self) -> str:
        counts = read_counts(self._registry).minus(self._before)
        done = sum(counts.finished.values())
        width = len(str(self._total))
        parts = "  ".join(f"{s} {counts.finished.get(s, 0)}" for s in TERMINAL)
        elapsed = time.monotonic() - self._started
        return (
            f"[{done:>{width}}/{self._total} finished]  {parts}  in flight {counts.in_flight}"
            f"  polls {counts.polls}  {elapsed:5.1f}s"
        )

    def _loop(self) -> None:
        interval = 0.2 if self.mode == "tty" else 2.0
        while not self._stop.wait(interval):
            try:
                if self.mode == "tty":
                    width = shutil.get_terminal_size().columns - 1  # a wrapped line cannot be redrawn
                    self._stream.write("\r" + self.line()[:width] + "\x1b[K")
                else:
                    self._stream.write(self.line() + "\n")
                self._stream.flush()
            except Exception:  # progress is cosmetic; never take the demo down
                return


# -- the run -------------------------------------------------------------------------------


@dataclass
class DemoSummary:
    """The outcome of a demo run (``--json`` prints it)."""

    match: bool | None
    """True/False against the simulator's ledger; None against an external API."""
    responses: int
    mode: str
    seed: int | None
    mix: str | None
    raise_on: list[str]
    wall_seconds: float
    metrics_url: str | None
    base_url: str
    bgwatch: Counts
    ledger: Counts | None
    mismatches: list[str]
    returned: dict[str, int]
    raised: dict[str, int]
    errors: dict[str, int]
    cancelled_via_api: int
    exceptions: dict[str, int]
    exception_examples: list[ExceptionExample]
    faults_injected: int = 0
    """HTTP faults the simulator injected (each retried by the SDK or by the wait)."""
    queue_wait: QueueWait | None = None
    """Summed queue waits, bgwatch's and the ledger's, compared within a tolerance."""

    def to_json(self) -> str:
        """One line of JSON."""
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def exit_code(self) -> int:
        """0: matched (or an external run without errors); 1 otherwise."""
        if self.match is None:
            return 1 if self.errors else 0
        return 0 if self.match else 1


def _compare(bgwatch: Counts, ledger: Counts, queue: QueueWait) -> list[str]:
    ours = dict(bgwatch.rows())
    theirs = dict(ledger.rows())
    mismatches = [
        f"{name}: bgwatch {ours.get(name, 0)}, ledger {theirs.get(name, 0)}"
        for name in sorted(set(ours) | set(theirs))
        if ours.get(name, 0) != theirs.get(name, 0)
    ]
    if not queue.matches:
        mismatches.append(
            f"queue wait: bgwatch {queue.bgwatch_seconds:.3f} s, ledger {queue.ledger_seconds:.3f} s"
            f" (tolerance {queue.tolerance_seconds:.3f} s)"
        )
    return mismatches


def render_table(summary: DemoSummary) -> str:
    """The human-readable end of a demo: counts side by side, then the typed exceptions."""
    other_name = "simulator" if summary.ledger is not None else "client saw"
    if summary.ledger is not None:
        other = dict(summary.ledger.rows())
    else:
        seen = Counts(finished=dict(collections.Counter(summary.returned) + collections.Counter(summary.raised)))
        other = {name: n for name, n in seen.rows() if name.startswith("finished")}
    ours = dict(summary.bgwatch.rows())
    names = list(ours) + [n for n in other if n not in ours]
    order = {"finished": 0, "failed": 1, "incomplete": 2, "tokens": 3}
    position = {name: i for i, name in enumerate(names)}
    names.sort(key=lambda n: (order.get(n.split(" ", 1)[0], 4), position[n]))
    label_width = max(28, *(len(n) for n in names)) + 2
    lines = [f"{'':<{label_width}}{'bgwatch':>9}{other_name:>12}"]
    section = ""
    for name in names:
        head, _, rest = name.partition(" ")
        if head in order and rest:
            if head != section:
                metric = {"finished": "status", "failed": "code", "incomplete": "reason", "tokens": "type, status"}[
                    head
                ]
                lines.append(f"{head} ({metric})")
                section = head
            label = "  " + rest
        else:
            if section:
                lines.append("")
                section = ""
            label = name
        a, b = ours.get(name, 0), other.get(name)
        mark = "" if b is None or a == b else "   <-- differs"
        lines.append(f"{label:<{label_width}}{a:>9}{'' if b is None else b:>12}{mark}")
    lines += _queue_lines(summary, label_width)
    if summary.exceptions:
        total = sum(summary.exceptions.values())
        lines += ["", f"typed exceptions caught (raise_on={','.join(summary.raise_on)}): {total}"]
        lines.append(f"  {'class':<28}{'count':>5}  {'code / reason':<30}{'retryable':<11}response_id")
        for ex in sorted(summary.exception_examples, key=lambda e: (-summary.exceptions[e.cls], e.cls)):
            detail = ex.code or ex.reason or ex.status
            lines.append(
                f"  {ex.cls:<28}{summary.exceptions[ex.cls]:>5}  {detail:<30}{ex.retryable!s:<11}{ex.response_id}"
            )
    if summary.cancelled_via_api:
        lines += ["", f"cancelled through the API by the demo: {summary.cancelled_via_api}"]
    if summary.faults_injected:
        lines.append(f"HTTP faults injected by the simulator (retried): {summary.faults_injected}")
    if summary.errors:
        listed = ", ".join(f"{k} x{v}" for k, v in sorted(summary.errors.items()))
        lines += ["", f"calls that failed (after the SDK's retries): {listed}"]
    lines.append("")
    if summary.match is None:
        lines.append("no ledger to compare with (external API): the counts above are what bgwatch saw")
    elif summary.match:
        lines.append(
            f"MATCH: bgwatch counted each of the {summary.bgwatch.created} responses once, and their"
            " tokens, exactly as the simulator's ledger says; queue waits within the tolerance"
        )
    else:
        lines.append("MISMATCH: " + "; ".join(summary.mismatches))
    return "\n".join(lines)


def _queue_lines(summary: DemoSummary, label_width: int) -> list[str]:
    queue = summary.queue_wait
    if queue is None:
        return []
    line = f"{'queue wait, summed (s)':<{label_width}}{queue.bgwatch_seconds:>9.2f}"
    if queue.ledger_seconds is None:
        return ["", line]
    line += f"{queue.ledger_seconds:>12.2f}   (to the first body past queued, ± {queue.tolerance_seconds:.2f})"
    mark = "" if queue.matches else "   <-- differs"
    really = f"{'  really queued (s)':<{label_width}}{'':>9}{queue.really_queued_seconds:>12.2f}"
    return ["", line + mark, really + "   (polling sees the end up to a poll late)"]


@contextlib.contextmanager
def _metrics_server(options: DemoOptions, registry: CollectorRegistry | None, err: TextIO) -> Iterator[str | None]:
    if options.metrics_port is None:
        yield None
        return
    try:
        server, _ = start_metrics_server(options.metrics_port, options.metrics_addr, registry=registry)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or options.metrics_port == 0:
            raise
        print(f"port {options.metrics_port} is in use: serving /metrics on a free port instead", file=err)
        server, _ = start_metrics_server(0, options.metrics_addr, registry=registry)
    host = options.metrics_addr
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    try:
        yield f"http://{host}:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _api(options: DemoOptions, seed: int) -> Iterator[tuple[str, Any]]:
    """``(base_url, simulator or None)`` for the run."""
    if options.base_url:
        yield options.base_url, None
        return
    from .simulator import Faults, Mix, Simulator

    faults = Faults(rate=options.fault_rate) if options.fault_rate > 0 else None
    with Simulator(
        seed=seed,
        mix=Mix.parse(options.mix),
        durations=options.durations,
        queue_seconds=options.queue_seconds,
        poll_after_ms=options.poll_after_ms,
        faults=faults,
    ) as sim:
        yield sim.base_url, sim


def _wait_for_signal(err: TextIO) -> None:
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    print("stopped", file=err)


def run_demo(options: DemoOptions, *, out: TextIO | None = None, err: TextIO | None = None) -> DemoSummary:
    """Run the demo; prints the banner and progress to ``err``, the table (or JSON) to ``out``.

    With ``options.keep_serving`` it returns only once SIGINT/SIGTERM arrives.
    """
    out = sys.stdout if out is None else out
    err = sys.stdout if err is None else err
    if options.json and err is sys.stdout:
        err = sys.stderr
    registry = CollectorRegistry() if options.private_registry else REGISTRY
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(1, 10_000)
    external = bool(options.base_url)
    with (
        _api(options, seed) as (base_url, sim),
        _metrics_server(options, registry if options.private_registry else None, err) as metrics_url,
    ):
        mode = f"async, {options.concurrency} tasks" if options.asynchronous else f"sync, {options.concurrency} threads"
        mode_name = "async" if options.asynchronous else "sync"
        raising = f"raise_on={','.join(options.raise_on)}" if options.raise_on else "observe only"
        print(
            f"bgwatch demo: {options.responses} background responses through openai {openai.__version__}"
            f" ({mode}), bgwatch {raising}",
            file=err,
        )
        if sim is not None:
            lo, hi = options.durations
            faults = f"  faults {options.fault_rate:.0%}" if options.fault_rate else ""
            print(f"simulator: {base_url}  seed {seed}  mix {options.mix}  durations {lo:g}-{hi:g} s{faults}", file=err)
        else:
            print(f"API: {base_url}  model {options.model} (no ledger to compare with)", file=err)
        if metrics_url is not None:
            print(f"metrics: {metrics_url}", file=err)
        err.flush()
        client_kwargs: dict[str, Any] = {
            "base_url": base_url,
            "api_key": options.api_key or "sk-bgwatch-demo",
            "max_retries": 5 if options.fault_rate > 0 else 2,
        }
        tally = Tally()
        before = read_counts(registry)
        queued_before = read_queue_seconds(registry)
        started = time.monotonic()
        with _Progress(registry, before, options.responses, err, options.progress):
            if options.asynchronous:
                asyncio.run(_run_async(options, client_kwargs, registry, tally))
            else:
                _run_sync(options, client_kwargs, registry, tally)
        wall = time.monotonic() - started
        counted = read_counts(registry).minus(before)
        ledger = _ledger_counts(sim) if sim is not None else None
        queued = read_queue_seconds(registry) - queued_before
        queue = _ledger_queue_wait(sim, queued) if sim is not None else QueueWait(queued)
        mismatches = _compare(counted, ledger, queue) if ledger is not None else []
        summary = DemoSummary(
            match=None if external else not mismatches,
            responses=options.responses,
            mode=mode_name,
            seed=None if external else seed,
            mix=None if external else options.mix,
            raise_on=list(options.raise_on),
            wall_seconds=round(wall, 3),
            metrics_url=metrics_url,
            base_url=base_url,
            bgwatch=counted,
            ledger=ledger,
            mismatches=mismatches,
            queue_wait=queue,
            returned=dict(tally.returned),
            raised=dict(tally.raised),
            errors=dict(tally.errors),
            cancelled_via_api=tally.cancelled_via_api,
            exceptions=dict(tally.raised_by_class),
            exception_examples=list(tally.examples.values()),
            faults_injected=_faults_injected(sim) if sim is not None else 0,
        )
        if options.json:
            print(render_table(summary), file=err)
            print(summary.to_json(), file=out)
        else:
            print(f"\nfinished in {wall:.1f} s\n", file=out)
            print(render_table(summary), file=out)
        out.flush()
        if options.keep_serving:
            where = f" at {metrics_url}" if metrics_url else ""
            sim_note = f" (and the simulator at {base_url})" if sim is not None else ""
            print(f"serving /metrics{where}{sim_note} until Ctrl-C", file=err)
            err.flush()
            _wait_for_signal(err)
    return summary


def check_durations(durations: tuple[float, float]) -> tuple[float, float]:
    """Validate a (low, high) pair of seconds."""
    lo, hi = durations
    if not (math.isfinite(lo) and math.isfinite(hi)) or not 0 <= lo <= hi:
        raise ValueError(f"durations must satisfy 0 <= LOW <= HIGH, got {lo},{hi}")
    return lo, hi
