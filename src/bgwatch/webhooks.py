"""Count background responses' terminal states from OpenAI webhooks.

OpenAI can notify an HTTPS endpoint when a background response ends
(``response.completed``, ``.failed``, ``.cancelled``, ``.incomplete``). A delivery carries
only the response id, so :class:`WebhookReceiver`:

1. verifies the delivery with the SDK (``client.webhooks.verify_signature``: Standard Webhooks
   HMAC over ``webhook-id.webhook-timestamp.body``, timestamp ``tolerance``), with the secret
   from ``secret=`` or ``OPENAI_WEBHOOK_SECRET``;
2. refuses forged, stale, replayed (same ``webhook-id``) and malformed deliveries with a 4xx,
   counted in ``bgwatch_webhook_rejected_total{reason}`` and never recorded as outcomes;
3. records the terminal state in the same metrics as polling, through the watcher, whose
   tracker counts each response id once, however many webhooks, polls and retries see it.

**Counting.** With a follow-up ``client=``, the receiver answers at once and retrieves the
response off the request path (bounded worker pool, bounded backlog). That retrieve's
observation does the counting, with the real ``error.code``, reason, model and duration: the
webhook alone never counts first, so the code is not lost to an ``unknown`` that was counted
before it. When the client has bgwatch's transport on the same watcher, the transport records
it; otherwise the receiver records the retrieve's body itself. If the follow-up fails, the
webhook's status is recorded with code ``unknown``. Without a follow-up client the webhook is
recorded at once with code ``unknown`` (model ``unknown``, no duration).

**Backlog full.** When ``max_queue`` follow-ups are already outstanding the delivery is
answered ``503`` with ``Retry-After`` and its ``webhook-id`` is forgotten: the platform
retries the delivery later (with backoff, for up to days), which is the right outcome when we
cannot take the work now. Answering 2xx would drop the failure code or the whole outcome.

**Replays.** A second delivery with an already accepted ``webhook-id`` (within the dedupe TTL)
is answered ``409`` by default and counted as ``reason="replay"``, never recorded again. Pass
``duplicate_status=200`` to acknowledge duplicates instead (Standard Webhooks' idempotent
style: a platform retry after a lost 2xx then stops at once; it is not counted twice either way).

Ready-made apps: :func:`asgi_app` (Starlette, FastAPI, any ASGI server) and :func:`wsgi_app`
(Flask, Django, gunicorn, wsgiref). In your own route call :meth:`WebhookReceiver.handle`::

    receiver = bgwatch.webhooks.WebhookReceiver(client=OpenAI(http_client=bgwatch.http_client()))

    @app.post("/webhooks/openai")
    async def openai_webhook(request: fastapi.Request) -> fastapi.Response:
        result = receiver.handle(await request.body(), request.headers)
        return fastapi.Response(result.content, result.status_code, dict(result.headers))
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import openai

from . import _locks
from ._classify import TERMINAL_STATUSES, Observation
from ._safe_log import describe, loggable_id
from ._tracker import RecentIds
from ._wait import _Recorder
from ._watcher import Watcher, default_watcher
from .errors import BackgroundResponseError, ConfigurationError

try:
    from prometheus_client import CollectorRegistry
except ImportError:  # pragma: no cover - prometheus_client is a dependency
    CollectorRegistry = Any  # type: ignore[misc,assignment]

__all__ = [
    "EVENT_STATUSES",
    "REJECT_REASONS",
    "WebhookASGIApp",
    "WebhookReceiver",
    "WebhookResult",
    "WebhookWSGIApp",
    "asgi_app",
    "wsgi_app",
]

log = logging.getLogger("bgwatch.webhooks")

EVENT_STATUSES: Final[Mapping[str, str]] = {
    "response.completed": "completed",
    "response.failed": "failed",
    "response.cancelled": "cancelled",
    "response.incomplete": "incomplete",
}
"""Webhook event types that end a background response, and the status each one means."""

RejectReason = Literal[
    "method", "too_large", "headers", "timestamp", "signature", "malformed", "replay", "overloaded", "error"
]
REJECT_REASONS: Final[tuple[str, ...]] = (
    "method",
    "too_large",
    "headers",
    "timestamp",
    "signature",
    "malformed",
    "replay",
    "overloaded",
    "error",
)
"""Every value of the ``reason`` label of ``bgwatch_webhook_rejected_total`` (a bounded set)."""

Outcome = Literal["accepted", "ignored", "rejected"]

DEFAULT_TOLERANCE: Final = 300
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024
DEFAULT_MAX_WORKERS: Final = 4
DEFAULT_MAX_QUEUE: Final = 1000
DEFAULT_DEDUPE_SIZE: Final = 100_000
DEFAULT_RETRY_AFTER: Final = 30
DEFAULT_FOLLOW_UP_TIMEOUT: Final = 30.0
_REQUIRED_HEADERS: Final = ("webhook-id", "webhook-timestamp", "webhook-signature")
_MAX_ID_LENGTH: Final = 256


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What :meth:`WebhookReceiver.handle` decided; turn it into your framework's response.

    ``content`` is a small JSON body without ids or secrets; ``headers`` holds the
    content type and, for 503, ``Retry-After``.
    """

    status_code: int
    outcome: Outcome
    detail: str
    reason: str | None = None
    """The rejection reason (one of :data:`REJECT_REASONS`) when ``outcome == "rejected"``."""
    event_type: str | None = None
    response_id: str | None = None
    event: Any = field(default=None, repr=False)
    """The SDK's parsed event (``openai.types.webhooks.UnwrapWebhookEvent``) once verified."""
    retry_after: int | None = None

    @property
    def ok(self) -> bool:
        """Whether the delivery was taken (2xx)."""
        return 200 <= self.status_code < 300

    @property
    def content(self) -> bytes:
        """The JSON response body."""
        body: dict[str, str] = {"status": self.outcome, "detail": self.detail}
        if self.reason is not None:
            body["reason"] = self.reason
        return json.dumps(body).encode()

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Response headers (content type, ``Retry-After`` on 503)."""
        headers = [("content-type", "application/json")]
        if self.retry_after is not None:
            headers.append(("retry-after", str(self.retry_after)))
        return headers


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_secret(secret: str | None) -> str:
    if secret is None:
        secret = os.environ.get("OPENAI_WEBHOOK_SECRET")
    if not isinstance(secret, str) or not secret.strip():
        raise ConfigurationError(
            "no webhook secret: pass secret= or set OPENAI_WEBHOOK_SECRET (the whsec_... value"
            " shown when the endpoint was created)"
        )
    if secret.startswith("whsec_"):
        try:
            base64.b64decode(secret[6:], validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError("the webhook secret after 'whsec_' is not valid base64") from None
    return secret


def _normalize_headers(headers: Any) -> dict[str, str]:
    """Lower-cased header names to values; accepts mappings and (name, value) pairs, str or bytes."""
    items: Iterable[Any] = headers.items() if hasattr(headers, "items") else headers
    result: dict[str, str] = {}
    for name, value in items:
        key = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        result.setdefault(key.lower(), text)
    return result


@functools.lru_cache(maxsize=1)
def _event_adapter() -> Any:
    try:
        from openai.types.webhooks import UnwrapWebhookEvent
        from pydantic import TypeAdapter
    except ImportError:  # pragma: no cover - old SDKs
        return None
    return TypeAdapter(UnwrapWebhookEvent)


def _sdk_event(payload: Mapping[str, Any]) -> Any:
    """The SDK's typed event for a verified payload, or None (unknown type, old SDK)."""
    try:
        adapter = _event_adapter()
        return None if adapter is None else adapter.validate_python(payload)
    except Exception:
        return None


