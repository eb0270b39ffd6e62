"""A WSGI app for gunicorn workers that polls background responses with bgwatch and serves
``/metrics`` with the totals of *every* worker (prometheus_client's multiprocess mode).

    cd examples/multiworker
    python -m bgwatch.simulator --port 8080 &           # or a real API and key
    OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=sk-test \\
        gunicorn -c gunicorn.conf.py app:app
    curl 'http://127.0.0.1:8000/run?n=5'                  # 5 background responses, waited for
    curl 'http://127.0.0.1:8000/start?n=3&wait=1'         # 3 created, 1 waited for, 2 left running
    curl http://127.0.0.1:8000/metrics                    # one scrape, every worker's counts

Endpoints (JSON answers name the worker ``pid`` that served them):

* ``/run?n=N``: create N background responses and wait for each (``bgwatch.create_and_wait``);
* ``/start?n=N&wait=W``: create N, wait for the first W, leave the others in flight;
* ``/metrics``: ``bgwatch.metrics_wsgi_app()``, which aggregates the multiprocess directory;
* ``/pid``: the worker's pid.

``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before any worker imports
prometheus_client and calls ``bgwatch.mark_process_dead`` when a worker exits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from openai import OpenAI

import bgwatch

MODEL = os.environ.get("BGWATCH_MODEL", "gpt-4o-mini")

# Base URL and key come from OPENAI_BASE_URL / OPENAI_API_KEY. One client per worker process.
client = OpenAI(http_client=bgwatch.http_client())
metrics = bgwatch.metrics_wsgi_app()

StartResponse = Callable[..., Any]


def _describe(response: Any) -> dict[str, Any]:
    error = getattr(response, "error", None)
    details = getattr(response, "incomplete_details", None)
    return {
        "id": response.id,
        "status": response.status,
        "code": getattr(error, "code", None),
        "reason": getattr(details, "reason", None),
    }


def _run(n: int) -> dict[str, Any]:
    done = [
        _describe(bgwatch.create_and_wait(client, model=MODEL, input=f"job {i}", raise_on=(), timeout=60))
        for i in range(n)
    ]
    return {"pid": os.getpid(), "finished": done}


def _start(n: int, wait: int) -> dict[str, Any]:
    ids = [client.responses.create(model=MODEL, input=f"job {i}", background=True).id for i in range(n)]
    done = [_describe(bgwatch.wait(client, rid, raise_on=(), timeout=60)) for rid in ids[:wait]]
    return {"pid": os.getpid(), "finished": done, "in_flight": ids[wait:]}


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI entry point (``gunicorn app:app``)."""
    path = environ.get("PATH_INFO", "/")
    if path == "/metrics":
        result: Iterable[bytes] = metrics(environ, start_response)
        return result
    query = parse_qs(environ.get("QUERY_STRING", ""))
    n = int(query.get("n", ["1"])[0])
    if path == "/run":
        payload: dict[str, Any] = _run(n)
    elif path == "/start":
        payload = _start(n, int(query.get("wait", ["0"])[0]))
    elif path == "/pid":
        payload = {"pid": os.getpid()}
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    body = json.dumps(payload).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
