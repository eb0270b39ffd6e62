"""Prometheus instruments for the metric contract in DESIGN.md.

| metric                          | type      | labels         |
|---------------------------------|-----------|----------------|
| bg_response_failed_total        | counter   | code, model    |
| bg_response_incomplete_total    | counter   | reason, model  |
| bg_response_finished_total      | counter   | status, model  |
| bg_response_created_total       | counter   | model          |
| bg_response_polls_total         | counter   | status         |
| bg_response_duration_seconds    | histogram | status, model  |
| bg_response_in_flight           | gauge     |                |
| bgwatch_internal_errors_total   | counter   | stage          |
| bgwatch_webhook_rejected_total  | counter   | reason         |
| bg_response_abandoned_total     | counter   | model          |
| bg_response_queue_seconds       | histogram | model          |
| bg_response_oldest_in_flight_seconds | gauge |              |
| bg_response_tokens_total        | counter   | type, status, model |

Instruments are created once per registry and shared by every watcher that uses it. Every
scrape of that registry first sweeps the watchers writing to it (their expired in-flight ids
become abandoned), so the in-flight gauge is honest even when no traffic arrives.

In a forked child the sink starts from zero (see :meth:`PrometheusSink.forked`).

:class:`OTelMetricsSink` mirrors the same contract through the OpenTelemetry metrics API, with
instrument names that the OpenTelemetry Prometheus exporter turns into exactly these metric
and label names (it appends ``_total`` to counters and ``_seconds`` for the unit ``s``).
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import metrics as otel_metrics
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import values as _prometheus_values

from . import _locks
from ._classify import STATUSES, Observation
from ._tracker import Tracker, Transition
from .errors import ConfigurationError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ._watcher import Watcher

__all__ = [
    "DURATION_BUCKETS",
    "METRIC_NAMES",
    "QUEUE_BUCKETS",
    "OTelMetricsSink",
    "PrometheusSink",
    "ResponseLabels",
]

DURATION_BUCKETS: Final[tuple[float, ...]] = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
)
"""Seconds from ``created_at`` to the terminal state: background responses run up to hours."""

QUEUE_BUCKETS: Final[tuple[float, ...]] = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
"""Seconds a background response waited ``queued``: from well under a second to an hour."""

INTERNAL_ERROR_STAGES: Final = ("request", "classify", "record", "stream", "sink", "trace", "webhook", "other")
"""The bounded ``stage`` label values of ``bgwatch_internal_errors_total``."""

METRIC_NAMES: Final = (
    "bg_response_failed_total",
    "bg_response_incomplete_total",
    "bg_response_finished_total",
    "bg_response_created_total",
    "bg_response_polls_total",
    "bg_response_duration_seconds",
    "bg_response_in_flight",
    "bgwatch_internal_errors_total",
    "bgwatch_webhook_rejected_total",
    "bg_response_abandoned_total",
    "bg_response_queue_seconds",
    "bg_response_oldest_in_flight_seconds",
    "bg_response_tokens_total",
)


@dataclass(frozen=True, slots=True)
class ResponseLabels:
    """Bounded label values for one observation; safe to export (no ids, no text)."""

    status: str
    model: str
    code: str | None
    """Set only for a ``failed`` response."""
    reason: str | None
    """Set only for an ``incomplete`` response."""


# One help text per metric, shared by both sinks so the two exports never drift apart.
_HELP: Final[dict[str, str]] = {
    "bg_response_failed": "Background responses that ended failed, by error.code (once per response id).",
    "bg_response_incomplete": "Background responses that ended incomplete, by incomplete_details.reason.",
    "bg_response_finished": "Background responses that reached a terminal status (once per response id).",
    "bg_response_created": "Background responses created through an instrumented client.",
    "bg_response_polls": "Retrieve calls that returned a response, by the status the poll saw.",
    "bg_response_duration": "Seconds from created_at to the terminal state of a background response.",
    "bg_response_in_flight": "Background responses seen but not yet seen in a terminal state.",
    "bgwatch_internal_errors": "Errors inside bgwatch, caught so that the user's call went through untouched.",
    "bgwatch_webhook_rejected": (
        "Webhook deliveries refused (forged, stale, replayed, malformed, overloaded); never outcomes."
    ),
    "bg_response_abandoned": (
        "Background responses that left tracking without a terminal state seen (unobserved for"
        " in_flight_ttl, or evicted by the size cap); they leave bg_response_in_flight then."
    ),
    "bg_response_queue": (
        "Seconds from created_at to the first sight of in_progress (or of the end, if never seen running);"
        " resolution: the poll interval."
    ),
    "bg_response_oldest_in_flight": "Age (now - created_at) of the oldest background response in flight; 0: none.",
    "bg_response_tokens": "Tokens of each finished background response's usage, by type and terminal status.",
}


class _OldestInFlight:
    """The trackers feeding one sink, and the age of their oldest in-flight response.

    Several watchers may share a sink (one registry), each with its own tracker: the gauge is
    the oldest over all of them. Trackers are held weakly, so a dropped watcher drops out.
    """

    def __init__(self) -> None:
        self._trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()

    def add(self, tracker: Tracker) -> None:
        self._trackers.add(tracker)

    def age(self) -> float:
        """Seconds since the oldest in-flight response started; 0.0 when none is in flight."""
        starts = [
            start for tracker in list(self._trackers) if (start := tracker.oldest_in_flight_created_at()) is not None
        ]
        return max(0.0, time.time() - min(starts)) if starts else 0.0


def _token_counts(observation: Observation) -> Iterable[tuple[str, int]]:
    """``(type, tokens)`` of a terminal observation's ``usage``, for the types it carried."""
    if observation.input_tokens is not None:
        yield "input", observation.input_tokens
    if observation.output_tokens is not None:
        yield "output", observation.output_tokens


