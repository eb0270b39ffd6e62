"""Transport adapters for httpx2 (openai >= 3) and legacy httpx (openai 1.x/2.x), sync and async.

The adapters know nothing about OpenAI: :class:`Hook` (library-independent) decides what to
look at, and the classifier and watcher do the rest. Server-Sent Events are never buffered.

Exact by construction, at no extra cost: the SDK reads a body with its HTTP library's
``Response.json()``, i.e. ``json.loads`` over the content the library decoded. bgwatch records
that very parse, in one of two ways:

* **Deferred** (observe mode without spans, the default; :attr:`Hook.defers`): the adapter
  reads nothing. The inner transport's own response object goes back to the client, its class
  swapped for a same-named subclass whose ``json()`` hands the library's parse to the hook the
  first time the client parses it. What is recorded is what the SDK parsed, when it parses it;
  a raw response (``with_raw_response``) whose body nobody parses is not recorded, exactly as
  the SDK has not seen it.
* **Eager** (``raise_on``, or tracing): the exception must replace the answer, and a call
  span must hold what the body said, so the adapter reads the body once, parses it with the
  library's own decoders and the same ``json.loads``, records it, and hands the client a fresh
  response over the very same bytes and headers whose ``json()`` returns that parse, so
  ``elapsed``, ``request_id``, ``with_raw_response`` and ``with_streaming_response`` behave
  as without bgwatch and the body is still parsed once per call, in whatever key order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import openai

from ._classify import CallKind, is_event_stream
from ._hook import RAISE_MODE_MIN_OPENAI, Hook, encoding_and_request_id, raise_mode_supported
from ._sdk import Library, sdk_library
from ._streams import fresh_response, observe_stream
from ._watcher import Watcher, default_watcher
from .errors import ConfigurationError
from .tracing import NOOP_CALL_SPAN

try:
    import httpx2
except ImportError:  # openai < 3 does not install it
    httpx2 = None  # type: ignore[assignment]
try:
    import httpx
except ImportError:  # openai >= 3 does not need it
    httpx = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "RAISE_MODE_MIN_OPENAI",
    "AsyncHttpx2Transport",
    "AsyncHttpxTransport",
    "AsyncTransport",
    "Hook",
    "Httpx2Transport",
    "HttpxTransport",
    "Transport",
    "async_http_client",
    "http_client",
    "raise_mode_supported",
    "sdk_library",
]

_UNSET: Any = object()
_SHARED_CLASSES: dict[type[Any], type[Any]] = {}


def _shared_response_class(base: type[Any]) -> type[Any]:
    """A subclass of the library's ``Response`` that hands the SDK the eager path's parse.

    ``json()`` without arguments returns, once, the object the adapter got from the same
    ``json.loads`` over the same content (later calls parse again, as usual); ``read()`` and
    ``aread()`` take the content the adapter already decoded with the library's own decoders,
    after draining the raw stream so that the client's bookkeeping (``elapsed``, closing) runs
    as always. Anything else is the library's own code.
    """
    cls = _SHARED_CLASSES.get(base)
    if cls is not None:
        return cls

    class SharedParseResponse(base):  # type: ignore[misc]
        def json(self, **kwargs: Any) -> Any:
            data = self.__dict__.pop("_bgwatch_json", _UNSET)
            if data is _UNSET or kwargs or not hasattr(self, "_content"):
                return super().json(**kwargs)
            return data

        def read(self) -> bytes:
            content = self.__dict__.pop("_bgwatch_content", None)
            if content is not None and not hasattr(self, "_content"):
                for _ in self.iter_raw():
                    pass
                self._content = content
            return super().read()  # type: ignore[no-any-return]

        async def aread(self) -> bytes:
            content = self.__dict__.pop("_bgwatch_content", None)
            if content is not None and not hasattr(self, "_content"):
                async for _ in self.aiter_raw():
                    pass
                self._content = content
            return await super().aread()  # type: ignore[no-any-return]

    _same_name(SharedParseResponse, base)
    _SHARED_CLASSES[base] = SharedParseResponse
    return SharedParseResponse


def _deferring_response_class(base: type[Any], hook: Hook, call: CallKind) -> type[Any]:
    """A subclass of ``base`` (the inner transport's response class) that records its body when parsed.

    Its ``json()`` (what the SDK calls) returns the library's own parse; the first call without
    arguments puts the instance back in its original class and hands that very object to the
    hook's recorder (:meth:`Hook.parsed_recorder`), so bgwatch records exactly what the SDK
    parsed, once, at no second parse. The recorder is a class attribute, so a response carries
    no state of its own (writing to an instance's ``__dict__`` would slow every later attribute
    access of the SDK on it). Around another bgwatch transport's class, both record.
    """
    original = getattr(base, "_bgwatch_original", base)
    record = hook.parsed_recorder(call)
    parse = base.json

    class DeferringResponse(base):  # type: ignore[misc]
        _bgwatch_original = original
        _bgwatch_records = (*getattr(base, "_bgwatch_records", ()), record)

        def json(self, **kwargs: Any) -> Any:
            first = self.__class__ is not original
            data = parse(self, **kwargs)
            if first and not kwargs:
                self.__class__ = original
                record(data, self)
            return data

    _same_name(DeferringResponse, base)
    return DeferringResponse


def _same_name(cls: type[Any], base: type[Any]) -> None:
    """Name ``cls`` as its base, for code and logs that print a response's type."""
    cls.__name__ = cls.__qualname__ = base.__name__
    cls.__module__ = base.__module__


def _observe_deferred(response: Any, data: Any) -> None:
    """Record for the deferring classes of an inner bgwatch transport whose answer the eager path parsed."""
    for record in getattr(type(response), "_bgwatch_records", ()):
        record(data, response)


def _deferred(
    adapter: _SyncAdapter | _AsyncAdapter, call: CallKind, response: Any, *, request: Any, asynchronous: bool
) -> Any:
    """The inner transport's answer, set up to be recorded when the client parses it.

    Observe mode without spans (:attr:`Hook.defers`): nothing is read here. A 2xx body is
    recorded by the response's own ``json()`` (see :func:`_deferring_response_class`), the call
    the SDK makes, so the record is what the SDK parsed; an event stream is observed as it
    passes, as in the eager path. The response object, its bytes and headers stay the inner
    transport's.
    """
    if not 200 <= response.status_code < 300:
        return response
    hook = adapter.hook
    if is_event_stream(response.headers.get("content-type")):
        observed = observe_stream(
            hook, call, NOOP_CALL_SPAN, response, adapter._module, request=request, asynchronous=asynchronous
        )
        return response if observed is None else observed
    try:
        key = (type(response), call)
        cls = adapter._deferring.get(key)
        if cls is None:
            cls = adapter._deferring[key] = _deferring_response_class(type(response), hook, call)
        response.__class__ = cls
    except Exception as exc:  # a response class bgwatch cannot extend: counted, passed on unobserved
        hook.watcher.internal_error("classify", exc)
    return response


def _answer(hook: Hook, call: CallKind, module: Any, *, request: Any, response: Any, raw: bytes, span: Any) -> Any:
    """The fresh response over ``raw`` for the SDK, and the exception to raise (or None).

    Parses exactly as the SDK would (the library's decoders, ``json.loads``); what fails to
    decode or parse is left to the SDK, which fails alike, and is not recorded.
    """
    headers = response.headers
    try:
        response_class = _shared_response_class(module.Response)
        encoding, request_id = encoding_and_request_id(headers)
    except Exception as exc:  # a bug of ours: counted, and the SDK gets the plain answer
        hook.watcher.internal_error("classify", exc)
        response_class, encoding, request_id = module.Response, None, None
    fresh = fresh_response(response_class, module, response, raw, request)
    if response_class is module.Response:
        return fresh, None
    try:
        content = raw
        if encoding is not None:
            probe = module.Response(response.status_code, stream=module.ByteStream(raw))
            probe.headers = headers
            content = probe.read()
            fresh._bgwatch_content = content
        data = json.loads(content)
    except Exception:  # the SDK's decoding or Response.json() fails alike: it returns no Response
        return fresh, None
    fresh._bgwatch_json = data
    if type(response) is not module.Response:
        _observe_deferred(response, data)
    return fresh, hook.observe_json(call, data, request_id, span)


def _make_hook(
    hook: Hook | None,
    watcher: Watcher | None,
    raise_on: Iterable[str],
    registry: CollectorRegistry | None,
) -> Hook:
    if hook is not None:
        if watcher is not None or registry is not None or tuple(raise_on):
            raise ConfigurationError("pass either hook= or watcher=/registry=/raise_on=, not both")
        return hook
    if watcher is not None and registry is not None:
        raise ConfigurationError("pass either watcher= or registry=, not both")
    if watcher is None and registry is not None:
        watcher = default_watcher(registry)
    return Hook(watcher, raise_on)


def _require(module: Any, name: str) -> Any:
    if module is None:
        raise ConfigurationError(
            f"{name} is not installed; install it or use the transport of the library your openai"
            f" SDK uses ({sdk_library()})"
        )
    return module


def _check_inner(inner: Any, base: Any, library: str, expected: str) -> None:
    if not isinstance(inner, base):
        raise ConfigurationError(
            f"inner must be {library}.{expected}, got {type(inner).__module__}.{type(inner).__name__};"
            " use the bgwatch transport of the inner transport's library"
            " (Httpx2Transport/HttpxTransport, Async... for async)"
        )


class _SyncAdapter:
    """Shared by the sync adapters; ``_module`` is httpx2 or httpx."""

    _module: Any
    _inner: Any
    _deferring: dict[tuple[type[Any], CallKind], type[Any]]
    _defers: bool
    hook: Hook

    def _setup(
        self,
        inner: Any,
        hook: Hook | None,
        watcher: Watcher | None,
        raise_on: Iterable[str],
        registry: CollectorRegistry | None,
    ) -> None:
        module = self._module
        if inner is None:
            inner = module.HTTPTransport(limits=_default_limits(module))
        _check_inner(inner, module.BaseTransport, module.__name__, "BaseTransport")
        self._inner = inner
        self.hook = _make_hook(hook, watcher, raise_on, registry)
        self._deferring: dict[tuple[type[Any], CallKind], type[Any]] = {}
        self._defers = self.hook.defers  # fixed with the hook's watcher and raise_on

    def handle_request(self, request: Any) -> Any:
        """Send through the inner transport; inspect Responses API answers on the way back."""
        hook = self.hook
        call = hook.select(request.method, request.url.path)
        if call is None:
            return self._inner.handle_request(request)
        if self._defers:
            response = self._inner.handle_request(request)
            return _deferred(self, call, response, request=request, asynchronous=False)
        span = hook.start_span(call, request)
        try:
            with span.activate():
                response = self._inner.handle_request(request)
                span.http_status(response.status_code)
                content_type = response.headers.get("content-type")
                if not hook.wants_body(response.status_code, content_type):
                    # An event stream is wrapped, never read here: the wrapper observes it as
                    # the SDK iterates and ends the span when the stream ends. Errors are the
                    # SDK's business.
                    if hook.wants_stream(response.status_code, content_type):
                        observed = observe_stream(
                            hook, call, span, response, self._module, request=request, asynchronous=False
                        )
                        if observed is not None:
                            return observed
                    span.end()
                    return response
                try:
                    body = b"".join(response.stream)
                finally:
                    response.close()
                fresh, error = _answer(
                    hook, call, self._module, request=request, response=response, raw=body, span=span
                )
        except BaseException as exc:
            span.failed(exc)
            span.end()
            raise
        span.end()
        if error is not None:
            raise error
        return fresh

    def close(self) -> None:
        """Close the inner transport."""
        self._inner.close()


class _AsyncAdapter:
    """Shared by the async adapters; ``_module`` is httpx2 or httpx."""

    _module: Any
    _inner: Any
    _deferring: dict[tuple[type[Any], CallKind], type[Any]]
    _defers: bool
    hook: Hook

    def _setup(
        self,
        inner: Any,
        hook: Hook | None,
        watcher: Watcher | None,
        raise_on: Iterable[str],
        registry: CollectorRegistry | None,
    ) -> None:
        module = self._module
        if inner is None:
            inner = module.AsyncHTTPTransport(limits=_default_limits(module))
        _check_inner(inner, module.AsyncBaseTransport, module.__name__, "AsyncBaseTransport")
        self._inner = inner
        self.hook = _make_hook(hook, watcher, raise_on, registry)
        self._deferring: dict[tuple[type[Any], CallKind], type[Any]] = {}
        self._defers = self.hook.defers  # fixed with the hook's watcher and raise_on

    async def handle_async_request(self, request: Any) -> Any:
        """Send through the inner transport; inspect Responses API answers on the way back."""
        hook = self.hook
        call = hook.select(request.method, request.url.path)
        if call is None:
            return await self._inner.handle_async_request(request)
        if self._defers:
            response = await self._inner.handle_async_request(request)
            return _deferred(self, call, response, request=request, asynchronous=True)
        span = hook.start_span(call, request)
        try:
            with span.activate():
                response = await self._inner.handle_async_request(request)
                span.http_status(response.status_code)
                content_type = response.headers.get("content-type")
                if not hook.wants_body(response.status_code, content_type):
                    if hook.wants_stream(response.status_code, content_type):
                        observed = observe_stream(
                            hook, call, span, response, self._module, request=request, asynchronous=True
                        )
                        if observed is not None:
                            return observed  # the wrapper ends the span, as in the sync adapter
                    span.end()
                    return response
                try:
                    body = b"".join([chunk async for chunk in response.stream])
                finally:
                    await response.aclose()
                fresh, error = _answer(
                    hook, call, self._module, request=request, response=response, raw=body, span=span
                )
        except BaseException as exc:
            span.failed(exc)
            span.end()
            raise
        span.end()
        if error is not None:
            raise error
        return fresh

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self._inner.aclose()


def _default_limits(module: Any) -> Any:
    limits = openai.DEFAULT_CONNECTION_LIMITS
    return module.Limits(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
    )


def _default_timeout(module: Any) -> Any:
    return module.Timeout(**openai.DEFAULT_TIMEOUT.as_dict())


if TYPE_CHECKING or httpx2 is not None:

    class Httpx2Transport(_SyncAdapter, httpx2.BaseTransport):
        """bgwatch transport for ``httpx2.Client`` (openai >= 3).

        Args:
            inner: the transport that really sends (default: ``httpx2.HTTPTransport`` with
                openai's connection limits).
            raise_on: terminal statuses that raise a typed exception (default: none).
            watcher: where to count (default: the process-wide watcher).
            registry: shorthand for the process-wide watcher of this Prometheus registry.
            hook: a ready :class:`Hook` (instead of the three options above).
        """

        _module = httpx2

        def __init__(
            self,
            inner: httpx2.BaseTransport | None = None,
            *,
            raise_on: Iterable[str] = (),
            watcher: Watcher | None = None,
            registry: CollectorRegistry | None = None,
            hook: Hook | None = None,
        ) -> None:
            self._setup(inner, hook, watcher, raise_on, registry)

    class AsyncHttpx2Transport(_AsyncAdapter, httpx2.AsyncBaseTransport):
        """bgwatch transport for ``httpx2.AsyncClient`` (openai >= 3); options as :class:`Httpx2Transport`."""

        _module = httpx2

        def __init__(
            self,
            inner: httpx2.AsyncBaseTransport | None = None,
            *,
            raise_on: Iterable[str] = (),
            watcher: Watcher | None = None,
            registry: CollectorRegistry | None = None,
            hook: Hook | None = None,
        ) -> None:
            self._setup(inner, hook, watcher, raise_on, registry)

else:  # pragma: no cover - only without httpx2

    class Httpx2Transport:  # type: ignore[no-redef]
        """Unavailable: httpx2 is not installed."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _require(None, "httpx2")

    class AsyncHttpx2Transport(Httpx2Transport):  # type: ignore[no-redef]
        """Unavailable: httpx2 is not installed."""


if TYPE_CHECKING or httpx is not None:

    class HttpxTransport(_SyncAdapter, httpx.BaseTransport):
        """bgwatch transport for a legacy ``httpx.Client`` (openai 1.x/2.x).

        Options as :class:`Httpx2Transport`.
        """

        _module = httpx

        def __init__(
            self,
            inner: httpx.BaseTransport | None = None,
            *,
            raise_on: Iterable[str] = (),
            watcher: Watcher | None = None,
            registry: CollectorRegistry | None = None,
            hook: Hook | None = None,
        ) -> None:
            self._setup(inner, hook, watcher, raise_on, registry)

    class AsyncHttpxTransport(_AsyncAdapter, httpx.AsyncBaseTransport):
        """bgwatch transport for a legacy ``httpx.AsyncClient``; options as :class:`Httpx2Transport`."""

        _module = httpx

        def __init__(
            self,
            inner: httpx.AsyncBaseTransport | None = None,
            *,
            raise_on: Iterable[str] = (),
            watcher: Watcher | None = None,
            registry: CollectorRegistry | None = None,
            hook: Hook | None = None,
        ) -> None:
            self._setup(inner, hook, watcher, raise_on, registry)

else:  # pragma: no cover - only without httpx

    class HttpxTransport:  # type: ignore[no-redef]
        """Unavailable: httpx is not installed."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _require(None, "httpx")

    class AsyncHttpxTransport(HttpxTransport):  # type: ignore[no-redef]
        """Unavailable: httpx is not installed."""


Transport: type[Any] = Httpx2Transport if sdk_library() == "httpx2" else HttpxTransport
"""The sync transport of the library the installed openai SDK uses."""
AsyncTransport: type[Any] = AsyncHttpx2Transport if sdk_library() == "httpx2" else AsyncHttpxTransport
"""The async transport of the library the installed openai SDK uses."""


def _resolve_library(library: str | None) -> Library:
    if library is None:
        return sdk_library()
    if library not in ("httpx2", "httpx"):
        raise ConfigurationError(f"library must be 'httpx2' or 'httpx', got {library!r}")
    return library  # type: ignore[return-value]


def _transport_class(module: Any, asynchronous: bool) -> Any:
    """bgwatch's transport class for a client of ``module`` (httpx2 or httpx)."""
    if asynchronous:
        return AsyncHttpx2Transport if module is httpx2 else AsyncHttpxTransport
    return Httpx2Transport if module is httpx2 else HttpxTransport


def _build_client(asynchronous: bool, library: Library | None, hook: Hook, options: dict[str, Any]) -> Any:
    """A client of the chosen library with openai's defaults, every transport wrapped."""
    name = _resolve_library(library)
    module = _require(httpx2 if name == "httpx2" else httpx, name)
    transport_cls = _transport_class(module, asynchronous)
    options.setdefault("timeout", _default_timeout(module))
    options.setdefault("limits", _default_limits(module))
    options.setdefault("follow_redirects", True)
    client = (module.AsyncClient if asynchronous else module.Client)(**options)
    _wrap_client_transports(client, lambda inner: transport_cls(inner, hook=hook))
    return client


def _wrap_client_transports(client: Any, wrap: Any) -> None:
    """Wrap the client's default transport and its mounts (env proxies, ``mounts=``)."""
    if not hasattr(client, "_transport") or not hasattr(client, "_mounts"):  # pragma: no cover
        raise ConfigurationError(
            f"this {type(client).__module__} release lays out its client differently; build the"
            " client yourself with transport=bgwatch.Transport(...)"
        )
    client._transport = wrap(client._transport)
    client._mounts = {
        pattern: (wrap(transport) if transport is not None else None) for pattern, transport in client._mounts.items()
    }


def http_client(
    *,
    raise_on: Iterable[str] = (),
    watcher: Watcher | None = None,
    registry: CollectorRegistry | None = None,
    library: Library | None = None,
    **client_options: Any,
) -> Any:
    """A sync HTTP client for ``OpenAI(http_client=...)`` with bgwatch installed.

    It is an ``httpx2.Client`` or ``httpx.Client`` (the library the installed openai SDK
    uses, or ``library=``) with openai's own defaults: 600 s timeout (5 s connect), openai's
    connection limits, redirects followed. Other keyword arguments go to the client
    (``proxy=``, ``verify=``, ``limits=``, ...); environment proxies are honoured.

    Args:
        raise_on: terminal statuses that raise a typed exception (default: none, observe only).
        watcher: where to count (default: the process-wide watcher).
        registry: Prometheus registry to count into (its process-wide watcher).
        library: ``"httpx2"`` or ``"httpx"`` instead of the SDK's choice.
    """
    return _build_client(False, library, _make_hook(None, watcher, raise_on, registry), client_options)


def async_http_client(
    *,
    raise_on: Iterable[str] = (),
    watcher: Watcher | None = None,
    registry: CollectorRegistry | None = None,
    library: Library | None = None,
    **client_options: Any,
) -> Any:
    """An async HTTP client for ``AsyncOpenAI(http_client=...)``; see :func:`http_client`."""
    return _build_client(True, library, _make_hook(None, watcher, raise_on, registry), client_options)
