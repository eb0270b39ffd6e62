"""Framework recipes (docs/frameworks.md, examples/frameworks/): LangChain, the OpenAI Agents
SDK and LiteLLM on bgwatch's clients, against the embedded simulator, with bgwatch's counts
checked against the simulator's ledger.

Marked ``frameworks``: they need langchain-openai, openai-agents and litellm, which pin their
own openai versions and are heavy, so they run in their own venv (``make pytest-frameworks``,
part of ``make test``); the other runs deselect them. The frameworks are imported inside the
tests so that collecting this file elsewhere needs none of them.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch.simulator import Simulator

from .conftest import sample
from .test_examples import run

pytestmark = pytest.mark.frameworks

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM would download its cost map at import

MODEL = "gpt-4o-mini"
MIX = "completed=50,failed=50,codes=server_error|rate_limit_exceeded"
API_KEY = "sk-simulator"


def simulator() -> Simulator:
    # Seed 2 draws both outcomes within the first few responses, so a test can tell a missed
    # failure from a correct count.
    return Simulator(seed=2, mix=MIX, durations=(0.05, 0.25))


def bgwatch_counts(registry: CollectorRegistry) -> dict[str, Any]:
    """What bgwatch counted: creates, terminal states by status, failures by code."""
    finished: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    created = 0.0
    for metric in registry.collect():
        for s in metric.samples:
            if s.name == "bg_response_finished_total" and s.value:
                finished[s.labels["status"]] += int(s.value)
            elif s.name == "bg_response_failed_total" and s.value:
                failed[s.labels["code"]] += int(s.value)
            elif s.name == "bg_response_created_total":
                created += s.value
    return {"created": int(created), "finished": finished, "failed": failed}


def ledger_counts(sim: Simulator) -> dict[str, Any]:
    """The same, from the simulator's ground truth (every response here is a background one)."""
    deadline = time.monotonic() + 10
    while len(sim.ledger()) < len(sim.outcomes()) and time.monotonic() < deadline:
        time.sleep(0.02)
    ledger = sim.ledger()
    assert len(ledger) == len(sim.outcomes())
    return {
        "created": len(ledger),
        "finished": Counter(o.status for o in ledger.values()),
        "failed": Counter(o.code for o in ledger.values() if o.status == "failed"),
    }


def assert_counted_like_the_ledger(registry: CollectorRegistry, sim: Simulator) -> None:
    truth = ledger_counts(sim)
    assert truth["finished"]["failed"] and truth["finished"]["completed"], truth  # both outcomes were drawn
    assert bgwatch_counts(registry) == truth
    assert sample(registry, "bg_response_in_flight") == 0


# -- LangChain ---------------------------------------------------------------------------------


