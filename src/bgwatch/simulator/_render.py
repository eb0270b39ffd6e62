"""Simulated responses and their JSON: the Response body and the SSE event log.

A response's event log is never stored: it is a pure function of the record and the
time, so memory per response stays at one small record however often it is streamed.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Literal

from ._model import Outcome, TerminalStatus

__all__ = [
    "CancelEvent",
    "Record",
    "Renderer",
    "dumps",
    "error_body",
    "new_id",
]

Status = Literal["queued", "in_progress", "completed", "failed", "incomplete", "cancelled"]
CancelEvent = Literal["response.incomplete", "response.failed"] | None

_TERMINAL: frozenset[str] = frozenset(("completed", "failed", "incomplete", "cancelled"))
_DELTAS = 3  # enough to exercise delta accumulation, few enough to keep streams small
_INPUT_KEEP = 256  # chars of the input kept for input_items; bounds memory per response

_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(obj: object) -> bytes:
    """Compact JSON as UTF-8 bytes."""
    return _encoder.encode(obj).encode()


def new_id(prefix: str, hex_digits: int = 48) -> str:
    """A random id (``resp_`` + 48 hex like the live API).

    Deliberately not drawn from the seeded generator: two simulators with the same seed
    in one process must not hand out the same ids, or a per-process dedupe (bgwatch's
    tracker) would treat the second run's responses as already seen.
    """
    return f"{prefix}{random.getrandbits(hex_digits * 4):0{hex_digits}x}"


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """An OpenAI-shaped error document."""
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _failure_message(code: str) -> str:
    if code == "server_error":
        return "The model failed to generate a response due to a server error. (simulated)"
    if code == "rate_limit_exceeded":
        return "Rate limit reached while generating the response. (simulated)"
    return f"The response failed with code {code}. (simulated)"


class Record:
    """One simulated response. Times ``t0 <= t1 <= t2`` are ``time.monotonic()`` values:
    queued until ``t1``, in_progress until ``t2``, then ``final``. ``cancel_at`` is set
    (under the simulator's lock) when the cancel endpoint stops it early.
    """

    __slots__ = (
        "background",
        "cancel_at",
        "cancel_wall",
        "code",
        "created_at",
        "final",
        "full_output_tokens",
        "id",
        "input_text",
        "instructions",
        "max_output_tokens",
        "metadata",
        "model",
        "previous_response_id",
        "reason",
        "seen",
        "seen_started_wall",
        "store",
        "t0",
        "t1",
        "t2",
        "temperature",
        "top_p",
        "user",
    )

    def __init__(
        self,
        *,
        id: str,
        model: str,
        background: bool,
        final: TerminalStatus,
        code: str | None,
        reason: str | None,
        t0: float,
        t1: float,
        t2: float,
        created_at: float,
        params: dict[str, Any],
        full_output_tokens: int = 1,
    ) -> None:
        self.id = id
        self.model = model
        self.background = background
        self.final: TerminalStatus = final
        self.code = code
        self.reason = reason
        self.t0, self.t1, self.t2 = t0, t1, t2
        self.created_at = created_at
        self.cancel_at: float | None = None
        self.cancel_wall: float | None = None
        # Last status a client received in full (poll body or SSE event); faulted
        # deliveries never update it.
        self.seen: str | None = None
        # Wall-clock time a client was first sent this response past "queued" (same rules).
        self.seen_started_wall: float | None = None
        self.full_output_tokens = full_output_tokens
        self.instructions = params.get("instructions") if isinstance(params.get("instructions"), str) else None
        self.max_output_tokens = _int_or_none(params.get("max_output_tokens"))
        metadata = params.get("metadata")
        self.metadata: dict[str, str] = (
            {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
        )
        prev = params.get("previous_response_id")
        self.previous_response_id = prev if isinstance(prev, str) else None
        self.store = params.get("store") is not False
        self.temperature = _float_or(params.get("temperature"), 1.0)
        self.top_p = _float_or(params.get("top_p"), 1.0)
        user = params.get("user")
        self.user = user if isinstance(user, str) else None
        self.input_text = _input_text(params.get("input"))

    def status_at(self, now: float) -> Status:
        """Status at monotonic time ``now``."""
        if self.cancel_at is not None:
            return "cancelled"
        if now < self.t1:
            return "queued"
        if now < self.t2:
            return "in_progress"
        return self.final

    def show(self, status: str) -> tuple[str | None, float | None]:
        """Mark ``status`` as delivered to a client; returns what :meth:`unshow` restores."""
        previous = (self.seen, self.seen_started_wall)
        self.seen = status
        if status != "queued" and self.seen_started_wall is None:
            self.seen_started_wall = time.time()
        return previous

    def unshow(self, previous: tuple[str | None, float | None]) -> None:
        """Undo a :meth:`show` whose delivery failed."""
        self.seen, self.seen_started_wall = previous

    def cancelled_in_queue(self) -> bool:
        """Whether a cancel ended the response before it started running."""
        return self.cancel_at is not None and self.cancel_at < self.t1

    def queue_seconds(self, now: float) -> float | None:
        """How long the response was queued; None while it still is (monotonic ``now``)."""
        if self.cancelled_in_queue():
            return self.cancel_at - self.t0  # type: ignore[operator]  # set when cancelled
        return self.t1 - self.t0 if now >= self.t1 else None

    def usage(self, status: str) -> tuple[int, int]:
        """``(input_tokens, output_tokens)`` spent by a response that ended ``status``.

        Completed: the whole output; incomplete: half; failed, or cancelled while running: a
        quarter (work thrown away); cancelled in the queue: nothing at all.
        """
        if status == "cancelled" and self.cancelled_in_queue():
            return 0, 0
        inp = max(1, len(self.input_text) // 4)
        full = self.full_output_tokens
        out = full if status == "completed" else max(1, full // 2) if status == "incomplete" else full // 4
        return inp, out

    def finished_wall(self) -> float:
        """Wall-clock time the terminal state is (or was) reached."""
        if self.cancel_wall is not None:
            return self.cancel_wall
        return self.created_at + (self.t2 - self.t0)

    def outcome(self, now: float | None = None) -> Outcome:
        """The final outcome; ``finished_at`` is set once it has been reached at ``now``."""
        cancelled = self.cancel_at is not None
        done = now is None or cancelled or now >= self.t2
        status: TerminalStatus = "cancelled" if cancelled else self.final
        input_tokens, output_tokens = self.usage(status)
        started = self.seen_started_wall
        return Outcome(
            status=status,
            code=None if cancelled else self.code,
            reason=None if cancelled else self.reason,
            model=self.model,
            finished_at=self.finished_wall() if done else None,
            created_at=self.created_at,
            queue_seconds=self.queue_seconds(time.monotonic() if now is None else now),
            queue_seen_seconds=None if started is None else max(0.0, started - self.created_at),
            input_tokens=input_tokens if done else 0,
            output_tokens=output_tokens if done else 0,
        )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or(value: object, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def _input_text(value: object) -> str:
    if isinstance(value, str):
        return value[:_INPUT_KEEP]
    # A list of input items: keep the first text we can find; the simulator never
    # needs the full conversation.
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                content = item.get("content")
                if isinstance(content, str):
                    return content[:_INPUT_KEEP]
                if isinstance(content, list):
                    for part in content:
                        if isinstance(part, dict) and isinstance(part.get("text"), str):
                            return str(part["text"])[:_INPUT_KEEP]
    return ""


class Renderer:
    """Turns records into Response bodies and SSE events, shaped like the live API."""

    def __init__(
        self,
        *,
        output_bytes: int,
        cancel_event: CancelEvent,
        stream_error_events: bool,
    ) -> None:
        self.cancel_event = cancel_event
        self.stream_error_events = stream_error_events
        # One text shared by every response: output size is configurable without any
        # per-response memory.
        base = "Hello from the bgwatch simulator. "
        size = max(1, output_bytes)
        self.text = (base * (size // len(base) + 1))[:size]
        self.partial_text = self.text[: max(1, size // 2)]
        step = max(1, -(-size // _DELTAS))
        self.deltas = [self.text[i : i + step] for i in range(0, size, step)]
        half = len(self.partial_text)
        pstep = max(1, -(-half // _DELTAS))
        self.partial_deltas = [self.partial_text[i : i + pstep] for i in range(0, half, pstep)]
        self.output_tokens = max(1, size // 4)

    # -- Response body ------------------------------------------------------------

    def response(self, rec: Record, status: Status) -> dict[str, Any]:
        """The Response object for ``rec`` in ``status``, keys in the live API's order
        (the fields a classifier reads come before the potentially large ``output``).
        """
        terminal = status in _TERMINAL
        with_output = status in ("completed", "incomplete")
        return {
            "id": rec.id,
            "object": "response",
            # Whole seconds, as the live API sends them (some clients reject fractions).
            "created_at": int(rec.created_at),
            "status": status,
            "background": rec.background,
            "completed_at": int(rec.finished_wall()) if terminal else None,
            "error": (
                {"code": rec.code, "message": _failure_message(rec.code or "server_error")}
                if status == "failed"
                else None
            ),
            "incomplete_details": {"reason": rec.reason} if status == "incomplete" else None,
            "instructions": rec.instructions,
            "max_output_tokens": rec.max_output_tokens,
            "model": rec.model,
            "output": [self._message(rec, status)] if with_output else [],
            "parallel_tool_calls": True,
            "previous_response_id": rec.previous_response_id,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": rec.store,
            "temperature": rec.temperature,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": rec.top_p,
            "truncation": "disabled",
            "usage": self._usage(rec, status) if terminal else None,
            "user": rec.user,
            "metadata": rec.metadata,
        }

    def _text_for(self, status: str) -> str:
        return self.text if status == "completed" else self.partial_text

    def _part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def _message(self, rec: Record, status: str, *, done: bool = True) -> dict[str, Any]:
        return {
            "id": "msg_" + rec.id[5:],
            "type": "message",
            "status": ("completed" if status == "completed" else "incomplete") if done else "in_progress",
            "content": [self._part(self._text_for(status))] if done else [],
            "role": "assistant",
        }

    def _usage(self, rec: Record, status: str) -> dict[str, Any]:
        inp, out = rec.usage(status)
        return {
            "input_tokens": inp,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": inp + out,
        }

    # -- SSE event log --------------------------------------------------------------

    def event_kinds(self, rec: Record, now: float, cancel_at: float | None) -> list[str]:
        """The event log of ``rec`` up to ``now``; sequence number == list index.

        Extends monotonically as time passes or a cancel lands (the caller reads
        ``now`` and ``cancel_at`` together under the simulator's lock), so a replay
        with ``starting_after`` sees the same numbering as the live stream did.
        """
        kinds = ["created"]
        if rec.background:
            kinds.append("queued")
        horizon = now if cancel_at is None else min(now, cancel_at)
        if rec.t1 <= horizon:
            kinds.append("in_progress")
        if cancel_at is not None:
            if self.cancel_event is not None:
                kinds.append("cancel")
        elif now >= rec.t2:
            final = rec.final
            if final in ("completed", "incomplete"):
                n = len(self.deltas if final == "completed" else self.partial_deltas)
                kinds += ["item_added", "part_added"]
                kinds += [f"delta{i}" for i in range(n)]
                kinds += ["text_done", "part_done", "item_done"]
            if final == "failed" and self.stream_error_events:
                kinds.append("error")
            if final == "cancelled":
                if self.cancel_event is not None:
                    kinds.append("cancel")
            else:
                kinds.append(final)
        return kinds

    def event(self, rec: Record, kind: str, seq: int) -> tuple[str, dict[str, Any]]:
        """``(event type, data)`` for one entry of :meth:`event_kinds`."""
        final = rec.final
        msg_id = "msg_" + rec.id[5:]
        loc = {"item_id": msg_id, "output_index": 0, "content_index": 0}
        data: dict[str, Any]
        if kind == "created":
            status: Status = "queued" if rec.background else "in_progress"
            data = {
                "type": "response.created",
                "sequence_number": seq,
                "response": self.response(rec, status),
            }
        elif kind in ("queued", "in_progress"):
            data = {
                "type": f"response.{kind}",
                "sequence_number": seq,
                "response": self.response(rec, "queued" if kind == "queued" else "in_progress"),
            }
        elif kind in ("completed", "failed", "incomplete"):
            data = {"type": f"response.{kind}", "sequence_number": seq, "response": self.response(rec, final)}
        elif kind == "cancel":
            data = {
                "type": self.cancel_event,
                "sequence_number": seq,
                "response": self.response(rec, "cancelled"),
            }
        elif kind == "error":
            code = rec.code or "server_error"
            data = {
                "type": "error",
                "sequence_number": seq,
                "code": code,
                "message": _failure_message(code),
                "param": None,
            }
        elif kind == "item_added":
            data = {
                "type": "response.output_item.added",
                "sequence_number": seq,
                "output_index": 0,
                "item": self._message(rec, final, done=False),
            }
        elif kind == "part_added":
            data = {
                "type": "response.content_part.added",
                "sequence_number": seq,
                **loc,
                "part": self._part(""),
            }
        elif kind.startswith("delta"):
            chunks = self.deltas if final == "completed" else self.partial_deltas
            data = {
                "type": "response.output_text.delta",
                "sequence_number": seq,
                **loc,
                "delta": chunks[int(kind[5:])],
                "logprobs": [],
            }
        elif kind == "text_done":
            data = {
                "type": "response.output_text.done",
                "sequence_number": seq,
                **loc,
                "text": self._text_for(final),
                "logprobs": [],
            }
        elif kind == "part_done":
            data = {
                "type": "response.content_part.done",
                "sequence_number": seq,
                **loc,
                "part": self._part(self._text_for(final)),
            }
        elif kind == "item_done":
            data = {
                "type": "response.output_item.done",
                "sequence_number": seq,
                "output_index": 0,
                "item": self._message(rec, final),
            }
        else:  # pragma: no cover - event_kinds only produces the kinds above
            raise ValueError(kind)
        return str(data["type"]), data

    @staticmethod
    def lifecycle_status(data: dict[str, Any]) -> str | None:
        """The response status an event shows, for events that carry the response."""
        response = data.get("response")
        return str(response["status"]) if isinstance(response, dict) else None
