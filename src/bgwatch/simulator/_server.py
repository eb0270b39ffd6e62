"""The simulator: a real HTTP/1.1 server on loopback speaking the Responses API subset a
background client uses, with a seeded outcome mix, a ground-truth ledger and faults.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import json
import random
import re
import socket
import struct
import sys
import threading
import time
import traceback
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple, cast
from urllib.parse import parse_qs

from ._model import (
    FAULT_KINDS,
    TERMINAL_STATUSES,
    FaultKind,
    Faults,
    Mix,
    Outcome,
    TerminalStatus,
)
from ._render import CancelEvent, Record, Renderer, dumps, error_body, new_id
from .webhooks import EVENT_TYPES, WebhookSender

__all__ = ["LoggedRequest", "RequestLog", "Simulator"]

_TERMINAL: frozenset[str] = frozenset(TERMINAL_STATUSES)
_OUTCOME_KEY = "bgwatch_outcome"  # metadata key that forces a response's outcome (tests)
_TRUE = ("true", "1", "yes")


class LoggedRequest(NamedTuple):
    """One request the server answered.

    ``status`` is the status line sent, 0 when none was (faults ``reset`` and ``cut``);
    ``fault`` names the fault applied, if any. ``path`` excludes the query string.
    """

    method: str
    path: str
    status: int
    fault: str | None


class RequestLog:
    """Thread-safe record of the requests the server answered, for counting in tests.

    Counts are kept for every request; the ordered entries are capped at ``maxlen``.
    """

    def __init__(self, maxlen: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[LoggedRequest] = Counter()
        self._entries: deque[LoggedRequest] = deque(maxlen=maxlen)

    def record(self, method: str, path: str, status: int, fault: str | None = None) -> None:
        """Add one request (called by the server)."""
        entry = LoggedRequest(method, path, status, fault)
        with self._lock:
            self._counts[entry] += 1
            self._entries.append(entry)

    def count(
        self,
        method: str | None = None,
        path: str | re.Pattern[str] | None = None,
        *,
        status: int | None = None,
        fault: str | None = None,
    ) -> int:
        """How many requests match; ``None`` matches anything.

        ``path`` is an exact path (``"/v1/responses"``) or a compiled regex searched in
        the path. ``fault`` matches the fault kind applied (``"500"``, ``"reset"`` ...).
        """
        with self._lock:
            items = list(self._counts.items())
        total = 0
        for entry, n in items:
            if method is not None and entry.method != method:
                continue
            if isinstance(path, str) and entry.path != path:
                continue
            if isinstance(path, re.Pattern) and not path.search(entry.path):
                continue
            if status is not None and entry.status != status:
                continue
            if fault is not None and entry.fault != fault:
                continue
            total += n
        return total

    def entries(self) -> list[LoggedRequest]:
        """The most recent requests, oldest first."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        """Forget every request."""
        with self._lock:
            self._counts.clear()
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(self._counts.values())


@dataclass
class _Json:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    # (record, status) the client sees once this reply is delivered; None for dry runs.
    shows: tuple[Record, str] | None = None


@dataclass
class _Stream:
    rec: Record
    after: int  # send events with sequence_number > after
    dry: bool


@dataclass
class _Injected:
    fault: FaultKind
    remaining: int
    pattern: re.Pattern[str] | None


class _Error(Exception):
    """An API error reply raised from a route."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.reply = _Json(status, error_body(message, type_, None, param))


