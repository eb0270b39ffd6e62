"""Several worker processes counting at once into one multiprocess directory.

Each worker is a ``multiprocessing`` (spawn) process started with ``PROMETHEUS_MULTIPROC_DIR``
in its environment, so it is set before anything is imported. It drives the real SDK through
bgwatch's transport over an in-process fake API: background responses created, polled to
their planned outcome, some left in flight, and reports what it did (its ground truth). One
worker returns normally, one ends with ``os._exit`` right after its last count (no atexit, no
flush), one is SIGKILLed by the parent while idle. One scrape of the directory must then hold
exactly the sum of every worker's counts, the dead ones included; marking the dead workers
dead drops their in-flight share and keeps their counters.

(tests/test_exposition.py covers the same mode with gunicorn workers and plain subprocesses;
this test adds concurrent multiprocessing workers and the ``os._exit`` death.)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import multiprocess as prometheus_multiprocess

from .conftest import response_body

RESPONSES = 150
LEFT_IN_FLIGHT = 7
OUTCOMES = [
    ("completed", None, None),
    ("failed", "server_error", None),
    ("failed", "rate_limit_exceeded", None),
    ("incomplete", None, "max_output_tokens"),
    ("cancelled", None, None),
]


def _worker(index: int, ending: str, conn: Connection) -> None:
    """One worker process (the environment already names the multiprocess directory)."""
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    import httpx
    import openai

    import bgwatch

    polls: Counter[str] = Counter()

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "POST":
            handle.created += 1  # type: ignore[attr-defined]
            body = response_body(f"resp_{index}_{handle.created}", "queued")  # type: ignore[attr-defined]
        else:
            response_id = path.rsplit("/", 1)[1]
            n = int(response_id.rsplit("_", 1)[1])
            polls[response_id] += 1
            if polls[response_id] == 1:
                body = response_body(response_id, "in_progress")
            else:
                status, code, reason = OUTCOMES[(index + n) % len(OUTCOMES)]
                body = response_body(response_id, status, code=code, reason=reason)
        return httpx.Response(200, json=body, headers={"x-request-id": "req_1"})

    handle.created = 0  # type: ignore[attr-defined]
    transport = bgwatch.HttpxTransport(httpx.MockTransport(handle))
    client = openai.OpenAI(
        api_key="sk-test", base_url="http://api.test/v1", http_client=httpx.Client(transport=transport)
    )
    truth: dict[str, Any] = {"pid": os.getpid(), "finished": Counter(), "codes": Counter(), "reasons": Counter()}
    for n in range(RESPONSES):
        created = client.responses.create(model="gpt-4.1", input="hi", background=True)
        if n < LEFT_IN_FLIGHT:
            continue
        while True:
            polled = client.responses.retrieve(created.id)
            if polled.status in ("completed", "failed", "incomplete", "cancelled"):
                break
        truth["finished"][polled.status] += 1
        if polled.error is not None:
            truth["codes"][polled.error.code] += 1
        if polled.incomplete_details is not None:
            truth["reasons"][polled.incomplete_details.reason] += 1
    truth["created"] = RESPONSES
    truth["polls"] = sum(polls.values())
    truth["in_flight"] = LEFT_IN_FLIGHT
    conn.send(json.dumps(truth))
    if ending == "os._exit":
        os._exit(0)  # no atexit, no flush, no cleanup of any kind
    if ending == "sigkill":
        conn.recv()  # the parent kills us while we wait here
    conn.close()


def _scrape(directory: Path) -> dict[str, Counter[str]]:
    """One scrape of the directory: sample name -> label value -> summed value."""
    registry = CollectorRegistry()
    prometheus_multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    found: dict[str, Counter[str]] = {}
    for metric in registry.collect():
        for s in metric.samples:
            key = s.labels.get("code") or s.labels.get("reason") or s.labels.get("status") or ""
            found.setdefault(s.name, Counter())[key] += s.value
    return found


def test_workers_one_scrape_has_every_count_and_dead_workers_lose_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("httpx")
    ctx = multiprocessing.get_context("spawn")
    endings = ["return", "return", "os._exit", "sigkill"]
    workers = []
    # The children inherit the environment at start: the variable is set before they import anything.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for index, ending in enumerate(endings):
        ours, theirs = ctx.Pipe()
        process = ctx.Process(target=_worker, args=(index, ending, theirs))
        process.start()
        workers.append((process, ours, ending))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")

    truths = []
    for process, conn, ending in workers:
        assert conn.poll(120), f"worker {ending} did not report"
        truths.append(json.loads(conn.recv()))
        if ending == "sigkill":
            assert process.pid is not None
            os.kill(process.pid, signal.SIGKILL)
        process.join(30)
        assert process.exitcode == (-signal.SIGKILL if ending == "sigkill" else 0)

    expected_finished = sum((Counter(t["finished"]) for t in truths), Counter())
    expected_codes = sum((Counter(t["codes"]) for t in truths), Counter())
    expected_reasons = sum((Counter(t["reasons"]) for t in truths), Counter())
    scraped = _scrape(tmp_path)
    assert scraped["bg_response_finished_total"] == expected_finished
    assert scraped["bg_response_failed_total"] == expected_codes
    assert scraped["bg_response_incomplete_total"] == expected_reasons
    assert sum(scraped["bg_response_created_total"].values()) == sum(t["created"] for t in truths)
    assert sum(scraped["bg_response_polls_total"].values()) == sum(t["polls"] for t in truths)
    assert sum(scraped["bg_response_duration_seconds_count"].values()) == sum(expected_finished.values())
    # Every worker's in-flight share is in the files until the process is marked dead.
    assert sum(scraped["bg_response_in_flight"].values()) == LEFT_IN_FLIGHT * len(workers)

    for truth in truths:  # what gunicorn's child_exit hook does (bgwatch.mark_process_dead)
        prometheus_multiprocess.mark_process_dead(truth["pid"], path=str(tmp_path))  # type: ignore[no-untyped-call]
    after = _scrape(tmp_path)
    assert sum(after.get("bg_response_in_flight", Counter()).values()) == 0
    assert after["bg_response_finished_total"] == expected_finished  # counters of the dead are kept
    assert after["bg_response_failed_total"] == expected_codes
    assert sum(after["bg_response_created_total"].values()) == len(workers) * RESPONSES
