"""Value types of the simulator: the outcome mix, outcomes, fault settings.

Pure data, no I/O. The lists of error codes and incomplete reasons are read from the
installed ``openai`` SDK at runtime, so the simulator follows the SDK it is tested with.
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "FAULT_KINDS",
    "TERMINAL_STATUSES",
    "FaultKind",
    "Faults",
    "Mix",
    "Outcome",
    "TerminalStatus",
    "sdk_error_codes",
    "sdk_incomplete_reasons",
]

TerminalStatus = Literal["completed", "failed", "incomplete", "cancelled"]
TERMINAL_STATUSES: tuple[TerminalStatus, ...] = ("completed", "failed", "incomplete", "cancelled")

FaultKind = Literal["500", "429", "503", "reset", "truncate", "slow", "gzip", "cut"]
FAULT_KINDS: tuple[FaultKind, ...] = typing.get_args(FaultKind)

# The faults a flaky network or an overloaded API produces without the request taking
# effect; "slow", "gzip" and "cut" must be asked for explicitly.
_DEFAULT_RANDOM_FAULTS: tuple[FaultKind, ...] = ("500", "429", "503", "reset", "truncate")


def _literal_strings(annotation: object) -> tuple[str, ...]:
    """Every string of every ``Literal`` nested anywhere in ``annotation``.

    Walks ``Optional``/``Union``/``Annotated`` so it keeps working when the SDK
    regenerates the field with a different wrapper.
    """
    found: list[str] = []

    def walk(node: object) -> None:
        origin = typing.get_origin(node)
        if origin is None:
            return
        args = typing.get_args(node)
        # typing_extensions.Literal is a distinct object on some Pythons; compare by name.
        if origin is Literal or getattr(origin, "_name", None) == "Literal":
            found.extend(arg for arg in args if isinstance(arg, str) and arg not in found)
            return
        for arg in args:
            walk(arg)

    walk(annotation)
    return tuple(found)


def _field_annotation(model: type, name: str) -> object:
    fields = getattr(model, "model_fields", None)  # pydantic v2
    if isinstance(fields, dict) and name in fields:
        return fields[name].annotation
    return typing.get_type_hints(model)[name]  # pydantic v1 builds of the SDK


@functools.lru_cache(maxsize=1)
def sdk_error_codes() -> tuple[str, ...]:
    """The ``error.code`` literals of the installed SDK's ``ResponseError``."""
    from openai.types.responses.response_error import ResponseError

    return _literal_strings(_field_annotation(ResponseError, "code"))


@functools.lru_cache(maxsize=1)
def sdk_incomplete_reasons() -> tuple[str, ...]:
    """The ``incomplete_details.reason`` literals of the installed SDK's ``Response``."""
    from openai.types.responses.response import IncompleteDetails

    return _literal_strings(_field_annotation(IncompleteDetails, "reason"))