@dataclass(frozen=True, slots=True)
class _Job:
    response_id: str
    status: str
    completed_at: float | None


class WebhookReceiver:
    """Verifies OpenAI webhook deliveries and records terminal states through a watcher.

    Framework-neutral and thread-safe: call :meth:`handle` with the raw body and headers.
    Construction validates everything; :meth:`handle` never raises.

    Args:
        secret: the endpoint's signing secret (``whsec_...``); default ``OPENAI_WEBHOOK_SECRET``.
        tolerance: seconds a delivery's ``webhook-timestamp`` may differ from now (default 300).
        client: an ``OpenAI`` or ``AsyncOpenAI`` client for the follow-up ``retrieve`` that
            supplies the error code (preferably with bgwatch's transport). With an async
            client, :meth:`handle` must be called on a running event loop (an ASGI app or an
            ``async def`` route); follow-ups then run as tasks on it. Without a client the
            webhook is counted at once with code ``unknown``.
        watcher: where to count (default: the client transport's watcher, else the
            process-wide watcher of ``registry``).
        registry: Prometheus registry whose process-wide watcher to use.
        max_workers: follow-up retrieves running at once.
        max_queue: follow-ups accepted but not yet finished; beyond it deliveries get 503.
        max_body_bytes: larger deliveries are refused with 413 (real ones are ~200 bytes).
        dedupe_size, dedupe_ttl: how many ``webhook-id`` values to remember, and how long
            (default ``2 * tolerance + 60`` s: older replays fail the timestamp check anyway).
        duplicate_status: HTTP status for a replayed ``webhook-id`` (409, or 200 to ack).
        retry_after: seconds suggested in ``Retry-After`` with a 503.
        follow_up_timeout: time limit of one follow-up retrieve.
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        tolerance: int = DEFAULT_TOLERANCE,
        client: openai.OpenAI | openai.AsyncOpenAI | None = None,
        watcher: Watcher | None = None,
        registry: CollectorRegistry | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        dedupe_size: int = DEFAULT_DEDUPE_SIZE,
        dedupe_ttl: float | None = None,
        duplicate_status: int = 409,
        retry_after: int = DEFAULT_RETRY_AFTER,
        follow_up_timeout: float = DEFAULT_FOLLOW_UP_TIMEOUT,
    ) -> None:
        self._secret = _check_secret(secret)
        self.tolerance = _positive_int("tolerance", tolerance)
        self.max_workers = _positive_int("max_workers", max_workers)
        self.max_queue = _positive_int("max_queue", max_queue)
        self.max_body_bytes = _positive_int("max_body_bytes", max_body_bytes)
        self.retry_after = _positive_int("retry_after", retry_after)
        if duplicate_status not in (200, 202, 204, 409):
            raise ConfigurationError(f"duplicate_status must be 200, 202, 204 or 409, got {duplicate_status!r}")
        self.duplicate_status = duplicate_status
        if isinstance(follow_up_timeout, bool) or not (
            isinstance(follow_up_timeout, (int, float)) and 0 < follow_up_timeout < float("inf")
        ):
            raise ConfigurationError(f"follow_up_timeout must be a finite number > 0, got {follow_up_timeout!r}")
        self.follow_up_timeout = float(follow_up_timeout)
        if watcher is not None and registry is not None:
            raise ConfigurationError("pass either watcher= or registry=, not both")
        if watcher is not None and not isinstance(watcher, Watcher):
            raise TypeError(f"watcher must be a bgwatch.Watcher, got {type(watcher).__name__}")
        if client is not None and not hasattr(client, "responses"):
            raise TypeError(f"client must be an OpenAI or AsyncOpenAI client, got {type(client).__name__}")
        if watcher is None and registry is not None:
            watcher = default_watcher(registry)
        try:
            ttl = float(2 * self.tolerance + 60) if dedupe_ttl is None else float(dedupe_ttl)
            self._seen = RecentIds(_positive_int("dedupe_size", dedupe_size), ttl)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        self.client = client
        self._asynchronous = isinstance(client, openai.AsyncOpenAI)
        self._recorder = _Recorder(client, watcher) if client is not None else None
        self.watcher: Watcher = self._recorder.watcher if self._recorder is not None else (watcher or default_watcher())
        self._verifier = self._make_verifier(client)
        # Follow-ups: one counter bounds the backlog for threads and tasks alike.
        self._cond = _locks.Condition()
        self._closed = False
        self._start_afresh()
        _locks.at_fork_in_child(self, "_start_afresh")

    def _start_afresh(self) -> None:
        # Also a forked child's start: the parent's queued follow-ups, worker threads and
        # tasks stay the parent's (it records them); the child has none yet.
        self._outstanding = 0
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._semaphores: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Semaphore]] = {}

    def _make_verifier(self, client: Any) -> Any:
        verifier = getattr(getattr(client, "webhooks", None), "verify_signature", None)
        if verifier is None:
            try:
                verifier = openai.OpenAI(api_key="bgwatch-webhook-verifier").webhooks.verify_signature
            except AttributeError:
                verifier = None
        if verifier is None:
            raise ConfigurationError(
                f"openai {openai.__version__} cannot verify webhooks (no client.webhooks.verify_signature);"
                " upgrade openai"
            )
        return verifier

    # -- the request path ------------------------------------------------------------------

    def handle(self, body: bytes | str, headers: Any) -> WebhookResult:
        """Verify one delivery and take it; returns the HTTP answer to give. Never raises.

        ``headers``: any mapping (Starlette/Flask/werkzeug headers, a dict) or (name, value)
        pairs; names are matched case-insensitively.
        """
        try:
            return self._handle(body, headers)
        except Exception as exc:  # a bug of ours: answer 500 so that the platform retries
            self.watcher.internal_error("webhook", exc)
            return self._reject("error", 500, "internal error while handling the delivery")

    def _handle(self, body: bytes | str, headers: Any) -> WebhookResult:
        payload = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        if len(payload) > self.max_body_bytes:
            return self._reject("too_large", 413, f"body larger than {self.max_body_bytes} bytes")
        try:
            lowered = _normalize_headers(headers)
        except Exception:
            return self._reject("headers", 400, "unreadable headers")
        missing = [name for name in _REQUIRED_HEADERS if not lowered.get(name)]
        if missing:
            return self._reject("headers", 400, f"missing header(s): {', '.join(missing)}")
        webhook_id = lowered["webhook-id"]
        if len(webhook_id) > _MAX_ID_LENGTH:
            return self._reject("headers", 400, "webhook-id too long")
        stale = self._timestamp_problem(lowered["webhook-timestamp"])
        if stale is not None:
            return self._reject("timestamp", 400, stale)
        try:
            payload.decode("utf-8")  # the signature is defined over text: no UTF-8, nothing to verify
        except UnicodeDecodeError:
            return self._reject("malformed", 400, "body is not UTF-8")
        try:
            self._verifier(payload, lowered, secret=self._secret, tolerance=self.tolerance)
        except openai.InvalidWebhookSignatureError as exc:
            if "timestamp" in str(exc).lower():
                return self._reject("timestamp", 400, "webhook-timestamp outside the tolerance")
            return self._reject("signature", 401, "signature does not match")
        except ValueError:  # a header the SDK could not read
            return self._reject("headers", 400, "webhook headers could not be read")
        parsed = self._parse(payload)
        if isinstance(parsed, WebhookResult):
            return parsed
        event_type, data_id, completed_at, document = parsed
        event = _sdk_event(document)
        status = EVENT_STATUSES.get(event_type)
        if not self._seen.add(webhook_id):
            return self._reject(
                "replay",
                self.duplicate_status,
                "duplicate webhook-id: already accepted",
                event_type=event_type,
                response_id=data_id,
                event=event,
            )
        if status is None:
            return WebhookResult(200, "ignored", "not a background response event", None, event_type, None, event)
        assert data_id is not None  # _parse checked it for response events
        if self.client is None:
            self._record_event(data_id, status, completed_at)
            return WebhookResult(200, "accepted", "recorded", None, event_type, data_id, event)
        if not self._submit(_Job(data_id, status, completed_at)):
            self._seen.discard(webhook_id)  # the platform's retry must not look like a replay
            return self._reject(
                "overloaded",
                503,
                "follow-up backlog full; retry later",
                event_type=event_type,
                response_id=data_id,
                event=event,
                retry_after=self.retry_after,
            )
        return WebhookResult(200, "accepted", "follow-up queued", None, event_type, data_id, event)

    def _timestamp_problem(self, raw: str) -> str | None:
        try:
            timestamp = int(raw.strip())
        except ValueError:
            return "webhook-timestamp is not an integer"
        now = int(time.time())
        if now - timestamp > self.tolerance:
            return f"webhook-timestamp older than {self.tolerance}s"
        if timestamp - now > self.tolerance:
            return f"webhook-timestamp more than {self.tolerance}s in the future"
        return None

    def _parse(self, payload: bytes) -> WebhookResult | tuple[str, str | None, float | None, Mapping[str, Any]]:
        try:
            document = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return self._reject("malformed", 400, "body is not UTF-8 JSON")
        except RecursionError:  # signed, but nested deeper than any real event
            return self._reject("malformed", 400, "body nested too deeply")
        if not isinstance(document, dict):
            return self._reject("malformed", 400, "body is not a JSON object")
        event_type = document.get("type")
        if not isinstance(event_type, str) or not event_type or len(event_type) > _MAX_ID_LENGTH:
            return self._reject("malformed", 400, "event without a type")
        if event_type not in EVENT_STATUSES:
            return event_type, None, None, document
        data = document.get("data")
        data_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(data_id, str) or not data_id or len(data_id) > _MAX_ID_LENGTH:
            return self._reject("malformed", 400, "response event without data.id")
        created = document.get("created_at")
        completed_at = (
            float(created)
            if isinstance(created, (int, float)) and not isinstance(created, bool) and 0 <= created < 1e11
            else None
        )
        return event_type, data_id, completed_at, document

    def _reject(
        self,
        reason: RejectReason,
        status_code: int,
        detail: str,
        *,
        event_type: str | None = None,
        response_id: str | None = None,
        event: Any = None,
        retry_after: int | None = None,
    ) -> WebhookResult:
        self.count_rejection(reason)
        log.debug("bgwatch: webhook delivery refused (%s): %s", reason, detail)
        return WebhookResult(status_code, "rejected", detail, reason, event_type, response_id, event, retry_after)

    def count_rejection(self, reason: RejectReason) -> None:
        """Count a refused delivery in ``bgwatch_webhook_rejected_total{reason}``. Never raises."""
        for sink in self.watcher.sinks:
            counter = getattr(sink, "webhook_rejected", None)
            if counter is None:
                continue
            try:
                counter(reason)
            except Exception as exc:
                self.watcher.internal_error("sink", exc)

    def _record_event(self, response_id: str, status: str, completed_at: float | None) -> None:
        self.watcher.record(
            Observation(
                call="webhook",
                response_id=response_id,
                status=status,
                completed_at=completed_at,
                background=True,
            )
        )

    # -- follow-ups --------------------------------------------------------------------------

    def _submit(self, job: _Job) -> bool:
        loop: asyncio.AbstractEventLoop | None = None
        if self._asynchronous:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                # No loop to run the async client on: count now rather than lose the outcome.
                self.watcher.internal_error("webhook")
                self._record_event(job.response_id, job.status, job.completed_at)
                return True
        with self._cond:
            if self._closed or self._outstanding >= self.max_queue:
                return False
            self._outstanding += 1
        try:
            if loop is not None:
                task = loop.create_task(self._follow_up_async(job, self._semaphore(loop)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._ensure_threads()
                self._jobs.put(job)
        except Exception:
            self._done()
            raise
        return True

    def _semaphore(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        entry = self._semaphores.get(id(loop))
        if entry is None or entry[0] is not loop:
            entry = (loop, asyncio.Semaphore(self.max_workers))
            self._semaphores = {id(loop): entry}  # one live loop at a time is the norm
        return entry[1]

    def _ensure_threads(self) -> None:
        with self._cond:
            self._threads = [t for t in self._threads if t.is_alive()]
            while len(self._threads) < self.max_workers:
                thread = threading.Thread(
                    target=self._worker, name=f"bgwatch-webhook-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._follow_up_sync(job)
            finally:
                self._done()

    def _done(self) -> None:
        with self._cond:
            self._outstanding -= 1
            self._cond.notify_all()

    def _follow_up_sync(self, job: _Job) -> None:
        try:
            raw = self.client.responses.with_raw_response.retrieve(  # type: ignore[union-attr]
                job.response_id, timeout=self.follow_up_timeout
            )
        except BackgroundResponseError:
            return  # the transport recorded the response before raising (its raise_on)
        except Exception as exc:
            self._follow_up_failed(job, exc)
            return
        self._after_follow_up(job, raw)

    async def _follow_up_async(self, job: _Job, semaphore: asyncio.Semaphore) -> None:
        try:
            async with semaphore:
                try:
                    raw = await self.client.responses.with_raw_response.retrieve(  # type: ignore[misc,union-attr]
                        job.response_id, timeout=self.follow_up_timeout
                    )
                except BackgroundResponseError:
                    return
                except Exception as exc:
                    self._follow_up_failed(job, exc)
                    return
                self._after_follow_up(job, raw)
        except asyncio.CancelledError:
            self._record_event(job.response_id, job.status, job.completed_at)
            raise
        finally:
            self._done()

    def _after_follow_up(self, job: _Job, raw: Any) -> None:
        try:
            assert self._recorder is not None
            self._recorder.record("retrieve", raw)
            status = raw.parse().status
        except Exception as exc:
            self._follow_up_failed(job, exc)
            return
        if status not in TERMINAL_STATUSES:
            # The API has not caught up with its own webhook yet: trust the signed event.
            self._record_event(job.response_id, job.status, job.completed_at)

    def _follow_up_failed(self, job: _Job, exc: BaseException) -> None:
        log.debug(
            "bgwatch: webhook follow-up retrieve of %s failed (stage webhook): %s",
            loggable_id(job.response_id),
            describe(exc, capture=self.watcher.capture_error_messages),
        )
        self.watcher.internal_error("webhook", exc)
        self._record_event(job.response_id, job.status, job.completed_at)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Follow-ups accepted and not finished yet."""
        with self._cond:
            return self._outstanding

    def join(self, timeout: float | None = None) -> bool:
        """Block until no follow-up is outstanding (threads only); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._outstanding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking follow-ups, let queued ones finish (up to ``timeout``) and stop the workers.

        Deliveries that need a follow-up are answered 503 from then on (the platform retries them).
        """
        with self._cond:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    async def aclose(self, timeout: float | None = 5.0) -> None:
        """:meth:`close` for asyncio: also waits for follow-up tasks (then cancels the rest)."""
        with self._cond:
            self._closed = True
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        await asyncio.get_running_loop().run_in_executor(None, self.close, timeout)


