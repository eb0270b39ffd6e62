"""Pure classification of Responses API traffic: no I/O, no state, no HTTP library.

Two steps, so the transports can stay cheap on unrelated calls:

* :func:`classify_request` looks at the method and path only and says whether a call *might*
  be a Responses API create, retrieve (poll) or cancel. It allocates almost nothing.
* :func:`classify_body` (and :func:`observation_from_mapping` for stream events) decides from
  the body: only an object with ``"object": "response"`` is a response. The path never decides
  alone, because ``/responses/input_tokens``, ``/responses/compact`` and
  ``/responses/{id}/input_items`` share the prefix and return other objects.

The fields we need (id, status, error, incomplete_details, model, timestamps) come before
``output`` in real bodies, so we first parse only the bytes before the first ``"output"`` key
(closed into a complete object), then, when that does not hold them all, a prefix in partial
mode, a longer prefix, and the whole body only as a last resort. The cost per body stays flat
whatever the size of the output.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

_jiter: Any
try:  # jiter ships with every openai release we support; json is the fallback
    import jiter as _jiter
except ImportError:  # pragma: no cover - exercised only without jiter
    _jiter = None

CallKind = Literal["create", "retrieve", "cancel", "stream", "webhook"]
"""``webhook``: a verified webhook delivery (:mod:`bgwatch.webhooks`), never from HTTP traffic."""

STATUSES: Final = ("queued", "in_progress", "completed", "failed", "cancelled", "incomplete")
TERMINAL_STATUSES: Final = frozenset(("completed", "failed", "cancelled", "incomplete"))
ACTIVE_STATUSES: Final = frozenset(("queued", "in_progress"))
# The one string object of each status: an observation never holds (nor the tracker keeps,
# once per in-flight response) a copy the parser made.
_CANONICAL_STATUS: Final[dict[str, str]] = {status: status for status in STATUSES}

# The keys we read. Once all are present (or `output` is reached) the rest of the body is irrelevant.
_WANTED: Final = frozenset(
    (
        "id",
        "object",
        "status",
        "created_at",
        "completed_at",
        "background",
        "error",
        "incomplete_details",
        "model",
    )
)
# Prefix sizes tried in turn before parsing the whole body: long `instructions` push `model` back.
_PREFIX_STEPS: Final = (8 * 1024, 128 * 1024)
_NOT_A_RESPONSE_SEGMENTS: Final = frozenset(("input_tokens", "compact"))


@dataclass(frozen=True, slots=True)
class Observation:
    """What one HTTP exchange (or one stream event) told us about one response.

    Carries no prompt, no output and no header other than the request id.
    ``error_message`` is kept for typed exceptions only; sinks never use it as a label.
    """

    call: CallKind
    response_id: str
    status: str | None
    error_code: str | None = None
    error_message: str | None = None
    incomplete_reason: str | None = None
    model: str | None = None
    created_at: float | None = None
    completed_at: float | None = None
    background: bool | None = None
    request_id: str | None = None
    # Read from terminal bodies only (``usage`` comes after ``output``): what a finished response cost.
    input_tokens: int | None = None
    output_tokens: int | None = None
    service_tier: str | None = None

    @property
    def terminal(self) -> bool:
        """Whether the status is one a response never leaves."""
        return self.status in TERMINAL_STATUSES


def classify_request(method: str, path: str) -> CallKind | None:
    """Say from method and URL path alone whether a call may be a Responses API call.

    Works for any base URL with a path prefix (``/v1``, Azure's ``/openai/v1`` and
    ``/openai``, proxies) because only the tail after the last ``/responses`` counts.
    """
    index = path.rfind("/responses")
    if index < 0:
        return None
    tail = path[index + 10 :]
    if tail in ("", "/"):
        return "create" if method == "POST" else None
    if tail[0] != "/":
        return None
    parts = tail[1:].rstrip("/").split("/")
    if len(parts) == 1:
        if method == "GET" and parts[0] and parts[0] not in _NOT_A_RESPONSE_SEGMENTS:
            return "retrieve"
        return None
    if len(parts) == 2 and parts[1] == "cancel" and method == "POST" and parts[0]:
        return "cancel"
    return None


def is_json_content_type(content_type: str | None) -> bool:
    """Whether a Content-Type header names JSON (``application/json; charset=utf-8`` etc.)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def is_event_stream(content_type: str | None) -> bool:
    """Whether a Content-Type header names a Server-Sent Events stream."""
    return bool(content_type) and content_type.split(";", 1)[0].strip().lower() == "text/event-stream"  # type: ignore[union-attr]


class UnsupportedEncoding(Exception):
    """The body uses a Content-Encoding we cannot decode in this environment."""