class Simulator:
    """A fake OpenAI Responses API on loopback, for tests, demos and benchmarks.

    Each background response walks ``queued -> in_progress -> terminal``: it is queued
    until ``d1`` seconds after creation and in progress until ``d2``, where
    ``d1 <= d2`` are drawn from ``durations``; with ``queue_seconds=(low, high)`` the time
    queued is drawn from that range instead, and the time running from ``durations``. Its
    terminal state is drawn at creation from ``mix`` with a generator seeded by ``seed``:
    the same seed yields the same sequence of outcomes for the same sequence of creates. A
    create may force its outcome with ``metadata={"bgwatch_outcome": "failed:server_error"}`` (or
    ``"completed"``, ``"cancelled"``, ``"incomplete:max_output_tokens"``).

    Streams of cancelled responses end with a ``cancel_event`` (``response.incomplete``
    by default; the SDK has no ``response.cancelled`` stream event) whose
    ``response.status`` is ``"cancelled"``; ``None`` ends the stream with no final event.
    ``stream_error_events`` adds an ``error`` event before ``response.failed``.

    Faults: see :meth:`inject` and :class:`Faults`. ``gzip_responses`` gzips every
    body when the client accepts gzip.

    Arguments not covered above: ``host``/``port`` to bind (port 0: a free one);
    ``poll_after_ms`` for the ``openai-poll-after-ms`` header; ``output_bytes``, the
    size of a completed response's text (benchmarks use 100 KB - 1 MB);
    ``slow_seconds``, the delay of the ``slow`` fault; ``retry_after_ms``, sent with
    injected 429/500/503; ``cut_after_events``, events a ``cut`` stream delivers.

    Bodies carry ``created_at``/``completed_at`` in whole seconds and terminal bodies a
    ``usage`` (see :meth:`Record.usage`); the ledger (:class:`Outcome`) holds the exact
    creation time, time queued and tokens.

    ``mix``, ``durations``, ``queue_seconds``, ``poll_after_ms`` (None omits the header), ``slow_seconds``,
    ``retry_after_ms``, ``gzip_responses`` and ``faults`` may be changed while running;
    they apply to the requests that follow.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        mix: Mix | str | None = None,
        durations: tuple[float, float] = (0.05, 0.2),
        queue_seconds: tuple[float, float] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_after_ms: int | None = 50,
        output_bytes: int = 64,
        faults: Faults | None = None,
        slow_seconds: float = 0.5,
        retry_after_ms: int = 10,
        gzip_responses: bool = False,
        cancel_event: CancelEvent = "response.incomplete",
        stream_error_events: bool = False,
        cut_after_events: int = 2,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        lo, hi = durations
        if not 0 <= lo <= hi:
            raise ValueError(f"durations must satisfy 0 <= low <= high, got {durations}")
        if cancel_event not in ("response.incomplete", "response.failed", None):
            raise ValueError(f"cancel_event must be response.incomplete, response.failed or None: {cancel_event}")
        self.seed = seed
        self.mix = mix or Mix()
        self.durations = (float(lo), float(hi))
        if queue_seconds is not None and not 0 <= queue_seconds[0] <= queue_seconds[1]:
            raise ValueError(f"queue_seconds must satisfy 0 <= low <= high, got {queue_seconds}")
        self.queue_seconds = queue_seconds
        self.host = host
        self.poll_after_ms = poll_after_ms
        self.slow_seconds = slow_seconds
        self.retry_after_ms = retry_after_ms
        self.gzip_responses = gzip_responses
        self.cut_after_events = cut_after_events
        self.renderer = Renderer(
            output_bytes=output_bytes, cancel_event=cancel_event, stream_error_events=stream_error_events
        )
        self._requested_port = port
        self._lock = threading.Lock()
        # Wakes live SSE streams on cancel and stop; shares the state lock so a stream
        # reads time and cancel_at atomically with respect to a cancel.
        self._cond = threading.Condition(self._lock)
        self._rng = random.Random(seed)
        self._records: dict[str, Record] = {}
        self._injected: list[_Injected] = []
        self._faults: Faults | None = None
        self._fault_pattern: re.Pattern[str] | None = None
        self._fault_rng = random.Random()
        self.faults = faults
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._internal_errors: list[str] = []
        self.request_log = RequestLog()
        # Signed webhooks, like the platform's: one delivery per background response when it
        # reaches its terminal state (a cancel delivers at once).
        self.webhooks: WebhookSender | None = None
        if webhook_url is not None:
            if not webhook_secret:
                raise ValueError("webhook_url needs webhook_secret (see bgwatch.simulator.webhooks.new_secret)")
            self.webhooks = WebhookSender(webhook_url, webhook_secret)
        self._due: list[tuple[float, str]] = []
        self._due_wake = threading.Event()
        self._notified: set[str] = set()
        self._webhook_thread: threading.Thread | None = None

    @property
    def mix(self) -> Mix:
        """The outcome mix new responses draw from (may be replaced while running)."""
        return self._resolved[0]

    @mix.setter
    def mix(self, value: Mix | str) -> None:
        mix = Mix.parse(value) if isinstance(value, str) else value
        # Resolved once per Mix, not per create; one attribute so a concurrent draw
        # never pairs the weights of one Mix with the codes of another.
        self._resolved = (mix, mix.failure_codes(), mix.incomplete_reasons())

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind and serve in a background thread; returns ``self``."""
        if self._server is not None or self._stopping.is_set():
            raise RuntimeError("Simulator can be started once")
        server = _Server((self.host, self._requested_port), _Handler, self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="bgwatch-sim", daemon=True
        )
        self._thread.start()
        if self.webhooks is not None:
            self._webhook_thread = threading.Thread(
                target=self._deliver_webhooks, name="bgwatch-sim-webhooks", daemon=True
            )
            self._webhook_thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close every connection and join the server's threads."""
        self._stopping.set()
        self._due_wake.set()
        with self._cond:
            self._cond.notify_all()
        if self._webhook_thread is not None:
            self._webhook_thread.join(timeout)
        if self.webhooks is not None:
            self.webhooks.close()
        server = self._server
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout)
        server.join_connections(timeout)

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("Simulator not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port`` without any path."""
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI ``base_url``: ``http://host:port/v1``. Any path prefix works."""
        return self.url + "/v1"

    # -- ground truth ------------------------------------------------------------------

    def ledger(self) -> dict[str, Outcome]:
        """Response id -> final outcome, for responses whose terminal state has been
        reached (by time or by a cancel)."""
        now = time.monotonic()
        with self._lock:
            records = list(self._records.values())
        return {r.id: r.outcome(now) for r in records if r.cancel_at is not None or now >= r.t2}

    def outcomes(self) -> dict[str, Outcome]:
        """Response id -> final outcome for every response created so far: the one drawn
        at creation, or ``cancelled`` when the cancel endpoint stopped it first.
        ``finished_at`` is None while the response is still running."""
        now = time.monotonic()
        with self._lock:
            records = list(self._records.values())
        return {r.id: r.outcome(now) for r in records}

    def seen(self) -> dict[str, str]:
        """Response id -> the last status a client received in full (a poll body, a
        create/cancel body or an SSE event). Faulted deliveries never count."""
        with self._lock:
            records = list(self._records.values())
        return {r.id: r.seen for r in records if r.seen is not None}

    @property
    def internal_errors(self) -> list[str]:
        """Tracebacks of bugs inside the simulator (each also answered with a 500)."""
        with self._lock:
            return list(self._internal_errors)

    # -- faults ------------------------------------------------------------------------

    @property
    def faults(self) -> Faults | None:
        """Random faults applied to requests, or None."""
        return self._faults

    @faults.setter
    def faults(self, value: Faults | None) -> None:
        with self._lock:
            self._faults = value
            self._fault_pattern = re.compile(value.match) if value and value.match else None
            seed = value.seed if value and value.seed is not None else f"{self.seed}/faults"
            self._fault_rng = random.Random(seed)

    def inject(self, fault: FaultKind, count: int = 1, match: str | None = None) -> None:
        """Apply ``fault`` to the next ``count`` requests whose ``"METHOD /path"`` (query
        string excluded) matches the regex ``match`` (searched; None matches all).

        - ``"500"``, ``"429"``, ``"503"``: an OpenAI-shaped error with
          ``x-should-retry: true`` and ``retry-after-ms``; the request has no effect.
        - ``"reset"``: the connection is aborted (RST) without a response; no effect.
        - ``"truncate"``: headers with the full Content-Length, then half the body and a
          close (SSE: half of the first event); no effect.
        - ``"slow"``: the request is served normally after ``slow_seconds``.
        - ``"gzip"``: served normally with a gzip-encoded body (SSE: gzip stream).
        - ``"cut"``: the request *takes effect*, then the reply is lost (RST before the
          body; SSE: after ``cut_after_events`` events). Models a lost create response
          or a dropped stream that a client must resume with ``starting_after``.

        Injected faults are used in order before any random :attr:`faults`.
        """
        if fault not in FAULT_KINDS:
            raise ValueError(f"Unknown fault {fault!r}; expected one of {FAULT_KINDS}")
        if count < 1:
            raise ValueError("count must be >= 1")
        pattern = re.compile(match) if match is not None else None
        with self._lock:
            self._injected.append(_Injected(fault, count, pattern))

    def clear_faults(self) -> int:
        """Drop every injected fault not yet used; returns how many uses were dropped."""
        with self._lock:
            dropped = sum(i.remaining for i in self._injected)
            self._injected.clear()
        return dropped

    def _next_fault(self, method: str, path: str) -> FaultKind | None:
        target = f"{method} {path}"
        with self._lock:
            for i, inj in enumerate(self._injected):
                if inj.pattern is None or inj.pattern.search(target):
                    inj.remaining -= 1
                    if inj.remaining <= 0:
                        del self._injected[i]
                    return inj.fault
            faults = self._faults
            if faults is None or faults.rate <= 0:
                return None
            if self._fault_pattern is not None and not self._fault_pattern.search(target):
                return None
            if self._fault_rng.random() < faults.rate:
                return self._fault_rng.choice(faults.kinds)
        return None

    # -- state -------------------------------------------------------------------------

    def _draw(self, rng: random.Random) -> tuple[TerminalStatus, str | None, str | None, float, float]:
        mix, codes, reasons = self._resolved
        weights = mix.weights()
        u = rng.random() * sum(weights)
        status: TerminalStatus = TERMINAL_STATUSES[-1]
        for candidate, w in zip(TERMINAL_STATUSES, weights, strict=True):
            if w > 0 and u < w:
                status = candidate
                break
            u -= w
        code = rng.choice(codes) if status == "failed" else None
        reason = rng.choice(reasons) if status == "incomplete" else None
        lo, hi = self.durations
        queue = self.queue_seconds
        if queue is None:
            d1, d2 = sorted((rng.uniform(lo, hi), rng.uniform(lo, hi)))
        else:
            d1 = rng.uniform(*queue)
            d2 = d1 + rng.uniform(lo, hi)
        return status, code, reason, d1, d2

    def _new_record(self, params: dict[str, Any], *, background: bool, stream: bool, dry: bool) -> Record:
        forced = _forced_outcome(params.get("metadata"))  # a bad value 400s before any draw
        if dry:
            # A dry run (a "truncate" fault) must not consume the seeded sequence.
            drawn = self._draw(random.Random())
        else:
            with self._lock:
                drawn = self._draw(self._rng)
        status, code, reason, d1, d2 = drawn
        if forced is not None:
            status, code, reason = forced
        t0 = time.monotonic()
        if background:
            t1, t2 = t0 + d1, t0 + d2
        elif stream:  # a foreground stream is never queued
            t1, t2 = t0, t0 + d2
        else:
            t1 = t2 = t0
        rec = Record(
            id=new_id("resp_"),
            model=str(params["model"]),
            background=background,
            final=status,
            code=code,
            reason=reason,
            t0=t0,
            t1=t1,
            t2=t2,
            created_at=time.time(),
            params=params,
            full_output_tokens=self.renderer.output_tokens,
        )
        if not dry:
            with self._lock:
                self._records[rec.id] = rec
                if self.webhooks is not None and background:
                    heapq.heappush(self._due, (t2, rec.id))
            self._due_wake.set()
        return rec

    def _deliver_webhooks(self) -> None:
        """Send each background response's terminal webhook when it is due (own thread)."""
        sender = self.webhooks
        assert sender is not None
        while not self._stopping.is_set():
            now = time.monotonic()
            ready: list[Record] = []
            with self._lock:
                while self._due and self._due[0][0] <= now:
                    _, response_id = heapq.heappop(self._due)
                    if response_id not in self._notified:
                        self._notified.add(response_id)
                        ready.append(self._records[response_id])
                wait = self._due[0][0] - now if self._due else None
            for rec in ready:
                self._notify(sender, rec, now)
            self._due_wake.wait(wait)
            self._due_wake.clear()

    def _notify(self, sender: WebhookSender, rec: Record, now: float) -> None:
        outcome = rec.outcome(now)
        try:
            sender.submit(EVENT_TYPES[outcome.status], rec.id, rec.created_at)
        except Exception:
            self._internal_errors.append(traceback.format_exc())

    def _get(self, response_id: str) -> Record:
        rec = self._records.get(response_id)
        if rec is None:
            raise _Error(404, f"Response with id '{response_id}' not found.", param="response_id")
        return rec

    def _poll_headers(self) -> tuple[tuple[str, str], ...]:
        if self.poll_after_ms is None:
            return ()
        return (("openai-poll-after-ms", str(self.poll_after_ms)),)

    @staticmethod
    def _shows(rec: Record, status: str, dry: bool) -> tuple[Record, str] | None:
        return None if dry else (rec, status)

    # -- routes ------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: str, body: bytes, dry: bool) -> _Json | _Stream:
        for route_method, pattern, name in _ROUTES:
            m = pattern.fullmatch(path)
            if m is not None and route_method == method:
                handler = cast(Callable[..., "_Json | _Stream"], getattr(self, name))
                return handler(*m.groups(), query=query, body=body, dry=dry)
        raise _Error(404, f"Invalid URL ({method} {path})")

    def _r_create(self, *, query: str, body: bytes, dry: bool) -> _Json | _Stream:
        params = _json_object(body)
        if not isinstance(params.get("model"), str) or not params["model"]:
            raise _Error(400, "Missing required parameter: 'model'.", param="model")
        background = params.get("background") is True
        stream = params.get("stream") is True
        rec = self._new_record(params, background=background, stream=stream, dry=dry)
        if stream:
            return _Stream(rec, -1, dry)
        status = rec.status_at(time.monotonic())
        return _Json(
            200,
            dumps(self.renderer.response(rec, status)),
            self._poll_headers() if background else (),
            self._shows(rec, status, dry),
        )

    def _r_retrieve(self, response_id: str, *, query: str, body: bytes, dry: bool) -> _Json | _Stream:
        rec = self._get(response_id)
        q = parse_qs(query)
        if q.get("stream", [""])[-1].lower() in _TRUE:
            if not rec.background:
                raise _Error(400, "Only responses created with background=true can be streamed.", param="stream")
            raw = q.get("starting_after", ["-1"])[-1]
            try:
                after = int(raw)
            except ValueError:
                raise _Error(400, f"Invalid 'starting_after': {raw!r}.", param="starting_after") from None
            return _Stream(rec, after, dry)
        status = rec.status_at(time.monotonic())
        return _Json(
            200,
            dumps(self.renderer.response(rec, status)),
            self._poll_headers(),
            self._shows(rec, status, dry),
        )

    def _r_cancel(self, response_id: str, *, query: str, body: bytes, dry: bool) -> _Json:
        rec = self._get(response_id)
        notify = False
        with self._cond:
            now = time.monotonic()
            status = rec.status_at(now)
            if status in _TERMINAL:
                raise _Error(400, f"Cannot cancel a {status} response.")
            if not rec.background:
                raise _Error(400, "Only responses created with background=true can be cancelled.")
            if not dry:
                rec.cancel_at = now
                rec.cancel_wall = time.time()
                self._cond.notify_all()
                notify = self.webhooks is not None and rec.id not in self._notified
                if notify:  # the scheduled delivery will find it notified and skip it
                    self._notified.add(rec.id)
        if not dry and notify and self.webhooks is not None:
            self._notify(self.webhooks, rec, now)
        if dry:
            # Render a cancelled copy without touching the real record.
            shadow = Record.__new__(Record)
            for slot in Record.__slots__:
                setattr(shadow, slot, getattr(rec, slot))
            shadow.cancel_at, shadow.cancel_wall = now, time.time()
            rec = shadow
        return _Json(200, dumps(self.renderer.response(rec, "cancelled")), (), self._shows(rec, "cancelled", dry))

    def _r_input_items(self, response_id: str, *, query: str, body: bytes, dry: bool) -> _Json:
        rec = self._get(response_id)
        item_id = "msg_" + rec.id[5:][::-1]
        item = {
            "id": item_id,
            "type": "message",
            "role": "user",
            "status": "completed",
            "content": [{"type": "input_text", "text": rec.input_text}],
        }
        page = {"object": "list", "data": [item], "first_id": item_id, "last_id": item_id, "has_more": False}
        return _Json(200, dumps(page))

    def _r_input_tokens(self, *, query: str, body: bytes, dry: bool) -> _Json:
        params = _json_object(body)
        tokens = max(1, len(json.dumps(params.get("input", ""))) // 4)
        return _Json(200, dumps({"object": "response.input_tokens", "input_tokens": tokens}))

    def _r_compact(self, *, query: str, body: bytes, dry: bool) -> _Json:
        params = _json_object(body)
        if not isinstance(params.get("model"), str):
            raise _Error(400, "Missing required parameter: 'model'.", param="model")
        tokens = max(1, len(json.dumps(params.get("input", ""))) // 4)
        compacted = {
            "id": new_id("resp_"),
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": [
                {
                    "id": new_id("cmp_"),
                    "type": "compaction",
                    "encrypted_content": base64.b64encode(b"simulated compaction").decode(),
                }
            ],
            "usage": {
                "input_tokens": tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": 8,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": tokens + 8,
            },
        }
        return _Json(200, dumps(compacted))

    def _r_embeddings(self, *, query: str, body: bytes, dry: bool) -> _Json:
        params = _json_object(body)
        raw = params.get("input")
        inputs: list[object] = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        dims = params.get("dimensions")
        dims = dims if isinstance(dims, int) and 0 < dims <= 4096 else 16
        as_base64 = params.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            seed = zlib.crc32(json.dumps(text).encode())
            vector = [((seed >> (j % 24)) % 1000) / 1000.0 - 0.5 for j in range(dims)]
            embedding: object = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode() if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(max(1, len(json.dumps(t)) // 4) for t in inputs)
        return _Json(
            200,
            dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": str(params.get("model", "")),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            ),
        )

    def _r_chat(self, *, query: str, body: bytes, dry: bool) -> _Json:
        params = _json_object(body)
        if params.get("stream") is True:
            raise _Error(400, "The simulator does not stream chat completions.", param="stream")
        text = self.renderer.text
        completion = {
            "id": new_id("chatcmpl-", 29),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": str(params.get("model", "")),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": 8, "total_tokens": 16},
            "service_tier": "default",
            "system_fingerprint": None,
        }
        return _Json(200, dumps(completion))

    def _fault_reply(self, fault: FaultKind) -> _Json:
        if fault == "429":
            body = error_body(
                "Rate limit reached for requests (simulated). Please try again shortly.",
                "requests",
                "rate_limit_exceeded",
            )
        elif fault == "503":
            body = error_body("The engine is currently overloaded, please try again later. (simulated)", "server_error")
        else:
            body = error_body(
                "The server had an error while processing your request. Sorry about that! (simulated)",
                "server_error",
            )
        headers = (("x-should-retry", "true"), ("retry-after-ms", str(self.retry_after_ms)))
        return _Json(int(fault), body, headers)

    def _internal_error(self) -> _Json:
        text = traceback.format_exc()
        with self._lock:
            if len(self._internal_errors) < 100:
                self._internal_errors.append(text)
        print(f"bgwatch simulator internal error:\n{text}", file=sys.stderr)
        return _Json(
            500,
            error_body("Internal simulator error (a bug in bgwatch.simulator).", "server_error"),
            (("x-should-retry", "false"),),
        )


_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    # Fixed sub-paths first: they share the /responses/ prefix with an id.
    ("POST", re.compile(r".*/responses/input_tokens"), "_r_input_tokens"),
    ("POST", re.compile(r".*/responses/compact"), "_r_compact"),
    ("POST", re.compile(r".*/responses/([^/]+)/cancel"), "_r_cancel"),
    ("GET", re.compile(r".*/responses/([^/]+)/input_items"), "_r_input_items"),
    ("GET", re.compile(r".*/responses/([^/]+)"), "_r_retrieve"),
    ("POST", re.compile(r".*/responses"), "_r_create"),
    ("POST", re.compile(r".*/embeddings"), "_r_embeddings"),
    ("POST", re.compile(r".*/chat/completions"), "_r_chat"),
)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise _Error(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(value, dict):
        raise _Error(400, "The request body must be a JSON object.")
    return value


def _forced_outcome(metadata: object) -> tuple[TerminalStatus, str | None, str | None] | None:
    if not isinstance(metadata, dict) or not isinstance(metadata.get(_OUTCOME_KEY), str):
        return None
    status, _, detail = str(metadata[_OUTCOME_KEY]).partition(":")
    if status == "failed":
        return "failed", detail or "server_error", None
    if status == "incomplete":
        return "incomplete", None, detail or "max_output_tokens"
    if status in ("completed", "cancelled"):
        return cast(TerminalStatus, status), None, None
    raise _Error(400, f"Invalid metadata.{_OUTCOME_KEY}: {metadata[_OUTCOME_KEY]!r}", param="metadata")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # 32 pooled clients connecting at once overflow the default backlog of 5, and a
    # dropped SYN costs a 1 s retransmit.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler: type[_Handler], sim: Simulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sim = sim
        self._conns: dict[threading.Thread, socket.socket] = {}
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Own the per-connection threads so stop() can close their sockets and join them.
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="bgwatch-sim-conn",
            daemon=True,
        )
        with self._conns_lock:
            self._conns[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._conns_lock:
                self._conns.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # clients going away mid-reply are routine here
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._conns_lock:
            sockets = list(self._conns.values())
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join_connections(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._conns_lock:
            threads = list(self._conns)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bgwatch-simulator"
    sys_version = ""
    timeout = 300  # idle keep-alive connections of a long-running CLI must not pile up
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in one write, but SSE events are many small writes.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_response(self, code: int, message: str | None = None) -> None:
        # Only the stdlib's own error path (bad request line, unknown method) uses this.
        super().send_response(code, message)
        self.send_header("x-request-id", f"req_{random.getrandbits(128):032x}")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log replaces stderr access logs

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    # -- request -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self, method: str) -> None:
        sim = self.server.sim
        raw_path, _, query = self.path.partition("?")
        path = raw_path.rstrip("/") or "/"
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            self._write_json(_Json(400, error_body("Malformed request body.", "invalid_request_error")), None)
            sim.request_log.record(method, path, 400)
            return
        fault = sim._next_fault(method, path)
        if fault == "reset":
            sim.request_log.record(method, path, 0, fault)
            self._abort()
            return
        if fault == "slow" and sim._stopping.wait(sim.slow_seconds):
            self.close_connection = True
            return
        if fault in ("500", "429", "503"):
            reply: _Json | _Stream = sim._fault_reply(fault)
        else:
            try:
                reply = sim._route(method, path, query, body, dry=fault == "truncate")
            except _Error as err:
                reply = err.reply
            except Exception:
                reply = sim._internal_error()
        if isinstance(reply, _Stream):
            self._write_stream(reply, fault, path)
            return
        if fault == "cut":
            if reply.status == 200:
                sim.request_log.record(method, path, 0, fault)
                self._abort()
                return
            fault = None  # a request that did nothing has nothing to lose
        sim.request_log.record(method, path, reply.status, fault)
        self._write_json(reply, fault)

    # -- replies -----------------------------------------------------------------------

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        reason = self.responses.get(status, ("",))[0]
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"x-request-id: req_{random.getrandbits(128):032x}",
            *(f"{k}: {v}" for k, v in headers),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _accepts_gzip(self) -> bool:
        return "gzip" in self.headers.get("Accept-Encoding", "").lower()

    def _write_json(self, reply: _Json, fault: FaultKind | None) -> None:
        sim = self.server.sim
        body = reply.body
        headers = [("Content-Type", "application/json"), ("openai-processing-ms", "1"), *reply.headers]
        if fault == "gzip" or (sim.gzip_responses and self._accepts_gzip()):
            body = _gzip(body)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        if fault == "truncate":
            head = self._head(reply.status, headers)  # before close_connection: no "Connection: close"
            self.close_connection = True
            self._send(head + body[: len(body) // 2])
            return
        # Marked before the write and undone if it fails: a client that got the body may
        # ask the ledger before this thread runs again.
        previous = None
        if reply.shows is not None:
            rec, status = reply.shows
            previous = rec.show(status)
        if not self._send(self._head(reply.status, headers) + body) and previous is not None:
            reply.shows[0].unshow(previous)  # type: ignore[index]

    def _write_stream(self, reply: _Stream, fault: FaultKind | None, path: str) -> None:
        sim = self.server.sim
        renderer = sim.renderer
        rec = reply.rec
        compressor = (
            zlib.compressobj(wbits=31) if fault == "gzip" or (sim.gzip_responses and self._accepts_gzip()) else None
        )
        headers = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("Transfer-Encoding", "chunked"),
        ]
        if compressor is not None:
            headers.append(("Content-Encoding", "gzip"))
        sim.request_log.record(self.command, path, 200, fault)
        if not self._send(self._head(200, headers)):
            return
        next_seq = reply.after + 1
        sent = 0
        while True:
            with sim._cond:
                now = time.monotonic()
                cancel_at = rec.cancel_at
                kinds = renderer.event_kinds(rec, now, cancel_at)
                done = cancel_at is not None or now >= rec.t2
                if not done and next_seq >= len(kinds):
                    if sim._stopping.is_set():
                        self.close_connection = True
                        return
                    wake = rec.t1 if now < rec.t1 else rec.t2
                    sim._cond.wait(min(max(wake - now, 0.0), 1.0))
                    continue
            for seq in range(max(next_seq, 0), len(kinds)):
                event_type, data = renderer.event(rec, kinds[seq], seq)
                payload = b"event: " + event_type.encode() + b"\ndata: " + dumps(data) + b"\n\n"
                if compressor is not None:
                    payload = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
                if fault == "truncate":
                    # Promise the whole first chunk, deliver half of it, hang up.
                    self.close_connection = True
                    self._send(b"%x\r\n" % len(payload) + payload[: len(payload) // 2])
                    return
                status = None if reply.dry else Renderer.lifecycle_status(data)
                shown = rec.show(status) if status is not None else None  # before the write, as for JSON
                if not self._send(b"%x\r\n%s\r\n" % (len(payload), payload)):
                    if shown is not None:
                        rec.unshow(shown)
                    return
                sent += 1
                if fault == "cut" and sent >= sim.cut_after_events:
                    self._abort()
                    return
            next_seq = max(next_seq, len(kinds))
            if done:
                tail = compressor.flush() if compressor is not None else b""
                end = (b"%x\r\n%s\r\n" % (len(tail), tail) if tail else b"") + b"0\r\n\r\n"
                self._send(end)
                return

    def _send(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True
            return False
        return True

    def _abort(self) -> None:
        """Close with RST: SO_LINGER 0, then drop every reference to the socket."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            return
        self.connection.close()
        # The buffered reader holds a reference that keeps the fd open; closing it is
        # what actually releases the socket (and sends the RST).
        self.rfile.close()


def _gzip(body: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
    return compressor.compress(body) + compressor.flush()
