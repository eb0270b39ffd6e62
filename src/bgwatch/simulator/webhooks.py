"""Webhook deliveries signed like the OpenAI platform's, for tests and the demo.

OpenAI signs webhooks per Standard Webhooks: headers ``webhook-id``, ``webhook-timestamp``
(Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
``"{webhook-id}.{webhook-timestamp}.{body}"``, keyed with the base64-decoded part of the
secret after ``whsec_``. That is exactly what ``openai``'s ``client.webhooks.verify_signature``
checks. Bodies have the shape of the SDK's ``UnwrapWebhookEvent`` response events::

    {"id": "evt_...", "object": "event", "created_at": 1760000000,
     "type": "response.failed", "data": {"id": "resp_..."}}

:class:`WebhookSender` POSTs them (stdlib HTTP only), retrying like the platform does (same
``webhook-id``, fresh timestamp and signature) on connection errors, 408, 429 and 5xx.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

__all__ = [
    "EVENT_TYPES",
    "Delivery",
    "SentDelivery",
    "WebhookSender",
    "build_delivery",
    "event_body",
    "new_secret",
    "sign",
]

EVENT_TYPES: Final[Mapping[str, str]] = {
    "completed": "response.completed",
    "failed": "response.failed",
    "cancelled": "response.cancelled",
    "incomplete": "response.incomplete",
}
"""Terminal status -> the webhook event type the platform sends for it."""

_RETRY_STATUSES: Final = frozenset((0, 408, 429, 500, 502, 503, 504))


def new_secret() -> str:
    """A fresh signing secret in the platform's format (``whsec_`` + base64 of 32 bytes)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int | str, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def event_body(event_type: str, response_id: str, created_at: float, *, event_id: str | None = None) -> bytes:
    """The JSON body of a response event (``created_at``: when the response reached it)."""
    event = {
        "id": event_id or "evt_" + secrets.token_hex(16),
        "object": "event",
        "created_at": int(created_at),
        "type": event_type,
        "data": {"id": response_id},
    }
    return json.dumps(event, separators=(",", ":")).encode()


class Delivery(NamedTuple):
    """One signed delivery, ready to POST."""

    webhook_id: str
    body: bytes
    headers: dict[str, str]


def build_delivery(
    secret: str,
    event_type: str,
    response_id: str,
    created_at: float,
    *,
    webhook_id: str | None = None,
    timestamp: int | None = None,
    body: bytes | None = None,
) -> Delivery:
    """Sign a delivery. ``body`` overrides the generated event body (for malformed-body tests)."""
    webhook_id = webhook_id or "wh_" + secrets.token_hex(16)
    timestamp = int(time.time()) if timestamp is None else int(timestamp)
    payload = body if body is not None else event_body(event_type, response_id, created_at)
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, payload),
    }
    return Delivery(webhook_id, payload, headers)


@dataclass(frozen=True, slots=True)
class SentDelivery:
    """What one :meth:`WebhookSender.send` did (``status`` 0: no HTTP answer)."""

    webhook_id: str
    event_type: str
    response_id: str
    status: int
    attempts: int


class WebhookSender:
    """POSTs signed webhook deliveries to ``url``, as the platform does.

    Args:
        url: the receiver's endpoint.
        secret: the signing secret (``whsec_...``; see :func:`new_secret`).
        timeout: seconds per attempt.
        max_attempts: attempts per delivery (retries on connection errors, 408, 429, 5xx).
        retry_delay: first pause between attempts (doubles; a ``Retry-After`` is honoured up
            to ``max_retry_delay``).
        max_pending: deliveries :meth:`submit` may queue before it refuses more.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        timeout: float = 5.0,
        max_attempts: int = 3,
        retry_delay: float = 0.05,
        max_retry_delay: float = 2.0,
        max_pending: int = 1000,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be http(s), got {url!r}")
        if max_attempts < 1 or max_pending < 1 or timeout <= 0 or retry_delay < 0:
            raise ValueError("max_attempts and max_pending must be >= 1, timeout > 0, retry_delay >= 0")
        _key(secret)  # fails early on a malformed whsec_ secret
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._queue: queue.Queue[tuple[str, str, float] | None] = queue.Queue(max_pending)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sent: list[SentDelivery] = []
        # Loopback receivers must not be sent through the environment's proxies.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def send(
        self, event_type: str, response_id: str, created_at: float, *, webhook_id: str | None = None
    ) -> SentDelivery:
        """Deliver one event now (blocking, with retries); returns what happened."""
        webhook_id = webhook_id or "wh_" + secrets.token_hex(16)
        body = event_body(event_type, response_id, created_at)
        status = 0
        attempts = 0
        delay = self.retry_delay
        while attempts < self.max_attempts:
            attempts += 1
            delivery = build_delivery(
                self.secret, event_type, response_id, created_at, webhook_id=webhook_id, body=body
            )
            status, retry_after = self._post(delivery)
            if status not in _RETRY_STATUSES or attempts >= self.max_attempts:
                break
            time.sleep(min(self.max_retry_delay, retry_after if retry_after is not None else delay))
            delay *= 2
        sent = SentDelivery(webhook_id, event_type, response_id, status, attempts)
        with self._lock:
            self._sent.append(sent)
        return sent

    def send_status(self, status: str, response_id: str, created_at: float) -> SentDelivery:
        """:meth:`send` the event of a terminal ``status`` (``"failed"`` -> ``response.failed``)."""
        return self.send(EVENT_TYPES[status], response_id, created_at)

    def submit(self, event_type: str, response_id: str, created_at: float) -> bool:
        """Queue a delivery for a background thread (never blocks); False if the queue is full."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="bgwatch-sim-webhooks", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((event_type, response_id, created_at))
        except queue.Full:
            return False
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every submitted delivery was sent; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float | None = 5.0) -> None:
        """Send what is queued (up to ``timeout``) and stop the thread."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)

    @property
    def sent(self) -> list[SentDelivery]:
        """Every delivery made so far, oldest first."""
        with self._lock:
            return list(self._sent)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.send(*item)
            except Exception:  # a sender bug must not kill the thread
                pass
            finally:
                self._queue.task_done()

    def _post(self, delivery: Delivery) -> tuple[int, float | None]:
        request = urllib.request.Request(self.url, data=delivery.body, headers=delivery.headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as answer:
                answer.read()
                return int(answer.status), None
        except urllib.error.HTTPError as exc:
            retry_after = exc.headers.get("retry-after") if exc.headers else None
            exc.close()
            try:
                seconds = float(retry_after) if retry_after is not None else None
            except ValueError:
                seconds = None
            return int(exc.code), seconds
        except (OSError, ValueError):
            return 0, None