class _DecodedPrefix:
    """Decodes a possibly compressed body lazily, only as far as a caller asks."""

    __slots__ = ("_decoded", "_decompressor", "_done", "_raw")

    def __init__(self, raw: bytes, content_encoding: str | None) -> None:
        self._raw = raw
        self._decompressor: Any = None
        self._done = True
        if not content_encoding:  # the common case, kept cheap
            self._decoded = raw
            return
        encodings = [e.strip().lower() for e in content_encoding.split(",") if e.strip()]
        encodings = [e for e in encodings if e != "identity"]
        if not encodings:
            self._decoded = raw
            return
        if len(encodings) == 1 and encodings[0] in ("gzip", "x-gzip", "deflate"):
            # wbits 47 auto-detects gzip or zlib; raw deflate is handled on the first error.
            self._decompressor = zlib.decompressobj(47)
            self._decoded = b""
            self._done = False
            return
        self._decoded = _decode_fully(raw, encodings)

    def get(self, size: int | None) -> tuple[bytes, bool]:
        """First ``size`` decoded bytes (all when None) and whether that is the whole body."""
        if not self._done and (size is None or len(self._decoded) < size):
            self._advance(size)
        if size is None or len(self._decoded) <= size:
            return self._decoded, self._done
        return self._decoded[:size], False

    def before(self, marker: bytes, limit: int) -> bytes | None:
        """The decoded bytes before the first ``marker`` in the first ``limit``, or None."""
        if not self._done and len(self._decoded) < limit:
            self._advance(limit)
        cut = self._decoded.find(marker, 0, limit)
        return None if cut < 0 else self._decoded[:cut]

    def _advance(self, size: int | None) -> None:
        want = 0 if size is None else size - len(self._decoded)
        try:
            chunk = self._decompressor.decompress(self._raw, want)
        except zlib.error:
            if self._decoded:
                raise
            self._decompressor = zlib.decompressobj(-15)
            chunk = self._decompressor.decompress(self._raw, want)
        self._raw = self._decompressor.unconsumed_tail
        self._decoded += chunk
        if not self._raw:
            self._decoded += self._decompressor.flush()
            self._done = True


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """The whole body with its Content-Encoding undone (used only when raising)."""
    return _DecodedPrefix(body, content_encoding).get(None)[0]


def _decode_fully(raw: bytes, encodings: list[str]) -> bytes:
    data = raw
    for encoding in reversed(encodings):
        if encoding in ("gzip", "x-gzip", "deflate"):
            data = zlib.decompress(data, 47) if encoding != "deflate" else _inflate(data)
        elif encoding == "br":
            try:
                import brotli  # type: ignore[import-not-found,import-untyped,unused-ignore]
            except ImportError as exc:  # the client could not decode it either
                raise UnsupportedEncoding(encoding) from exc
            data = brotli.decompress(data)
        elif encoding == "zstd":
            data = _zstd_decompress(data)
        else:
            raise UnsupportedEncoding(encoding)
    return data


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:
        return zlib.decompress(data, -15)


def _zstd_decompress(data: bytes) -> bytes:
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]  # Python 3.14+
    except ImportError:
        try:
            import zstandard  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise UnsupportedEncoding("zstd") from exc
        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    return bytes(zstd.decompress(data))


def _parse_json(data: bytes, *, partial: bool) -> Any:
    """Parse with jiter; a complete document jiter refuses gets a second chance with json.

    jiter rejects a few things json (and so the SDK) accepts, such as a lone surrogate escape
    (``"\\ud800"``) or a byte order mark; a body the SDK can read must not go uncounted.
    Raises only ValueError (json's RecursionError on deep nesting included).
    """
    if _jiter is not None:
        try:
            return _jiter.from_json(data, partial_mode=partial, cache_mode="keys")
        except ValueError:
            if partial:
                raise
    elif partial:  # pragma: no cover - without jiter we cannot parse a prefix
        raise ValueError("partial parsing needs jiter")
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _complete_keys(mapping: dict[str, Any], complete: bool) -> dict[str, Any]:
    """Drop the last key of a partially parsed object: its value may have been cut short."""
    if complete or not mapping:
        return mapping
    trimmed = dict(mapping)
    trimmed.popitem()
    return trimmed


