"""What bgwatch may say about an exception in a log record: never text that came from a server.

An exception's message can carry the server's free text (``Error code: 401 - Incorrect API
key provided: sk-...``, an ``error.message``, a body excerpt), and so can a traceback (its
last line is the message). Log records therefore get :func:`describe`: the exception's type,
the HTTP status, a request id that looks like one, and the types of its causes; the full
exception only when the user opted in with ``capture_error_messages=True``.
"""

from __future__ import annotations

import re
import traceback
from typing import Final

__all__ = ["describe", "loggable_id"]

_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_MAX_CHAIN: Final = 5


def describe(exc: BaseException | None, *, capture: bool = False, frames: bool = False) -> str:
    """``"APIStatusError(status=401, request_id=req_123) from ConnectError"``, no messages.

    ``frames`` appends the traceback's frames (file, line, function and our source line;
    never the exception's message). ``capture`` appends the full formatted exception instead:
    only for ``capture_error_messages=True``.
    """
    if exc is None:
        return "no exception"
    if capture:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    parts = [_one(exc)]
    cause = exc.__cause__ or exc.__context__
    seen = 1
    while cause is not None and seen < _MAX_CHAIN:
        parts.append(_one(cause))
        cause = cause.__cause__ or cause.__context__
        seen += 1
    text = " from ".join(parts)
    if frames and exc.__traceback__ is not None:
        text += "\n" + "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    return text


def _one(exc: BaseException) -> str:
    details: list[str] = []
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        details.append(f"status={status}")
    request_id = getattr(exc, "request_id", None)
    if isinstance(request_id, str) and _ID.fullmatch(request_id):
        details.append(f"request_id={request_id}")
    kind = type(exc).__qualname__
    return f"{kind}({', '.join(details)})" if details else kind


def loggable_id(value: object) -> str:
    """An id (``resp_...``, ``req_...``) as is; anything that does not look like one is withheld."""
    return value if isinstance(value, str) and _ID.fullmatch(value) else "<not an id>"
