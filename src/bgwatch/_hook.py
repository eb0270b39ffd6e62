"""The library-independent core of the transports: what to inspect, what it means, what to raise.

Layers read one way: :mod:`bgwatch._classify` (bytes to an observation), then
:mod:`bgwatch._watcher` (track and record), then this hook, then the adapters that know an
HTTP library (:mod:`bgwatch.transports`, :mod:`bgwatch._streams`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import openai

from ._classify import (
    CallKind,
    Observation,
    classify_body,
    classify_request,
    decode_body,
    is_event_stream,
    is_json_content_type,
)
from ._watcher import Watcher, default_watcher
from .errors import BackgroundResponseError, ConfigurationError, exception_for, validate_raise_on
from .tracing import NOOP_CALL_SPAN, CallSpan

__all__ = ["RAISE_MODE_MIN_OPENAI", "Hook", "raise_mode_supported"]

# The first openai release whose retry loop re-raises an OpenAIError from the transport as is
# (found by reading every release's _base_client.py: 2.30.0 wraps and retries, 2.31.0 does not).
RAISE_MODE_MIN_OPENAI = (2, 31, 0)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", version.split("+", 1)[0])[:3]
    return tuple(int(p) for p in parts)


def raise_mode_supported(openai_version: str | None = None) -> bool:
    """Whether this openai release propagates an exception raised in the transport unchanged.

    Older releases retry any exception from the transport and wrap it in
    ``APIConnectionError``: raising there would re-send ``POST /responses``.
    """
    version = openai.__version__ if openai_version is None else openai_version
    return _version_tuple(version) >= RAISE_MODE_MIN_OPENAI


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

    def select(self, method: str, path: str) -> CallKind | None:
        """The call kind for a request worth inspecting, else None. Never raises."""
        try:
            return classify_request(method, path)
        except Exception as exc:
            self.watcher.internal_error("request", exc)
            return None

    def wants_body(self, status_code: int, content_type: str | None) -> bool:
        """Whether a selected call's body is a JSON answer worth reading."""
        return 200 <= status_code < 300 and is_json_content_type(content_type)

    def wants_stream(self, status_code: int, content_type: str | None) -> bool:
        """Whether a selected call answered with an event stream (observed, never buffered)."""
        return 200 <= status_code < 300 and is_event_stream(content_type)

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
        """Record what a complete body says; return the exception to raise, if any.

        Never raises. Errors inside bgwatch are counted and the body passes untouched.
        ``span`` (the call's span) gets the response's id, model and status.
        """
        try:
            content_encoding, request_id = _encoding_and_request_id(headers)
            observation = classify_body(
                call, status_code, body, content_encoding=content_encoding, request_id=request_id
            )
        except Exception as exc:
            self.watcher.internal_error("classify", exc)
            return None
        if observation is None:
            return None
        span.observed(observation)
        self.watcher.record(observation)
        if not self.raise_on:
            return None
        return self.exception_for(observation, lambda: _full_body(body, headers))

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


def _encoding_and_request_id(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
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


def _full_body(body: bytes, headers: Mapping[str, str]) -> Any:
    return json.loads(decode_body(body, headers.get("content-encoding")))