def chat_openai(sim: Simulator, registry: CollectorRegistry, **options: Any) -> Any:
    """``ChatOpenAI`` on the Responses API with bgwatch's sync client (and what ``options`` add)."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=MODEL,
        base_url=sim.base_url,
        api_key=API_KEY,
        http_client=bgwatch.http_client(registry=registry),
        use_responses_api=True,
        **options,
    )


def test_langchain_background_calls_waited_on_root_clients_count_like_the_ledger(registry: CollectorRegistry) -> None:
    with simulator() as sim:
        llm = chat_openai(
            sim,
            registry,
            http_async_client=bgwatch.async_http_client(registry=registry),
            model_kwargs={"background": True},
        )
        statuses = []
        for n in range(4):
            message = llm.invoke(f"hello {n}")
            assert message.content == [] and message.response_metadata["status"] == "queued"
            statuses.append(bgwatch.wait(llm.root_client, message.response_metadata["id"], raise_on=()).status)

        async def async_calls() -> list[str]:
            async def one(n: int) -> str:
                message = await llm.ainvoke(f"hello {n}")
                waited = await bgwatch.async_wait(llm.root_async_client, message.response_metadata["id"], raise_on=())
                return str(waited.status)

            return list(await asyncio.gather(*(one(n) for n in range(4))))

        statuses += asyncio.run(async_calls())
        assert sim.request_log.count("GET") > 0  # the waits polled through the instrumented clients
        assert Counter(statuses) == ledger_counts(sim)["finished"]
        assert_counted_like_the_ledger(registry, sim)


def test_langchain_background_through_extra_body_or_an_invoke_argument(registry: CollectorRegistry) -> None:
    with simulator() as sim:
        plain = chat_openai(sim, registry)
        via_body = chat_openai(sim, registry, extra_body={"background": True})
        ids = [
            plain.invoke("as an argument", background=True).response_metadata["id"],
            via_body.invoke("in the body").response_metadata["id"],
        ]
        assert sample(registry, "bg_response_created_total", model=MODEL) == 2
        for response_id in ids:
            bgwatch.wait(plain.root_client, response_id, raise_on=())
        assert bgwatch_counts(registry) == ledger_counts(sim)


def test_langchain_http_client_alone_leaves_async_calls_unobserved(registry: CollectorRegistry) -> None:
    """``http_client`` serves only the sync client: the async one is LangChain's own."""
    with simulator() as sim:
        llm = chat_openai(sim, registry, model_kwargs={"background": True})
        asyncio.run(llm.ainvoke("hello"))
        assert len(sim.outcomes()) == 1
        assert sample(registry, "bg_response_created_total", model=MODEL) == 0
        llm.invoke("hello")
        assert sample(registry, "bg_response_created_total", model=MODEL) == 1


# -- OpenAI Agents SDK -------------------------------------------------------------------------


@pytest.fixture
def agents_sdk() -> Any:
    import agents

    agents.set_tracing_disabled(True)  # its exporter would upload traces to OpenAI
    return agents


def test_agents_runner_does_not_poll_background_responses(registry: CollectorRegistry, agents_sdk: Any) -> None:
    from openai import AsyncOpenAI

    with simulator() as sim:
        client = AsyncOpenAI(
            base_url=sim.base_url, api_key=API_KEY, http_client=bgwatch.async_http_client(registry=registry)
        )
        agent = agents_sdk.Agent(
            name="background",
            model=agents_sdk.OpenAIResponsesModel(model=MODEL, openai_client=client),
            model_settings=agents_sdk.ModelSettings(extra_args={"background": True}),
        )

        async def run_then_wait() -> None:  # one event loop: the client's connections belong to it
            results = [await agents_sdk.Runner.run(agent, f"hello {n}") for n in range(4)]
            assert [r.final_output for r in results] == [""] * 4  # the queued answer taken as the turn
            await asyncio.to_thread(ledger_counts, sim)  # every response has ended on the server ...
            assert sim.request_log.count("GET") == 0  # ... and the runner never asked
            assert bgwatch_counts(registry)["created"] == 4
            assert bgwatch_counts(registry)["finished"] == Counter()
            assert sample(registry, "bg_response_in_flight") == 4
            for result in results:
                await bgwatch.async_wait(client, result.raw_responses[-1].response_id, raise_on=())

        asyncio.run(run_then_wait())
        assert_counted_like_the_ledger(registry, sim)


def test_agents_run_streamed_background_counts_like_the_ledger(registry: CollectorRegistry, agents_sdk: Any) -> None:
    from openai import AsyncOpenAI

    with simulator() as sim:
        client = AsyncOpenAI(
            base_url=sim.base_url, api_key=API_KEY, http_client=bgwatch.async_http_client(registry=registry)
        )
        agents_sdk.set_default_openai_client(client, use_for_tracing=False)
        agent = agents_sdk.Agent(
            name="streamed", model=MODEL, model_settings=agents_sdk.ModelSettings(extra_args={"background": True})
        )

        async def runs() -> Counter[str]:
            seen: Counter[str] = Counter()
            for n in range(6):
                result = agents_sdk.Runner.run_streamed(agent, f"hello {n}")
                try:
                    async for _event in result.stream_events():
                        pass
                except agents_sdk.ModelBehaviorError:
                    seen["failed"] += 1
                else:
                    assert result.final_output
                    seen["completed"] += 1
            return seen

        seen = asyncio.run(runs())
        assert sim.request_log.count("GET") == 0  # all from the create's stream
        assert seen == ledger_counts(sim)["finished"]
        assert_counted_like_the_ledger(registry, sim)


