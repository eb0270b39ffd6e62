"""The library-independent core of the transports: what to inspect, what it means, what to raise.

Layers read one way: :mod:`bgwatch._classify` (bytes to an observation), then
:mod:`bgwatch._watcher` (track and record), then this hook, then the adapters that know an
HTTP library (:mod:`bgwatch.transports`, :mod:`bgwatch._streams`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import openai

from ._classify import (
    CallKind,
    Observation,
    observation_from_json,
    parse_body,
    parse_request_json,
)
from ._sdk import version_tuple
from ._watcher import Watcher, default_watcher
from .errors import BackgroundResponseError, ConfigurationError, exception_for, validate_raise_on
from .tracing import NOOP_CALL_SPAN, CallSpan

__all__ = ["RAISE_MODE_MIN_OPENAI", "Hook", "raise_mode_supported"]

# The first openai release whose retry loop re-raises an OpenAIError from the transport as is
# (found by reading every release's _base_client.py: 2.30.0 wraps and retries, 2.31.0 does not).
RAISE_MODE_MIN_OPENAI = (2, 31, 0)


def raise_mode_supported(openai_version: str | None = None) -> bool:
    """Whether this openai release propagates an exception raised in the transport unchanged.

    Older releases retry any exception from the transport and wrap it in
    ``APIConnectionError``: raising there would re-send ``POST /responses``.
    """
    version = openai.__version__ if openai_version is None else openai_version
    return version_tuple(version) >= RAISE_MODE_MIN_OPENAI


class Hook:
    """Library-independent core of the transports: what to inspect and what it means.

    Args:
        watcher: the :class:`~bgwatch.Watcher` to record into (default: the process-wide one).
        raise_on: terminal statuses that raise a typed exception to the caller
            (``"failed"``, ``"incomplete"``, ``"cancelled"``); default none.
    """

    def __init__(self, watcher: Watcher | None = None, raise_on: Iterable[str] = ()) -> None:
        self.raise_on = validate_raise_on(raise_on)
        if self.raise_on and not raise_mode_supported():
            raise ConfigurationError(
                f"raise_on needs openai >= {'.'.join(map(str, RAISE_MODE_MIN_OPENAI))}: openai"
                f" {openai.__version__} retries and wraps exceptions raised in the transport, which"
                " would re-send the request. Upgrade openai, or use observe mode plus"
                " bgwatch.raise_for_status(response)."
            )
        self.watcher = watcher if watcher is not None else default_watcher()
        self.record_repeat = self.watcher.repeat_recorder(self.raise_on)
        """``record_repeat(data)``: count a poll whose parsed body changes nothing, if it is one
        (see :meth:`Watcher.repeat_recorder`); bodies of a status this hook raises on never are."""

    @property
    def defers(self) -> bool:
        """Whether 2xx bodies are recorded when the client parses them (observe mode, no spans).

        Then the adapters read nothing: the response's own ``json()``, the call the SDK makes,
        hands its parse to the :meth:`parsed_recorders`. Raising needs the body before the client
        gets the response, and a call span must hold what the body said when it ends, so raise
        mode and tracing read the body in the transport instead (the same decisions, earlier).
        """
        return not self.raise_on and self.watcher.tracing is None

    def unselected(self, exc: Exception) -> None:
        """Count an error of :func:`~bgwatch._classify.classify_request` (a bug of ours): the request passes unobserved.

        The adapters call the classifier themselves (a call saved on every request) and hand
        this what it raised.
        """
        self.watcher.internal_error("request", exc)

    def asks_for_stream(self, call: CallKind, request: Any) -> bool:
        """Whether the client asked for an event stream (``stream=true``), as the SDK decides. Never raises.

        The SDK reads an answer as events because it asked for a stream (its ``stream=True``,
        sent as ``"stream": true`` in a create's body or ``stream=true`` in a retrieve's query),
        whatever the Content-Type says; otherwise it parses the body as JSON. The eager path
        decides the same way; the deferred path goes by what the client does with the answer.
        """
        try:
            if call == "retrieve":
                return bool(request.url.params.get("stream") == "true")
            if call == "create":
                content = request.content
                if b'"stream"' not in content:
                    return False
                body = parse_request_json(content)
                return type(body) is dict and body.get("stream") is True
        except Exception as exc:  # an unread or unparsable request body: the SDK sends neither
            self.watcher.internal_error("request", exc)
        return False

    def start_span(self, call: CallKind, request: Any) -> CallSpan:
        """The OpenTelemetry span of a selected call (a no-op when tracing is off). Never raises.

        The adapter activates it around sending and recording, reports the HTTP status and
        any exception, and ends it when the call is over (for a stream: when the stream is).
        """
        tracing = self.watcher.tracing
        if tracing is None:
            return NOOP_CALL_SPAN
        return tracing.start_call(call, request)

    def inspect(
        self,
        call: CallKind,
        status_code: int,
        headers: Mapping[str, str],
        body: bytes,
        span: CallSpan = NOOP_CALL_SPAN,
    ) -> BackgroundResponseError | None:
        """Record what a complete (still encoded) body says; return the exception to raise, if any.

        The body is decoded and parsed as the SDK would (see :mod:`bgwatch._classify`).
        The transports call :meth:`observe_json` with the parse they share with the SDK instead.
        Never raises.
        """
        if not 200 <= status_code < 300:
            return None
        try:
            content_encoding, request_id = encoding_and_request_id(headers)
            data = parse_body(body, content_encoding)
        except Exception:  # the SDK's Response.json() fails alike: it returns no Response
            return None
        return self.observe_json(call, data, request_id, span)

    def observe_json(
        self, call: CallKind, data: Any, request_id: str | None, span: CallSpan = NOOP_CALL_SPAN
    ) -> BackgroundResponseError | None:
        """Record what a parsed 2xx body says (``data``: what the SDK's ``Response.json()`` returns).

        Returns the exception to raise, if any. Never raises.
        """
        if span is NOOP_CALL_SPAN and call == "retrieve" and self.record_repeat(data):
            return None
        return self._observe_json(call, data, request_id, span)

    def parsed_recorders(self, call: CallKind) -> tuple[Callable[[Any], bool] | None, Callable[[Any, Any], None]]:
        """The recorders of a deferred body (see :attr:`defers`): ``(repeat, record)``.

        ``data`` is what the client's ``Response.json()`` of ``response`` returned. When
        ``repeat`` is not None (a ``retrieve``), ``repeat(data)`` counts a poll that changes
        nothing the cheap way (:attr:`record_repeat`) and says whether it did; anything else
        goes to ``record(data, response)``, in full. The caller calls them in turn (one call
        fewer on every poll than a recorder that would). For hooks that do not raise. Neither
        raises.
        """
        internal_error = self.watcher.internal_error
        observe = self._observe_json

        def record(data: Any, response: Any) -> None:
            try:
                request_id = response.headers.get("x-request-id")
            except Exception as exc:
                internal_error("classify", exc)
                request_id = None
            observe(call, data, request_id, NOOP_CALL_SPAN)

        return (self.record_repeat if call == "retrieve" else None), record

    def _observe_json(
        self, call: CallKind, data: Any, request_id: str | None, span: CallSpan
    ) -> BackgroundResponseError | None:
        try:
            observation = observation_from_json(call, data, request_id)
        except Exception as exc:
            self.watcher.internal_error("classify", exc)
            return None
        return self._observed(observation, span, data)

    def _observed(self, observation: Observation | None, span: CallSpan, data: Any) -> BackgroundResponseError | None:
        if observation is None:
            return None
        if span is not NOOP_CALL_SPAN:
            span.observed(observation)
        self.watcher.record(observation)
        if not self.raise_on:
            return None
        return self.exception_for(observation, data)

    def record(self, observation: Observation, span: CallSpan = NOOP_CALL_SPAN) -> None:
        """Record what a call saw outside the adapter's own frame (a stream event). Never raises.

        The call's span gets the response's id, model and status, and is current while the
        watcher records, so that the response's lifecycle span links to it.
        """
        span.observed(observation)
        with span.activate():
            self.watcher.record(observation)

    def exception_for(self, observation: Observation, body: Any = None) -> BackgroundResponseError | None:
        """The typed exception ``observation`` calls for under ``raise_on``, else None."""
        status = observation.status
        if status is None or status not in self.raise_on:
            return None
        if observation.call == "cancel" and status == "cancelled":
            return None  # the caller asked for exactly this
        try:
            payload = body() if callable(body) else body
            return exception_for(
                status,
                code=observation.error_code,
                reason=observation.incomplete_reason,
                message=observation.error_message,
                response_id=observation.response_id,
                request_id=observation.request_id,
                body=payload if isinstance(payload, Mapping) else None,
            )
        except Exception as exc:
            self.watcher.internal_error("classify", exc)
            return None


def encoding_and_request_id(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """``Content-Encoding`` and (the first) ``x-request-id``, in one pass over the raw headers.

    ``Headers.get`` scans and decodes every header once per name and raises internally for a
    missing one; on the path of every poll one pass is measurably cheaper (benchmarks/).
    """
    raw = getattr(headers, "raw", None)
    if raw is None:
        return headers.get("content-encoding"), headers.get("x-request-id")
    encoding: str | None = None
    request_id: str | None = None
    for key, value in raw:
        size = len(key)
        if size == 16 and key.lower() == b"content-encoding":
            text = value.decode("latin-1")
            encoding = text if encoding is None else f"{encoding}, {text}"
        elif size == 12 and request_id is None and key.lower() == b"x-request-id":
            request_id = value.decode("latin-1")
    return encoding, request_id
