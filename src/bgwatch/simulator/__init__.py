"""An embedded fake OpenAI Responses API for tests, demos and benchmarks.

A real HTTP/1.1 server on loopback (stdlib only) that speaks the part of the Responses
API a background client uses: create (JSON or SSE), retrieve (JSON or SSE replay with
``starting_after``), cancel, plus a few neighbouring endpoints. Outcomes are drawn
from a seeded :class:`Mix`, recorded in a ground-truth ledger, and faults (HTTP errors,
resets, truncated bodies, gzip, delays) can be injected or drawn at a rate::

    from openai import OpenAI
    from bgwatch.simulator import Simulator, Mix

    with Simulator(seed=1, mix=Mix.parse("completed=60,failed=40")) as sim:
        client = OpenAI(base_url=sim.base_url, api_key="sk-test")
        r = client.responses.create(model="gpt-4o-mini", input="hi", background=True)
        ...
        assert sim.ledger()[r.id].status in ("completed", "failed")

``python -m bgwatch.simulator`` serves one until Ctrl-C.
"""

from ._model import (
    FAULT_KINDS,
    FaultKind,
    Faults,
    Mix,
    Outcome,
    TerminalStatus,
    sdk_error_codes,
    sdk_incomplete_reasons,
)
from ._server import LoggedRequest, RequestLog, Simulator

__all__ = [
    "FAULT_KINDS",
    "FaultKind",
    "Faults",
    "LoggedRequest",
    "Mix",
    "Outcome",
    "RequestLog",
    "Simulator",
    "TerminalStatus",
    "sdk_error_codes",
    "sdk_incomplete_reasons",
]
