"""Serving ``/metrics``: a standalone server, ASGI and WSGI apps, multi-process mode.

In a multi-process server (gunicorn workers, ``uvicorn --workers``) every worker counts into
its own files under ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) and a
scrape of any worker aggregates them all. Set the variable to an empty directory *before* the
workers start (prometheus_client chooses where values live when it is first imported), and
call :func:`mark_process_dead` from the server's worker-exit hook so a dead worker's
``bg_response_in_flight`` share is dropped (its counters are kept). See ``docs/multiprocess.md``.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, make_wsgi_app, start_http_server
from prometheus_client import multiprocess as _multiprocess
from prometheus_client import values as _values

from .errors import ConfigurationError

__all__ = [
    "MetricsASGIApp",
    "mark_process_dead",
    "metrics_asgi_app",
    "metrics_registry",
    "metrics_wsgi_app",
    "multiprocess_dir",
    "multiprocess_enabled",
    "start_metrics_server",
    "sweep_dead_processes",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def multiprocess_dir() -> str | None:
    """The multiprocess directory from the environment (``PROMETHEUS_MULTIPROC_DIR``), or None.

    The deprecated lower-case ``prometheus_multiproc_dir`` that prometheus_client still honours
    counts too.
    """
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None  # noqa: SIM112


def multiprocess_enabled() -> bool:
    """Whether prometheus_client's multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR`` set)."""
    return multiprocess_dir() is not None


def _values_in_files() -> bool:
    """Whether this process's metric values live in mmap files (decided at prometheus_client import)."""
    return bool(getattr(_values.ValueClass, "_multiprocess", False))


def metrics_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """The registry to expose: ``registry``, or in multiprocess mode a fresh aggregating one.

    In multiprocess mode the live values are in files, not in ``REGISTRY``: exposing the global
    registry would show only this process's share. The aggregating registry reads every
    process's files at each scrape (and holds only what is in the files: the default
    ``process_*``/``python_*`` collectors are per process and left out, as prometheus_client
    does).

    Raises:
        ConfigurationError: ``PROMETHEUS_MULTIPROC_DIR`` names something that is not a directory.
    """
    if registry is not None:
        return registry
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    if not os.path.isdir(path):
        raise ConfigurationError(
            f"PROMETHEUS_MULTIPROC_DIR={path!r} is not a directory: create it (empty) before the"
            " workers start, or unset the variable"
        )
    if not _values_in_files():
        # This process counts in memory: its own counts would be missing from every scrape.
        warnings.warn(
            "PROMETHEUS_MULTIPROC_DIR is set but prometheus_client was imported before it was:"
            " this process counts in memory and its metrics will not appear in the aggregated"
            " /metrics. Set the variable before the process starts (or before importing"
            " prometheus_client and bgwatch).",
            RuntimeWarning,
            stacklevel=3,
        )
    aggregate = CollectorRegistry()
    _multiprocess.MultiProcessCollector(aggregate, path=path)  # type: ignore[no-untyped-call]
    return aggregate


def start_metrics_server(
    port: int = 9464, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` over HTTP from a daemon thread; returns ``(server, thread)``.

    ``port=0`` picks a free port (read it from ``server.server_port``); ``addr="127.0.0.1"``
    keeps it off the network. Stop it with ``server.shutdown(); server.server_close()``.

    In multiprocess mode every worker calling this would fight for one port: start it once,
    in the process manager (gunicorn's ``when_ready`` hook), or mount :func:`metrics_wsgi_app`
    / :func:`metrics_asgi_app` in the application instead; either way a scrape shows the
    totals of every worker.
    """
    server, thread = start_http_server(port, addr, registry=metrics_registry(registry))
    return server, thread


class MetricsASGIApp:
    """An ASGI app answering Prometheus scrapes on any path (see :func:`metrics_asgi_app`).

    It answers ``lifespan`` too, so it can also be served on its own (``uvicorn module:app``).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._app = make_asgi_app(registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection."""
        kind = scope.get("type")
        if kind == "http":
            await self._app(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1000})


def metrics_asgi_app(registry: CollectorRegistry | None = None) -> MetricsASGIApp:
    """An ASGI app answering Prometheus scrapes (FastAPI, Starlette, any ASGI server).

    ``app.add_route("/metrics", bgwatch.metrics_asgi_app())`` answers ``GET /metrics``
    directly; ``app.mount("/metrics", ...)`` works too, but Starlette then answers
    ``/metrics`` with a redirect to ``/metrics/`` (Prometheus follows it). In multiprocess
    mode it aggregates every worker (see :func:`metrics_registry`).
    """
    return MetricsASGIApp(metrics_registry(registry))


def metrics_wsgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """A WSGI app answering Prometheus scrapes on any path (Flask, Django, gunicorn).

    In multiprocess mode it aggregates every worker (see :func:`metrics_registry`).
    """
    return make_wsgi_app(registry=metrics_registry(registry))


def mark_process_dead(pid: int) -> None:
    """Tell multiprocess mode a worker is gone: drop its ``livesum`` gauge files.

    Call it from the process manager when a worker exits (gunicorn's ``child_exit`` hook);
    the worker's counters and histograms stay in the totals. A no-op outside multiprocess mode.
    """
    path = multiprocess_dir()
    if path is not None:
        _multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as someone else
        return True
    return True


def sweep_dead_processes() -> list[int]:
    """:func:`mark_process_dead` for every process with live-gauge files that no longer runs.

    For servers without a worker-exit hook (``uvicorn --workers`` restarts a dead worker but
    tells nobody): call it when a worker starts, for example in the app's lifespan. It sees
    only processes of its own pid namespace, so do not use it when several containers share
    the directory. Returns the pids swept; a no-op outside multiprocess mode and on Windows.
    """
    path = multiprocess_dir()
    if path is None or os.name == "nt" or not os.path.isdir(path):
        return []
    swept: set[int] = set()
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and pid not in swept and not _running(pid):
            _multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
            swept.add(pid)
    return sorted(swept)