# -- ASGI ------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class WebhookASGIApp:
    """An ASGI app that answers webhook deliveries (POST on any path it is routed to).

    Mount it (``app.mount("/webhooks/openai", ...)``) or route it
    (``app.add_route("/webhooks/openai", ..., methods=["POST"])``) in Starlette/FastAPI, or
    serve it alone with any ASGI server. Lifespan ``shutdown`` closes the receiver.
    """

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        receiver = self.receiver
        if scope.get("method") != "POST":
            receiver.count_rejection("method")
            await _asgi_send(send, 405, b'{"status": "rejected", "reason": "method"}', [("allow", "POST")])
            return
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or ())
        declared = _content_length(dict(headers).get(b"content-length"))
        limit = receiver.max_body_bytes
        if declared is not None and declared > limit:
            receiver.count_rejection("too_large")
            await _asgi_send(send, 413, b'{"status": "rejected", "reason": "too_large"}', [])
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message.get("type") == "http.disconnect":
                return
            chunk = message.get("body", b"") or b""
            size += len(chunk)
            if size > limit:
                receiver.count_rejection("too_large")
                await _asgi_send(send, 413, b'{"status": "rejected", "reason": "too_large"}', [])
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        result = receiver.handle(b"".join(chunks), headers)
        await _asgi_send(send, result.status_code, result.content, result.headers[1:])

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message.get("type") == "lifespan.shutdown":
                try:
                    await self.receiver.aclose()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def _content_length(raw: bytes | str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


async def _asgi_send(send: Send, status: int, body: bytes, extra: list[tuple[str, str]]) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def asgi_app(receiver: WebhookReceiver | None = None, **options: Any) -> WebhookASGIApp:
    """An ASGI app over ``receiver`` (or a new :class:`WebhookReceiver` built from ``options``)."""
    if receiver is not None and options:
        raise ConfigurationError("pass either a receiver or WebhookReceiver options, not both")
    return WebhookASGIApp(receiver if receiver is not None else WebhookReceiver(**options))


# -- WSGI ------------------------------------------------------------------------------------

StartResponse = Callable[..., Any]

_REASON_PHRASES: Final = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class WebhookWSGIApp:
    """A WSGI app that answers webhook deliveries (Flask: mount it with werkzeug's
    ``DispatcherMiddleware``, or call ``receiver.handle(request.get_data(), request.headers)``
    in a view). Follow-ups run on the receiver's worker threads, off the request path.
    """

    def __init__(self, receiver: WebhookReceiver) -> None:
        if receiver._asynchronous:
            raise ConfigurationError("a WSGI app needs a sync OpenAI client for follow-ups, not AsyncOpenAI")
        self.receiver = receiver

    def __call__(self, environ: Mapping[str, Any], start_response: StartResponse) -> list[bytes]:
        receiver = self.receiver
        if environ.get("REQUEST_METHOD") != "POST":
            receiver.count_rejection("method")
            return _wsgi_reply(start_response, 405, b'{"status": "rejected", "reason": "method"}', [("allow", "POST")])
        declared = _content_length(environ.get("CONTENT_LENGTH") or None)
        stream = environ.get("wsgi.input")
        limit = receiver.max_body_bytes
        if declared is not None and declared > limit:
            receiver.count_rejection("too_large")
            return _wsgi_reply(start_response, 413, b'{"status": "rejected", "reason": "too_large"}', [])
        if stream is None:
            body = b""
        elif declared is not None:
            body = stream.read(declared)
        elif environ.get("wsgi.input_terminated"):
            body = stream.read(limit + 1)
            if len(body) > limit:
                receiver.count_rejection("too_large")
                return _wsgi_reply(start_response, 413, b'{"status": "rejected", "reason": "too_large"}', [])
        else:
            receiver.count_rejection("malformed")
            return _wsgi_reply(start_response, 411, b'{"status": "rejected", "reason": "malformed"}', [])
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_") and isinstance(value, str)
        }
        result = receiver.handle(body, headers)
        return _wsgi_reply(start_response, result.status_code, result.content, result.headers[1:])


def _wsgi_reply(start_response: StartResponse, status: int, body: bytes, extra: list[tuple[str, str]]) -> list[bytes]:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra]
    start_response(f"{status} {_REASON_PHRASES.get(status, 'Unknown')}", headers)
    return [body]


def wsgi_app(receiver: WebhookReceiver | None = None, **options: Any) -> WebhookWSGIApp:
    """A WSGI app over ``receiver`` (or a new :class:`WebhookReceiver` built from ``options``)."""
    if receiver is not None and options:
        raise ConfigurationError("pass either a receiver or WebhookReceiver options, not both")
    return WebhookWSGIApp(receiver if receiver is not None else WebhookReceiver(**options))
