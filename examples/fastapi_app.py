"""FastAPI: start background responses from an endpoint, watch them with bgwatch, serve ``/metrics``.

    OPENAI_API_KEY=sk-... uvicorn examples.fastapi_app:app     # production-like (OPENAI_BASE_URL too)
    python examples/fastapi_app.py                               # self-contained run, exits by itself

``POST /jobs`` creates a background response and returns its id at once; a task then waits
for it with ``bgwatch.async_wait`` (which honours ``openai-poll-after-ms``) and records how it
ended, typed exceptions included; ``GET /jobs/{id}`` reports it. ``GET /metrics`` is
``bgwatch.metrics_asgi_app()``: Prometheus sees ``bg_response_failed_total{code=...}`` and the
rest of the contract. Run as a script, it starts the embedded simulator (unless
``--base-url``), serves the app with uvicorn on a loopback port, creates a few jobs through the
HTTP API, scrapes ``/metrics`` and exits: 0 when bgwatch counted every job once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from openai import AsyncOpenAI
from pydantic import BaseModel

import bgwatch

MODEL = os.environ.get("BGWATCH_MODEL", "gpt-4o-mini")


class JobRequest(BaseModel):
    prompt: str = "Summarise the quarterly report in three sentences."


class Job(BaseModel):
    id: str
    status: str
    code: str | None = None
    reason: str | None = None
    retryable: bool | None = None


def create_app(client_factory: Callable[[], AsyncOpenAI] | None = None) -> FastAPI:
    """The app; ``client_factory`` builds the AsyncOpenAI client at startup (default: from the env)."""

    def default_client() -> AsyncOpenAI:
        return AsyncOpenAI(http_client=bgwatch.async_http_client())

    make_client = client_factory or default_client
    jobs: dict[str, Job] = {}
    tasks: set[asyncio.Task[None]] = set()
    state: dict[str, AsyncOpenAI] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["client"] = make_client()
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await state["client"].close()

    app = FastAPI(title="bgwatch FastAPI example", lifespan=lifespan)
    # GET /metrics answered directly. app.mount("/metrics", bgwatch.metrics_asgi_app()) works
    # as well, but Starlette then redirects /metrics to /metrics/ (Prometheus follows it).
    app.add_route("/metrics", bgwatch.metrics_asgi_app())

    async def watch(response_id: str) -> None:
        client = state["client"]
        try:
            response = await bgwatch.async_wait(client, response_id, timeout=3600)
            jobs[response_id] = Job(id=response_id, status=str(response.status))
        except bgwatch.BackgroundResponseError as exc:  # failed / incomplete / cancelled, typed
            # exc.retryable: a new create may succeed (server_error, rate_limit_exceeded, ...)
            jobs[response_id] = Job(
                id=response_id, status=exc.status, code=exc.code, reason=exc.reason, retryable=exc.retryable
            )
        except bgwatch.WaitTimeout as exc:
            jobs[response_id] = Job(id=response_id, status=f"timeout ({exc.last_status})")

    @app.post("/jobs", status_code=202)
    async def start_job(request: JobRequest) -> Job:
        response = await state["client"].responses.create(model=MODEL, input=request.prompt, background=True)
        job = jobs[response.id] = Job(id=response.id, status=str(response.status))
        task = asyncio.create_task(watch(response.id))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return job

    @app.get("/jobs/{response_id}")
    async def get_job(response_id: str) -> Job:
        job = jobs.get(response_id)
        if job is None:
            raise HTTPException(404, "unknown job")
        return job

    return app


app = create_app()
"""``uvicorn examples.fastapi_app:app``: the client is built at startup from OPENAI_API_KEY/OPENAI_BASE_URL."""


# -- the self-contained run ----------------------------------------------------------------------


@contextlib.contextmanager
def api_base_url(base_url: str | None) -> Iterator[str]:
    """The given base URL, or that of an embedded simulator started for the run."""
    if base_url:
        yield base_url
        return
    from bgwatch.simulator import Simulator

    mix = "completed=50,failed=30,incomplete=10,cancelled=10,codes=server_error|rate_limit_exceeded"
    with Simulator(seed=9, mix=mix, durations=(0.1, 0.6)) as sim:
        yield sim.base_url


@contextlib.contextmanager
def serve(application: FastAPI) -> Iterator[str]:
    """Serve ``application`` with uvicorn on a free loopback port for the duration of the block."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(application, log_level="warning"))
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


def http(method: str, url: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        body = reply.read().decode()
        return json.loads(body) if reply.headers.get_content_type() == "application/json" else body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base-url", help="OpenAI-compatible base URL (default: start a simulator)")
    parser.add_argument("--count", type=int, default=6, help="jobs to start")
    args = parser.parse_args(argv)
    api_key = os.environ.get("OPENAI_API_KEY", "sk-simulator")

    with api_base_url(args.base_url) as base_url:
        application = create_app(
            lambda: AsyncOpenAI(base_url=base_url, api_key=api_key, http_client=bgwatch.async_http_client())
        )
        with serve(application) as url:
            ids = [http("POST", f"{url}/jobs", {"prompt": f"job {n}"})["id"] for n in range(args.count)]
            deadline = time.monotonic() + 60
            while True:
                jobs = [http("GET", f"{url}/jobs/{i}") for i in ids]
                if all(job["status"] not in ("queued", "in_progress") for job in jobs):
                    break
                if time.monotonic() > deadline:
                    print("jobs did not finish in time")
                    return 1
                time.sleep(0.2)
            scrape = http("GET", f"{url}/metrics")

    for job in jobs:
        detail = job["code"] or job["reason"] or ""
        print(f"job {job['id']}: {job['status']} {detail}".rstrip())
    print(f"GET {url}/metrics:")
    finished = 0.0
    for line in scrape.splitlines():
        if line.startswith(("bg_response_finished_total", "bg_response_failed_total", "bg_response_in_flight")):
            print("  " + line)
            if line.startswith("bg_response_finished_total"):
                finished += float(line.rsplit(" ", 1)[1])
    ok = finished == args.count
    print("every response counted once:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
