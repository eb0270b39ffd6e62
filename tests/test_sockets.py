"""The transport hook over real loopback sockets against the simulator (not an in-process inner)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import openai
import pytest
from prometheus_client import CollectorRegistry

import bgwatch
from bgwatch.simulator import Simulator

from .conftest import LIBRARIES, sample, total

MODEL = "gpt-4o-mini"


@pytest.fixture
def gzip_sim() -> Iterator[Simulator]:
    with Simulator(seed=7, durations=(0.01, 0.03), poll_after_ms=5, gzip_responses=True, output_bytes=200_000) as sim:
        yield sim


def wait_all(sim: Simulator, ids: list[str]) -> None:
    import time

    deadline = time.monotonic() + 10
    while not set(ids) <= set(sim.ledger()):
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("library", LIBRARIES)
def test_gzip_bodies_over_a_real_socket_are_counted_and_reach_the_sdk_intact(
    gzip_sim: Simulator, registry: CollectorRegistry, library: str
) -> None:
    watcher = bgwatch.Watcher(registry=registry)
    http = bgwatch.http_client(watcher=watcher, library=library)  # type: ignore[arg-type]
    client = openai.OpenAI(base_url=gzip_sim.base_url, api_key="sk-test", http_client=http)
    ids = [client.responses.create(model=MODEL, input="x", background=True).id for _ in range(20)]
    wait_all(gzip_sim, ids)
    raw = client.responses.with_raw_response.retrieve(ids[0])
    assert raw.headers["content-encoding"] == "gzip"  # it really travelled compressed
    finals = {rid: client.responses.retrieve(rid) for rid in ids}
    ledger = gzip_sim.ledger()
    for rid, response in finals.items():
        assert response.status == ledger[rid].status
        if response.status == "completed":
            assert len(response.output_text) >= 200_000  # the whole body decoded, not just our prefix
    for status in ("completed", "failed", "incomplete", "cancelled"):
        expected = sum(1 for rid in ids if ledger[rid].status == status)
        assert sample(registry, "bg_response_finished_total", status=status, model=MODEL) == expected
    assert total(registry, "bg_response_created_total") == len(ids)
    assert sample(registry, "bg_response_in_flight") == 0
    assert total(registry, "bgwatch_internal_errors_total") == 0
    http.close()


def test_async_client_over_a_real_socket(gzip_sim: Simulator, registry: CollectorRegistry) -> None:
    watcher = bgwatch.Watcher(registry=registry)

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(
            base_url=gzip_sim.base_url, api_key="sk-test", http_client=bgwatch.async_http_client(watcher=watcher)
        )
        ids = [(await client.responses.create(model=MODEL, input="x", background=True)).id for _ in range(10)]
        await asyncio.to_thread(wait_all, gzip_sim, ids)
        await asyncio.gather(*(client.responses.retrieve(rid) for rid in ids for _ in range(3)))
        await client.close()
        return ids

    ids = asyncio.run(main())
    assert total(registry, "bg_response_finished_total") == len(ids)
    assert sample(registry, "bg_response_polls_total", status="completed") + sample(
        registry, "bg_response_polls_total", status="failed"
    ) + sample(registry, "bg_response_polls_total", status="incomplete") + sample(
        registry, "bg_response_polls_total", status="cancelled"
    ) == 3 * len(ids)


class BrokenSink:
    def observed(self, *args: object) -> None:
        raise RuntimeError("sink bug")

    def adjust_in_flight(self, delta: int) -> None:  # pragma: no cover - not reached here
        raise RuntimeError("sink bug")

    def abandoned(self, models: object) -> None:  # pragma: no cover - not reached here
        raise RuntimeError("sink bug")

    def forked(self, in_flight_forgotten: int) -> None:  # pragma: no cover - not reached here
        raise RuntimeError("sink bug")

    def internal_error(self, stage: str) -> None:
        pass


def test_internal_errors_are_logged_once_per_stage_at_debug(
    gzip_sim: Simulator, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = bgwatch.Watcher(registry=registry, sinks=[BrokenSink()])
    client = openai.OpenAI(base_url=gzip_sim.base_url, api_key="k", http_client=bgwatch.http_client(watcher=watcher))
    with caplog.at_level(logging.DEBUG, logger="bgwatch"):
        for _ in range(5):
            client.responses.create(model=MODEL, input="x", background=True)
    assert sample(registry, "bgwatch_internal_errors_total", stage="sink") == 5
    records = [r for r in caplog.records if r.name == "bgwatch" and "internal error" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG
    message = records[0].getMessage()
    assert "'sink'" in message and "RuntimeError" in message and "in observed" in message  # type and frames
    assert records[0].exc_info is None  # a traceback would end with the exception's message
