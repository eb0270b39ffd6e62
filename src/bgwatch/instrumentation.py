"""Zero-code use: an OpenTelemetry instrumentor for ``opentelemetry-instrument``.

``pip install 'openai-bgwatch[otel]'`` registers :class:`BgwatchInstrumentor` under the
``opentelemetry_instrumentor`` entry point ``bgwatch``, so ``opentelemetry-instrument python
app.py`` (and the OpenTelemetry Operator's injection) turns it on with every other installed
instrumentation, and ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=bgwatch`` turns it off.

The patch point is ``openai._base_client.SyncAPIClient.__init__`` and
``AsyncAPIClient.__init__``: every ``OpenAI``, ``AsyncOpenAI``, ``AzureOpenAI`` and
``AsyncAzureOpenAI`` (and ``with_options()`` copies) runs it, in openai 1.x, 2.x and 3.x alike,
and it is where the SDK settles its HTTP client (the user's ``http_client=``, or the one it
builds). After it, the client's transports (and mounts) are wrapped in bgwatch's transport of
that client's library (httpx2 or legacy httpx); a client already going through bgwatch
(``bgwatch.http_client()``, or a shared client wrapped before) is left as it is.
:meth:`BgwatchInstrumentor.uninstrument` restores both ``__init__`` methods and unwraps the
clients it wrapped.

What it records: the OTel metrics mirror and spans, through the global providers or the
``tracer_provider=`` / ``meter_provider=`` passed to ``instrument()``, with one watcher of its
own (no prometheus_client output: with zero-code setups metrics leave through OpenTelemetry;
the OTel Prometheus exporter prints the same names and labels). Error messages go on spans
only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``; prompts and outputs never.

The constructor hook (``OpenAI(http_client=bgwatch.http_client())``) remains the recommended
way: it patches nothing. Use the instrumentor where the code cannot be changed.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Collection
from typing import Any

from ._locks import Lock
from ._watcher import Watcher

try:  # optional: the [otel] extra
    from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined,unused-ignore]
        BaseInstrumentor,
    )
except ImportError as exc:  # pragma: no cover - without the extra
    raise ImportError(
        "bgwatch.instrumentation needs opentelemetry-instrumentation: pip install 'openai-bgwatch[otel]'"
    ) from exc

__all__ = ["BgwatchInstrumentor"]

_INSTRUMENTS: Collection[str] = ("openai >= 1.66",)
_CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


# "true": opentelemetry-instrumentation-openai-v2's value; "span_only"/"span_and_event":
# opentelemetry-util-genai's content capturing modes that put content on spans ("event_only"
# and "no_content" do not).
_CAPTURE_VALUES = frozenset({"true", "1", "yes", "span_only", "span_and_event"})


def _capture_messages() -> bool:
    return os.environ.get(_CAPTURE_ENV, "").strip().lower() in _CAPTURE_VALUES


class BgwatchInstrumentor(BaseInstrumentor):  # type: ignore[misc,unused-ignore]
    """Puts bgwatch into every OpenAI client built while instrumented (see the module docstring)."""

    # BaseInstrumentor is a singleton whose __init__ runs on every BgwatchInstrumentor() call:
    # the state lives on the class, so a second call never forgets what the first patched.
    _lock = Lock()
    watcher: Watcher | None = None
    """The watcher the instrumented clients record into (None while not instrumented)."""
    _originals: dict[type[Any], Any] = {}
    _wrapped: weakref.WeakKeyDictionary[Any, tuple[Any, dict[Any, Any]]] = weakref.WeakKeyDictionary()

    def instrumentation_dependencies(self) -> Collection[str]:
        """The openai releases this instruments."""
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        from openai import _base_client

        from ._hook import Hook

        type(self).watcher = Watcher(
            prometheus=False,
            otel=True,
            meter_provider=kwargs.get("meter_provider"),
            tracing=True,
            tracer_provider=kwargs.get("tracer_provider"),
            capture_error_messages=_capture_messages(),
        )
        hook = Hook(self.watcher)
        instrumentor = self
        bases: tuple[type[Any], ...] = (_base_client.SyncAPIClient, _base_client.AsyncAPIClient)
        for base in bases:
            original = base.__init__
            self._originals[base] = original

            def patched(client: Any, *args: Any, __original: Any = original, **options: Any) -> None:
                __original(client, *args, **options)
                instrumentor._wrap(getattr(client, "_client", None), hook)

            patched.__wrapped__ = original  # type: ignore[attr-defined]
            setattr(base, "__init__", patched)  # noqa: B010 - typed assignment would be refused

    def _uninstrument(self, **kwargs: Any) -> None:
        for base, original in self._originals.items():
            setattr(base, "__init__", original)  # noqa: B010
        self._originals.clear()
        with self._lock:
            wrapped = list(self._wrapped.items())
            self._wrapped.clear()
        for http, (transport, mounts) in wrapped:
            http._transport = transport
            http._mounts = mounts
        type(self).watcher = None

    def _wrap(self, http: Any, hook: Any) -> None:
        """Wrap ``http``'s transports in bgwatch's, once; never raises."""
        from . import transports

        try:
            if http is None or not hasattr(http, "_transport") or not hasattr(http, "_mounts"):
                return
            if isinstance(http._transport, transports._Adapter):
                return  # already on bgwatch (bgwatch.http_client(), or wrapped before)
            transport_cls = _transport_class(http)
            if transport_cls is None:
                return
            with self._lock:
                if http in self._wrapped:
                    return
                self._wrapped[http] = (http._transport, dict(http._mounts))
                transports._wrap_client_transports(http, lambda inner: transport_cls(inner, hook=hook))
        except Exception as exc:
            if self.watcher is not None:
                self.watcher.internal_error("other", exc)


def _transport_class(http: Any) -> Any:
    """bgwatch's transport class for the HTTP client ``http`` (None: not an httpx/httpx2 client)."""
    from . import transports

    for name in ("httpx2", "httpx"):
        module = getattr(transports, name, None)  # None where that library is not installed
        if module is None:
            continue
        if isinstance(http, module.AsyncClient):
            return transports._transport_class(module, asynchronous=True)
        if isinstance(http, module.Client):
            return transports._transport_class(module, asynchronous=False)
    return None