_sinks: weakref.WeakKeyDictionary[CollectorRegistry, PrometheusSink] = weakref.WeakKeyDictionary()
_sinks_lock = _locks.Lock()


class PrometheusSink:
    """Writes observations to prometheus_client instruments in one registry.

    Use :meth:`for_registry`, which returns the one sink of a registry, so that several
    watchers on the same registry share instruments instead of colliding.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._pid = os.getpid()
        self._sweep_lock = _locks.Lock()
        self._sweep_watchers: weakref.WeakSet[Watcher] = weakref.WeakSet()
        # Registered before the instruments: a scrape sweeps first, then reads the values.
        registry.register(_SweepOnCollect(self))
        self.failed = Counter(
            "bg_response_failed",
            _HELP["bg_response_failed"],
            ["code", "model"],
            registry=registry,
        )
        self.incomplete = Counter(
            "bg_response_incomplete",
            _HELP["bg_response_incomplete"],
            ["reason", "model"],
            registry=registry,
        )
        self.finished = Counter(
            "bg_response_finished",
            _HELP["bg_response_finished"],
            ["status", "model"],
            registry=registry,
        )
        self.created = Counter(
            "bg_response_created",
            _HELP["bg_response_created"],
            ["model"],
            registry=registry,
        )
        self.polls = Counter(
            "bg_response_polls",
            _HELP["bg_response_polls"],
            ["status"],
            registry=registry,
        )
        self.duration = Histogram(
            "bg_response_duration_seconds",
            _HELP["bg_response_duration"],
            ["status", "model"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "bg_response_in_flight",
            _HELP["bg_response_in_flight"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.internal_errors = Counter(
            "bgwatch_internal_errors",
            _HELP["bgwatch_internal_errors"],
            ["stage"],
            registry=registry,
        )
        self.webhook_rejections = Counter(
            "bgwatch_webhook_rejected",
            _HELP["bgwatch_webhook_rejected"],
            ["reason"],
            registry=registry,
        )
        self.abandoned_responses = Counter(
            "bg_response_abandoned",
            _HELP["bg_response_abandoned"],
            ["model"],
            registry=registry,
        )
        self.queue = Histogram(
            "bg_response_queue_seconds",
            _HELP["bg_response_queue"],
            ["model"],
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "bg_response_tokens",
            _HELP["bg_response_tokens"],
            ["type", "status", "model"],
            registry=registry,
        )
        # Computed at scrape time from the trackers. prometheus_client's multiprocess mode
        # exports only values written to its files, never a callback: there each worker writes
        # the age at each of its observations, and the aggregate is the max over live workers.
        self._oldest = _OldestInFlight()
        self.oldest_in_flight = Gauge(
            "bg_response_oldest_in_flight_seconds",
            _HELP["bg_response_oldest_in_flight"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._oldest_in_files = bool(getattr(_prometheus_values.ValueClass, "_multiprocess", False))
        if not self._oldest_in_files:
            self.oldest_in_flight.set_function(self._oldest_age)
        self._children: dict[tuple[Any, ...], Any] = {}
        self.repeat_counts: dict[str, Callable[[], object]] = {}
        """Per status, count a poll that changed nothing (see :class:`~bgwatch._watcher.Sink`):
        what :meth:`observed` does for a ``retrieve`` whose transition changes nothing. Kept up
        to date in place (a forked child's series are new objects)."""
        self._zero_series()

    def _zero_series(self) -> None:
        # Label children are looked up once (see _child), from here on. The poll statuses exist
        # from the start at 0, so that rate() and increase() see the first increment (a series
        # born at 1 looks like it never moved); so do the internal error stages.
        self._children = {}
        self._counts: dict[tuple[Any, ...], Callable[[float], None]] = {}
        self.repeat_counts.update({status: self._repeat_count(status) for status in STATUSES})
        for stage in INTERNAL_ERROR_STAGES:
            self._child(self.internal_errors, stage)

    @property
    def _instruments(self) -> tuple[Any, ...]:
        return (
            self.failed,
            self.incomplete,
            self.finished,
            self.created,
            self.polls,
            self.duration,
            self.in_flight,
            self.internal_errors,
            self.webhook_rejections,
            self.abandoned_responses,
            self.queue,
            self.tokens,
            self.oldest_in_flight,
        )

    @classmethod
    def for_registry(cls, registry: CollectorRegistry | None = None) -> PrometheusSink:
        """The shared sink of ``registry`` (the global one by default), created on first use.

        Raises :class:`~bgwatch.errors.ConfigurationError` when the registry already holds a
        metric of the same name that bgwatch did not create.
        """
        registry = REGISTRY if registry is None else registry
        if not isinstance(registry, CollectorRegistry):
            raise ConfigurationError(
                f"registry must be a prometheus_client.CollectorRegistry, got {type(registry).__name__}"
            )
        with _sinks_lock:
            sink = _sinks.get(registry)
            if sink is None:
                try:
                    sink = cls(registry)
                except ValueError as exc:
                    raise ConfigurationError(
                        f"the registry already holds a metric named like bgwatch's ({exc}); pass a"
                        " registry without them, or reuse the watcher that created them"
                    ) from exc
                _sinks[registry] = sink
            return sink

    def watch_tracker(self, tracker: Tracker) -> None:
        """Include ``tracker``'s in-flight responses in ``bg_response_oldest_in_flight_seconds``."""
        self._oldest.add(tracker)

    def _oldest_age(self) -> float:
        try:
            return self._oldest.age()
        except Exception:  # a scrape must never fail because of us
            self.internal_error("sink")
            return 0.0

    def _repeat_count(self, status: str) -> Callable[[], object]:
        increment = self._count(self.polls, status)
        if not self._oldest_in_files:
            return partial(increment, 1)  # no Python frame of ours: one runs on every repeat poll

        def count_and_write_oldest() -> None:
            increment(1)
            self.oldest_in_flight.set(self._oldest_age())

        return count_and_write_oldest

    def observed(
        self,
        observation: Observation,
        transition: Transition | None,
        labels: ResponseLabels,
        duration: float | None,
    ) -> None:
        """Record one observation (labels already bounded by the watcher)."""
        count = self._count
        if observation.call == "retrieve":
            count(self.polls, labels.status)(1)
        if transition is None:
            return
        if transition.in_flight_delta:
            self.in_flight.inc(transition.in_flight_delta)
        if self._oldest_in_files:
            self.oldest_in_flight.set(self._oldest_age())
        child = self._child
        if transition.new and observation.call == "create":
            count(self.created, labels.model)(1)
            child(self.abandoned_responses, labels.model)  # at 0 from its model's first create
        if transition.queue_seconds is not None:
            child(self.queue, labels.model).observe(transition.queue_seconds)
        if not transition.finished:
            return
        for token_type, tokens in _token_counts(observation):
            child(self.tokens, token_type, labels.status, labels.model).inc(tokens)
        count(self.finished, labels.status, labels.model)(1)
        if labels.code is not None:
            count(self.failed, labels.code, labels.model)(1)
        if labels.reason is not None:
            count(self.incomplete, labels.reason, labels.model)(1)
        if duration is not None:
            child(self.duration, labels.status, labels.model).observe(duration)

    def adjust_in_flight(self, delta: int) -> None:
        """Apply an in-flight change that happened outside an observation (TTL sweep)."""
        if delta:
            self.in_flight.inc(delta)
        if self._oldest_in_files:
            self.oldest_in_flight.set(self._oldest_age())

    def abandoned(self, models: Sequence[str]) -> None:
        """Count responses that left tracking without a terminal state (bounded model labels)."""
        for model in models:
            self._child(self.abandoned_responses, model).inc()

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once per label set (label values are bounded)."""
        key = (metric, *values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def _count(self, metric: Counter, *values: str) -> Callable[[float], None]:
        """The :func:`_increment` of a counter's label child, looked up once per label set.

        For counts of one (polls, creates, finishes, failures): amounts that may come from an
        observation (tokens) go through ``inc``, whose check refuses a negative one.
        """
        key = (metric, *values)
        found = self._counts.get(key)
        if found is None:
            found = self._counts[key] = _increment(self._child(metric, *values))
        return found

    def sweep_at_collect(self, watcher: Watcher) -> None:
        """Sweep ``watcher`` (weakly held) at every scrape of this sink's registry."""
        with self._sweep_lock:
            self._sweep_watchers.add(watcher)

    def _sweep(self) -> None:
        with self._sweep_lock:
            watchers = list(self._sweep_watchers)
        for watcher in watchers:
            watcher.sweep()

    def forked(self, in_flight_forgotten: int) -> None:
        """In a forked child: every bgwatch series starts from zero, once per process.

        The child is a new process: the parent's counts stay the parent's (in multiprocess
        mode prometheus_client starts the child's own files anyway; without it, the copied
        values would be counted twice by anyone summing over processes). The locks of these
        instruments are prometheus_client's, not ours: a thread of the parent may have held
        one at the fork, so the child replaces them before touching the instruments.
        """
        pid = os.getpid()
        if pid == self._pid:
            return
        self._pid = pid
        _renew_prometheus_locks(self._instruments)
        for instrument in self._instruments:
            if instrument is self.oldest_in_flight:
                continue  # computed from the (already emptied) trackers, or rewritten at the next observation
            if instrument is self.in_flight:
                instrument.set(0)
            else:
                instrument.clear()
        self._zero_series()

    def internal_error(self, stage: str) -> None:
        """Count an error caught inside bgwatch."""
        self._child(self.internal_errors, stage).inc()

    def webhook_rejected(self, reason: str) -> None:
        """Count a refused webhook delivery (``reason`` is one of a fixed, bounded set)."""
        self.webhook_rejections.labels(reason).inc()


def _increment(child: Counter) -> Callable[[float], None]:
    """``child.inc`` without its checks, which a label child counting one never needs.

    prometheus_client's ``Counter.inc`` checks that the counter is not a parent with labels and
    that the amount is not negative, then increments its value object (a mutex-guarded float,
    or the multiprocess file value). Those checks pass for a label child and ``1`` by
    construction; going to the value object directly saves two Python frames per count (a
    repeat poll's, and the counts of one in :meth:`PrometheusSink.observed`, via ``_count``).
    Falls back to ``inc`` itself if a prometheus_client release lays this out differently.
    """
    value_inc = getattr(getattr(child, "_value", None), "inc", None)
    return value_inc if callable(value_inc) else child.inc


class _SweepOnCollect:
    """A collector without metrics: collecting it sweeps the sink's watchers (see module doc)."""

    def __init__(self, sink: PrometheusSink) -> None:
        self._sink = weakref.ref(sink)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        sink = self._sink()
        if sink is not None:
            sink._sweep()  # Watcher.sweep never raises
        return []


def _renew_prometheus_locks(instruments: Iterable[Any]) -> None:
    """Give prometheus_client objects fresh locks in a forked child (where found; best effort)."""
    lock_type = _locks.PLAIN_LOCK_TYPE
    for instrument in instruments:
        for owner in (instrument, getattr(instrument, "_value", None)):
            if isinstance(getattr(owner, "_lock", None), lock_type):
                _locks.replace_foreign_lock(owner, "_lock")
    try:  # multiprocess mode: one lock for every value, a closure variable of its value class
        from prometheus_client import values

        init: Any = values.ValueClass.__init__
        for name, cell in zip(init.__code__.co_freevars, init.__closure__ or (), strict=False):
            if name == "lock" and isinstance(cell.cell_contents, lock_type):
                cell.cell_contents = _locks.fresh_foreign_lock()
    except Exception:  # pragma: no cover - another prometheus_client layout: nothing to renew
        pass


_otel_sinks: weakref.WeakKeyDictionary[otel_metrics.MeterProvider, OTelMetricsSink] = weakref.WeakKeyDictionary()


class OTelMetricsSink:
    """The metric contract through the OpenTelemetry metrics API (the "OTel mirror").

    Instrument names are chosen so that ``opentelemetry-exporter-prometheus`` exposes exactly
    the names and labels of :data:`METRIC_NAMES` (plus its ``otel_scope_*`` labels): counters
    get ``_total`` appended, the histogram's unit ``s`` gives ``_seconds``, and units in braces
    (``{response}``) add nothing. One dashboard serves both paths.

    Use :meth:`for_meter_provider`, which returns the one sink of a meter provider.
    """

    def __init__(self, meter_provider: otel_metrics.MeterProvider | None = None) -> None:
        from . import __version__
        from .tracing import SCHEMA_URL

        meter = otel_metrics.get_meter("bgwatch", __version__, meter_provider, schema_url=SCHEMA_URL)
        self.failed = meter.create_counter(
            "bg_response_failed",
            unit="{response}",
            description=_HELP["bg_response_failed"],
        )
        self.incomplete = meter.create_counter(
            "bg_response_incomplete",
            unit="{response}",
            description=_HELP["bg_response_incomplete"],
        )
        self.finished = meter.create_counter(
            "bg_response_finished",
            unit="{response}",
            description=_HELP["bg_response_finished"],
        )
        self.created = meter.create_counter(
            "bg_response_created",
            unit="{response}",
            description=_HELP["bg_response_created"],
        )
        self.polls = meter.create_counter(
            "bg_response_polls",
            unit="{poll}",
            description=_HELP["bg_response_polls"],
        )
        self.repeat_counts: dict[str, Callable[[], object]] = {
            status: partial(self.polls.add, 1, {"status": status}) for status in STATUSES
        }
        """Per status, count a poll that changed nothing (see :class:`~bgwatch._watcher.Sink`)."""
        self.duration = meter.create_histogram(
            "bg_response_duration",
            unit="s",
            description=_HELP["bg_response_duration"],
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.in_flight = meter.create_up_down_counter(
            "bg_response_in_flight",
            unit="{response}",
            description=_HELP["bg_response_in_flight"],
        )
        self.internal_errors = meter.create_counter(
            "bgwatch_internal_errors",
            unit="{error}",
            description=_HELP["bgwatch_internal_errors"],
        )
        self.webhook_rejections = meter.create_counter(
            "bgwatch_webhook_rejected",
            unit="{delivery}",
            description=_HELP["bgwatch_webhook_rejected"],
        )
        self.abandoned_responses = meter.create_counter(
            "bg_response_abandoned",
            unit="{response}",
            description=_HELP["bg_response_abandoned"],
        )
        self._models_created: set[str] = set()
        self.queue = meter.create_histogram(
            "bg_response_queue",
            unit="s",
            description=_HELP["bg_response_queue"],
            explicit_bucket_boundaries_advisory=list(QUEUE_BUCKETS),
        )
        self.tokens = meter.create_counter(
            "bg_response_tokens",
            unit="{token}",
            description=_HELP["bg_response_tokens"],
        )
        self._oldest = _OldestInFlight()
        self.oldest_in_flight = meter.create_observable_gauge(
            "bg_response_oldest_in_flight",
            callbacks=[self._observe_oldest],
            unit="s",
            description=_HELP["bg_response_oldest_in_flight"],
        )
        # The same zero-valued series as the Prometheus sink, so both paths expose one shape.
        for stage in INTERNAL_ERROR_STAGES:
            self.internal_errors.add(0, {"stage": stage})
        for status in STATUSES:
            self.polls.add(0, {"status": status})

    @classmethod
    def for_meter_provider(cls, meter_provider: otel_metrics.MeterProvider | None = None) -> OTelMetricsSink:
        """The shared sink of ``meter_provider`` (the global one by default), made on first use."""
        provider = otel_metrics.get_meter_provider() if meter_provider is None else meter_provider
        with _sinks_lock:
            try:
                sink = _otel_sinks.get(provider)
            except TypeError:  # not weak-referenceable: no sharing
                return cls(provider)
            if sink is None:
                sink = _otel_sinks[provider] = cls(provider)
            return sink

    def watch_tracker(self, tracker: Tracker) -> None:
        """Include ``tracker``'s in-flight responses in ``bg_response_oldest_in_flight``."""
        self._oldest.add(tracker)

    def _observe_oldest(self, options: otel_metrics.CallbackOptions) -> Iterable[otel_metrics.Observation]:
        try:
            age = self._oldest.age()
        except Exception:  # a collection must never fail because of us
            self.internal_error("sink")
            age = 0.0
        return (otel_metrics.Observation(age),)

    def observed(
        self,
        observation: Observation,
        transition: Transition | None,
        labels: ResponseLabels,
        duration: float | None,
    ) -> None:
        """Record one observation (labels already bounded by the watcher)."""
        if observation.call == "retrieve":
            self.polls.add(1, {"status": labels.status})
        if transition is None:
            return
        if transition.in_flight_delta:
            self.in_flight.add(transition.in_flight_delta)
        if transition.new and observation.call == "create":
            self.created.add(1, {"model": labels.model})
            if labels.model not in self._models_created:  # model labels are capped, so is this
                self._models_created.add(labels.model)
                self.abandoned_responses.add(0, {"model": labels.model})
        if transition.queue_seconds is not None:
            self.queue.record(transition.queue_seconds, {"model": labels.model})
        if not transition.finished:
            return
        for token_type, count in _token_counts(observation):
            self.tokens.add(count, {"type": token_type, "status": labels.status, "model": labels.model})
        self.finished.add(1, {"status": labels.status, "model": labels.model})
        if labels.code is not None:
            self.failed.add(1, {"code": labels.code, "model": labels.model})
        if labels.reason is not None:
            self.incomplete.add(1, {"reason": labels.reason, "model": labels.model})
        if duration is not None:
            self.duration.record(duration, {"status": labels.status, "model": labels.model})

    def adjust_in_flight(self, delta: int) -> None:
        """Apply an in-flight change that happened outside an observation (TTL sweep)."""
        if delta:
            self.in_flight.add(delta)

    def abandoned(self, models: Sequence[str]) -> None:
        """Count responses that left tracking without a terminal state (bounded model labels)."""
        for model in models:
            self.abandoned_responses.add(1, {"model": model})

    def forked(self, in_flight_forgotten: int) -> None:
        """In a forked child: take the ids the child's watcher forgot out of in-flight.

        The OpenTelemetry API cannot reset the SDK's aggregated counters (copied from the
        parent); give the child its own MeterProvider when its OTel counts must start at zero.
        """
        if in_flight_forgotten:
            self.in_flight.add(-in_flight_forgotten)

    def internal_error(self, stage: str) -> None:
        """Count an error caught inside bgwatch."""
        self.internal_errors.add(1, {"stage": stage})

    def webhook_rejected(self, reason: str) -> None:
        """Count a refused webhook delivery (``reason`` is one of a fixed, bounded set)."""
        self.webhook_rejections.add(1, {"reason": reason})
