"""bgwatch: make failures of OpenAI background responses visible and catchable.

The API answers every poll of a background response with HTTP 200, also when the response
ended ``failed``, ``incomplete`` or ``cancelled``. bgwatch sits in the HTTP client the SDK
uses, counts those outcomes once per response (Prometheus, OpenTelemetry) and, when asked,
raises a typed exception::

    import bgwatch
    from openai import OpenAI

    client = OpenAI(http_client=bgwatch.http_client(raise_on=("failed",)))
    try:
        response = client.responses.retrieve(response_id)
    except bgwatch.RateLimitExceeded as exc:
        ...

``__all__`` is the public API; everything else may change without notice.
"""

from __future__ import annotations

from . import webhooks
from ._classify import Observation
from ._wait import WaitTimeout, async_create_and_wait, async_wait, create_and_wait, wait
from ._watcher import Watcher, default_watcher
from .errors import (
    BackgroundResponseError,
    BgwatchError,
    BioPolicy,
    ConfigurationError,
    DataResidencyMismatch,
    ImageError,
    InvalidPrompt,
    MaxMessagesReached,
    MaxOutputTokensReached,
    MisalignmentPolicyViolation,
    PolicyViolation,
    RateLimitExceeded,
    ResponseCancelled,
    ResponseContentFiltered,
    ResponseFailed,
    ResponseIncomplete,
    ResponseSteered,
    ServerError,
    UnrecognizedFailure,
    UnrecognizedIncomplete,
    VectorStoreTimeout,
    exception_class_for,
    raise_for_status,
)
from .exposition import mark_process_dead, metrics_asgi_app, metrics_wsgi_app, start_metrics_server
from .transports import (
    AsyncHttpx2Transport,
    AsyncHttpxTransport,
    AsyncTransport,
    Httpx2Transport,
    HttpxTransport,
    Transport,
    async_http_client,
    http_client,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncHttpx2Transport",
    "AsyncHttpxTransport",
    "AsyncTransport",
    "BackgroundResponseError",
    "BgwatchError",
    "BioPolicy",
    "ConfigurationError",
    "DataResidencyMismatch",
    "Httpx2Transport",
    "HttpxTransport",
    "ImageError",
    "InvalidPrompt",
    "MaxMessagesReached",
    "MaxOutputTokensReached",
    "MisalignmentPolicyViolation",
    "Observation",
    "PolicyViolation",
    "RateLimitExceeded",
    "ResponseCancelled",
    "ResponseContentFiltered",
    "ResponseFailed",
    "ResponseIncomplete",
    "ResponseSteered",
    "ServerError",
    "Transport",
    "UnrecognizedFailure",
    "UnrecognizedIncomplete",
    "VectorStoreTimeout",
    "WaitTimeout",
    "Watcher",
    "__version__",
    "async_create_and_wait",
    "async_http_client",
    "async_wait",
    "create_and_wait",
    "default_watcher",
    "exception_class_for",
    "http_client",
    "mark_process_dead",
    "metrics_asgi_app",
    "metrics_wsgi_app",
    "raise_for_status",
    "start_metrics_server",
    "wait",
    "webhooks",
]
