"""Zero-code instrumentation: ``opentelemetry-instrument`` picks bgwatch up by itself.

Needs ``pip install 'openai-bgwatch[otel]'`` (``opentelemetry-instrumentation``). bgwatch is
registered under the ``opentelemetry_instrumentor`` entry point as ``bgwatch``, so
``opentelemetry-instrument python app.py`` (or the OpenTelemetry Operator) calls
``BgwatchInstrumentor().instrument()`` before the app runs, and
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=bgwatch`` turns it off. In code::

    from bgwatch.instrumentation import BgwatchInstrumentor

    BgwatchInstrumentor().instrument(tracer_provider=..., meter_provider=...)  # both optional

The recommended way stays the constructor hook, ``OpenAI(http_client=bgwatch.http_client())``:
it patches nothing. Use the instrumentor when you cannot touch how clients are built.

**Where it patches, and why there.** Every client class of the SDK (``OpenAI``,
``AsyncOpenAI``, ``AzureOpenAI``, ``AsyncAzureOpenAI``) ends up in
``openai._base_client.SyncAPIClient.__init__`` or ``AsyncAPIClient.__init__``, which sets
``self._client`` to the ``http_client=`` passed or to the SDK's default client
(``SyncHttpxClientWrapper``/``AsyncHttpxClientWrapper``, with the SDK's timeout, limits and
proxies from the environment). Wrapping those two ``__init__`` and then wrapping the transports
of ``self._client`` (its default transport and its mounts, exactly as
:func:`bgwatch.http_client` does) covers the default client and a user-supplied httpx/httpx2
client alike, without touching the SDK's request path, and is the same in openai 2.x (httpx)
and 3.x (httpx2). A client whose transports already are bgwatch's (built with
``bgwatch.http_client()``, or shared by ``client.with_options()``/``copy()``) is left as it is:
it keeps its own watcher and is never wrapped twice.

What it turns on: one :class:`~bgwatch.Watcher` with spans and the OpenTelemetry metrics mirror
(``bg_response_*``) on the global providers, or on the ``tracer_provider=``/``meter_provider=``
passed, and no prometheus_client output (``prometheus=True`` adds it; with
``opentelemetry-exporter-prometheus`` that would count twice). It never raises a typed
exception: zero-code instrumentation must not change what the app sees.

``uninstrument()`` restores the two ``__init__`` and puts back the original transports of the
clients it wrapped (still alive), so they send exactly as before.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Collection
from typing import Any, Final

from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from ._hook import Hook
from ._watcher import Watcher
from .transports import _AsyncAdapter, _SyncAdapter, _wrap_client_transports

try:
    import httpx2
except ImportError:  # openai < 3
    httpx2 = None  # type: ignore[assignment]
try:
    import httpx
except ImportError:  # openai >= 3 does not need it
    httpx = None  # type: ignore[assignment]

__all__ = ["CAPTURE_MESSAGE_CONTENT_ENV", "BgwatchInstrumentor", "capture_message_content"]

CAPTURE_MESSAGE_CONTENT_ENV: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
"""The GenAI instrumentations' content switch; bgwatch reads it for error messages only."""

# "true" (the openai-v2 instrumentation), or opentelemetry-util-genai's content capturing
# modes that put content on spans.
_CAPTURE_VALUES: Final = frozenset({"true", "span_only", "span_and_event"})

_INSTRUMENTS: Final = ("openai >= 1.66",)


def capture_message_content() -> bool:
    """Whether ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` asks for content on spans.

    bgwatch then puts error messages (the API's ``error.message``, exception messages) on span
    statuses; it never records prompts or outputs, whatever the variable says.
    """
    return os.environ.get(CAPTURE_MESSAGE_CONTENT_ENV, "").strip().lower() in _CAPTURE_VALUES


def _on_bgwatch(client: Any) -> bool:
    """Whether any transport of this httpx/httpx2 client already is a bgwatch adapter."""
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    return any(isinstance(transport, (_SyncAdapter, _AsyncAdapter)) for transport in transports)


