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
