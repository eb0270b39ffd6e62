"""A small YAML writer for the rule files bgwatch exports (no PyYAML at run time).

It writes block mappings and sequences of the plain data the rule builders produce (dicts,
lists, strings, ints, floats, bools). Strings are double-quoted with JSON escapes, which YAML
reads the same way; multi-line strings become ``|`` literal blocks so that PromQL stays
readable. Mapping keys are written bare (they are identifiers in everything we emit).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

__all__ = ["dump"]

_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_INDENT = "  "


def dump(data: object, header: str = "") -> str:
    """``data`` as a YAML document, with ``header`` (already ``#``-prefixed lines) on top."""
    lines = [header.rstrip("\n")] if header else []
    lines.extend(_node(data, 0))
    return "\n".join(lines) + "\n"


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if '"' in value and value.isprintable():
            return "'" + value.replace("'", "''") + "'"  # PromQL selectors read better single-quoted
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _key(key: object) -> str:
    text = str(key)
    return text if _BARE_KEY.fullmatch(text) else json.dumps(text)


def _is_block_string(value: object) -> bool:
    return isinstance(value, str) and "\n" in value.rstrip("\n") and not value.startswith((" ", "\n"))


def _block(value: str, depth: int) -> list[str]:
    chomp = "" if value.endswith("\n") else "-"
    body = value[:-1] if value.endswith("\n") else value
    pad = _INDENT * depth
    return [f"|{chomp}", *[f"{pad}{line}" if line else "" for line in body.split("\n")]]


def _node(value: object, depth: int) -> list[str]:
    pad = _INDENT * depth
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        out: list[str] = []
        for k, v in value.items():
            out.extend(_entry(f"{pad}{_key(k)}:", v, depth))
        return out
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            return [pad + "[]"]
        out = []
        for item in value:
            if isinstance(item, Mapping) and item:
                inner = _node(item, depth + 1)
                out.append(f"{pad}- {inner[0].lstrip()}")
                out.extend(inner[1:])
            else:
                out.extend(_entry(f"{pad}-", item, depth))
        return out
    return [pad + _scalar(value)]


def _entry(prefix: str, value: object, depth: int) -> list[str]:
    """``prefix`` (``key:`` or ``-``) followed by ``value`` inline or as a nested block."""
    if _is_block_string(value):
        assert isinstance(value, str)
        first, *rest = _block(value, depth + 1)
        return [f"{prefix} {first}", *rest]
    if isinstance(value, Mapping | list | tuple) and value:
        return [prefix, *_node(value, depth + 1)]
    if isinstance(value, Mapping):
        return [f"{prefix} {{}}"]
    if isinstance(value, list | tuple):
        return [f"{prefix} []"]
    return [f"{prefix} {_scalar(value)}"]