def _adapter_class(client: Any) -> type[Any] | None:
    """bgwatch's transport class for this client's library and flavour (None: not ours to wrap)."""
    from .transports import AsyncHttpx2Transport, AsyncHttpxTransport, Httpx2Transport, HttpxTransport

    if httpx2 is not None:
        if isinstance(client, httpx2.Client):
            return Httpx2Transport
        if isinstance(client, httpx2.AsyncClient):
            return AsyncHttpx2Transport
    if httpx is not None:
        if isinstance(client, httpx.Client):
            return HttpxTransport
        if isinstance(client, httpx.AsyncClient):
            return AsyncHttpxTransport
    return None


class BgwatchInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Route every OpenAI client built after :meth:`instrument` through bgwatch.

    ``instrument()`` keyword arguments (all optional):

    * ``tracer_provider``, ``meter_provider``: where spans and metrics go (default: global);
    * ``watcher``: a ready :class:`~bgwatch.Watcher` instead of the one built here;
    * ``prometheus``: also write prometheus_client metrics (default False);
    * ``capture_error_messages``: default from ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``.
    """

    # BaseInstrumentor is a singleton whose __init__ runs at every BgwatchInstrumentor(): the
    # state is made in _instrument, never in __init__.
    watcher: Watcher | None = None
    """The watcher of the instrumented clients (None while not instrumented)."""
    _originals: dict[type[Any], Any]
    _wrapped: weakref.WeakKeyDictionary[Any, tuple[Any, dict[Any, Any]]]

    def instrumentation_dependencies(self) -> Collection[str]:
        """The openai releases bgwatch supports."""
        return _INSTRUMENTS

    def _instrument(self, **kwargs: Any) -> None:
        from openai._base_client import AsyncAPIClient, SyncAPIClient

        watcher = kwargs.get("watcher")
        if watcher is None:
            prometheus: dict[str, Any] = {"prometheus": bool(kwargs.get("prometheus", False))}
            if "registry" in kwargs:
                prometheus["registry"] = kwargs["registry"]
            watcher = Watcher(
                **prometheus,
                otel=True,
                meter_provider=kwargs.get("meter_provider"),
                tracing=True,
                tracer_provider=kwargs.get("tracer_provider"),
                capture_error_messages=bool(kwargs.get("capture_error_messages", capture_message_content())),
            )
        self.watcher = watcher
        self._originals = {}
        self._wrapped = weakref.WeakKeyDictionary()
        hook = Hook(watcher, ())
        for cls in (SyncAPIClient, AsyncAPIClient):
            original = cls.__init__
            self._originals[cls] = original
            cls.__init__ = self._patched(original, hook)  # type: ignore[method-assign]

    def _patched(self, original: Any, hook: Hook) -> Any:
        @functools.wraps(original)
        def __init__(client_self: Any, *args: Any, **kwargs: Any) -> None:
            original(client_self, *args, **kwargs)
            self._wrap(getattr(client_self, "_client", None), hook)

        __init__._bgwatch_original = original  # type: ignore[attr-defined]
        return __init__

    def _wrap(self, client: Any, hook: Hook) -> None:
        """Put bgwatch under this httpx/httpx2 client, once; fail open."""
        try:
            adapter = _adapter_class(client)
            if adapter is None or _on_bgwatch(client) or client in self._wrapped:
                return
            original = (client._transport, dict(client._mounts))
            _wrap_client_transports(client, lambda inner: adapter(inner, hook=hook))
            self._wrapped[client] = original
        except Exception as exc:  # the client sends as without bgwatch
            hook.watcher.internal_error("other", exc)

    def _uninstrument(self, **kwargs: Any) -> None:
        for cls, original in getattr(self, "_originals", {}).items():
            cls.__init__ = original
        self._originals.clear()
        wrapped = getattr(self, "_wrapped", {})
        for client, (transport, mounts) in list(wrapped.items()):
            client._transport = transport
            client._mounts = mounts
        wrapped.clear()
        self.watcher = None