def _fields_before_output(data: bytes | None) -> dict[str, Any] | None:
    """The top-level keys before ``"output"`` when they hold every field we read, else None.

    In the live API's key order everything bgwatch reads comes before ``output``, usually
    within the first few hundred bytes, while ``output`` holds the bulk of the body. Closing
    the object right there (``"output":null}``) and parsing that much is far cheaper than
    parsing a prefix of the output. The result is exact, not partial: when the first
    ``"output"`` is not a top-level key (inside a string or a nested value) the closed text
    is not valid JSON, or lacks the fields, and the caller falls back to prefix parsing.
    """
    if data is None:
        return None
    try:
        parsed = _parse_json(data + b'"output":null}', partial=False)
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not _WANTED.issubset(parsed):
        return None
    del parsed["output"]
    return parsed


def parse_response_prefix(body: bytes, content_encoding: str | None = None) -> dict[str, Any] | None:
    """Read the fields bgwatch needs from a JSON body, parsing as little of it as possible.

    Returns the top-level keys found (values that were cut short by the prefix are dropped),
    or None when the body is not a JSON object. Raises :class:`UnsupportedEncoding` for a
    Content-Encoding we cannot decode.
    """
    decoded = _DecodedPrefix(body, content_encoding)
    head = _fields_before_output(decoded.before(b'"output"', _PREFIX_STEPS[0]))
    if head is not None and not _is_terminal(head.get("status")):
        return head
    # A terminal body is read up to its ``usage``, after ``output``; what was found without it
    # still stands when the rest cannot be parsed (nested too deeply, say).
    without_usage = head
    for step in (*_PREFIX_STEPS, None):
        data, complete = decoded.get(step)
        if data.lstrip()[:1] != b"{":
            return without_usage  # a BOM, say: only the closed head parsed (through json)
        try:
            parsed = _parse_json(data, partial=not complete)
        except ValueError:
            if complete:
                return without_usage
            continue
        if not isinstance(parsed, dict):
            return None
        found = _complete_keys(parsed, complete)
        if complete:
            return found
        if "output" in found or _WANTED.issubset(found):
            if not _is_terminal(found.get("status")) or "usage" in found:
                return found
            without_usage = found
        elif found.get("object", "response") != "response":
            return found  # decided: not a response, no need to read further
    return None  # pragma: no cover - the loop always ends on a complete parse


def _is_terminal(status: Any) -> bool:
    return isinstance(status, str) and status in TERMINAL_STATUSES


def _str(value: Any, limit: int = 256) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int) and not 0 <= value < 100_000_000_000:
        return None  # checked before float(): a 400-digit integer (valid JSON) overflows it
    result = float(value)
    return result if 0 <= result < 1e11 else None  # a year-5138 timestamp is garbage


def _tokens(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**15:
        return None
    return value


def observation_from_mapping(
    call: CallKind, body: Mapping[str, Any], request_id: str | None = None
) -> Observation | None:
    """Build an :class:`Observation` from a (possibly partial) response object.

    Returns None unless ``body`` is a Responses API response object with a string id.
    Fields of the wrong type are treated as absent, never trusted.
    """
    get = body.get
    if get("object") != "response":
        return None
    response_id = get("id")
    if not isinstance(response_id, str) or not response_id or len(response_id) > 256:
        return None
    status = get("status")
    error = get("error")
    details = get("incomplete_details")
    code = message = reason = None
    if error is not None and isinstance(error, Mapping):
        code = _str(error.get("code"))
        message = _str(error.get("message"), 4096)
    if details is not None and isinstance(details, Mapping):
        reason = _str(details.get("reason"))
    background = get("background")
    model = get("model")
    usage = get("usage")
    input_tokens = output_tokens = None
    if isinstance(usage, Mapping):
        input_tokens = _tokens(usage.get("input_tokens"))
        output_tokens = _tokens(usage.get("output_tokens"))
    return Observation(
        call=call,
        response_id=response_id,
        status=_CANONICAL_STATUS.get(status) if isinstance(status, str) else None,
        error_code=code,
        error_message=message,
        incomplete_reason=reason,
        model=model[:256] if isinstance(model, str) else None,
        created_at=_seconds(get("created_at")),
        completed_at=_seconds(get("completed_at")),
        background=background if isinstance(background, bool) else None,
        request_id=request_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        service_tier=_str(get("service_tier"), 64),
    )


def classify_body(
    call: CallKind,
    status_code: int,
    body: bytes,
    *,
    content_encoding: str | None = None,
    request_id: str | None = None,
) -> Observation | None:
    """Classify a complete non-streamed body of a call :func:`classify_request` selected.

    Returns None for non-2xx answers and for anything that is not a response object.
    Raises :class:`UnsupportedEncoding` when the body cannot be decoded here.
    """
    if not 200 <= status_code < 300 or not body:
        return None
    fields = parse_response_prefix(body, content_encoding)
    if fields is None:
        return None
    return observation_from_mapping(call, fields, request_id)
