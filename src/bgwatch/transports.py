"""Transport adapters for httpx2 (openai >= 3) and legacy httpx (openai 1.x/2.x), sync and async.

The adapters know nothing about OpenAI: :class:`Hook` (library-independent) decides what to
look at, and the classifier and watcher do the rest. Server-Sent Events are never buffered.

Exact by construction, at no extra cost: the SDK reads a body with its HTTP library's
``Response.json()``, i.e. ``json.loads`` over the content the library decoded. bgwatch records
that very parse, in one of two ways:

* **Deferred** (observe mode without spans, the default; :attr:`Hook.defers`): the adapter
  reads nothing. The inner transport's own response object goes back to the client, its class
  swapped for a same-named subclass that records what the client reads, as it reads it: the
  SDK's own parse when it loads and parses the body, the events when it iterates the body as a
  stream (the SDK decides that by its request, not by the Content-Type, and so does bgwatch).
  A raw response (``with_raw_response``) whose body nobody reads is not recorded, exactly as
  the SDK has not seen it.
* **Eager** (``raise_on``, or tracing): the exception must replace the answer, and a call
  span must hold what the body said, so the adapter reads a JSON body once, parses it with the
  library's own decoders and the same ``json.loads``, records it, and hands the client a fresh
  response over the very same bytes and headers whose ``json()`` returns that parse, so
  ``elapsed``, ``request_id``, ``with_raw_response`` and ``with_streaming_response`` behave
  as without bgwatch and the body is still parsed once per call, in whatever key order. The
  answer to a request for a stream (:meth:`Hook.asks_for_stream`, the SDK's own criterion,
  whatever the Content-Type) is observed as it passes instead (see :mod:`bgwatch._streams`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import openai

from ._classify import CallKind, classify_request
from ._hook import RAISE_MODE_MIN_OPENAI, Hook, encoding_and_request_id, raise_mode_supported
from ._sdk import Library, sdk_library
from ._streams import StreamObserver, fresh_response, observe_stream, observed_async_chunks, observed_chunks
from ._watcher import Watcher, default_watcher
from .errors import ConfigurationError
from .tracing import NOOP_CALL_SPAN, CallSpan

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
    """A subclass of ``base`` (the inner transport's response class) that records what the client reads.

    The SDK decides by its own request whether an answer is a JSON body or an event stream
    (``stream=True``), not by the Content-Type, so bgwatch goes by what the client does with
    the response, by construction:

    * loading the body (``read()``/``aread()``: the client's non-stream send, ``parse()``)
      makes it a JSON answer: its ``json()`` (what the SDK calls next) returns the library's
      own parse, and the first call without arguments puts the instance back in its original
      class and hands that very object to the hook's recorders (:meth:`Hook.parsed_recorders`);
    * iterating it unread (``iter_bytes()``/``aiter_bytes()``, what the SDK's ``Stream``
      does) makes it an event stream: the chunks the SDK gets, decoded by the library, pass
      through a :class:`~bgwatch._streams.StreamObserver` unchanged.

    So bgwatch records what the SDK parsed, once, at no second parse. The state is the class
    (a response carries none of its own: writing to an instance's ``__dict__`` would slow every
    later attribute access of the SDK on it). Around another bgwatch transport's class, every
    layer records.
    """
    original = getattr(base, "_bgwatch_original", base)
    layers = (*getattr(base, "_bgwatch_layers", ()), (hook, call, *hook.parsed_recorders(call)))
    recorders = tuple((repeat, record) for _, _, repeat, record in layers)
    parse, read, aread = original.json, original.read, original.aread
    iter_bytes, aiter_bytes = original.iter_bytes, original.aiter_bytes

    class ParsedResponse(original):  # type: ignore[misc,valid-type]
        _bgwatch_original = original
        _bgwatch_layers = layers

        def json(self, **kwargs: Any) -> Any:
            data = parse(self, **kwargs)
            if not kwargs:
                self.__class__ = original
                for repeat, record in recorders:
                    if repeat is None or not repeat(data):
                        record(data, self)
            return data

    class DeferringResponse(ParsedResponse):
        def read(self) -> bytes:
            self.__class__ = ParsedResponse
            return read(self)  # type: ignore[no-any-return]

        async def aread(self) -> bytes:
            self.__class__ = ParsedResponse
            return await aread(self)  # type: ignore[no-any-return]

        def iter_bytes(self, chunk_size: int | None = None) -> Iterator[bytes]:
            self.__class__ = original
            return observed_chunks(iter_bytes(self, chunk_size), _stream_observers(layers, self))

        def aiter_bytes(self, chunk_size: int | None = None) -> AsyncIterator[bytes]:
            self.__class__ = original
            return observed_async_chunks(aiter_bytes(self, chunk_size), _stream_observers(layers, self))

    _same_name(ParsedResponse, original)
    _same_name(DeferringResponse, original)
    return DeferringResponse


def _stream_observers(layers: tuple[tuple[Hook, CallKind, Any, Any], ...], response: Any) -> list[StreamObserver]:
    """One observer per layer for an answer the client iterates as an event stream. Never raises."""
    observers = []
    for hook, call, _, _ in layers:
        try:
            observers.append(StreamObserver(hook, call, NOOP_CALL_SPAN, response.headers, decoded=True))
        except Exception as exc:  # a bug of ours: counted, the stream passes unobserved
            hook.watcher.internal_error("stream", exc)
    return observers


def _same_name(cls: type[Any], base: type[Any]) -> None:
    """Name ``cls`` as its base, for code and logs that print a response's type."""
    cls.__name__ = cls.__qualname__ = base.__name__
    cls.__module__ = base.__module__


def _observe_deferred(response: Any, data: Any) -> None:
    """Record for the deferring classes of an inner bgwatch transport whose answer the eager path parsed."""
    for _, _, repeat, record in getattr(type(response), "_bgwatch_layers", ()):
        if repeat is None or not repeat(data):
            record(data, response)


def _deferred(adapter: _Adapter, call: CallKind, response: Any) -> Any:
    """The inner transport's answer, set up to be recorded as the client reads it.

    Observe mode without spans (:attr:`Hook.defers`): nothing is read here, and a 2xx answer
    goes back as the very response object of the inner transport, its class swapped for
    :func:`_deferring_response_class`'s.
    """
    if not 200 <= response.status_code < 300:
        return response
    try:
        classes = adapter._deferring[call]
        cls = classes.get(type(response))
        if cls is None:
            cls = classes[type(response)] = _deferring_response_class(type(response), adapter.hook, call)
        response.__class__ = cls
    except Exception as exc:  # a response class bgwatch cannot extend: counted, passed on unobserved
        adapter.hook.watcher.internal_error("classify", exc)
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


class _Adapter:
    """What the sync and async adapters share; ``_module`` is httpx2 or httpx."""

    _module: Any
    _inner_names: tuple[str, str]  # the library's default inner transport, and its base class
    _inner: Any
    _deferring: dict[CallKind, dict[type[Any], type[Any]]]  # call kind -> inner class -> deferring class
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
        default, base = self._inner_names
        if inner is None:
            inner = getattr(module, default)(limits=_default_limits(module))
        _check_inner(inner, getattr(module, base), module.__name__, base)
        self._inner = inner
        self.hook = _make_hook(hook, watcher, raise_on, registry)
        self._deferring = {"create": {}, "retrieve": {}, "cancel": {}}
        self._defers = self.hook.defers  # fixed with the hook's watcher and raise_on

    def _passed_on(
        self, call: CallKind, span: CallSpan, response: Any, request: Any, streamed: bool, *, asynchronous: bool
    ) -> Any:
        """The eager path's answer when its body is not read here, else None (a 2xx JSON answer).

        An event stream is wrapped, never read here: the wrapper observes it as the SDK iterates
        and ends the span when the stream ends. A non-2xx answer is the SDK's business.
        """
        span.http_status(response.status_code)
        success = 200 <= response.status_code < 300
        if success and not streamed:
            return None
        if success:
            observed = observe_stream(
                self.hook, call, span, response, self._module, request=request, asynchronous=asynchronous
            )
            if observed is not None:
                return observed
        span.end()
        return response


def _finished(span: CallSpan, fresh: Any, error: BaseException | None) -> Any:
    """End the span of an answer read here; raise ``error`` (under ``raise_on``), else return ``fresh``."""
    span.end()
    if error is not None:
        raise error
    return fresh


class _SyncAdapter(_Adapter):
    """Shared by the sync adapters."""

    _inner_names = ("HTTPTransport", "BaseTransport")

    def handle_request(self, request: Any) -> Any:
        """Send through the inner transport; inspect Responses API answers on the way back."""
        hook = self.hook
        try:
            call = classify_request(request.method, request.url.path)
        except Exception as exc:
            hook.unselected(exc)
            call = None
        if call is None:
            return self._inner.handle_request(request)
        if self._defers:
            response = self._inner.handle_request(request)
            return _deferred(self, call, response)
        streamed, span = hook.asks_for_stream(call, request), hook.start_span(call, request)
        try:
            with span.activate():
                response = self._inner.handle_request(request)
                passed = self._passed_on(call, span, response, request, streamed, asynchronous=False)
                if passed is not None:
                    return passed
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
        return _finished(span, fresh, error)

    def close(self) -> None:
        """Close the inner transport."""
        self._inner.close()


class _AsyncAdapter(_Adapter):
    """Shared by the async adapters."""

    _inner_names = ("AsyncHTTPTransport", "AsyncBaseTransport")

    async def handle_async_request(self, request: Any) -> Any:
        """Send through the inner transport; inspect Responses API answers on the way back."""
        hook = self.hook
        try:
            call = classify_request(request.method, request.url.path)
        except Exception as exc:
            hook.unselected(exc)
            call = None
        if call is None:
            return await self._inner.handle_async_request(request)
        if self._defers:
            response = await self._inner.handle_async_request(request)
            return _deferred(self, call, response)
        streamed, span = hook.asks_for_stream(call, request), hook.start_span(call, request)
        try:
            with span.activate():
                response = await self._inner.handle_async_request(request)
                passed = self._passed_on(call, span, response, request, streamed, asynchronous=True)
                if passed is not None:
                    return passed
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
        return _finished(span, fresh, error)

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
