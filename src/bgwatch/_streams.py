"""Observe streamed (Server-Sent Events) Responses API answers as they pass, never buffered.

``client.responses.create(..., stream=True)`` and ``retrieve(id, stream=True, starting_after=N)``
answer with an event stream, which the SDK reads as events because it asked for one (whatever
the Content-Type). Every chunk is handed to the client as is, the moment it arrives (one chunk
out per chunk in: no read-ahead, no added latency), and the same bytes object is fed to an
incremental :class:`~bgwatch._sse.SSEParser` on the way, in ``sdk_compatible`` mode:

* in observe mode without spans (the default), the response's own ``iter_bytes()`` /
  ``aiter_bytes()``, which the SDK's ``Stream`` iterates, passes the chunks the library
  decoded through :func:`observed_chunks` (see :mod:`bgwatch.transports`): what is observed
  is exactly what the SDK reads, in its chunks, whatever the Content-Type or Content-Encoding;
* with ``raise_on`` or spans, the transport swaps the byte stream of the answer to a request
  for a stream (``"stream": true``, ``?stream=true``) for a thin wrapper from
  :func:`observe_stream`, which can cut the stream before the failing event and raise, and
  decodes gzip/deflate itself.

Exactly what the SDK yields
    The SDK is the oracle (issue 11). The parser dispatches exactly the events the SDK's own
    decoder dispatches (a byte order mark is not stripped, an event with only ``event:``,
    ``id:`` or ``retry:`` is dispatched with empty data, an unterminated last event never is),
    and every event's data is read as the SDK reads it: ``json.loads``, the type from
    ``data.type`` whatever the ``event:`` line says (or whether there is one). With openai 2.x
    the parser also reads as two line endings a CRLF split across two network chunks right
    where that decoder ended one of its event blocks, as it does (the LF ends an extra blank
    line, which after a non-empty ``id:`` dispatches an empty event that the SDK fails to
    parse); whether the installed decoder does that is asked of it once
    (:data:`SPLIT_CRLF_AFTER_BLOCK`), not read from its version. Where the SDK
    stops (data starting with ``[DONE]``, data that is not JSON, data whose ``error`` member is
    truthy, for which it raises ``APIError``, a line that is not UTF-8), the observer stops
    too: nothing after it counts. ``tests/test_differential_streams.py`` holds the proof.
    The frequent delta events skip the ``json.loads`` when an exact pre-check
    (:func:`_is_plain_other_event`) proves that it would succeed and find a type that does
    not count: a flat object of plain members, no escaped or second ``type`` key, no ``error``
    member; anything else is parsed.

Memory
    One event's data at a time, as the SDK itself holds it, up to :data:`MAX_EVENT_DATA`;
    an event past that bound stops the observation of its stream (counted as an internal
    error at stage ``stream``) rather than being guessed at. Nothing else of the stream is kept.

What counts
    Lifecycle events (the types whose ``response`` the installed SDK builds as a ``Response``:
    ``response.created``, ``.queued``, ``.in_progress``, ``.completed``, ``.failed``,
    ``.incomplete``) each become an :class:`~bgwatch.Observation` fed to the same watcher as
    polls, so the tracker counts a response's terminal state once per id whether it was
    streamed, resumed, replayed, polled or all of these. Call kind ``"create"`` for the stream
    answering ``POST /responses`` (``bg_response_created_total`` counts it), ``"stream"`` for a
    resumed or replayed ``GET /responses/{id}?stream=true`` (neither created nor poll counted).
    A body the inner transport already loaded is observed too: the client gets a fresh
    response over the same raw bytes and reads the events through the wrapper.

The ``error`` event
    It carries no response object and no status, only ``code``/``message``. It is attributed
    to the stream's response id (learned from earlier events, one string in the wrapper) and
    is **not counted by itself**: the real API follows it with ``response.failed``, which holds
    the status and counts once, exactly like a poll of the same response would. Counting the
    ``error`` event too would count the failure twice; counting it *instead* would turn a
    stream-level error on a response that goes on running in the background into a terminal
    ``failed`` that the tracker would then never correct. So the error event only fills in a
    ``response.failed`` that lacks ``error.code`` (and the exception's message). A stream that
    ends after ``error`` without a terminal event counts nothing: the id stays in flight until
    a poll, a resumed stream, a webhook or the tracker's TTL settles it.

``raise_on`` for streams
    The SDK iterates ``response.iter_bytes()``, i.e. this wrapper. Raising while the chunk
    that holds ``response.failed`` is still in our hands would also swallow the events before
    it in the same chunk, which the SDK has not yielded yet. So the chunk is split at the
    event boundary: the bytes up to the end of the event before the failing one are passed on
    first (a chunk that only *begins* the failing event passes whole: the client holds a
    partial event it never completes), and the typed exception is raised on the next pull,
    after the inner stream is closed. The failing event itself is replaced by the exception,
    as a poll's body is. The whole chunk still goes to the parser in one call, which in raise
    mode also says (for about 0.15 us per event, nothing in observe mode) at which of the
    chunk's line endings it dispatched each event (the SDK's full rule: a blank
    line after data, an ``event:``, a valid ``retry:`` or with a non-empty last event id, so
    also the dataless events an ``id:`` makes extra blank lines dispatch); the cut is the end of
    the run of line endings that dispatched the event before the failing one
    (:func:`_dispatch_runs`), so it is right wherever the parser is. The SDK lets an
    :class:`openai.OpenAIError` from the byte stream through unchanged (openai 2.54 has no
    ``try`` around it; 3.57 converts only httpx/httpx2 transport errors) and closes the
    response in its ``finally``. For a compressed stream
    the cut is mapped back to the longest compressed prefix that decodes to no more than the
    events before the failing one (once per stream, by bisection over copies of the zlib
    state); if the compression does not allow that, the whole chunk goes through and the
    exception follows it.
    One case no cut can serve: openai 2.x yields events only when its buffer ends in
    ``\n\n``, ``\r\r`` or ``\r\n\r\n``, so after mixed line endings (``\n\r\n``) it may
    still hold the events before the failing one when the exception comes, and they are lost
    to the caller (counted all the same); openai 3.x splits lines itself and has no such case.

Fail open
    Anything that goes wrong while observing is counted as
    ``bgwatch_internal_errors_total{stage="stream"}`` and the stream goes on unobserved; the
    bytes are never touched by a bug of ours.

Lifetime
    The wrapper holds the inner stream, the parser and a few strings, referenced only from the
    response. When the stream ends (exhausted, closed, broken, abandoned and collected) the
    parser is dropped, the inner stream closed and the call span ended (``failed`` for a broken
    stream). A response whose stream died before its terminal event stays in flight in the
    tracker until something else settles it or its TTL expires.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import json
import re
import typing
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from ._classify import CallKind, Observation, observation_from_mapping
from ._sdk import sdk_splits_crlf_after_block
from ._sse import SSEEvent, SSEParser, line_endings
from .errors import BackgroundResponseError
from .tracing import CallSpan

if TYPE_CHECKING:
    from ._hook import Hook

__all__ = ["MAX_EVENT_DATA", "StreamObserver", "observe_stream", "observed_async_chunks", "observed_chunks"]

MAX_EVENT_DATA: Final = 16 * 1024 * 1024
"""Most bytes of one event's data bgwatch holds (the SDK holds each whole event too). An event
past it cannot be read as the SDK reads it: the stream is no longer observed from there on,
counted as an internal error at stage ``stream``."""


def _lifecycle_events() -> frozenset[str]:
    """The stream event types whose ``response`` the installed SDK builds as a ``Response``.

    Read from the SDK's own ``ResponseStreamEvent`` union (never a copied list): an event type
    the SDK does not know (a future ``response.cancelled``) is yielded without a ``Response``,
    so it is not a lifecycle event for bgwatch either.
    """
    from openai.types.responses import Response, ResponseStreamEvent

    found: set[str] = set()
    pending: list[Any] = [ResponseStreamEvent]
    while pending:
        member = pending.pop()
        fields = getattr(member, "model_fields", None)
        if fields is None:
            pending.extend(typing.get_args(member))
            continue
        if "response" in fields and fields["response"].annotation is Response and "type" in fields:
            found.update(value for value in typing.get_args(fields["type"].annotation) if isinstance(value, str))
    return frozenset(found)


LIFECYCLE_EVENTS: Final = _lifecycle_events()
SPLIT_CRLF_AFTER_BLOCK: Final = sdk_splits_crlf_after_block()
"""Whether the installed SDK's decoder is openai 2.x's, which may read a CRLF split across two
network chunks as two line endings (see :mod:`bgwatch._sse`); decided once, by asking it."""


# The exact pre-check that spares the frequent delta events a json.loads (about 2 us each).
# It accepts only a flat JSON object that json.loads certainly parses (no control character
# in a string, valid escapes, integers short enough for int(), no nesting but ``[]``), whose
# first key is a literal "type" with a plain value and whose other keys are plain names: so
# no escaped or duplicate "type" key can hide (a second literal "type" anywhere, even inside
# a string, sends the event to json.loads), and no "error" member (same test). Anything
# else, or a type that counts, goes through json.loads as the SDK's does.
# Plain quantifiers (possessive ones need Python 3.11); the alternatives never overlap, so a
# failing match backtracks only linearly.
_WS = r"[ \t\n\r]*"
_STRING = r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'
_VALUE = rf"(?:{_STRING}|-?(?:0|[1-9][0-9]{{0,18}})|\[{_WS}\]|true|false|null)"
_MEMBER = rf'{_WS}"[A-Za-z_]+"{_WS}:{_WS}{_VALUE}{_WS}'
_PLAIN_EVENT: Final = re.compile(rf'{_WS}\{{{_WS}"type"{_WS}:{_WS}"([a-z_.]+)"{_WS}(?:,{_MEMBER})*\}}{_WS}')
_NOT_PLAIN: Final = LIFECYCLE_EVENTS | {"error"}
_PRECHECK_MAX: Final = 2048


def _is_plain_other_event(data: str) -> bool:
    """Whether ``json.loads(data)`` certainly succeeds and is an event bgwatch ignores.

    True only for a flat object of plain members typed as neither a lifecycle event nor
    ``error``, with no "error" member (see :data:`_PLAIN_EVENT`); False means "parse it".
    """
    if len(data) > _PRECHECK_MAX:
        return False  # the regex walks strings a character at a time: json.loads is faster there
    match = _PLAIN_EVENT.fullmatch(data)
    return match is not None and match[1] not in _NOT_PLAIN and data.count('"type"') == 1 and '"error"' not in data


class StreamObserver:
    """The per-stream observation state, independent of the HTTP library. Never raises.

    Args:
        hook: the transport's :class:`~bgwatch._hook.Hook` (watcher, ``raise_on``).
        call: what :func:`~bgwatch._classify.classify_request` said; ``"create"`` (a stream answering
            ``POST /responses``) stays, anything else (a retrieve with ``stream=true``) is
            recorded as ``"stream"``.
        span: the call's span; :meth:`end` ends it.
        headers: the response headers (``x-request-id``, ``content-encoding``).
        decoded: the chunks come decoded already (the library's ``iter_bytes()``): the
            Content-Encoding is not undone again.
    """

    __slots__ = (
        "_call",
        "_decoder",
        "_error_code",
        "_error_for",
        "_error_message",
        "_halt",
        "_hook",
        "_parser",
        "_raise",
        "_request_id",
        "_response_id",
        "_span",
        "_utf8",
    )

    def __init__(
        self, hook: Hook, call: CallKind, span: CallSpan, headers: Mapping[str, str], *, decoded: bool = False
    ) -> None:
        self._hook = hook
        self._span = span
        self._call: CallKind = "create" if call == "create" else "stream"
        self._request_id = headers.get("x-request-id")
        self._raise = bool(hook.raise_on)
        self._response_id: str | None = None  # learned from the lifecycle events
        self._error_code: str | None = None  # from an ``error`` event, for _error_for's failure
        self._error_message: str | None = None
        self._error_for: str | None = None
        self._decoder: _Decoder | None = None if decoded else _Decoder.for_encoding(headers.get("content-encoding"))
        self._parser: SSEParser | None = SSEParser(
            max_data_bytes=MAX_EVENT_DATA,
            max_line_bytes=MAX_EVENT_DATA,
            sdk_compatible=True,
            split_crlf_after_block=SPLIT_CRLF_AFTER_BLOCK,
        )
        # The SDK decodes every line as strict UTF-8 and stops at the first that is not.
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._halt = False  # the SDK stops here: observe nothing after the current event

    @property
    def observing(self) -> bool:
        """Whether events are still parsed (False after the end, a raise or an internal error)."""
        return self._parser is not None

    def feed(self, chunk: bytes) -> tuple[int, BackgroundResponseError | None]:
        """Observe one chunk; say how much of it to pass on and what to raise after that.

        Returns ``(len(chunk), None)`` unless a raising event was found: then ``(cut, exc)``,
        meaning pass ``chunk[:cut]`` on (the events before the raising one), then raise ``exc``.
        """
        parser = self._parser
        if parser is None or not chunk:
            return len(chunk), None
        try:
            decoder = self._decoder
            before = decoder.copy() if decoder is not None and self._raise else None
            data = decoder.decode(chunk) if decoder is not None else chunk
            invalid_line = self._invalid_utf8_line(data)
            if invalid_line is not None:
                data = data[:invalid_line]  # the SDK stops at the line that is not UTF-8
            # The whole chunk goes to the parser at once, raise mode included; in raise mode it
            # also says at which line ending of the chunk it dispatched each event.
            dispatched_at: list[int] | None = [] if self._raise else None
            events = parser.feed(data, dispatched_at)
            for index, event in enumerate(events):
                error = self._on_event(event)
                if error is not None:
                    self._parser = self._decoder = None  # the stream ends here for the caller
                    return self._cut(chunk, data, before, dispatched_at or [], index), error
                if self._halt:
                    break
            if self._halt or invalid_line is not None:
                self._parser = self._decoder = None
            return len(chunk), None
        except Exception as exc:
            self._stop(exc)
            return len(chunk), None

    def finish(self) -> BackgroundResponseError | None:
        """The inner stream is exhausted: flush the last event; the exception to raise, if any."""
        parser = self._parser
        if parser is None:
            return None
        try:
            events: list[SSEEvent] = []
            if self._decoder is not None:
                events += parser.feed(self._decoder.flush())
            events += parser.close()
            for event in events:
                error = self._on_event(event)
                if error is not None and self._raise:
                    return error
                if self._halt:
                    break
        except Exception as exc:
            self._stop(exc)
        finally:
            self._parser = self._decoder = None
        return None

    def failed(self, exc: BaseException) -> None:
        """The stream broke with ``exc`` (a network error, a timeout): mark the call span."""
        self._span.failed(exc)

    def end(self) -> None:
        """Drop the parser and end the call span (idempotent)."""
        self._parser = self._decoder = None
        self._span.end()

    # -- internals -------------------------------------------------------------------

    def _cut(self, chunk: bytes, data: bytes, before: Any, dispatched_at: list[int], index: int) -> int:
        """How much of ``chunk`` holds the ``index`` events before the raising one, and not it.

        ``data`` is the chunk decoded (``chunk`` itself unless ``before``, the decompressor's
        state before the chunk, is given); ``dispatched_at`` is where the parser dispatched the
        events of ``data`` (see :func:`_dispatch_runs`).
        """
        if index == 0 and before is None and data[:1] not in (b"\r", b"\n"):
            return 0  # every earlier event was completed by an earlier chunk, already passed on
        try:
            start, limit = _dispatch_runs(line_endings(data), dispatched_at, index)
        except Exception as exc:  # cannot happen; if it does, lose no event: pass the chunk, then raise
            self._hook.watcher.internal_error("stream", exc)
            return len(chunk)
        if before is None:
            return start
        # The longest prefix up to limit: it reaches start if the compression allows; it must
        # reach the earlier events (not the leading run that only helps openai 2.x).
        return _encoded_cut(before, chunk, start if index else 0, limit)

    def _invalid_utf8_line(self, data: bytes) -> int | None:
        """Where the first line that is not UTF-8 starts in ``data``; None when there is none.

        The SDK decodes each line strictly and raises at the first invalid one, yielding no
        event after it: the lines before it are observed, then nothing.
        """
        pending = len(self._utf8.getstate()[0])
        if not pending and data.isascii():
            return None
        try:
            self._utf8.decode(data)
        except UnicodeDecodeError as exc:
            bad = max(0, exc.start - pending)
            return max(data.rfind(b"\n", 0, bad), data.rfind(b"\r", 0, bad)) + 1
        return None

    def _on_event(self, event: SSEEvent) -> BackgroundResponseError | None:
        """Record what one event says, as the SDK reads it; the exception ``raise_on`` calls for.

        Every event is parsed as the SDK parses it (``json.loads`` of its data, the type from
        ``data.type``), because the SDK stops at the first event it cannot parse, at
        ``[DONE]`` and at an event whose data carries an ``error``: nothing after those counts.
        """
        data = event.data
        if event.truncated:
            self._halt = True
            self._hook.watcher.internal_error("stream", ValueError("event larger than MAX_EVENT_DATA"))
            return None
        if data.startswith("[DONE]"):
            self._halt = True
            return None
        if _is_plain_other_event(data):
            return None  # json.loads would succeed and find nothing to count (see below)
        try:
            payload = json.loads(data)
        except Exception:  # the SDK raises here (JSONDecodeError, RecursionError)
            self._halt = True
            return None
        name = event.event
        if name is not None and name.startswith("thread."):
            return None  # the SDK's Assistants branch: yielded as is, never a response
        if not isinstance(payload, dict):
            return None
        if payload.get("error"):
            self._halt = True  # the SDK raises APIError for it and yields nothing more
            return None
        kind = payload.get("type")
        if kind == "error":
            self._remember_error(payload)
            return None
        if not isinstance(kind, str) or kind not in LIFECYCLE_EVENTS:
            return None
        response = payload.get("response")
        if not isinstance(response, dict):
            return None
        observation = observation_from_mapping(self._call, response, self._request_id)
        if observation is None:
            return None
        self._response_id = observation.response_id
        observation = self._with_error_details(observation)
        self._hook.record(observation, self._span)
        if not self._raise:
            return None
        return self._hook.exception_for(observation, response)

    def _remember_error(self, payload: Mapping[str, Any]) -> None:
        # The Responses API's shape is {"type": "error", "code": ..., "message": ...}; with a
        # truthy "error" member instead the SDK raises APIError and _on_event stops before here.
        source: Any = payload.get("error")
        if not isinstance(source, Mapping):
            source = payload
        code = source.get("code")
        message = source.get("message")
        self._error_code = code[:256] if isinstance(code, str) and code else None
        self._error_message = message[:4096] if isinstance(message, str) and message else None
        self._error_for = self._response_id  # None: before any response event of this stream

    def _with_error_details(self, observation: Observation) -> Observation:
        """Fill a ``failed`` observation's missing code/message from an earlier ``error`` event."""
        if observation.status != "failed" or self._error_code is None or observation.error_code is not None:
            return observation
        if self._error_for not in (None, observation.response_id):
            return observation  # an error about another response than this one
        return replace(
            observation,
            error_code=self._error_code,
            error_message=observation.error_message or self._error_message,
        )

    def _stop(self, exc: BaseException) -> None:
        """Stop observing this stream after an error of ours; the bytes keep flowing."""
        self._parser = self._decoder = None
        self._hook.watcher.internal_error("stream", exc)


def _dispatch_runs(endings: list[tuple[int, int]], dispatched_at: list[int], index: int) -> tuple[int, int]:
    """Where the events before the ``index``-th one end, and where the ``index``-th one may be cut.

    ``endings`` are the line endings of the chunk (:func:`~bgwatch._sse.line_endings`) and
    ``dispatched_at[i]`` the one at which the parser dispatched the chunk's ``i``-th event.
    Returns ``(start, limit)``: ``start`` is the end of the run of line endings in which the
    event before the ``index``-th one was dispatched, so blank lines after it go with it
    (openai 2.x yields its buffer only when it ends in a blank line, which a longer run may
    complete); for the chunk's first event, the end of the run of line endings the chunk starts
    with (0 if none): an event of an earlier chunk may still wait in openai 2.x's buffer for
    them, as after ``\r\n\r`` | ``\n``. ``limit`` is the start of the run in which the
    ``index``-th event was dispatched, so nothing past it completes that event. No run reaches
    the ``index``-th event's own line ending.
    """
    at = dispatched_at[index]
    first = dispatched_at[index - 1] + 1 if index else 0  # the first ending that may open at's run
    low = at
    while low > first and endings[low - 1][1] == endings[low][0]:
        low -= 1
    high, start = (dispatched_at[index - 1], endings[dispatched_at[index - 1]][1]) if index else (-1, 0)
    while high + 1 < at and endings[high + 1][0] == start:
        high += 1
        start = endings[high][1]
    return start, endings[low][0]


class _Decoder:
    """Undoes a gzip/deflate Content-Encoding incrementally, for observation only."""

    __slots__ = ("_raw_fallback", "_zlib")

    def __init__(self) -> None:
        # wbits 47 auto-detects a gzip or zlib header; raw deflate is handled on the first error.
        self._zlib: Any = zlib.decompressobj(47)
        self._raw_fallback = True

    @classmethod
    def for_encoding(cls, content_encoding: str | None) -> _Decoder | None:
        encodings = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
        encodings = [e for e in encodings if e != "identity"]
        if not encodings:
            return None
        if len(encodings) == 1 and encodings[0] in ("gzip", "x-gzip", "deflate"):
            return cls()
        # From StreamObserver(): observe_stream() counts it and leaves the stream unobserved.
        raise _UnobservableEncoding(content_encoding)

    def decode(self, chunk: bytes) -> bytes:
        try:
            out: bytes = self._zlib.decompress(chunk)
        except zlib.error:
            if not self._raw_fallback:
                raise
            self._zlib = zlib.decompressobj(-15)
            self._raw_fallback = False
            out = self._zlib.decompress(chunk)
        self._raw_fallback = False
        return out

    def flush(self) -> bytes:
        out: bytes = self._zlib.flush()
        return out

    def copy(self) -> Any:
        """A copy of the zlib state, to decode the next chunk again (see :func:`_encoded_cut`)."""
        return self._zlib.copy()


class _UnobservableEncoding(Exception):
    """A Content-Encoding (br, zstd, stacked) the stream observer does not decode."""


def _encoded_cut(before: Any, chunk: bytes, start: int, limit: int) -> int:
    """Map a cut in decoded bytes back to the compressed ``chunk``.

    The longest prefix of ``chunk`` that decodes (from the state ``before``) to at most
    ``limit`` bytes: the failing event stays incomplete for the SDK. If that prefix does not
    reach ``start`` (every earlier event), the whole chunk is passed on rather than an earlier
    event lost. Runs once per stream at most, so the binary search over copies is affordable.
    """

    def decoded(size: int) -> int:
        return len(before.copy().decompress(chunk[:size]))

    try:
        low, high = 0, len(chunk)
        while low < high:
            middle = (low + high + 1) // 2
            if decoded(middle) <= limit:
                low = middle
            else:
                high = middle - 1
        return low if decoded(low) >= start else len(chunk)
    except zlib.error:  # the first chunk of a raw deflate stream: the format was guessed later
        return len(chunk)


class _ObservedSyncStream:
    """Passes a sync byte stream through unchanged while a :class:`StreamObserver` watches."""

    def __init__(self, inner: Any, observer: StreamObserver) -> None:
        self._inner = inner
        self._observer: StreamObserver | None = observer
        self._inner_closed = False

    def __iter__(self) -> Iterator[bytes]:
        observer = self._observer
        if observer is None:  # closed before iteration: let the inner stream say what it says
            yield from self._inner
            return
        raised: BaseException | None = None
        try:
            for chunk in self._inner:
                cut, error = observer.feed(chunk)
                if error is not None:
                    raised = error
                    if cut:
                        yield chunk[:cut]  # the events before the failure reach the caller first
                    self._close_inner_quietly()
                    raise error
                yield chunk
            error = observer.finish()
            if error is not None:
                raised = error
                raise error
        except GeneratorExit:  # closed or abandoned by the consumer: not a failure
            raise
        except BaseException as exc:
            if exc is not raised:
                observer.failed(exc)
            raise
        finally:
            self._end()
            self.close()

    def close(self) -> None:
        """End observing and close the inner stream (idempotent)."""
        self._end()
        if not self._inner_closed:
            self._inner_closed = True
            self._inner.close()

    def _end(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.end()

    def _close_inner_quietly(self) -> None:
        # About to raise the typed exception: a failure to close must not replace it.
        if not self._inner_closed:
            self._inner_closed = True
            with contextlib.suppress(Exception):
                self._inner.close()


class _ObservedAsyncStream:
    """Passes an async byte stream through unchanged while a :class:`StreamObserver` watches."""

    def __init__(self, inner: Any, observer: StreamObserver) -> None:
        self._inner = inner
        self._observer: StreamObserver | None = observer
        self._inner_closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        observer = self._observer
        if observer is None:
            async for chunk in self._inner:
                yield chunk
            return
        raised: BaseException | None = None
        try:
            async for chunk in self._inner:
                cut, error = observer.feed(chunk)
                if error is not None:
                    raised = error
                    if cut:
                        yield chunk[:cut]
                    await self._close_inner_quietly()
                    raise error
                yield chunk
            error = observer.finish()
            if error is not None:
                raised = error
                raise error
        except GeneratorExit:
            raise
        except BaseException as exc:
            if exc is not raised:
                observer.failed(exc)
            raise
        finally:
            self._end()
            await self.aclose()

    async def aclose(self) -> None:
        """End observing and close the inner stream (idempotent)."""
        self._end()
        if not self._inner_closed:
            self._inner_closed = True
            await self._inner.aclose()

    def _end(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.end()

    async def _close_inner_quietly(self) -> None:
        if not self._inner_closed:
            self._inner_closed = True
            with contextlib.suppress(Exception):
                await self._inner.aclose()


def observed_chunks(chunks: Iterator[bytes], observers: list[StreamObserver]) -> Iterator[bytes]:
    """``chunks`` unchanged, each shown to ``observers`` first (observe mode: they never raise)."""
    try:
        for chunk in chunks:
            _feed_all(observers, chunk)
            yield chunk
        _finish_all(observers)
    finally:
        _end_all(observers)


async def observed_async_chunks(chunks: AsyncIterator[bytes], observers: list[StreamObserver]) -> AsyncIterator[bytes]:
    """The async twin of :func:`observed_chunks`."""
    try:
        async for chunk in chunks:
            _feed_all(observers, chunk)
            yield chunk
        _finish_all(observers)
    finally:
        _end_all(observers)


def _feed_all(observers: list[StreamObserver], chunk: bytes) -> None:
    for observer in observers:
        observer.feed(chunk)


def _finish_all(observers: list[StreamObserver]) -> None:
    for observer in observers:
        observer.finish()


def _end_all(observers: list[StreamObserver]) -> None:
    for observer in observers:
        observer.end()


@functools.cache
def _stream_class(module: Any, asynchronous: bool) -> type[Any]:
    """The wrapper class for ``module`` (httpx or httpx2): clients assert the base class."""
    if asynchronous:
        return type("ObservedAsyncByteStream", (_ObservedAsyncStream, module.AsyncByteStream), {})
    return type("ObservedSyncByteStream", (_ObservedSyncStream, module.SyncByteStream), {})


def observe_stream(
    hook: Hook, call: CallKind, span: CallSpan, response: Any, module: Any, *, request: Any, asynchronous: bool
) -> Any | None:
    """Wrap ``response``'s byte stream (an event stream) so that its events are observed as they pass.

    ``call`` is what :func:`~bgwatch._classify.classify_request` said (see :class:`StreamObserver`). Returns the
    response to hand to the client,
    whose wrapper owns ``span`` and ends it when the stream ends: ``response`` itself, or, when
    the inner transport already loaded the body (``MockTransport`` handlers, recording and
    caching transports), a fresh response over the same raw bytes, so that the SDK reads the
    events through the wrapper as it would read them from memory. Never raises: returns None
    (after counting an internal error) when the stream cannot be observed, and the response
    is left untouched.
    """
    try:
        if hasattr(response, "_content"):
            response = _unloaded(response, module, request)
        observer = StreamObserver(hook, call, span, response.headers)
        response.stream = _stream_class(module, asynchronous)(response.stream, observer)
    except Exception as exc:
        hook.watcher.internal_error("stream", exc)
        return None
    return response


def _unloaded(response: Any, module: Any, request: Any) -> Any:
    """A response not yet read, over the raw bytes of ``response``, whose body is already loaded.

    A body given as ``content=`` is kept raw (still encoded) in a ``ByteStream``, which can be
    iterated again; the fresh response decodes it exactly as the loaded one did.
    """
    stream = response.stream
    if not isinstance(stream, module.ByteStream):
        raise TypeError(f"a loaded event stream over {type(stream).__name__} cannot be replayed")
    return fresh_response(module.Response, module, response, b"".join(stream), request)


def fresh_response(response_class: Any, module: Any, response: Any, raw: bytes, request: Any) -> Any:
    """A response not yet read over ``raw``, with the status, extensions and the very headers
    object of ``response`` (no copy: its decoding stays cached), so ``elapsed`` and the rest
    behave as without bgwatch."""
    fresh = response_class(
        status_code=response.status_code,
        stream=module.ByteStream(raw),
        extensions=response.extensions,
        request=request,
    )
    fresh.headers = response.headers
    return fresh
