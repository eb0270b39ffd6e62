"""OpenTelemetry spans for OpenAI background responses.

Two kinds of span, both made through the OpenTelemetry *API* (an SDK is the user's choice):

**Call spans**, one per intercepted Responses API call, kind ``CLIENT``, following the GenAI
semantic conventions (``open-telemetry/semantic-conventions-genai``):

=====================  ===========================  ================================
call                   ``gen_ai.operation.name``    span name
=====================  ===========================  ================================
``POST /responses``    ``chat``                     ``chat {gen_ai.request.model}``
``GET /responses/id``  ``fetch_response``           ``fetch_response``
``POST .../cancel``    ``cancel_response``          ``cancel_response``
=====================  ===========================  ================================

A call span covers one HTTP attempt (the SDK's retries are separate spans). It is the
current span while the inner transport sends, so an HTTP client span (httpx
instrumentation) nests under it. A poll that worked is never an error span, whatever status
it reports: ``gen_ai.response.status`` says ``failed``, ``gen_ai.response.finish_reasons``
says ``error``, the span status stays UNSET. An HTTP status >= 400 or a transport exception
is an error span with ``error.type`` (``"500"``, ``"httpx2.ConnectError"``).

**Lifecycle spans**, one per background response, kind ``INTERNAL``, a trace root named
``background_response {model}``: it starts at the response's ``created_at`` and ends when the
first terminal status is seen (at ``completed_at`` when the body has it). It has an event per
status change (``response.queued``, ``response.in_progress``, ``response.completed`` ...),
links to the spans that observed the response (the call spans, or whatever span was current
when a webhook or another caller recorded it) and, when the response did not complete,
status ERROR with ``error.type`` = the error code, the incomplete reason, or ``cancelled``.
Its state lives in the watcher's tracker entry, so it is made once per response across
threads and polls, and ends (``bgwatch.lifecycle.dropped``) when the entry is evicted or
expires.

Nothing here changes a request or a response, and nothing raises into the caller: errors
are counted as ``bgwatch_internal_errors_total{stage="trace"}``. No prompt, output, header
or key is ever put on a span; error messages only with ``capture_error_messages=True``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from . import _locks
from ._classify import CallKind, Observation, parse_request_json
from ._safe_log import describe
from ._tracker import Attachment, Transition
from .metrics import ResponseLabels

__all__ = [
    "NOOP_CALL_SPAN",
    "CallSpan",
    "Tracing",
    "finish_reason",
    "operation_name",
]

log = logging.getLogger("bgwatch")

TRACER_NAME: Final = "bgwatch"
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.37.0"
"""The semantic-conventions release whose GenAI attributes bgwatch's spans and instruments follow."""
OPT_IN_ENV: Final = "OTEL_SEMCONV_STABILITY_OPT_IN"
OPT_IN_GENAI: Final = "gen_ai_latest_experimental"
"""As in the official GenAI instrumentations: with it, the experimental attributes below are set."""

# Attribute names, with where each comes from.
# semantic-conventions-genai, model/gen-ai/registry.yaml:
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_REQUEST_STREAM_CURSOR: Final = "gen_ai.request.stream_cursor"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_STATUS: Final = "gen_ai.response.status"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
# semantic-conventions-genai, model/openai/registry.yaml:
OPENAI_API_TYPE: Final = "openai.api.type"
# semantic-conventions (stable): server.*, error.*
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
OPENAI_RESPONSE_SERVICE_TIER: Final = "openai.response.service_tier"
# Experimental (no released semantic-conventions package has them yet): set under these names
# only with OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental, else under bgwatch's own.
EXPERIMENTAL_NAMES: Final[Mapping[str, str]] = {
    GEN_AI_RESPONSE_STATUS: "bgwatch.response.status",
    GEN_AI_REQUEST_STREAM_CURSOR: "bgwatch.request.stream_cursor",
}
EXPERIMENTAL_OPERATIONS: Final = frozenset(("fetch_response", "cancel_response"))
"""Operation names no released convention has: ``gen_ai.operation.name`` only with the opt-in."""
BGWATCH_OPERATION: Final = "bgwatch.operation"
"""The operation, where ``gen_ai.operation.name`` may not carry it (an experimental one, no opt-in)."""
# bgwatch's own (no convention covers them):
BGWATCH_LIFECYCLE_DROPPED: Final = "bgwatch.lifecycle.dropped"
"""``evicted`` or ``expired``: the tracker forgot the response before it was seen terminal."""
BGWATCH_LIFECYCLE_OBSERVATIONS: Final = "bgwatch.lifecycle.observations"
"""How many observations (create, polls, stream events, webhooks) the lifecycle span saw."""
BGWATCH_CALL: Final = "bgwatch.call"
"""On a lifecycle span's link: the kind of call that observed the response."""

