"""Typed exceptions for background responses that ended without completing.

Every class subclasses :class:`openai.OpenAIError`, so code that already catches the SDK's
errors catches these too. The hierarchy::

    BgwatchError(openai.OpenAIError)
    └── BackgroundResponseError          status, code, reason, message, response_id, request_id,
        │                                retryable, body
        ├── ResponseFailed               status "failed", one subclass or family per error.code
        │   ├── ServerError, RateLimitExceeded, VectorStoreTimeout     (retryable)
        │   ├── InvalidPrompt, DataResidencyMismatch
        │   ├── PolicyViolation ─ BioPolicy, MisalignmentPolicyViolation
        │   ├── ImageError      (every image-related code, present and future)
        │   └── UnrecognizedFailure      (a code this version of bgwatch does not know)
        ├── ResponseIncomplete           status "incomplete", one subclass per reason
        └── ResponseCancelled            status "cancelled"

``retryable`` means "a new create with the same request may succeed", never "poll again":
a terminal response never changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import openai

from ._classify import TERMINAL_STATUSES

__all__ = [
    "BackgroundResponseError",
    "BgwatchError",
    "BioPolicy",
    "ConfigurationError",
    "DataResidencyMismatch",
    "ImageError",
    "InvalidPrompt",
    "MaxMessagesReached",
    "MaxOutputTokensReached",
    "MisalignmentPolicyViolation",
    "PolicyViolation",
    "RateLimitExceeded",
    "ResponseCancelled",
    "ResponseContentFiltered",
    "ResponseFailed",
    "ResponseIncomplete",
    "ResponseSteered",
    "ServerError",
    "UnrecognizedFailure",
    "UnrecognizedIncomplete",
    "VectorStoreTimeout",
    "exception_class_for",
    "exception_for",
    "raise_for_status",
]

RAISABLE_STATUSES: frozenset[str] = frozenset(TERMINAL_STATUSES - {"completed"})


class ConfigurationError(ValueError):
    """bgwatch was configured with values it cannot honour (raised at construction)."""


class BgwatchError(openai.OpenAIError):
    """Base class of every exception bgwatch raises into a caller's code."""


class BackgroundResponseError(BgwatchError):
    """A background response reached a terminal state other than ``completed``."""

    status: ClassVar[str] = ""
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        response_id: str | None = None,
        request_id: str | None = None,
        code: str | None = None,
        reason: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.response_id = response_id
        self.request_id = request_id
        self.code = code
        self.reason = reason
        self.body: dict[str, Any] | None = dict(body) if body is not None else None

    @property
    def retryable(self) -> bool:
        """True only when a *new* create with the same input may succeed."""
        return self.default_retryable

    def __str__(self) -> str:
        kind = self.code or self.reason or self.status
        parts = [f"response_id={self.response_id}"]
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        parts.append(f"retryable={self.retryable}")
        return f"{type(self).__name__}[{kind}]: {self.message} ({', '.join(parts)})"

    def __reduce__(self) -> tuple[Any, ...]:
        state = {
            "response_id": self.response_id,
            "request_id": self.request_id,
            "code": self.code,
            "reason": self.reason,
            "body": self.body,
        }
        return (_rebuild, (type(self), self.message, state))


def _rebuild(cls: type[BackgroundResponseError], message: str, state: dict[str, Any]) -> BackgroundResponseError:
    return cls(message, **state)


class ResponseFailed(BackgroundResponseError):
    """The response ended ``failed``; ``code`` is the API's ``error.code``."""

    status = "failed"
    codes: ClassVar[tuple[str, ...]] = ()


class ServerError(ResponseFailed):
    """``server_error``: the service failed; a new create may succeed."""

    codes = ("server_error",)
    default_retryable = True


class RateLimitExceeded(ResponseFailed):
    """``rate_limit_exceeded`` reported in the body of a 200 poll; retry later with backoff."""

    codes = ("rate_limit_exceeded",)
    default_retryable = True


class VectorStoreTimeout(ResponseFailed):
    """``vector_store_timeout``: file search timed out; a new create may succeed."""

    codes = ("vector_store_timeout",)
    default_retryable = True


class InvalidPrompt(ResponseFailed):
    """``invalid_prompt``: the input was rejected; fix it before retrying."""

    codes = ("invalid_prompt",)


class DataResidencyMismatch(ResponseFailed):
    """``data_residency_mismatch``: the project's residency settings forbid this request."""

    codes = ("data_residency_mismatch",)


class PolicyViolation(ResponseFailed):
    """A usage-policy code (``bio_policy``, ``misalignment_policy_violation``, ...)."""

    codes: ClassVar[tuple[str, ...]] = ()


class BioPolicy(PolicyViolation):
    """``bio_policy``."""

    codes = ("bio_policy",)


class MisalignmentPolicyViolation(PolicyViolation):
    """``misalignment_policy_violation``."""

    codes = ("misalignment_policy_violation",)


class ImageError(ResponseFailed):
    """Any image-related code (``invalid_image_url``, ``image_too_large``, ...), present and future."""

    codes: ClassVar[tuple[str, ...]] = ()


class UnrecognizedFailure(ResponseFailed):
    """A failure code this version of bgwatch does not know (or no code at all)."""


class ResponseIncomplete(BackgroundResponseError):
    """The response ended ``incomplete``; ``reason`` is ``incomplete_details.reason``."""

    status = "incomplete"
    reasons: ClassVar[tuple[str, ...]] = ()