@dataclass(frozen=True)
class Outcome:
    """The final state of one simulated response: what a correct observer must report.

    ``finished_at`` is the wall-clock time (seconds) the terminal state was reached; it is
    ``None`` while the response is still running. It and the fields after it do not take part
    in equality, so two runs with the same seed compare equal.

    The rest is the truth behind bgwatch's queue and token metrics:

    - ``created_at``: when the response was created, to the microsecond (bodies carry whole
      seconds, as the live API's do);
    - ``queue_seconds``: how long it really was ``queued`` (until it started running, or
      until a cancel ended it in the queue); None while it is still queued;
    - ``queue_seen_seconds``: from ``created_at`` to the moment a client was first sent a body
      or event showing it past ``queued`` (what a poller can measure, at its poll's
      resolution); None when no client has been;
    - ``input_tokens``, ``output_tokens``: the ``usage`` its terminal body carries.
    """

    status: TerminalStatus
    code: str | None = None
    reason: str | None = None
    model: str = ""
    finished_at: float | None = field(default=None, compare=False)
    created_at: float | None = field(default=None, compare=False)
    queue_seconds: float | None = field(default=None, compare=False)
    queue_seen_seconds: float | None = field(default=None, compare=False)
    input_tokens: int = field(default=0, compare=False)
    output_tokens: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Mix:
    """Relative weights of the terminal states drawn for each new response.

    ``codes`` restricts the ``error.code`` of failed responses (default: every code the
    installed SDK knows plus ``unknown_codes``, codes the SDK has never seen, as the
    live API may send). ``reasons`` restricts ``incomplete_details.reason`` (default:
    every reason the SDK knows). Codes and reasons are drawn uniformly.
    """

    completed: float = 70.0
    failed: float = 20.0
    incomplete: float = 5.0
    cancelled: float = 5.0
    codes: tuple[str, ...] | None = None
    unknown_codes: tuple[str, ...] = ("model_overloaded_v2",)
    reasons: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        weights = self.weights()
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"Mix weights must be finite and >= 0, got {weights}")
        if sum(weights) <= 0:
            raise ValueError("Mix needs at least one positive weight")
        if self.failed > 0 and not self.failure_codes():
            raise ValueError("Mix has failed > 0 but no error codes to draw from")
        if self.incomplete > 0 and not self.incomplete_reasons():
            raise ValueError("Mix has incomplete > 0 but no reasons to draw from")

    def weights(self) -> tuple[float, float, float, float]:
        """Weights in the order of ``TERMINAL_STATUSES``."""
        return (self.completed, self.failed, self.incomplete, self.cancelled)

    def failure_codes(self) -> tuple[str, ...]:
        """The codes a failed response draws from."""
        if self.codes is not None:
            return self.codes
        known = sdk_error_codes()
        return known + tuple(c for c in self.unknown_codes if c not in known)

    def incomplete_reasons(self) -> tuple[str, ...]:
        """The reasons an incomplete response draws from."""
        return self.reasons if self.reasons is not None else sdk_incomplete_reasons()

    @classmethod
    def parse(cls, spec: str) -> Mix:
        """Build a Mix from a CLI-friendly string.

        ``"completed=60,failed=25,incomplete=10,cancelled=5"``; weights left out are 0
        once any weight is given. Optional ``codes=a|b``, ``unknown=x|y`` and
        ``reasons=a|b`` restrict what failed and incomplete responses carry
        (``unknown=`` with nothing after it drops the unknown codes).
        """
        weights: dict[str, float] = {}
        lists: dict[str, tuple[str, ...]] = {}
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                continue
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not sep:
                raise ValueError(f"Mix item {item!r} is not key=value")
            if key in TERMINAL_STATUSES:
                try:
                    weights[key] = float(value)
                except ValueError:
                    raise ValueError(f"Mix weight {item!r} is not a number") from None
            elif key in ("codes", "unknown", "unknown_codes", "reasons"):
                names = tuple(v.strip() for v in value.replace("+", "|").split("|") if v.strip())
                lists["unknown_codes" if key.startswith("unknown") else key] = names
            else:
                raise ValueError(
                    f"Unknown Mix key {key!r}; expected one of {', '.join(TERMINAL_STATUSES)}, codes, unknown, reasons"
                )
        base = cls()
        return cls(
            completed=weights.get("completed", 0.0) if weights else base.completed,
            failed=weights.get("failed", 0.0) if weights else base.failed,
            incomplete=weights.get("incomplete", 0.0) if weights else base.incomplete,
            cancelled=weights.get("cancelled", 0.0) if weights else base.cancelled,
            codes=lists.get("codes"),
            unknown_codes=lists.get("unknown_codes", base.unknown_codes),
            reasons=lists.get("reasons"),
        )


@dataclass(frozen=True)
class Faults:
    """Random faults: each request matching ``match`` gets one of ``kinds`` with
    probability ``rate``.

    ``match`` is a regex searched in ``"METHOD /path"`` (query string excluded).
    ``seed`` defaults to one derived from the simulator's seed, so a seeded run draws
    the same fault sequence for the same request sequence.
    """

    rate: float
    kinds: tuple[FaultKind, ...] = _DEFAULT_RANDOM_FAULTS
    match: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"Faults.rate must be in [0, 1], got {self.rate}")
        bad = [k for k in self.kinds if k not in FAULT_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"Faults.kinds must be a non-empty subset of {FAULT_KINDS}, got {self.kinds}")