PROVIDER: Final = "openai"
API_TYPE: Final = "responses"
LIFECYCLE_SPAN_NAME: Final = "background_response"
MAX_LINKS: Final = 64
"""Links kept per lifecycle span (the first ones); the total is ``bgwatch.lifecycle.observations``."""
MAX_REQUEST_BYTES: Final = 8 * 1024 * 1024
"""Create bodies up to this size are parsed for ``model`` and ``stream`` (nothing else is kept)."""
_MAX_MESSAGE: Final = 1024

_OPERATIONS: Final[Mapping[str, str]] = {
    "create": "chat",
    "retrieve": "fetch_response",
    "cancel": "cancel_response",
    "stream": "fetch_response",
}

# The key opentelemetry-instrumentation's suppress_instrumentation() sets, without depending
# on that package: opentelemetry-api defines it (privately) in opentelemetry.context, and
# instrumentations also honour the plain string key for backward compatibility.
_SUPPRESS_KEY: Final[str] = getattr(otel_context, "_SUPPRESS_INSTRUMENTATION_KEY", "suppress_instrumentation")
_SUPPRESS_KEY_PLAIN: Final = "suppress_instrumentation"

ErrorHandler = Callable[[str, BaseException], None]

_NULL_CONTEXT: Final[AbstractContextManager[None]] = nullcontext()


def operation_name(call: CallKind) -> str | None:
    """The ``gen_ai.operation.name`` of a call kind (None for kinds that make no call span)."""
    return _OPERATIONS.get(call)


def finish_reason(status: str | None, incomplete_reason: str | None = None) -> str | None:
    """``gen_ai.response.finish_reasons`` for a Responses API status (None while not terminal).

    As the conventions' OpenAI ``fetch_response`` refinement maps them: ``completed`` -> ``stop``,
    incomplete by ``max_output_tokens`` -> ``length``, by ``content_filter`` ->
    ``content_filter`` (any other reason -> ``incomplete``), ``failed``/``cancelled`` -> ``error``.
    """
    if status == "completed":
        return "stop"
    if status == "incomplete":
        if incomplete_reason == "max_output_tokens":
            return "length"
        if incomplete_reason == "content_filter":
            return "content_filter"
        return "incomplete"
    if status in ("failed", "cancelled"):
        return "error"
    return None


_DURATION_ATTRIBUTES: Final = frozenset(
    (GEN_AI_OPERATION_NAME, GEN_AI_PROVIDER_NAME, GEN_AI_REQUEST_MODEL, SERVER_ADDRESS, SERVER_PORT)
)
# The conventions' advisory bucket boundaries (gen-ai metrics: gen_ai.client.*).
DURATION_BOUNDARIES: Final = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BOUNDARIES: Final = tuple(4.0**n for n in range(14))  # 1, 4, 16 ... 67,108,864


class GenAIMetrics:
    """``gen_ai.client.operation.duration`` (per Responses API call) and ``gen_ai.client.token.usage``
    (per finished response, its ``usage``), as the GenAI conventions define them."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        from opentelemetry import metrics as otel_metrics

        from . import __version__

        meter = otel_metrics.get_meter(TRACER_NAME, __version__, meter_provider, schema_url=SCHEMA_URL)
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(DURATION_BOUNDARIES),
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(TOKEN_BOUNDARIES),
        )

    def record_tokens(self, observation: Observation) -> None:
        """The finished response's input and output tokens, once per response."""
        attributes: dict[str, AttributeValue] = {GEN_AI_OPERATION_NAME: "chat", GEN_AI_PROVIDER_NAME: PROVIDER}
        if observation.model:
            attributes[GEN_AI_RESPONSE_MODEL] = observation.model
        for token_type, count in (("input", observation.input_tokens), ("output", observation.output_tokens)):
            if count is not None:
                self.tokens.record(count, {**attributes, GEN_AI_TOKEN_TYPE: token_type})