# -- LiteLLM -----------------------------------------------------------------------------------


def poll_until_done(get: Any, response: Any) -> Any:
    deadline = time.monotonic() + 30
    while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.05)
        response = get(response)
    return response


def test_litellm_per_call_client_counts_like_the_ledger(registry: CollectorRegistry) -> None:
    import litellm
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler, HTTPHandler
    from litellm.responses.utils import ResponsesAPIRequestUtils

    with simulator() as sim:
        handler = HTTPHandler(client=bgwatch.http_client(registry=registry, library="httpx"))
        where: dict[str, Any] = {"api_base": sim.base_url, "api_key": API_KEY, "client": handler}
        finals = []
        for n in range(4):
            created = litellm.responses(model=f"openai/{MODEL}", input=f"hello {n}", background=True, **where)
            # LiteLLM's id wraps the API's; bgwatch counts by the API's.
            api_id = ResponsesAPIRequestUtils.decode_responses_api_response_id(created.id)["response_id"]
            assert api_id in sim.outcomes() and created.id != api_id
            finals.append(
                poll_until_done(
                    lambda r: litellm.get_responses(response_id=r.id, custom_llm_provider="openai", **where), created
                )
            )

        async_handler = AsyncHTTPHandler(transport=bgwatch.AsyncHttpxTransport(registry=registry))
        async_where: dict[str, Any] = {**where, "client": async_handler}

        async def async_calls() -> list[Any]:
            async def one(n: int) -> Any:
                r = await litellm.aresponses(
                    model=f"openai/{MODEL}", input=f"hello {n}", background=True, **async_where
                )
                while r.status in ("queued", "in_progress"):
                    await asyncio.sleep(0.05)
                    r = await litellm.aget_responses(response_id=r.id, custom_llm_provider="openai", **async_where)
                return r

            return list(await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(4))), 30))

        finals += asyncio.run(async_calls())
        assert Counter(r.status for r in finals) == ledger_counts(sim)["finished"]
        assert Counter(r.error["code"] for r in finals if r.error) == ledger_counts(sim)["failed"]
        assert_counted_like_the_ledger(registry, sim)


def test_litellm_ignores_an_openai_client_and_the_global_sessions(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    import litellm
    from openai import OpenAI

    monkeypatch.setattr(litellm, "client_session", bgwatch.http_client(registry=registry, library="httpx"))
    monkeypatch.setattr(litellm, "aclient_session", bgwatch.async_http_client(registry=registry, library="httpx"))
    with simulator() as sim:
        where: dict[str, Any] = {"model": f"openai/{MODEL}", "input": "hello", "background": True}
        where |= {"api_base": sim.base_url, "api_key": API_KEY}
        litellm.responses(**where)  # global client_session
        asyncio.run(litellm.aresponses(**where))  # global aclient_session
        openai_client = OpenAI(
            base_url=sim.base_url, api_key=API_KEY, http_client=bgwatch.http_client(registry=registry)
        )
        litellm.responses(**where, client=openai_client)  # not a LiteLLM handler: ignored
        assert sim.request_log.count("POST", "/v1/responses") == 3
        assert bgwatch_counts(registry)["created"] == 0


# -- the examples ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["langchain_background.py", "openai_agents_background.py", "litellm_responses.py"])
def test_example_counts_like_the_ledger(script: str) -> None:
    with simulator() as sim:
        out = run(f"frameworks/{script}", "--base-url", sim.base_url, "--count", "3")
        truth = ledger_counts(sim)
    assert "every response counted once: True" in out
    failed_line = re.compile(r'bg_response_failed_total\{code="(?P<code>\w+)",model="\S+"\} (?P<value>\S+)')
    printed = {(m["code"], float(m["value"])) for m in failed_line.finditer(out)}
    assert truth["finished"]["failed"]
    assert printed == {(code, float(n)) for code, n in truth["failed"].items()}
