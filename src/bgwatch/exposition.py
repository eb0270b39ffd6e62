"""Serving ``/metrics``: a standalone server, ASGI and WSGI apps, multi-process mode.

In a multi-process server (gunicorn workers, ``uvicorn --workers``) every worker counts into
its own files under ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's multiprocess mode) and a
scrape of any worker aggregates them all. Set the variable to an empty directory *before* the
workers start (and before bgwatch is imported), and call :func:`mark_process_dead` from the
server's worker-exit hook so a dead worker's gauges are dropped (its counters are kept).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, make_wsgi_app, start_http_server
from prometheus_client import multiprocess as _multiprocess

__all__ = [
    "mark_process_dead",
    "metrics_asgi_app",
    "metrics_registry",
    "metrics_wsgi_app",
    "multiprocess_enabled",
    "start_metrics_server",
]


def multiprocess_enabled() -> bool:
    """Whether prometheus_client's multiprocess mode is on (``PROMETHEUS_MULTIPROC_DIR`` set)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def metrics_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """The registry to expose: ``registry``, or in multiprocess mode a fresh aggregating one.

    In multiprocess mode the live values are in files, not in ``REGISTRY``: exposing the global
    registry would show only this process's share.
    """
    if registry is not None:
        return registry
    if multiprocess_enabled():
        aggregate = CollectorRegistry()
        _multiprocess.MultiProcessCollector(aggregate)  # type: ignore[no-untyped-call]
        return aggregate
    return REGISTRY


def start_metrics_server(
    port: int = 9464, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> tuple[Any, threading.Thread]:
    """Serve ``/metrics`` from a daemon thread; returns ``(server, thread)``.

    ``port=0`` picks a free port (read it from ``server.server_port``). Call
    ``server.shutdown()`` to stop it.
    """
    server, thread = start_http_server(port, addr, registry=metrics_registry(registry))
    return server, thread


def metrics_asgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app answering Prometheus scrapes; mount it at ``/metrics`` (FastAPI, Starlette)."""
    return make_asgi_app(registry=metrics_registry(registry))


def metrics_wsgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """A WSGI app answering Prometheus scrapes; mount it at ``/metrics`` (Flask, Django)."""
    return make_wsgi_app(registry=metrics_registry(registry))


def mark_process_dead(pid: int) -> None:
    """Tell multiprocess mode a worker is gone (gunicorn ``child_exit``); a no-op otherwise."""
    if multiprocess_enabled():
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