def genai_experimental_opted_in() -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` lists ``gen_ai_latest_experimental``."""
    values = os.environ.get(OPT_IN_ENV, "")
    return OPT_IN_GENAI in (value.strip() for value in values.split(","))


def suppressed() -> bool:
    """Whether the current context asks instrumentations to make no telemetry."""
    return bool(otel_context.get_value(_SUPPRESS_KEY) or otel_context.get_value(_SUPPRESS_KEY_PLAIN))


def error_type(exc: BaseException) -> str:
    """``error.type`` of an exception: its qualified class name (builtins without module)."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class CallSpan:
    """The span of one intercepted call, as the transports (and the SSE layer) drive it.

    This base class is the no-op used when tracing is off or suppressed
    (:data:`NOOP_CALL_SPAN`); every method is cheap and never raises. The protocol:

    * :meth:`activate` around sending (and around recording what came back), so that HTTP
      spans nest under this one and the lifecycle span links to it;
    * :meth:`http_status` once the status line is in;
    * :meth:`observed` for every response object seen (a JSON body, or a stream event);
    * :meth:`failed` for an exception (transport error, stream cut);
    * :meth:`end` exactly when the call is over: after the body is read, or for a stream
      when the stream is exhausted, closed or broken. Calling it again does nothing.
    """

    __slots__ = ()

    def activate(self) -> AbstractContextManager[None]:
        """Make this span the current one inside the ``with`` block."""
        return _NULL_CONTEXT

    def http_status(self, status_code: int) -> None:
        """The HTTP status of the answer: >= 400 makes this an error span."""

    def observed(self, observation: Observation) -> None:
        """A response object this call saw (status, model, id)."""

    def failed(self, exc: BaseException) -> None:
        """The call failed with ``exc`` (it is re-raised by the caller, not here)."""

    def end(self) -> None:
        """End the span (idempotent)."""

    @property
    def span_context(self) -> SpanContext | None:
        """The span's context, or None for the no-op."""
        return None


NOOP_CALL_SPAN: Final = CallSpan()
"""The call span used when tracing is off or suppressed."""


class _RecordingCallSpan(CallSpan):
    __slots__ = ("_capture", "_ended", "_metric", "_on_error", "_span", "_started", "_status_key")

    def __init__(
        self,
        span: Span,
        capture_error_messages: bool,
        on_error: ErrorHandler,
        status_key: str,
        metric: tuple[GenAIMetrics, dict[str, AttributeValue]] | None = None,
    ) -> None:
        self._span = span
        self._capture = capture_error_messages
        self._on_error = on_error
        self._ended = False
        self._status_key = status_key
        self._metric = metric  # gen_ai.client.operation.duration: the instrument and its attributes
        self._started = time.perf_counter()

    def activate(self) -> AbstractContextManager[None]:
        return self._activated()

    @contextmanager
    def _activated(self) -> Iterator[None]:
        token = None
        try:
            token = otel_context.attach(trace.set_span_in_context(self._span))
        except Exception as exc:
            self._on_error("trace", exc)
        try:
            yield
        finally:
            if token is not None:
                try:
                    otel_context.detach(token)
                except Exception as exc:
                    self._on_error("trace", exc)

    def http_status(self, status_code: int) -> None:
        try:
            if status_code >= 400 and not self._ended:
                self._span.set_attribute(ERROR_TYPE, str(status_code))
                if self._metric is not None:
                    self._metric[1][ERROR_TYPE] = str(status_code)
                self._span.set_status(Status(StatusCode.ERROR))
        except Exception as exc:
            self._on_error("trace", exc)

    def observed(self, observation: Observation) -> None:
        try:
            if self._ended:
                return
            attributes: dict[str, AttributeValue] = {GEN_AI_RESPONSE_ID: observation.response_id}
            if observation.model:
                attributes[GEN_AI_RESPONSE_MODEL] = observation.model
                if self._metric is not None:
                    self._metric[1][GEN_AI_RESPONSE_MODEL] = observation.model
            if observation.status:
                attributes[self._status_key] = observation.status
            reason = finish_reason(observation.status, observation.incomplete_reason)
            if reason is not None:
                attributes[GEN_AI_RESPONSE_FINISH_REASONS] = (reason,)
            self._span.set_attributes(attributes)
        except Exception as exc:
            self._on_error("trace", exc)

    def failed(self, exc: BaseException) -> None:
        try:
            if self._ended:
                return
            self._span.set_attribute(ERROR_TYPE, error_type(exc))
            if self._metric is not None:
                self._metric[1][ERROR_TYPE] = error_type(exc)
            description = str(exc)[:_MAX_MESSAGE] if self._capture else None
            self._span.set_status(Status(StatusCode.ERROR, description or None))
        except Exception as error:
            self._on_error("trace", error)

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            self._span.end()
            if self._metric is not None:
                instruments, attributes = self._metric
                instruments.duration.record(time.perf_counter() - self._started, attributes)
        except Exception as exc:
            self._on_error("trace", exc)

    @property
    def span_context(self) -> SpanContext | None:
        return self._span.get_span_context()


def _duplicates(parent: Span, operation: str) -> bool:
    """Whether the current span already is this call's GenAI span (another instrumentation's).

    The official ``opentelemetry-instrumentation-openai-v2`` wraps SDK methods, so its span is
    the parent of ours. If it (or another instrumentation) already reports this very operation
    for OpenAI, a second span of the same operation would double every GenAI count.
    """
    if not parent.is_recording():
        return False
    attributes = getattr(parent, "attributes", None)  # an SDK span; the API has no getter
    if not isinstance(attributes, Mapping):
        return False
    if operation not in (attributes.get(GEN_AI_OPERATION_NAME), attributes.get(BGWATCH_OPERATION)):
        return False
    provider = attributes.get(GEN_AI_PROVIDER_NAME) or attributes.get("gen_ai.system")
    if provider not in (PROVIDER, "azure.ai.openai"):
        return False
    scope = getattr(parent, "instrumentation_scope", None)
    return getattr(scope, "name", None) != TRACER_NAME


def _request_model_and_stream(request: Any) -> tuple[str | None, bool]:
    """``model`` and ``stream`` of a create body; nothing else of it is kept."""
    headers = getattr(request, "headers", None)
    if headers is not None and headers.get("content-encoding"):
        return None, False
    try:
        content = request.content
    except Exception:  # a streamed request body has not been read: leave it alone
        return None, False
    if not isinstance(content, bytes) or not content or len(content) > MAX_REQUEST_BYTES:
        return None, False
    try:
        body = parse_request_json(content)
    except Exception:  # not JSON (or too deep): the span goes without the model
        return None, False
    if not isinstance(body, dict):
        return None, False
    model = body.get("model")
    stream = body.get("stream") is True
    return (model[:256] if isinstance(model, str) and model else None), stream


def _response_id_from_path(path: str) -> str | None:
    index = path.rfind("/responses/")
    if index < 0:
        return None
    response_id = path[index + 11 :].split("/", 1)[0]
    return response_id[:256] or None


class Tracing:
    """Makes bgwatch's spans with one tracer; also the watcher's lifecycle sink.

    Built by :class:`~bgwatch.Watcher` (``tracing=True`` or ``tracer_provider=...``); not
    usually made directly.

    Args:
        tracer_provider: where spans go (default: the global provider, resolved lazily).
        capture_error_messages: put the API's ``error.message`` (failed responses) and
            exception messages on span statuses. Off by default: messages are free text.
        on_error: how to count an internal error (the watcher's ``internal_error``).
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        capture_error_messages: bool = False,
        on_error: ErrorHandler | None = None,
        genai_metrics: bool = False,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        from . import __version__

        self.tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider, schema_url=SCHEMA_URL)
        self.capture_error_messages = capture_error_messages
        self.experimental = genai_experimental_opted_in()
        self.genai_metrics = GenAIMetrics(meter_provider) if genai_metrics else None
        """The conventions' client histograms (with the OTel metrics mirror), or None."""
        """Whether the experimental GenAI attribute names are used (``OTEL_SEMCONV_STABILITY_OPT_IN``)."""
        self._on_error: ErrorHandler = on_error if on_error is not None else _log_error

    # -- call spans ---------------------------------------------------------------------

    def start_call(self, call: CallKind, request: Any) -> CallSpan:
        """Start the span of one call (``request`` is an httpx/httpx2 request). Never raises."""
        try:
            operation = _OPERATIONS.get(call)
            if operation is None or suppressed():
                return NOOP_CALL_SPAN
            if _duplicates(trace.get_current_span(), operation):
                return NOOP_CALL_SPAN
            attributes: dict[str, AttributeValue] = {
                GEN_AI_PROVIDER_NAME: PROVIDER,
                OPENAI_API_TYPE: API_TYPE,
            }
            url = request.url
            host = url.host
            if host:
                attributes[SERVER_ADDRESS] = host
                port = url.port or (443 if url.scheme == "https" else 80)
                attributes[SERVER_PORT] = port
            name = operation
            if call == "create":
                model, stream = _request_model_and_stream(request)
                if model is not None:
                    attributes[GEN_AI_REQUEST_MODEL] = model
                    name = f"{operation} {model}"
                if stream:
                    attributes[GEN_AI_REQUEST_STREAM] = True
            else:
                response_id = _response_id_from_path(url.path)
                if response_id is not None:
                    attributes[GEN_AI_RESPONSE_ID] = response_id
                if call in ("retrieve", "stream"):
                    cursor = url.params.get("starting_after")
                    if cursor:
                        attributes[self.name(GEN_AI_REQUEST_STREAM_CURSOR)] = str(cursor)[:64]
            if self.experimental or operation not in EXPERIMENTAL_OPERATIONS:
                attributes[GEN_AI_OPERATION_NAME] = operation
            else:
                attributes[BGWATCH_OPERATION] = operation
            span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
            metric = None
            if self.genai_metrics is not None:
                metric = (self.genai_metrics, {k: v for k, v in attributes.items() if k in _DURATION_ATTRIBUTES})
            return _RecordingCallSpan(
                span, self.capture_error_messages, self._on_error, self.name(GEN_AI_RESPONSE_STATUS), metric
            )
        except Exception as exc:
            self._on_error("trace", exc)
            return NOOP_CALL_SPAN

    def name(self, attribute: str) -> str:
        """The name an experimental GenAI attribute is set under (its own only with the opt-in)."""
        return attribute if self.experimental else EXPERIMENTAL_NAMES.get(attribute, attribute)

    # -- lifecycle spans (the Sink protocol) ---------------------------------------------

    def new_lifecycle(self) -> Attachment:
        """The tracker attachment that will hold one response's lifecycle span."""
        return _Lifecycle(self)

    def observed(
        self,
        observation: Observation,
        transition: Transition | None,
        labels: ResponseLabels,
        duration: float | None,
    ) -> None:
        """Update the lifecycle span of the observed response (Sink protocol)."""
        if transition is None:
            return
        lifecycle = transition.attachment
        if not isinstance(lifecycle, _Lifecycle):
            return
        try:
            lifecycle.observe(observation, transition, labels)
        except Exception as exc:
            self._on_error("trace", exc)

    def adjust_in_flight(self, delta: int) -> None:
        """Nothing to do: dropped lifecycle spans are ended by the tracker (Sink protocol)."""

    def abandoned(self, models: Sequence[str]) -> None:
        """Nothing to do: abandoned lifecycle spans are ended by the tracker (Sink protocol)."""

    def forked(self, in_flight_forgotten: int) -> None:
        """Nothing to do: the parent's lifecycle spans stay the parent's to end (Sink protocol)."""

    def internal_error(self, stage: str) -> None:
        """Nothing to do: internal errors are metrics (Sink protocol)."""

    def _start_lifecycle(
        self, observation: Observation, transition: Transition, labels: ResponseLabels, link: Link | None
    ) -> Span:
        start = observation.created_at if observation.created_at is not None else transition.first_seen
        attributes: dict[str, AttributeValue] = {
            GEN_AI_PROVIDER_NAME: PROVIDER,
            OPENAI_API_TYPE: API_TYPE,
            GEN_AI_RESPONSE_ID: observation.response_id,
        }
        if observation.model:
            attributes[GEN_AI_RESPONSE_MODEL] = observation.model
        model = labels.model
        name = LIFECYCLE_SPAN_NAME if model in ("unknown", "other") else f"{LIFECYCLE_SPAN_NAME} {model}"
        return self.tracer.start_span(
            name,
            context=otel_context.Context(),  # a root: a response outlives the calls that watch it
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=[link] if link is not None else None,
            start_time=_ns(start),
        )

    def _error(self, stage: str, exc: BaseException) -> None:
        self._on_error(stage, exc)


def _log_error(stage: str, exc: BaseException) -> None:
    log.debug("bgwatch tracing error at stage %r: %s", stage, describe(exc))


def _current_link(call: str) -> Link | None:
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return Link(context, {BGWATCH_CALL: call})


class _Lifecycle:
    """One response's lifecycle span: a tracker :class:`~bgwatch._tracker.Attachment`.

    The tracker makes one per in-flight entry and hands it to every observation of that
    response; this object makes the span exactly once and ends it exactly once (terminal,
    evicted or expired). Span calls that may export (``end``) run outside its lock.
    """

    __slots__ = ("_ended", "_last_status", "_links", "_lock", "_model_set", "_observations", "_span", "_tracing")

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing
        self._lock = _locks.unregistered_lock()  # per response: a forked child never reaches it
        self._span: Span | None = None
        self._ended = False
        self._last_status: str | None = None
        self._links = 0
        self._observations = 0
        self._model_set = False

    def observe(self, observation: Observation, transition: Transition, labels: ResponseLabels) -> None:
        status = observation.status
        if status is None:
            return
        quiet = suppressed()
        link = None if quiet else _current_link(observation.call)
        with self._lock:
            if self._ended:
                return
            self._observations += 1
            span = self._span
            if span is None:
                if quiet:  # make no span in a suppressed context
                    self._ended = transition.finished
                    return
                span = self._span = self._tracing._start_lifecycle(observation, transition, labels, link)
                self._links = 1 if link is not None else 0
                self._model_set = bool(observation.model)
            elif link is not None and self._links < MAX_LINKS:
                span.add_link(link.context, link.attributes)
                self._links += 1
            if not self._model_set and observation.model:
                span.set_attribute(GEN_AI_RESPONSE_MODEL, observation.model)
                self._model_set = True
            if status != self._last_status and not quiet:
                when = observation.completed_at if transition.finished else None
                span.add_event(
                    f"response.{status}",
                    {self._tracing.name(GEN_AI_RESPONSE_STATUS): status},
                    timestamp=_ns(when) if when is not None else None,
                )
                self._last_status = status
            if not transition.finished:
                return
            self._ended = True
            self._span = None
            observations = self._observations
        self._finish(span, observation, labels, observations)

    def _finish(self, span: Span, observation: Observation, labels: ResponseLabels, observations: int) -> None:
        end = observation.completed_at if observation.completed_at is not None else time.time()
        end_ns = _ns(end)
        try:
            status = observation.status
            span.set_attribute(self._tracing.name(GEN_AI_RESPONSE_STATUS), status or "unknown")
            if observation.input_tokens is not None:
                span.set_attribute(GEN_AI_USAGE_INPUT_TOKENS, observation.input_tokens)
            if observation.output_tokens is not None:
                span.set_attribute(GEN_AI_USAGE_OUTPUT_TOKENS, observation.output_tokens)
            if observation.service_tier is not None:
                span.set_attribute(OPENAI_RESPONSE_SERVICE_TIER, observation.service_tier)
            if self._tracing.genai_metrics is not None:
                self._tracing.genai_metrics.record_tokens(observation)
            reason = finish_reason(status, observation.incomplete_reason)
            if reason is not None:
                span.set_attribute(GEN_AI_RESPONSE_FINISH_REASONS, (reason,))
            span.set_attribute(BGWATCH_LIFECYCLE_OBSERVATIONS, observations)
            failure = None
            if status == "failed":
                failure = labels.code or "unknown"
            elif status == "incomplete":
                failure = labels.reason or "unknown"
            elif status == "cancelled":
                failure = "cancelled"
            if failure is not None:
                span.set_attribute(ERROR_TYPE, failure)
                description = None
                if self._tracing.capture_error_messages and status == "failed" and observation.error_message:
                    description = observation.error_message[:_MAX_MESSAGE]
                span.set_status(Status(StatusCode.ERROR, description))
            start = getattr(span, "start_time", None)  # an SDK span: never end before the start
            if isinstance(start, int) and end_ns < start:
                end_ns = start
        finally:
            span.end(end_time=end_ns)

    def dropped(self, reason: str) -> None:
        """The tracker forgot the response while in flight: end the span, saying why."""
        try:
            with self._lock:
                span = self._span
                self._span = None
                self._ended = True
                observations = self._observations
            if span is None:
                return
            span.set_attribute(BGWATCH_LIFECYCLE_DROPPED, reason)
            span.set_attribute(BGWATCH_LIFECYCLE_OBSERVATIONS, observations)
            span.end()
        except Exception as exc:
            self._tracing._error("trace", exc)
