"""The Watcher: configuration plus sinks; turns Observations into metrics and exceptions.

A watcher owns one :class:`~bgwatch._tracker.Tracker` (the only mutable lifecycle state) and
writes to its sinks. It never raises from :meth:`Watcher.record`: errors inside bgwatch are
counted in ``bgwatch_internal_errors_total{stage}`` and logged once per stage at debug level.
"""

from __future__ import annotations

import logging
import time
import typing
import weakref
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from . import _locks
from ._classify import Observation, repeat_key
from ._safe_log import describe
from ._tracker import (
    DEFAULT_IN_FLIGHT_TTL,
    DEFAULT_MAX_TRACKED,
    DEFAULT_TTL_SECONDS,
    LabelValues,
    Tracker,
    Transition,
)
from .errors import ConfigurationError
from .metrics import INTERNAL_ERROR_STAGES, OTelMetricsSink, PrometheusSink, ResponseLabels

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from .tracing import Tracing

__all__ = ["Sink", "Watcher", "default_watcher", "known_error_codes", "known_incomplete_reasons"]

log = logging.getLogger("bgwatch")

DEFAULT_MAX_EXTRA_CODES = 50
DEFAULT_MAX_EXTRA_MODELS = 50


def _literal_values(annotation: Any) -> tuple[str, ...]:
    values: list[str] = []
    for arg in typing.get_args(annotation):
        if isinstance(arg, str):
            values.append(arg)
        else:
            values.extend(_literal_values(arg))
    return tuple(values)


def known_error_codes() -> tuple[str, ...]:
    """Every ``error.code`` literal of the installed openai SDK (read, never copied)."""
    from openai.types.responses.response_error import ResponseError

    return _literal_values(ResponseError.model_fields["code"].annotation)


def known_incomplete_reasons() -> tuple[str, ...]:
    """Every ``incomplete_details.reason`` literal of the installed openai SDK."""
    from openai.types.responses.response import IncompleteDetails

    return _literal_values(IncompleteDetails.model_fields["reason"].annotation)


class Sink(Protocol):
    """Where a watcher sends what it saw. Labels arrive already bounded.

    A sink may also have ``repeat_counts``: a mapping from each of the six statuses to a
    function without arguments that does what :meth:`observed` does for a poll (``retrieve``)
    that changed nothing (the response is tracked with this status already, or has ended);
    bgwatch's metric sinks count the poll. The function is looked up in that very mapping at
    each such poll, so a sink may replace it (a forked child's metrics are new objects). Only
    when every sink of a watcher has it do such polls skip building the :class:`Observation`
    and :class:`Transition` (:meth:`Watcher.repeat_recorder`); a sink without it gets them all.
    """

    def observed(
        self,
        observation: Observation,
        transition: Transition | None,
        labels: ResponseLabels,
        duration: float | None,
    ) -> None:
        """One observation; ``transition`` is None when the response is not tracked."""

    def adjust_in_flight(self, delta: int) -> None:
        """An in-flight change from a TTL sweep, outside any observation."""

    def abandoned(self, models: Sequence[str]) -> None:
        """(Optional.) Responses that left tracking without a terminal state seen (TTL expiry or the size
        cap), one bounded model label each: count them in ``bg_response_abandoned_total``.

        Their in-flight change arrives separately (``transition.in_flight_delta`` or
        :meth:`adjust_in_flight`).
        """

    def forked(self, in_flight_forgotten: int) -> None:
        """(Optional; without it the sink gets ``adjust_in_flight(-in_flight_forgotten)``.)
        In a forked child, after the watcher forgot its tracked ids (``in_flight_forgotten``
        of them were in flight): start the child's counts afresh. A sink shared by several
        watchers is told once per watcher.
        """

    def internal_error(self, stage: str) -> None:
        """An error caught inside bgwatch."""


_UNSET: Any = object()


