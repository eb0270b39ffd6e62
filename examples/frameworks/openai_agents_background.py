"""OpenAI Agents SDK: an ``AsyncOpenAI`` on bgwatch's client, and what its runner does with
background responses.

    python examples/frameworks/openai_agents_background.py              # embedded simulator
    OPENAI_API_KEY=sk-... python examples/frameworks/openai_agents_background.py --base-url https://api.openai.com/v1

``set_default_openai_client(client)`` (or ``OpenAIResponsesModel(model=..., openai_client=client)``)
makes every model call go through bgwatch's transport. ``ModelSettings(extra_args={"background": True})``
sends ``background: true``, and then:

* ``Runner.run`` creates the response and takes the ``queued`` answer as the model's turn: it
  never polls, ``final_output`` is ``""`` and the response runs on unobserved. Wait for it
  yourself (``bgwatch.async_wait(client, result.raw_responses[-1].response_id)``); the agent
  loop (tools, handoffs) does not go on from there.
* ``Runner.run_streamed`` works: the stream carries the response to its end, bgwatch counts
  the outcome from the events, and a failed response raises ``ModelBehaviorError``.
"""

from __future__ import annotations

import asyncio
import sys

from _support import API_KEY, api_base_url, arguments, report
from agents import (
    Agent,
    ModelBehaviorError,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    set_default_openai_client,
    set_tracing_disabled,
)
from openai import AsyncOpenAI
from prometheus_client import CollectorRegistry

import bgwatch

BACKGROUND = ModelSettings(extra_args={"background": True})


async def run_then_wait(client: AsyncOpenAI, model: str, count: int) -> list[str]:
    """``Runner.run``: the runner stops at the queued answer; bgwatch.async_wait finishes the job."""
    agent = Agent(
        name="background",
        instructions="Answer briefly.",
        model=OpenAIResponsesModel(model=model, openai_client=client),
        model_settings=BACKGROUND,
    )
    outcomes = []
    for number in range(count):
        result = await Runner.run(agent, f"Say hello #{number}")
        assert result.final_output == ""  # the runner took the queued response as the answer
        response_id = result.raw_responses[-1].response_id
        assert response_id is not None
        try:
            response = await bgwatch.async_wait(client, response_id, timeout=120)
        except bgwatch.ResponseFailed as exc:
            outcomes.append(f"run + wait: failed:{exc.code}")
            continue
        outcomes.append(f"run + wait: {response.status}: {response.output_text[:30]!r}")
    return outcomes


async def run_streamed(model: str, count: int) -> list[str]:
    """``Runner.run_streamed`` on the default client: the stream brings the outcome."""
    agent = Agent(name="streamed", instructions="Answer briefly.", model=model, model_settings=BACKGROUND)
    outcomes = []
    for number in range(count):
        result = Runner.run_streamed(agent, f"Say hello #{number}")
        try:
            async for _event in result.stream_events():
                pass
        except ModelBehaviorError:
            outcomes.append("run_streamed: failed (ModelBehaviorError)")
            continue
        outcomes.append(f"run_streamed: completed: {str(result.final_output)[:30]!r}")
    return outcomes


async def run(base_url: str, model: str, count: int, registry: CollectorRegistry) -> list[str]:
    client = AsyncOpenAI(base_url=base_url, api_key=API_KEY, http_client=bgwatch.async_http_client(registry=registry))
    set_default_openai_client(client, use_for_tracing=False)
    async with client:
        return await run_then_wait(client, model, count) + await run_streamed(model, count)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, argv)

    set_tracing_disabled(True)  # the SDK's trace exporter would upload to OpenAI; not needed here
    registry = CollectorRegistry()  # private here, to print only bgwatch's series; usually the global one
    with api_base_url(args.base_url) as base_url:
        outcomes = asyncio.run(run(base_url, args.model, args.count, registry))
    for number, outcome in enumerate(outcomes):
        print(f"response {number:2d}: {outcome}")
    return report(registry, expected_finished=2 * args.count)


if __name__ == "__main__":
    sys.exit(main())