class MaxOutputTokensReached(ResponseIncomplete):
    """``max_output_tokens``: the output was cut at the token limit."""

    reasons = ("max_output_tokens",)


class MaxMessagesReached(ResponseIncomplete):
    """``max_messages``: the message limit was reached."""

    reasons = ("max_messages",)


class ResponseContentFiltered(ResponseIncomplete):
    """``content_filter``: the output was stopped by the content filter."""

    reasons = ("content_filter",)


class ResponseSteered(ResponseIncomplete):
    """``steered``: the response was steered to an early end."""

    reasons = ("steered",)


class UnrecognizedIncomplete(ResponseIncomplete):
    """An ``incomplete`` reason this version of bgwatch does not know (or none)."""


class ResponseCancelled(BackgroundResponseError):
    """The response ended ``cancelled``."""

    status = "cancelled"


def _index(classes: Iterable[type[BackgroundResponseError]], attribute: str) -> dict[str, Any]:
    return {value: cls for cls in classes for value in getattr(cls, attribute)}


_FAILED_BY_CODE: dict[str, type[ResponseFailed]] = _index(
    (
        ServerError,
        RateLimitExceeded,
        VectorStoreTimeout,
        InvalidPrompt,
        DataResidencyMismatch,
        BioPolicy,
        MisalignmentPolicyViolation,
    ),
    "codes",
)
_INCOMPLETE_BY_REASON: dict[str, type[ResponseIncomplete]] = _index(
    (MaxOutputTokensReached, MaxMessagesReached, ResponseContentFiltered, ResponseSteered), "reasons"
)


def exception_class_for(status: str, code_or_reason: str | None = None) -> type[BackgroundResponseError]:
    """The exception class for a terminal status and its ``error.code`` or incomplete reason.

    Raises ValueError for ``completed`` and non-terminal statuses, which have no exception.
    """
    if status == "failed":
        if code_or_reason is None:
            return UnrecognizedFailure
        found = _FAILED_BY_CODE.get(code_or_reason)
        if found is not None:
            return found
        if "image" in code_or_reason:
            return ImageError
        if "policy" in code_or_reason:
            return PolicyViolation
        return UnrecognizedFailure
    if status == "incomplete":
        if code_or_reason is None:
            return UnrecognizedIncomplete
        return _INCOMPLETE_BY_REASON.get(code_or_reason, UnrecognizedIncomplete)
    if status == "cancelled":
        return ResponseCancelled
    raise ValueError(f"no exception for status {status!r}")


def exception_for(
    status: str,
    *,
    code: str | None = None,
    reason: str | None = None,
    message: str | None = None,
    response_id: str | None = None,
    request_id: str | None = None,
    body: Mapping[str, Any] | None = None,
) -> BackgroundResponseError:
    """Build (not raise) the typed exception for a terminal, non-completed response."""
    cls = exception_class_for(status, code if status == "failed" else reason)
    if not message:
        if status == "failed":
            message = f"background response failed with code {code or 'unknown'}"
        elif status == "incomplete":
            message = f"background response ended incomplete ({reason or 'unknown reason'})"
        else:
            message = "background response was cancelled"
    return cls(
        message,
        response_id=response_id,
        request_id=request_id,
        code=code if status == "failed" else None,
        reason=reason if status == "incomplete" else None,
        body=body,
    )


def _as_mapping(response: Any) -> Mapping[str, Any]:
    if isinstance(response, Mapping):
        return response
    dump = getattr(response, "model_dump", None)
    if callable(dump):
        result = dump(mode="json")
        if isinstance(result, Mapping):
            return result
    raise TypeError(f"expected an openai Response or a mapping, got {type(response).__name__}")


def validate_raise_on(raise_on: Iterable[str] | str) -> frozenset[str]:
    """Check a ``raise_on`` value; a bare string is refused because it is almost always a typo."""
    if isinstance(raise_on, str):
        raise ConfigurationError(
            f"raise_on must be a collection of statuses, e.g. ({raise_on!r},), not the string {raise_on!r}"
        )
    chosen = frozenset(raise_on)
    unknown = chosen - RAISABLE_STATUSES
    if unknown:
        raise ConfigurationError(
            f"raise_on got {sorted(unknown)}; allowed: {sorted(RAISABLE_STATUSES)}"
            " (a queued/in_progress/completed response never raises)"
        )
    return chosen


def raise_for_status(response: Any, raise_on: Iterable[str] = RAISABLE_STATUSES) -> Any:
    """Raise the typed exception if ``response`` ended in one of ``raise_on``; else return it.

    Accepts an ``openai.types.responses.Response`` or its JSON as a mapping, so it works
    without the transport (for example on a webhook follow-up or a stored body).
    """
    statuses = validate_raise_on(raise_on)
    body = _as_mapping(response)
    status = body.get("status")
    if status not in statuses:
        return response
    error = body.get("error")
    details = body.get("incomplete_details")
    code = error.get("code") if isinstance(error, Mapping) else None
    message = error.get("message") if isinstance(error, Mapping) else None
    reason = details.get("reason") if isinstance(details, Mapping) else None
    raise exception_for(
        status,
        code=code if isinstance(code, str) else None,
        reason=reason if isinstance(reason, str) else None,
        message=message if isinstance(message, str) else None,
        response_id=body.get("id") if isinstance(body.get("id"), str) else None,
        request_id=getattr(response, "_request_id", None),
        body=body,
    )
