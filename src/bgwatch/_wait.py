"""Wait for a background response: poll at the server's pace, stop at a deadline, raise typed.

:func:`wait` / :func:`async_wait` poll ``GET /responses/{id}`` until the response reaches a
terminal state or the deadline passes; :func:`create_and_wait` / :func:`async_create_and_wait`
create it first (always with ``background=True``). They work with any client:

* with bgwatch's transport installed, the transport has already counted every poll, so the
  wait records nothing itself (it recognises the transport's watcher on the client);
* without it, the wait classifies each body with the same classifier and records it into
  ``watcher=`` (default: the process-wide watcher). Either way the watcher's tracker counts a
  response's terminal state once per id, so nothing doubles even when both paths see it.

Pacing: the ``openai-poll-after-ms`` header is honoured on every poll it comes with; without
it the interval grows exponentially (with jitter) from ``poll_interval`` to
``max_poll_interval``. The last poll happens at the deadline, never after it; each request's
timeout is trimmed to the time left (at least :data:`MIN_REQUEST_TIMEOUT`).

Transient failures of a poll (connection errors, timeouts, 429 and 5xx left after the SDK's
own retries) do not end the wait: polling goes on with backoff until the deadline, and the
resulting :class:`WaitTimeout` is chained to the last such error. Any other API error
(404, 401, ...) propagates at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import openai
from openai.types.responses import Response

from ._classify import TERMINAL_STATUSES, classify_body
from ._hook import Hook
from ._safe_log import describe, loggable_id
from ._watcher import Watcher, default_watcher
from .errors import BgwatchError, ConfigurationError, raise_for_status, validate_raise_on

__all__ = [
    "DEFAULT_RAISE_ON",
    "WaitTimeout",
    "async_create_and_wait",
    "async_wait",
    "create_and_wait",
    "wait",
]

log = logging.getLogger("bgwatch")

DEFAULT_TIMEOUT: Final = 3600.0
"""Seconds a wait gives a response by default (background responses may run for a long time)."""
DEFAULT_POLL_INTERVAL: Final = 1.0
DEFAULT_MAX_POLL_INTERVAL: Final = 30.0
DEFAULT_CANCEL_TIMEOUT: Final = 10.0
DEFAULT_RAISE_ON: Final = ("failed", "incomplete", "cancelled")
MIN_DELAY: Final = 0.01
"""Floor of any pause between polls (a ``0`` poll-after hint never makes a hot loop)."""
MIN_REQUEST_TIMEOUT: Final = 1.0
"""A poll made close to the deadline still gets this long to answer."""
_JITTER: Final = 0.2
_MAX_EXPONENT: Final = 30

_TRANSIENT_ERRORS: Final = (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError)


class WaitTimeout(BgwatchError):
    """A wait gave up: the response was not terminal when the deadline passed.

    Attributes:
        response_id: the response waited for.
        last_status: the status the last successful poll saw (None if none succeeded), or
            ``"cancelled"`` when the wait cancelled it on timeout.
        elapsed: seconds the wait lasted.
        cancelled: whether the wait cancelled the response (``cancel_on_timeout``) and the API
            confirmed it.
        last_error: the transient error of the last poll, when the last poll failed (also the
            ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        response_id: str,
        last_status: str | None,
        elapsed: float,
        cancelled: bool = False,
        last_error: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.response_id = response_id
        self.last_status = last_status
        self.elapsed = elapsed
        self.cancelled = cancelled
        self.last_error = last_error

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        state = {
            "response_id": self.response_id,
            "last_status": self.last_status,
            "elapsed": self.elapsed,
            "cancelled": self.cancelled,
        }
        return (_rebuild_timeout, (self.message, state))


def _rebuild_timeout(message: str, state: dict[str, Any]) -> WaitTimeout:
    return WaitTimeout(message, **state)


# -- arguments ---------------------------------------------------------------------------


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ConfigurationError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class _Params:
    timeout: float
    poll_interval: float
    max_poll_interval: float
    raise_on: frozenset[str]
    cancel_on_timeout: bool
    cancel_on_abort: bool
    cancel_timeout: float
    watcher: Watcher | None

    @classmethod
    def build(
        cls,
        *,
        timeout: float,
        poll_interval: float,
        max_poll_interval: float,
        raise_on: Iterable[str],
        cancel_on_timeout: bool,
        cancel_on_abort: bool | None,
        cancel_timeout: float,
        watcher: Watcher | None,
    ) -> _Params:
        interval = _seconds("poll_interval", poll_interval)
        ceiling = _seconds("max_poll_interval", max_poll_interval)
        if ceiling < interval:
            raise ConfigurationError(
                f"max_poll_interval ({max_poll_interval!r}) must be >= poll_interval ({poll_interval!r})"
            )
        if watcher is not None and not isinstance(watcher, Watcher):
            raise TypeError(f"watcher must be a bgwatch.Watcher, got {type(watcher).__name__}")
        return cls(
            timeout=_seconds("timeout", timeout),
            poll_interval=interval,
            max_poll_interval=ceiling,
            raise_on=validate_raise_on(raise_on),
            cancel_on_timeout=bool(cancel_on_timeout),
            cancel_on_abort=bool(cancel_on_timeout if cancel_on_abort is None else cancel_on_abort),
            cancel_timeout=_seconds("cancel_timeout", cancel_timeout),
            watcher=watcher,
        )


def _check_response_id(response_id: object) -> str:
    if not isinstance(response_id, str):
        raise TypeError(f"response_id must be a str, got {type(response_id).__name__}")
    if not response_id.strip():
        raise ConfigurationError("response_id must be a non-empty string")
    return response_id


def _check_client(client: object, *, asynchronous: bool) -> None:
    if not hasattr(client, "responses"):
        raise TypeError(f"client must be an openai client with .responses, got {type(client).__name__}")
    if asynchronous and isinstance(client, openai.OpenAI):
        raise TypeError("async_wait needs an AsyncOpenAI client; use bgwatch.wait with OpenAI")
    if not asynchronous and isinstance(client, openai.AsyncOpenAI):
        raise TypeError("wait needs an OpenAI client; use bgwatch.async_wait with AsyncOpenAI")


def _create_kwargs(create_kwargs: dict[str, Any]) -> dict[str, Any]:
    if create_kwargs.get("background", True) is not True:
        raise ConfigurationError("create_and_wait always creates with background=True; do not pass False")
    if create_kwargs.get("stream"):
        raise ConfigurationError("create_and_wait polls; it cannot stream (use client.responses.create(stream=True))")
    kwargs = dict(create_kwargs)
    kwargs.pop("stream", None)
    kwargs["background"] = True
    return kwargs


# -- shared machinery --------------------------------------------------------------------


def _instrumented_watchers(client: Any) -> list[Watcher]:
    """The watchers of bgwatch transports installed in ``client``'s HTTP client."""
    http = getattr(client, "_client", None)
    candidates = [getattr(http, "_transport", None)]
    mounts = getattr(http, "_mounts", None)
    if isinstance(mounts, Mapping):
        candidates.extend(mounts.values())
    found: list[Watcher] = []
    for transport in candidates:
        hook = getattr(transport, "hook", None)
        if isinstance(hook, Hook) and hook.watcher not in found:
            found.append(hook.watcher)
    return found


class _Recorder:
    """Records what the wait saw unless a bgwatch transport on the client already did."""

    def __init__(self, client: Any, watcher: Watcher | None) -> None:
        try:
            installed = _instrumented_watchers(client)
        except Exception:  # pragma: no cover - an exotic client layout: record ourselves
            installed = []
        if watcher is None:
            watcher = installed[0] if installed else default_watcher()
        self.watcher = watcher
        self.active = not any(w is watcher for w in installed)

    def record(self, call: Any, raw: Any) -> None:
        """Classify a raw SDK response (``with_raw_response``) and record it. Never raises."""
        if not self.active:
            return
        try:
            observation = classify_body(
                call, int(raw.status_code), bytes(raw.content), request_id=raw.headers.get("x-request-id")
            )
        except Exception as exc:
            self.watcher.internal_error("classify", exc)
            return
        if observation is not None:
            self.watcher.record(observation)


def _log_cancel_failed(response_id: str, recorder: _Recorder, exc: BaseException) -> None:
    log.debug(
        "bgwatch: cancelling %s after a wait timed out failed (stage cancel): %s",
        loggable_id(response_id),
        describe(exc, capture=recorder.watcher.capture_error_messages),
    )


def _poll_after_seconds(headers: Any) -> float | None:
    try:
        value = headers.get("openai-poll-after-ms")
        if value is None:
            return None
        milliseconds = float(str(value).strip())
    except (AttributeError, TypeError, ValueError):
        return None
    if not math.isfinite(milliseconds) or milliseconds < 0:
        return None
    return milliseconds / 1000.0


class _Pacer:
    """Delays between polls: the server's hint when given, else capped exponential backoff."""

    def __init__(self, params: _Params) -> None:
        self._interval = params.poll_interval
        self._ceiling = params.max_poll_interval
        self._attempt = 0
        self._random = random.Random()

    def after_poll(self, headers: Any) -> float:
        hinted = _poll_after_seconds(headers)
        if hinted is not None:
            return max(hinted, MIN_DELAY)
        return self.backoff()

    def backoff(self) -> float:
        base = min(self._ceiling, self._interval * 2.0 ** min(self._attempt, _MAX_EXPONENT))
        self._attempt += 1
        return max(MIN_DELAY, base * (1.0 - _JITTER * self._random.random()))


def _configured_timeout(client: Any) -> float:
    value = getattr(client, "timeout", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    parts = [getattr(value, name, None) for name in ("connect", "read", "write", "pool")]
    numbers = [float(p) for p in parts if isinstance(p, (int, float)) and not isinstance(p, bool)]
    return max(numbers) if numbers else math.inf


def _request_options(client: Any, remaining: float) -> dict[str, Any]:
    """A per-request timeout no longer than the time left (nor than the client's own)."""
    wanted = max(remaining, MIN_REQUEST_TIMEOUT)
    return {"timeout": wanted} if wanted < _configured_timeout(client) else {}


def _finish(response: Response, raise_on: frozenset[str]) -> Response:
    if response.status in raise_on:
        raise_for_status(response, raise_on)
    return response


def _timeout_error(
    response_id: str,
    params: _Params,
    *,
    started: float,
    last_status: str | None,
    cancelled_status: str | None,
    last_error: BaseException | None,
) -> WaitTimeout:
    elapsed = time.monotonic() - started
    cancelled = cancelled_status == "cancelled"
    message = (
        f"background response {response_id} was still {last_status or 'unknown'} after"
        f" {elapsed:.1f}s (timeout {params.timeout:g}s)"
    )
    if params.cancel_on_timeout:
        message += "; cancelled it" if cancelled else "; cancelling it failed"
    if last_error is not None:
        message += f"; last poll failed: {type(last_error).__name__}"
    return WaitTimeout(
        message,
        response_id=response_id,
        last_status=cancelled_status or last_status,
        elapsed=elapsed,
        cancelled=cancelled,
        last_error=last_error,
    )


# -- sync ----------------------------------------------------------------------------------


def _cancel_sync(client: Any, response_id: str, recorder: _Recorder, timeout: float) -> str | None:
    """Best-effort cancel (one attempt, bounded); the status it reported, None on failure."""
    try:
        target = client.with_options(max_retries=0) if hasattr(client, "with_options") else client
        raw = target.responses.with_raw_response.cancel(response_id, timeout=timeout)
        recorder.record("cancel", raw)
        status = raw.parse().status
        return status if isinstance(status, str) else None
    except Exception as exc:
        _log_cancel_failed(response_id, recorder, exc)
        return None


def _poll_sync(
    client: Any,
    response_id: str,
    params: _Params,
    *,
    recorder: _Recorder,
    started: float,
    first_delay: float,
    pacer: _Pacer,
) -> Response:
    deadline = started + params.timeout
    delay = first_delay
    last_status: str | None = None
    last_error: BaseException | None = None
    while True:
        if delay > 0:
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        options = _request_options(client, deadline - time.monotonic())
        try:
            raw = client.responses.with_raw_response.retrieve(response_id, **options)
        except _TRANSIENT_ERRORS as exc:
            last_error = exc
            delay = pacer.backoff()
        else:
            recorder.record("retrieve", raw)
            response: Response = raw.parse()
            last_status, last_error = response.status, None
            if last_status in TERMINAL_STATUSES:
                return _finish(response, params.raise_on)
            delay = pacer.after_poll(raw.headers)
        if time.monotonic() >= deadline:
            break
    cancelled_status = None
    if params.cancel_on_timeout:
        cancelled_status = _cancel_sync(client, response_id, recorder, params.cancel_timeout)
    raise _timeout_error(
        response_id,
        params,
        started=started,
        last_status=last_status,
        cancelled_status=cancelled_status,
        last_error=last_error,
    ) from last_error


def wait(
    client: openai.OpenAI,
    response_id: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
    raise_on: Iterable[str] = DEFAULT_RAISE_ON,
    cancel_on_timeout: bool = False,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    watcher: Watcher | None = None,
) -> Response:
    """Poll a background response until it is terminal; return it or raise its typed exception.

    Args:
        client: an ``openai.OpenAI`` (or Azure) client, with or without bgwatch's transport.
        response_id: the id returned by ``responses.create(background=True)``.
        timeout: seconds to wait at most (finite, > 0); then :class:`WaitTimeout` is raised.
        poll_interval: first pause between polls when the server sends no
            ``openai-poll-after-ms`` header; it doubles (with jitter) up to ``max_poll_interval``.
        max_poll_interval: longest pause chosen by backoff (a server hint may be longer).
        raise_on: terminal statuses that raise the typed exception (``ResponseFailed``
            subclasses by ``error.code``, ``ResponseIncomplete`` by reason,
            ``ResponseCancelled``); the others are returned. Default: all three.
        cancel_on_timeout: cancel the response when the deadline passes (best effort, one
            attempt of at most ``cancel_timeout`` seconds).
        cancel_timeout: time limit of that cancel request.
        watcher: where to count what the polls saw when the client has no bgwatch transport
            (default: the transport's watcher if installed, else the process-wide watcher).

    Returns:
        The final ``Response`` (``completed``, or a status not in ``raise_on``).

    Raises:
        WaitTimeout: the deadline passed first.
        BackgroundResponseError: the response ended in a status of ``raise_on`` (a transport
            installed with its own ``raise_on`` may raise it from the poll itself).
        openai.APIStatusError: a non-transient API error (404 for an unknown id, 401, ...).
        TypeError, ConfigurationError: invalid arguments (checked before any request).
    """
    _check_client(client, asynchronous=False)
    response_id = _check_response_id(response_id)
    params = _Params.build(
        timeout=timeout,
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        raise_on=raise_on,
        cancel_on_timeout=cancel_on_timeout,
        cancel_on_abort=None,
        cancel_timeout=cancel_timeout,
        watcher=watcher,
    )
    started = time.monotonic()
    recorder = _Recorder(client, params.watcher)
    return _poll_sync(
        client, response_id, params, recorder=recorder, started=started, first_delay=0.0, pacer=_Pacer(params)
    )


def create_and_wait(
    client: openai.OpenAI,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
    raise_on: Iterable[str] = DEFAULT_RAISE_ON,
    cancel_on_timeout: bool = False,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    watcher: Watcher | None = None,
    **create_kwargs: Any,
) -> Response:
    """``client.responses.create(background=True, **create_kwargs)``, then :func:`wait` for it.

    ``timeout`` counts from before the create and is the wait's deadline, not a request
    timeout (use ``client.with_options(timeout=...)`` for that). ``background=False`` and
    ``stream=True`` are refused. Other arguments as :func:`wait`.
    """
    _check_client(client, asynchronous=False)
    params = _Params.build(
        timeout=timeout,
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        raise_on=raise_on,
        cancel_on_timeout=cancel_on_timeout,
        cancel_on_abort=None,
        cancel_timeout=cancel_timeout,
        watcher=watcher,
    )
    kwargs = _create_kwargs(create_kwargs)
    started = time.monotonic()
    recorder = _Recorder(client, params.watcher)
    raw = client.responses.with_raw_response.create(**kwargs)
    recorder.record("create", raw)
    response: Response = raw.parse()
    if response.status in TERMINAL_STATUSES:
        return _finish(response, params.raise_on)
    pacer = _Pacer(params)
    return _poll_sync(
        client,
        response.id,
        params,
        recorder=recorder,
        started=started,
        first_delay=pacer.after_poll(raw.headers),
        pacer=pacer,
    )


# -- async ---------------------------------------------------------------------------------


async def _cancel_async(client: Any, response_id: str, recorder: _Recorder, timeout: float) -> str | None:
    """Best-effort cancel bounded by ``timeout`` in total; the status reported, None on failure."""
    try:
        target = client.with_options(max_retries=0) if hasattr(client, "with_options") else client
        raw = await asyncio.wait_for(target.responses.with_raw_response.cancel(response_id, timeout=timeout), timeout)
        recorder.record("cancel", raw)
        status = raw.parse().status
        return status if isinstance(status, str) else None
    except Exception as exc:
        _log_cancel_failed(response_id, recorder, exc)
        return None


async def _poll_async(
    client: Any,
    response_id: str,
    params: _Params,
    *,
    recorder: _Recorder,
    started: float,
    first_delay: float,
    pacer: _Pacer,
) -> Response:
    deadline = started + params.timeout
    delay = first_delay
    last_status: str | None = None
    last_error: BaseException | None = None
    try:
        while True:
            if delay > 0:
                await asyncio.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            options = _request_options(client, deadline - time.monotonic())
            try:
                raw = await client.responses.with_raw_response.retrieve(response_id, **options)
            except _TRANSIENT_ERRORS as exc:
                last_error = exc
                delay = pacer.backoff()
            else:
                recorder.record("retrieve", raw)
                response: Response = raw.parse()
                last_status, last_error = response.status, None
                if last_status in TERMINAL_STATUSES:
                    return _finish(response, params.raise_on)
                delay = pacer.after_poll(raw.headers)
            if time.monotonic() >= deadline:
                break
    except asyncio.CancelledError:
        if params.cancel_on_abort and last_status not in TERMINAL_STATUSES:
            await _cancel_async(client, response_id, recorder, params.cancel_timeout)
        raise
    cancelled_status = None
    if params.cancel_on_timeout:
        cancelled_status = await _cancel_async(client, response_id, recorder, params.cancel_timeout)
    raise _timeout_error(
        response_id,
        params,
        started=started,
        last_status=last_status,
        cancelled_status=cancelled_status,
        last_error=last_error,
    ) from last_error


async def async_wait(
    client: openai.AsyncOpenAI,
    response_id: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
    raise_on: Iterable[str] = DEFAULT_RAISE_ON,
    cancel_on_timeout: bool = False,
    cancel_on_abort: bool | None = None,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    watcher: Watcher | None = None,
) -> Response:
    """The asyncio twin of :func:`wait` for an ``openai.AsyncOpenAI`` client.

    ``cancel_on_abort`` (default: the value of ``cancel_on_timeout``): when the waiting task
    is cancelled (``task.cancel()``, ``asyncio.timeout``, a TaskGroup failing), cancel the
    response through the API (bounded by ``cancel_timeout``) before ``CancelledError``
    propagates. Runs on asyncio only (not trio).
    """
    _check_client(client, asynchronous=True)
    response_id = _check_response_id(response_id)
    params = _Params.build(
        timeout=timeout,
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        raise_on=raise_on,
        cancel_on_timeout=cancel_on_timeout,
        cancel_on_abort=cancel_on_abort,
        cancel_timeout=cancel_timeout,
        watcher=watcher,
    )
    started = time.monotonic()
    recorder = _Recorder(client, params.watcher)
    return await _poll_async(
        client, response_id, params, recorder=recorder, started=started, first_delay=0.0, pacer=_Pacer(params)
    )


async def async_create_and_wait(
    client: openai.AsyncOpenAI,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
    raise_on: Iterable[str] = DEFAULT_RAISE_ON,
    cancel_on_timeout: bool = False,
    cancel_on_abort: bool | None = None,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    watcher: Watcher | None = None,
    **create_kwargs: Any,
) -> Response:
    """The asyncio twin of :func:`create_and_wait`; ``cancel_on_abort`` as :func:`async_wait`.

    A task cancelled during the create itself cannot cancel the response (its id is not
    known yet).
    """
    _check_client(client, asynchronous=True)
    params = _Params.build(
        timeout=timeout,
        poll_interval=poll_interval,
        max_poll_interval=max_poll_interval,
        raise_on=raise_on,
        cancel_on_timeout=cancel_on_timeout,
        cancel_on_abort=cancel_on_abort,
        cancel_timeout=cancel_timeout,
        watcher=watcher,
    )
    kwargs = _create_kwargs(create_kwargs)
    started = time.monotonic()
    recorder = _Recorder(client, params.watcher)
    raw = await client.responses.with_raw_response.create(**kwargs)
    recorder.record("create", raw)
    response: Response = raw.parse()
    if response.status in TERMINAL_STATUSES:
        return _finish(response, params.raise_on)
    pacer = _Pacer(params)
    return await _poll_async(
        client,
        response.id,
        params,
        recorder=recorder,
        started=started,
        first_delay=pacer.after_poll(raw.headers),
        pacer=pacer,
    )
