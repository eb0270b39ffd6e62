"""A FastAPI app that counts background responses' outcomes from OpenAI webhooks.

The production shape is :func:`create_app`: a route that hands each delivery to a
``bgwatch.webhooks.WebhookReceiver`` (signature, timestamp and replay checks by the SDK and
bgwatch; 4xx for bad deliveries), a follow-up ``AsyncOpenAI`` client with bgwatch's transport
that fetches the error code off the request path, and ``/metrics`` for Prometheus.

    OPENAI_WEBHOOK_SECRET=whsec_... uvicorn examples.webhook_receiver_fastapi:app   # production-like

Run as a script it demonstrates itself and exits: it uses an embedded simulator (or
``--base-url``), serves the app with uvicorn on a loopback port, creates background responses,
plays the platform's part (a signed ``response.*`` webhook when each one ends, plus one forged
and one replayed delivery), waits until the counters show every outcome and prints them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI, Request, Response
from openai import AsyncOpenAI, OpenAI
from prometheus_client import CollectorRegistry, make_asgi_app

import bgwatch
from bgwatch.simulator.webhooks import EVENT_TYPES, Delivery, WebhookSender, build_delivery, new_secret
from bgwatch.webhooks import WebhookReceiver


def create_app(receiver: WebhookReceiver, registry: CollectorRegistry | None = None) -> FastAPI:
    """The receiver app: ``POST /webhooks/openai`` and ``GET /metrics``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await receiver.aclose()  # let queued follow-ups finish

    app = FastAPI(lifespan=lifespan)

    @app.post("/webhooks/openai")
    async def openai_webhook(request: Request) -> Response:
        # Answers at once (2xx, or 4xx for forged/stale/replayed/malformed deliveries, 503 when
        # the follow-up backlog is full so that the platform retries later).
        result = receiver.handle(await request.body(), request.headers)
        if result.ok and result.event is not None:
            pass  # your own handling of result.event (the SDK's typed event) goes here
        return Response(result.content, result.status_code, dict(result.headers))

    app.mount("/metrics", make_asgi_app(registry=registry) if registry is not None else make_asgi_app())
    return app


def production_app() -> FastAPI:
    """``uvicorn examples.webhook_receiver_fastapi:app``: secret from OPENAI_WEBHOOK_SECRET."""
    client = AsyncOpenAI(http_client=bgwatch.async_http_client())
    return create_app(WebhookReceiver(client=client))


def __getattr__(name: str) -> FastAPI:  # lazily, so importing this module needs no secret
    if name == "app":
        return production_app()
    raise AttributeError(name)


# -- the self-contained demo -----------------------------------------------------------------------


@contextlib.contextmanager
def api_base_url(base_url: str | None) -> Iterator[str]:
    if base_url:
        yield base_url
        return
    from bgwatch.simulator import Simulator

    mix = "completed=40,failed=40,incomplete=10,cancelled=10"
    with Simulator(seed=11, mix=mix, durations=(0.05, 0.3)) as sim:
        yield sim.base_url


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port for the duration of the block."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def play_platform(
    base_url: str, api_key: str, ids: list[str], sender: WebhookSender, deadline: float
) -> dict[str, str]:
    """What OpenAI does: send a signed webhook when each response ends (watched without bgwatch)."""
    platform = OpenAI(base_url=base_url, api_key=api_key)
    statuses: dict[str, str] = {}
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for response_id in sorted(pending):
            response = platform.responses.retrieve(response_id)
            if response.status is not None and response.status in EVENT_TYPES:
                sender.send(EVENT_TYPES[response.status], response_id, response.completed_at or time.time())
                statuses[response_id] = str(response.status)
                pending.discard(response_id)
        time.sleep(0.05)
    platform.close()
    return statuses


def post(url: str, delivery: Delivery) -> int:
    request = urllib.request.Request(url, data=delivery.body, headers=delivery.headers, method="POST")
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def finished_total(registry: CollectorRegistry) -> float:
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == "bg_response_finished_total")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bgwatch webhook receiver demo (exits by itself)")
    parser.add_argument("--base-url", help="OpenAI-compatible base URL (default: start a simulator)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "sk-simulator"))
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=20.0, help="give up after this many seconds")
    args = parser.parse_args(argv)

    secret = new_secret()
    registry = CollectorRegistry()
    deadline = time.monotonic() + args.timeout
    with api_base_url(args.base_url) as base_url:
        follow_up = AsyncOpenAI(
            base_url=base_url, api_key=args.api_key, http_client=bgwatch.async_http_client(registry=registry)
        )
        receiver = WebhookReceiver(secret=secret, client=follow_up, registry=registry)
        with serve(create_app(receiver, registry)) as url:
            creator = OpenAI(base_url=base_url, api_key=args.api_key)  # the app that creates them
            ids = [
                creator.responses.create(model="gpt-4o-mini", input=f"job {n}", background=True).id
                for n in range(args.count)
            ]
            sender = WebhookSender(url + "/webhooks/openai", secret)
            statuses = play_platform(base_url, args.api_key, ids, sender, deadline)
            forged = WebhookSender(url + "/webhooks/openai", new_secret()).send("response.failed", ids[0], time.time())
            print(f"forged delivery answered {forged.status}")
            # a second, genuine delivery for a response already counted, then a replay of it
            again = build_delivery(secret, EVENT_TYPES[statuses[ids[0]]], ids[0], time.time())
            replayed = [post(url + "/webhooks/openai", again), post(url + "/webhooks/openai", again)]
            print(f"a delivery sent twice was answered {replayed[0]}, then {replayed[1]}")
            while finished_total(registry) < args.count and time.monotonic() < deadline:
                time.sleep(0.02)
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "/metrics/") as answer:
                exposition = answer.read().decode()
    print(f"{len(sender.sent)} webhooks delivered, all answered {sorted({s.status for s in sender.sent})}")
    for line in exposition.splitlines():
        if line.startswith(
            ("bg_response_finished_total", "bg_response_failed_total", "bgwatch_webhook_rejected_total")
        ):
            print("  " + line)
    ok = finished_total(registry) == args.count and forged.status == 401 and replayed == [200, 409]
    print("every response counted once:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
