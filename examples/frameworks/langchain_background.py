"""LangChain: ``ChatOpenAI`` on bgwatch's HTTP clients, background calls, and waiting for them.

    python examples/frameworks/langchain_background.py                   # embedded simulator
    OPENAI_API_KEY=sk-... python examples/frameworks/langchain_background.py --base-url https://api.openai.com/v1

``ChatOpenAI`` builds its own ``OpenAI`` and ``AsyncOpenAI`` clients; ``http_client`` is used
only by the sync one and ``http_async_client`` only by the async one, so pass both.
``model_kwargs={"background": True}`` makes every call a background response: the message
that ``invoke`` returns is empty, with ``response_metadata["status"] == "queued"`` and the
response id. Waiting is up to you: ``bgwatch.wait(llm.root_client, id)`` (or
``bgwatch.async_wait(llm.root_async_client, id)``) polls through the same instrumented
client, so each poll and the outcome are counted once, and raises the typed exception.
"""

from __future__ import annotations

import asyncio
import sys

from _support import API_KEY, api_base_url, arguments, report
from langchain_openai import ChatOpenAI
from prometheus_client import CollectorRegistry

import bgwatch


def background_llm(base_url: str, model: str, registry: CollectorRegistry) -> ChatOpenAI:
    return ChatOpenAI(
        model=model,
        base_url=base_url,
        api_key=API_KEY,
        http_client=bgwatch.http_client(registry=registry),
        http_async_client=bgwatch.async_http_client(registry=registry),
        use_responses_api=True,
        model_kwargs={"background": True},
    )


def run_sync(llm: ChatOpenAI, count: int) -> list[str]:
    outcomes = []
    for number in range(count):
        message = llm.invoke(f"Say hello #{number}")
        response_id = message.response_metadata["id"]  # status is "queued": nothing has run yet
        try:
            response = bgwatch.wait(llm.root_client, response_id, timeout=120)
        except bgwatch.ResponseFailed as exc:
            outcomes.append(f"failed:{exc.code}")
            continue
        outcomes.append(f"{response.status}: {response.output_text[:30]!r}")
    return outcomes


async def run_async(llm: ChatOpenAI, count: int) -> list[str]:
    async def one(number: int) -> str:
        message = await llm.ainvoke(f"Say hello #{number}")
        try:
            response = await bgwatch.async_wait(llm.root_async_client, message.response_metadata["id"], timeout=120)
        except bgwatch.ResponseFailed as exc:
            return f"failed:{exc.code}"
        return str(response.status)

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)

    registry = CollectorRegistry()  # private here, to print only bgwatch's series; usually the global one
    with api_base_url(args.base_url) as base_url:
        llm = background_llm(base_url, args.model, registry)
        outcomes = run_sync(llm, args.count) + asyncio.run(run_async(llm, args.count))
    for number, outcome in enumerate(outcomes):
        print(f"response {number:2d}: {outcome}")
    return report(registry, expected_finished=2 * args.count)


if __name__ == "__main__":
    sys.exit(main())