class Watcher:
    """Counts background responses once per id and feeds Prometheus (and other sinks).

    Args:
        registry: prometheus_client registry (default: the global ``REGISTRY``); ``None``
            together with ``prometheus=False`` disables prometheus_client output.
        prometheus: write to prometheus_client instruments.
        sinks: further sinks (for example the OpenTelemetry mirror).
        max_tracked: how many response ids to remember at most (oldest ended ids evicted
            first, then the oldest in flight, which count as abandoned).
        ttl_seconds: how long to remember an ended id after it was last seen (so that later
            polls and webhooks of it are not counted again); default 24 h.
        in_flight_ttl: how long an in-flight id may go unobserved before it counts as
            abandoned (``bg_response_abandoned_total``) and leaves ``bg_response_in_flight``;
            default 1 h. Raise it when responses legitimately go unpolled longer (webhook-only
            setups with responses that run for hours).
        clock: the monotonic clock of both TTLs (tests and simulations).
        max_extra_codes: distinct unknown error codes/reasons admitted as labels before
            they become ``other``.
        max_extra_models: distinct model names admitted as labels before ``other``.
        otel: also write the metric contract through the OpenTelemetry metrics API (the
            "OTel mirror", for ``opentelemetry-exporter-prometheus`` or OTLP). Off by default,
            so that nothing is counted twice; use ``prometheus=False, otel=True`` to count
            only through OpenTelemetry.
        meter_provider: the meter provider of the OTel mirror (default: the global one).
        tracing: make OpenTelemetry spans (a span per Responses API call and a lifecycle
            span per background response). ``None`` (the default) means: only when a
            ``tracer_provider`` is given. ``True`` with no provider uses the global one.
        tracer_provider: where spans go.
        capture_error_messages: put error messages (the API's ``error.message``, exception
            messages) on span statuses and in bgwatch's debug logs. Off by default: they are
            free text from the server; logs then say only exception types, HTTP status,
            request id and stage.

    See ``docs/opentelemetry.md``.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = _UNSET,
        prometheus: bool = True,
        sinks: Sequence[Sink] = (),
        max_tracked: int = DEFAULT_MAX_TRACKED,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        in_flight_ttl: float = DEFAULT_IN_FLIGHT_TTL,
        clock: Callable[[], float] = time.monotonic,
        max_extra_codes: int = DEFAULT_MAX_EXTRA_CODES,
        max_extra_models: int = DEFAULT_MAX_EXTRA_MODELS,
        otel: bool = False,
        meter_provider: MeterProvider | None = None,
        tracing: bool | None = None,
        tracer_provider: TracerProvider | None = None,
        capture_error_messages: bool = False,
    ) -> None:
        try:
            self.tracker = Tracker(max_tracked, ttl_seconds, in_flight_ttl=in_flight_ttl, clock=clock)
            self._codes = LabelValues.for_codes(known_error_codes(), max_extra_codes)
            self._reasons = LabelValues.for_codes(known_incomplete_reasons(), max_extra_codes)
            self._models = LabelValues.for_models((), max_extra_models)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        all_sinks: list[Sink] = []
        if prometheus:
            prometheus_sink = PrometheusSink.for_registry(None if registry is _UNSET else registry)
            prometheus_sink.watch_tracker(self.tracker)
            all_sinks.append(prometheus_sink)
        if otel:
            otel_sink = OTelMetricsSink.for_meter_provider(meter_provider)
            otel_sink.watch_tracker(self.tracker)
            all_sinks.append(otel_sink)
        elif meter_provider is not None:
            raise ConfigurationError("meter_provider= needs otel=True")
        self.tracing: Tracing | None = None
        """The span maker, when tracing is on (see :mod:`bgwatch.tracing`)."""
        if tracing is None:
            tracing = tracer_provider is not None
        elif not tracing and tracer_provider is not None:
            raise ConfigurationError("tracer_provider= and tracing=False contradict each other")
        if tracing:
            from .tracing import Tracing

            self.tracing = Tracing(
                tracer_provider,
                capture_error_messages=capture_error_messages,
                on_error=self.internal_error,
                genai_metrics=otel,  # the conventions' client histograms go with the OTel metrics mirror
                meter_provider=meter_provider,
            )
            all_sinks.append(self.tracing)
        all_sinks.extend(sinks)
        self._sinks: tuple[Sink, ...] = tuple(all_sinks)
        self.capture_error_messages = capture_error_messages
        self._logged_stages: set[str] = set()
        self._log_lock = _locks.Lock()
        for sink in self._sinks:
            register = getattr(sink, "sweep_at_collect", None)
            if register is not None:
                register(self)
        _locks.at_fork_in_child(self, "_start_afresh")

    @property
    def sinks(self) -> tuple[Sink, ...]:
        """The sinks this watcher writes to."""
        return self._sinks

    def record(self, observation: Observation) -> None:
        """Count one observation. Never raises: errors are counted as internal errors."""
        try:
            labels = self._labels(observation)
            transition = self._track(observation, labels.model)
            duration = self._duration(observation, transition)
        except Exception as exc:
            self.internal_error("record", exc)
            return
        for sink in self._sinks:
            try:
                sink.observed(observation, transition, labels, duration)
                if transition is not None and transition.abandoned:
                    _tell_abandoned(sink, transition.abandoned)
            except Exception as exc:
                self.internal_error("sink", exc)

    def repeat_recorder(self, passing: Collection[str] = ()) -> Callable[[Any], bool]:
        """``record_repeat(data)``: count a poll (``retrieve``) whose body changes nothing, if it is one.

        ``data`` is the parsed body (what the SDK's ``Response.json()`` returned). The hot path
        of a polling loop: when :func:`~bgwatch._classify.repeat_key` vouches for the body and the
        id is tracked with its status already (or has ended), the only effect of :meth:`record`
        would be the poll count, and that is all this does; then it returns True. Otherwise, and
        for bodies of the ``passing`` statuses (a raising hook's), it changes nothing and returns
        False: record the body in full. Always False unless every sink has ``repeat_counts``
        (bgwatch's metric sinks; spans and custom sinks get every observation through
        :meth:`record`). A closure over its collaborators, looked up once: it runs on every
        poll. Never raises.
        """
        if not self._sinks or not all(hasattr(sink, "repeat_counts") for sink in self._sinks):
            return lambda data: False  # a sink needs every observation in full
        sink_counts = tuple(getattr(sink, "repeat_counts") for sink in self._sinks)  # noqa: B009 - optional, not in Sink
        passing = frozenset(passing)
        touch = self.tracker.touch
        admitted_model, model_label = self._models.get, self._models
        internal_error = self.internal_error

        def record_repeat(data: Any) -> bool:
            try:
                key = repeat_key(data)
                if key is None:
                    return False
                response_id, status, model = key
                if status in passing:
                    return False
            except Exception as exc:
                internal_error("record", exc)
                return False
            try:
                if not touch(response_id, status, admitted_model(model) or model_label(model)):
                    return False
            except Exception as exc:
                internal_error("record", exc)
                return True  # a bug of ours: counted, and not recorded twice
            for counts in sink_counts:
                try:
                    counts[status]()
                except Exception as exc:
                    internal_error("sink", exc)
            return True

        return record_repeat

    def sweep(self) -> None:
        """Expire ids past their TTL now: in-flight ones count as abandoned and leave the gauge.

        Observations sweep as they pass, and so does every scrape of the watcher's Prometheus
        registry; call this yourself only when neither happens (an idle multiprocess worker).
        """
        try:
            abandoned = self.tracker.expire()
        except Exception as exc:
            self.internal_error("record", exc)
            return
        if not abandoned:
            return
        for sink in self._sinks:
            try:
                sink.adjust_in_flight(-len(abandoned))
                _tell_abandoned(sink, abandoned)
            except Exception as exc:
                self.internal_error("sink", exc)

    def _start_afresh(self) -> None:
        """In a forked child: a new process counts only what it sees itself (see README)."""
        forgotten = self.tracker.start_afresh()
        for sink in self._sinks:
            try:
                forked = getattr(sink, "forked", None)  # optional for sinks written before it existed
                if forked is not None:
                    forked(forgotten)
                elif forgotten:
                    sink.adjust_in_flight(-forgotten)
            except Exception as exc:
                self.internal_error("sink", exc)

    def internal_error(self, stage: str, exc: BaseException | None = None) -> None:
        """Count an error caught inside bgwatch; log it once per stage at debug level."""
        if stage not in INTERNAL_ERROR_STAGES:
            stage = "other"
        for sink in self._sinks:
            try:
                sink.internal_error(stage)
            except Exception as sink_exc:  # a broken sink must not take the others down
                log.debug(
                    "bgwatch sink failed while counting an internal error: %s",
                    describe(sink_exc, capture=self.capture_error_messages),
                )
        with self._log_lock:
            first = stage not in self._logged_stages
            self._logged_stages.add(stage)
        if first:
            log.debug(
                "bgwatch internal error at stage %r (logged once per stage): %s",
                stage,
                describe(exc, capture=self.capture_error_messages, frames=True),
            )

    def _track(self, observation: Observation, model: str) -> Transition | None:
        # A response created with background=false is not a background response: it is polled
        # by nobody and its failures surface as HTTP errors. An absent flag (older APIs, some
        # proxies) on a retrieve or cancel still means someone is watching it asynchronously.
        if observation.status is None:
            return None
        if observation.background is False:
            return None
        if observation.background is None and observation.call == "create":
            return None
        attach = self.tracing.new_lifecycle if self.tracing is not None else None
        from_start = observation.call == "create"
        return self.tracker.observe(
            observation.response_id,
            observation.status,
            attach,
            model,
            created_at=_start_of(observation.created_at, from_start),
            from_start=from_start,
        )

    def _labels(self, observation: Observation) -> ResponseLabels:
        status = observation.status or "unknown"
        return ResponseLabels(
            status=status,
            model=self._models(observation.model),
            code=self._codes(observation.error_code) if status == "failed" else None,
            reason=self._reasons(observation.incomplete_reason) if status == "incomplete" else None,
        )

    @staticmethod
    def _duration(observation: Observation, transition: Transition | None) -> float | None:
        if transition is None or not transition.finished:
            return None
        if observation.created_at is None and transition.new:
            return None  # first seen already finished (a webhook): the start is unknown
        start = observation.created_at if observation.created_at is not None else transition.first_seen
        end = observation.completed_at if observation.completed_at is not None else time.time()
        return max(0.0, end - start)


def _tell_abandoned(sink: Sink, models: tuple[str, ...]) -> None:
    abandoned = getattr(sink, "abandoned", None)  # optional for sinks written before it existed
    if abandoned is not None:
        abandoned(models)


def _start_of(created_at: float | None, at_create: bool) -> float | None:
    """When the response started, as precisely as this process can tell.

    ``created_at`` is whole seconds in real bodies (truncated): the start lies in
    ``[created_at, created_at + 1)``. The answer to the create arrives after the start, so when
    this is that answer, now (clamped into that second) bounds it within the create's round
    trip instead of a second. Clocks that disagree with the API's by more than that are clamped.
    """
    if created_at is None or not at_create:
        return created_at
    return min(max(time.time(), created_at), created_at + 1.0)


_default_lock = _locks.Lock()
_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, Watcher] = weakref.WeakKeyDictionary()


def default_watcher(registry: CollectorRegistry | None = None) -> Watcher:
    """The process-wide watcher of ``registry`` (the global registry by default).

    Every instrumented client that does not name its own watcher shares it, so a response
    polled through several clients is still counted once.
    """
    from prometheus_client import REGISTRY

    registry = REGISTRY if registry is None else registry
    with _default_lock:
        watcher = _by_registry.get(registry)
    if watcher is not None:
        return watcher
    # Built outside the lock (bgwatch never holds two of its locks at once, see _locks); a
    # racing thread's watcher is dropped, and building one twice is harmless.
    made = Watcher(registry=registry)
    with _default_lock:
        return _by_registry.setdefault(registry, made)
