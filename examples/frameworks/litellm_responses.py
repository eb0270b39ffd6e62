"""LiteLLM: ``litellm.responses`` through bgwatch, with the per-call ``client=``.

    python examples/frameworks/litellm_responses.py                     # embedded simulator
    OPENAI_API_KEY=sk-... python examples/frameworks/litellm_responses.py --base-url https://api.openai.com/v1

``litellm.responses`` / ``litellm.get_responses`` speak HTTP through LiteLLM's own handler, not
through an ``openai`` client, so bgwatch goes in as that handler's client:
``client=HTTPHandler(client=bgwatch.http_client(library="httpx"))`` (LiteLLM uses legacy
``httpx``), and for ``aresponses`` / ``aget_responses``
``client=AsyncHTTPHandler(transport=bgwatch.AsyncHttpxTransport())``. Pass the same handler
to the create and to every poll. What does *not* work, silently: an ``OpenAI`` client as
``client=`` (ignored, LiteLLM builds its own), and the globals ``litellm.client_session`` /
``litellm.aclient_session`` (``litellm.responses`` never reads them).

LiteLLM hands back its own id (``resp_`` + base64 of provider, model id and the API's id);
``get_responses`` decodes it, and bgwatch counts by the API's id that it saw on the wire.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download of the cost map at import

import litellm
from _support import API_KEY, api_base_url, arguments, report
from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler, HTTPHandler
from litellm.types.llms.openai import ResponsesAPIResponse
from prometheus_client import CollectorRegistry

import bgwatch

POLL_SECONDS = 0.1
DEADLINE_SECONDS = 120.0
RUNNING = ("queued", "in_progress")


def outcome(response: ResponsesAPIResponse) -> str:
    """``status``, with the code when it failed (LiteLLM keeps ``error`` as a plain dict)."""
    return f"{response.status}:{response.error.get('code')}" if response.error else str(response.status)


def run_sync(base_url: str, model: str, count: int, registry: CollectorRegistry) -> list[str]:
    handler = HTTPHandler(client=bgwatch.http_client(registry=registry, library="httpx"))
    where = {"api_base": base_url, "api_key": API_KEY, "client": handler}  # the same for create and polls
    outcomes = []
    for number in range(count):
        response = litellm.responses(model=f"openai/{model}", input=f"Say hello #{number}", background=True, **where)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while response.status in RUNNING and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            response = litellm.get_responses(response_id=response.id, custom_llm_provider="openai", **where)
        outcomes.append(f"sync: {outcome(response)}")
    return outcomes


async def run_async(base_url: str, model: str, count: int, registry: CollectorRegistry) -> list[str]:
    handler = AsyncHTTPHandler(transport=bgwatch.AsyncHttpxTransport(registry=registry))
    where = {"api_base": base_url, "api_key": API_KEY, "client": handler}

    async def one(number: int) -> str:
        response = await litellm.aresponses(
            model=f"openai/{model}", input=f"Say hello #{number}", background=True, **where
        )
        deadline = time.monotonic() + DEADLINE_SECONDS
        while response.status in RUNNING and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            response = await litellm.aget_responses(response_id=response.id, custom_llm_provider="openai", **where)
        return f"async: {outcome(response)}"

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)

    registry = CollectorRegistry()  # private here, to print only bgwatch's series; usually the global one
    with api_base_url(args.base_url) as base_url:
        outcomes = run_sync(base_url, args.model, args.count, registry)
        outcomes += asyncio.run(run_async(base_url, args.model, args.count, registry))
    for number, outcome in enumerate(outcomes):
        print(f"response {number:2d}: {outcome}")
    return report(registry, expected_finished=2 * args.count)


if __name__ == "__main__":
    sys.exit(main())
