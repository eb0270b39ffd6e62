"""Which openai SDK is installed and which HTTP library it speaks (the bottom layer: no bgwatch imports)."""

from __future__ import annotations

import re
from typing import Any, Literal

import openai

Library = Literal["httpx2", "httpx"]


def version_tuple(version: str) -> tuple[int, ...]:
    """``"3.57.0rc1+local"`` -> ``(3, 57, 0)``."""
    parts = re.findall(r"\d+", version.split("+", 1)[0])[:3]
    return tuple(int(p) for p in parts)


def sdk_library() -> Library:
    """The HTTP library the installed openai SDK builds its clients with."""
    return "httpx2" if version_tuple(openai.__version__) >= (3,) else "httpx"


def sdk_http_module() -> Any:
    """The module of :func:`sdk_library` (imported here, on first use)."""
    if sdk_library() == "httpx2":
        import httpx2

        return httpx2
    import httpx

    return httpx


def sdk_splits_crlf_after_block() -> bool:
    """Whether the installed SDK's SSE decoder reads a CR ending one of its event blocks and an
    LF starting the next network chunk as two line endings (openai 2.x; 3.x reads one CRLF).

    Asked of the decoder itself, not of a version number: ``id: 1``, a blank line ended by
    ``\r\r``, then ``\n`` in a chunk of its own dispatch a second (empty) event only there.
    Should the probe ever fail, the 2.x decoder is recognised by its ``_iter_chunks``.
    """
    from openai._streaming import SSEDecoder

    try:
        return len(list(SSEDecoder().iter_bytes(iter([b"id: 1\r\r", b"\n"])))) == 2
    except Exception:
        return hasattr(SSEDecoder, "_iter_chunks")
