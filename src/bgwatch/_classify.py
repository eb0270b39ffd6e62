"""Pure classification of Responses API traffic: no I/O, no state.

Two steps, so the transports can stay cheap on unrelated calls:

* :func:`classify_request` looks at the method and path only and says whether a call *might*
  be a Responses API create, retrieve (poll) or cancel. It allocates almost nothing.
* :func:`observation_from_json` (and :func:`observation_from_mapping` for stream events)
  decides from the parsed body: only an object with ``"object": "response"`` is a response.
  The path never decides alone, because ``/responses/input_tokens``, ``/responses/compact``
  and ``/responses/{id}/input_items`` share the prefix and return other objects.

**The SDK is the oracle, so the body is read exactly as the SDK reads it**: the SDK calls its
HTTP library's ``Response.json()``, which is ``json.loads(response.content)`` (UTF-8 with or
without a byte order mark, UTF-16 and UTF-32 detected, the last of duplicate keys kept, any
Content-Type), over the content that library decoded (its own Content-Encoding rules). The
transports parse once with exactly that call and hand the SDK the very same parse, so
exactness costs no second pass (see :mod:`bgwatch.transports`). No shortcut here decides
differently from the SDK: a prefix parser cannot know about a duplicate key, a later field or
a broken tail it never read.
"""

from __future__ import annotations

import json
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
    rest = tail[1:]  # not empty: tail is neither "" nor "/"
    if "/" not in rest:  # /responses/{id}: the path of every poll, without the split
        return "retrieve" if method == "GET" and rest not in _NOT_A_RESPONSE_SEGMENTS else None
    parts = rest.rstrip("/").split("/")
    if len(parts) == 1:
        if method == "GET" and parts[0] and parts[0] not in _NOT_A_RESPONSE_SEGMENTS:
            return "retrieve"
        return None
    if len(parts) == 2 and parts[1] == "cancel" and method == "POST" and parts[0]:
        return "cancel"
    return None


def parse_request_json(data: bytes) -> Any:
    """Parse with jiter; a document jiter refuses gets a second chance with json.

    For request bodies (the create's ``model`` and ``stream``, for spans); answers are parsed
    with ``json.loads`` itself, as the SDK parses them. jiter rejects a few things json accepts,
    such as a lone surrogate escape (``"\\ud800"``) or a byte order mark. Raises only
    ValueError (json's RecursionError on deep nesting included).
    """
    if _jiter is not None:
        try:
            return _jiter.from_json(data, cache_mode="keys")
        except ValueError:
            pass
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _str(value: Any, limit: int = 256) -> str | None:
    return value[:limit] if isinstance(value, str) else None


class _SdkRejects(Exception):
    """The SDK cannot build a Response from this body (its construction raises)."""


def _as_sdk_builds(name: str, value: Any) -> Any:
    """The value the SDK's ``Response`` holds for a top-level field the JSON gave as ``value``.

    The SDK builds a Response without validating it, but runs pydantic's lax validation on
    each Optional field first: ``"yes"`` or ``1`` becomes ``True`` for ``background``, ``"12"``
    becomes ``12.0`` for ``completed_at``, a usage object that validates whole gets ``"3"`` ->
    ``3``. Such values are rare, so the SDK itself is asked (exact by construction); values of
    the plain type never come here.
    """
    from openai._models import construct_type
    from openai.types.responses import Response

    field = Response.model_fields[name]
    try:
        return construct_type(value=value, type_=field.annotation, metadata=field.metadata)
    except Exception as exc:  # the SDK's construction fails alike: it returns no Response
        raise _SdkRejects(name) from exc


def _seconds(value: Any) -> float | None:
    """A timestamp as the SDK holds it (a float), when it is one; else None."""
    if type(value) is float:
        return value if 0 <= value < 1e11 else None  # a year-5138 timestamp is garbage
    if type(value) is int:
        return float(value) if 0 <= value < 100_000_000_000 else None  # no float() of 400 digits
    return None


def _created_at(value: Any) -> float | None:
    # ``created_at: float`` (not Optional): the SDK turns any int (a bool too) into a float,
    # and fails on one too large for a float; anything else it keeps as is.
    if isinstance(value, int) and type(value) is not float:
        try:
            value = float(value)
        except OverflowError as exc:
            raise _SdkRejects("created_at") from exc
    return _seconds(value)


def _completed_at(value: Any) -> float | None:
    if value is not None and type(value) not in (int, float):
        value = _as_sdk_builds("completed_at", value)
    return _seconds(value)


def _background(value: Any) -> bool | None:
    if value is not None and type(value) is not bool:
        value = _as_sdk_builds("background", value)
    return value if type(value) is bool else None


def _tokens(value: Any) -> int | None:
    if type(value) is not int or not 0 <= value < 10**15:
        return None
    return value


def _usage(usage: Any) -> tuple[int | None, int | None]:
    """Input and output tokens as the SDK's ``Response.usage`` holds them."""
    if usage is None:
        return None, None
    if isinstance(usage, Mapping):
        input_tokens, output_tokens = usage.get("input_tokens"), usage.get("output_tokens")
        if type(input_tokens) is int and type(output_tokens) is int:
            return _tokens(input_tokens), _tokens(output_tokens)
    built = _as_sdk_builds("usage", usage)
    if isinstance(built, Mapping):
        return _tokens(built.get("input_tokens")), _tokens(built.get("output_tokens"))
    return _tokens(getattr(built, "input_tokens", None)), _tokens(getattr(built, "output_tokens", None))


def observation_from_mapping(
    call: CallKind, body: Mapping[str, Any], request_id: str | None = None
) -> Observation | None:
    """Build an :class:`Observation` from a response object (a parsed body or stream event).

    Returns None unless ``body`` is a Responses API response object with a string id, and
    None when the SDK could not build a Response from it either. Every field holds what the
    SDK's ``Response`` holds, or None where that is not of the field's type (never trusted).
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
    if isinstance(error, Mapping):
        code = _str(error.get("code"))
        message = _str(error.get("message"), 4096)
    if isinstance(details, Mapping):
        reason = _str(details.get("reason"))
    model = get("model")
    try:
        created_at = _created_at(get("created_at"))
        completed_at = _completed_at(get("completed_at"))
        background = _background(get("background"))
        input_tokens, output_tokens = _usage(get("usage"))
    except _SdkRejects:
        return None
    return Observation(
        call=call,
        response_id=response_id,
        status=_CANONICAL_STATUS.get(status) if isinstance(status, str) else None,
        error_code=code,
        error_message=message,
        incomplete_reason=reason,
        model=model[:256] if isinstance(model, str) else None,
        created_at=created_at,
        completed_at=completed_at,
        background=background,
        request_id=request_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        service_tier=_str(get("service_tier"), 64),
    )


def observation_from_json(call: CallKind, data: Any, request_id: str | None = None) -> Observation | None:
    """An :class:`Observation` from a parsed body (anything ``json.loads`` returns), else None."""
    if type(data) is not dict:  # json.loads makes only plain dicts; anything else is no response
        return None
    return observation_from_mapping(call, data, request_id)


# Timestamps an int can hold that float() turns into a float without overflow, with room.
_PLAIN_INT_TIMESTAMP: Final = 1 << 64


def repeat_key(data: Any) -> tuple[str, str, str | None] | None:
    """``(id, status, model)`` of a parsed body whose other fields cannot change what a repeat poll records.

    A poll of a response whose status the tracker already holds changes nothing but the poll
    count (see :meth:`bgwatch.Watcher.repeat_recorder`), as long as the rest of the body is what
    :func:`observation_from_json` would accept without asking the SDK: a plain-typed
    ``created_at``, ``completed_at``, ``background`` (not ``false``: then it is not tracked) and
    ``usage``. For such a body the observation holds this very id, status and model; anything
    else returns None and is observed in full.
    """
    if type(data) is not dict:
        return None
    get = data.get
    if get("object") != "response":
        return None
    response_id = get("id")
    status = get("status")
    if type(response_id) is not str or not response_id or len(response_id) > 256 or type(status) is not str:
        return None
    status = _CANONICAL_STATUS.get(status)
    if status is None:
        return None
    background = get("background")
    if background is not None and background is not True:
        return None
    created_at = get("created_at")
    if type(created_at) is int and not -_PLAIN_INT_TIMESTAMP < created_at < _PLAIN_INT_TIMESTAMP:
        return None
    completed_at = get("completed_at")
    if completed_at is not None and type(completed_at) is not float and type(completed_at) is not int:
        return None
    usage = get("usage")
    if usage is not None and (
        type(usage) is not dict
        or type(usage.get("input_tokens")) is not int
        or type(usage.get("output_tokens")) is not int
    ):
        return None
    model = get("model")
    return response_id, status, model[:256] if type(model) is str else None


def decode_content(body: bytes, headers: Any, module: Any = None) -> bytes:
    """``body`` with its Content-Encoding undone exactly as the SDK's HTTP library does it.

    ``headers`` is anything the library's ``Response`` accepts (its ``Headers``, a list of
    pairs, a dict). The library itself decodes, so its rules hold by construction: codings it
    does not know are ignored (httpx2 and httpx: ``UTF-8``, ``none``, ``binary``, ``x-gzip``),
    httpx2 refuses more than 5 stacked codings, a broken stream raises its ``DecodingError``.
    ``module``: ``httpx2`` or ``httpx`` (default: the one the installed SDK uses).
    """
    if module is None:
        from ._sdk import sdk_http_module

        module = sdk_http_module()
    probe = module.Response(200, stream=module.ByteStream(body))
    probe.headers = headers if isinstance(headers, module.Headers) else module.Headers(headers)
    return bytes(probe.read())


def parse_body(body: bytes, content_encoding: str | None) -> Any:
    """What the SDK's ``Response.json()`` returns for a complete, still encoded body.

    The SDK's HTTP library undoes ``content_encoding`` (see :func:`decode_content`), then
    ``json.loads``. Raises where that fails (the SDK then returns no Response).
    """
    if content_encoding:
        body = decode_content(body, [("content-encoding", content_encoding)])
    return json.loads(body)


def classify_body(
    call: CallKind,
    status_code: int,
    body: bytes,
    *,
    content_encoding: str | None = None,
    request_id: str | None = None,
) -> Observation | None:
    """Classify a complete non-streamed body of a call :func:`classify_request` selected.

    Reads the body as the SDK does (see the module's docstring): decoded by the SDK's HTTP
    library when ``content_encoding`` is given, then ``json.loads``, whatever the content
    type. Returns None for non-2xx answers, for bodies the SDK could not decode or parse, and
    for anything that is not a response object. Never raises.
    """
    if not 200 <= status_code < 300:
        return None
    try:
        data = parse_body(body, content_encoding)
    except Exception:  # the SDK's Response.json() fails alike: it returns no Response
        return None
    return observation_from_json(call, data, request_id)
