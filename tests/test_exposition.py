"""Serving /metrics: the standalone server, the ASGI and WSGI apps, and multiprocess mode with
real worker processes (gunicorn sync workers running examples/multiworker, SIGKILL included).

prometheus_client decides at import whether values live in memory or in mmap files, and this
test process imported it without ``PROMETHEUS_MULTIPROC_DIR``: everything multiprocess runs
in child processes.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import wsgiref.util
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import bgwatch
from bgwatch.exposition import MetricsASGIApp, metrics_registry, multiprocess_enabled, sweep_dead_processes
from bgwatch.simulator import Simulator

REPO = Path(__file__).resolve().parent.parent
MULTIWORKER = REPO / "examples" / "multiworker"
MODEL = "gpt-4o-mini"
POLL_PATH = re.compile(r"/responses/[^/]+$")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Exposition text -> {(sample name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_label(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, label: str) -> dict[str, int]:
    """Sum of a sample's series grouped by one label (zero series left out)."""
    found: Counter[str] = Counter()
    for (sample, labels), value in values.items():
        if sample == name and value:
            found[dict(labels)[label]] += int(value)
    return dict(found)


def value(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (sample, _), v in values.items() if sample == name)


def get(url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return str(reply.read().decode())


def run_forced(sim: Simulator, registry: CollectorRegistry, outcomes: list[str]) -> None:
    """Create one background response per forced outcome and poll each to its end."""
    client = OpenAI(base_url=sim.base_url, api_key="sk-test", http_client=bgwatch.http_client(registry=registry))
    with client:
        for outcome in outcomes:
            created = client.responses.create(
                model=MODEL, input="x", background=True, metadata={"bgwatch_outcome": outcome}
            )
            bgwatch.wait(client, created.id, raise_on=(), timeout=30)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(seed=1, durations=(0.01, 0.05), poll_after_ms=10) as simulator:
        yield simulator


OUTCOMES = ["failed:server_error", "failed:server_error", "failed:rate_limit_exceeded", "completed", "cancelled"]


def check_contract(text: str) -> None:
    values = samples(text)
    assert by_label(values, "bg_response_failed_total", "code") == {"server_error": 2, "rate_limit_exceeded": 1}
    assert by_label(values, "bg_response_finished_total", "status") == {"failed": 3, "completed": 1, "cancelled": 1}
    assert value(values, "bg_response_in_flight") == 0
    assert 'bg_response_failed_total{code="server_error",model="gpt-4o-mini"} 2.0' in text


# -- single process ----------------------------------------------------------------------------


def test_start_metrics_server_serves_the_contract(sim: Simulator) -> None:
    registry = CollectorRegistry()
    run_forced(sim, registry, OUTCOMES)
    server, thread = bgwatch.start_metrics_server(port=0, addr="127.0.0.1", registry=registry)
    try:
        assert thread.daemon
        text = get(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    check_contract(text)
    with pytest.raises(OSError):  # really stopped
        get(f"http://127.0.0.1:{server.server_port}/metrics", timeout=2)


def test_start_metrics_server_defaults_to_the_global_registry() -> None:
    assert not multiprocess_enabled()
    from prometheus_client import REGISTRY

    assert metrics_registry() is REGISTRY
    server, _ = bgwatch.start_metrics_server(port=0, addr="127.0.0.1")
    try:
        text = get(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert "python_info" in text  # the global registry's default collectors


@pytest.mark.parametrize("how", ["mount", "add_route"])
def test_asgi_app_in_fastapi(sim: Simulator, how: str) -> None:
    from fastapi import FastAPI
    from starlette.testclient import TestClient

    registry = CollectorRegistry()
    run_forced(sim, registry, OUTCOMES)
    app = FastAPI()
    if how == "mount":
        app.mount("/metrics", bgwatch.metrics_asgi_app(registry))
    else:
        app.add_route("/metrics", bgwatch.metrics_asgi_app(registry))

    @app.get("/")
    def index() -> dict[str, str]:
        return {"ok": "yes"}

    with TestClient(app) as client:
        reply = client.get("/metrics", follow_redirects=False)
        if how == "mount":  # Starlette's Mount answers /metrics with a redirect; Prometheus follows it
            assert reply.status_code == 307
            assert reply.headers["location"].endswith("/metrics/")
            reply = client.get("/metrics")
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/plain")
        check_contract(reply.text)
        assert client.get("/").json() == {"ok": "yes"}


def test_asgi_app_served_on_its_own_answers_lifespan() -> None:
    from starlette.testclient import TestClient

    registry = CollectorRegistry()
    bgwatch.Watcher(registry=registry)
    app = bgwatch.metrics_asgi_app(registry)
    assert isinstance(app, MetricsASGIApp)
    with TestClient(app) as client:  # runs lifespan startup and shutdown
        text = client.get("/metrics").text
    assert "bg_response_in_flight 0.0" in text


def test_asgi_app_under_uvicorn() -> None:
    import threading

    import uvicorn

    registry = CollectorRegistry()
    bgwatch.Watcher(registry=registry)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(bgwatch.metrics_asgi_app(registry), log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        text = get(f"http://127.0.0.1:{sock.getsockname()[1]}/metrics")
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert "bg_response_in_flight 0.0" in text


def test_wsgi_app(sim: Simulator) -> None:
    registry = CollectorRegistry()
    run_forced(sim, registry, OUTCOMES)
    app = bgwatch.metrics_wsgi_app(registry)
    environ: dict[str, Any] = {"PATH_INFO": "/metrics", "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers: status.append(s)))
    assert status == ["200 OK"]
    check_contract(body.decode())


def test_exports() -> None:
    for name in ("start_metrics_server", "metrics_asgi_app", "metrics_wsgi_app", "mark_process_dead"):
        assert name in bgwatch.__all__
        assert callable(getattr(bgwatch, name))


def test_multiprocess_dir_must_be_a_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    with pytest.raises(bgwatch.ConfigurationError, match="not a directory"):
        bgwatch.metrics_wsgi_app()


def test_multiprocess_set_after_import_warns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # This process imported prometheus_client without the variable: its values are in memory,
    # and an aggregated /metrics would silently leave them out.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="imported before"):
        registry = metrics_registry()
    assert list(registry.collect()) == []  # nothing in the files


def test_mark_process_dead_and_sweep_are_no_ops_without_multiprocess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.delenv("prometheus_multiproc_dir", raising=False)
    bgwatch.mark_process_dead(os.getpid())
    assert sweep_dead_processes() == []


# -- multiprocess: plain processes -------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, sys
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"]
    from openai import OpenAI
    import bgwatch
    from bgwatch.exposition import metrics_registry, sweep_dead_processes, _values_in_files

    mode, base_url = sys.argv[1], sys.argv[2]
    out = {"pid": os.getpid(), "in_files": _values_in_files()}
    if mode == "work":
        client = OpenAI(base_url=base_url, api_key="sk-test", http_client=bgwatch.http_client())
        for outcome in ("failed:server_error", "failed:vector_store_timeout", "completed"):
            r = client.responses.create(model="m", input="x", background=True, metadata={"bgwatch_outcome": outcome})
            bgwatch.wait(client, r.id, raise_on=(), timeout=30)
        for _ in range(2):  # left in flight when this process exits
            client.responses.create(model="m", input="x", background=True, metadata={"bgwatch_outcome": "completed"})
    else:
        if mode == "sweep":
            out["swept"] = sweep_dead_processes()
        values = {}
        for metric in metrics_registry().collect():
            for s in metric.samples:
                key = s.name + json.dumps(s.labels, sort_keys=True)
                values[key] = values.get(key, 0) + s.value
        out["values"] = values
    print(json.dumps(out))
    """
)


def child(mode: str, base_url: str, multiproc_dir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, base_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_multiprocess_sink_counts_survive_the_process_and_sweep_drops_its_gauge(sim: Simulator, tmp_path: Path) -> None:
    worker = child("work", sim.base_url, tmp_path)
    assert worker["in_files"], "PrometheusSink must count into the mmap files in multiprocess mode"
    pid = worker["pid"]
    assert (tmp_path / f"gauge_livesum_{pid}.db").exists()
    assert (tmp_path / f"counter_{pid}.db").exists()

    reader = child("read", sim.base_url, tmp_path)["values"]
    assert reader['bg_response_failed_total{"code": "server_error", "model": "m"}'] == 1
    assert reader['bg_response_failed_total{"code": "vector_store_timeout", "model": "m"}'] == 1
    assert reader['bg_response_finished_total{"model": "m", "status": "completed"}'] == 1
    assert reader['bg_response_created_total{"model": "m"}'] == 5
    assert reader['bg_response_duration_seconds_count{"model": "m", "status": "failed"}'] == 2
    assert reader["bg_response_in_flight{}"] == 2  # the dead process's share, until it is marked dead

    swept = child("sweep", sim.base_url, tmp_path)
    assert swept["swept"] == [pid]
    after = swept["values"]
    assert after.get("bg_response_in_flight{}", 0) == 0  # no live process holds the gauge any more
    assert after['bg_response_created_total{"model": "m"}'] == 5  # counters kept
    assert not (tmp_path / f"gauge_livesum_{pid}.db").exists()
    assert (tmp_path / f"counter_{pid}.db").exists()


# -- multiprocess: gunicorn workers (examples/multiworker) ----------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = probe()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def gunicorn(sim: Simulator, tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    pytest.importorskip("gunicorn")
    from gunicorn.config import KNOWN_SETTINGS

    port = free_port()
    multiproc_dir = tmp_path / "multiproc"
    multiproc_dir.mkdir()
    (multiproc_dir / "counter_1.db").write_bytes(b"stale")  # on_starting must clear old files
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PROMETHEUS_", "prometheus_"))}
    env.update(
        PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
        OPENAI_BASE_URL=sim.base_url,
        OPENAI_API_KEY="sk-test",
        BGWATCH_WORKERS="3",
        BGWATCH_BIND=f"127.0.0.1:{port}",
    )
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        command.append("--no-control-socket")  # gunicorn >= 26 opens one in $HOME otherwise
    log = (tmp_path / "gunicorn.log").open("w")
    process = subprocess.Popen([*command, "app:app"], cwd=MULTIWORKER, env=env, stdout=log, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: get(f"{url}/pid", timeout=5), 30, "gunicorn to answer")
        yield url, multiproc_dir, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()
        print((tmp_path / "gunicorn.log").read_text()[-3000:])


def expected_counts(finished: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    statuses = Counter(job["status"] for job in finished)
    codes = Counter(job["code"] for job in finished if job["status"] == "failed")
    return dict(statuses), dict(codes)


@pytest.mark.timeout(120)
def test_gunicorn_workers_one_scrape_has_every_worker_and_sigkill_loses_nothing(
    sim: Simulator, gunicorn: tuple[str, Path, subprocess.Popen[str]]
) -> None:
    url, multiproc_dir, _ = gunicorn
    assert not (multiproc_dir / "counter_1.db").exists()
    sim.mix = "completed=40,failed=40,incomplete=10,cancelled=10,codes=server_error|rate_limit_exceeded|invalid_prompt"

    # 12 concurrent requests of 3 responses each over 3 sync workers: every worker gets some.
    with ThreadPoolExecutor(6) as pool:
        replies = [json.loads(r) for r in pool.map(lambda _: get(f"{url}/run?n=3"), range(12))]
    pids = {reply["pid"] for reply in replies}
    assert len(pids) >= 2, "the requests should have been spread over several workers"
    finished = [job for reply in replies for job in reply["finished"]]
    assert len(finished) == 36
    ledger = sim.ledger()
    for job in finished:  # what the app saw is the ground truth
        assert ledger[job["id"]].status == job["status"]
        assert ledger[job["id"]].code == job["code"]
    statuses, codes = expected_counts(finished)

    values = samples(get(f"{url}/metrics"))  # ONE scrape, served by whichever worker
    assert by_label(values, "bg_response_finished_total", "status") == statuses
    assert by_label(values, "bg_response_failed_total", "code") == codes
    assert value(values, "bg_response_created_total") == 36
    assert value(values, "bg_response_in_flight") == 0
    assert value(values, "bg_response_polls_total") == sim.request_log.count("GET", POLL_PATH, status=200)

    # A worker that counted finished responses and holds 2 in flight is SIGKILLed.
    started = json.loads(get(f"{url}/start?n=4&wait=2"))
    victim = started["pid"]
    finished += started["finished"]
    statuses, codes = expected_counts(finished)
    before = samples(get(f"{url}/metrics"))
    assert value(before, "bg_response_in_flight") == 2
    assert value(before, "bg_response_created_total") == 40
    assert (multiproc_dir / f"gauge_livesum_{victim}.db").exists()

    os.kill(victim, signal.SIGKILL)
    # gunicorn's child_exit hook -> bgwatch.mark_process_dead(pid) drops the live gauge file.
    wait_until(lambda: not (multiproc_dir / f"gauge_livesum_{victim}.db").exists(), 15, "child_exit")
    after = samples(get(f"{url}/metrics"))
    assert value(after, "bg_response_in_flight") == 0
    assert value(after, "bg_response_created_total") == 40  # the dead worker's counts are all there
    assert by_label(after, "bg_response_finished_total", "status") == statuses
    assert by_label(after, "bg_response_failed_total", "code") == codes
    assert (multiproc_dir / f"counter_{victim}.db").exists()

    # The replacement worker counts on top of the dead one's totals.
    more = [json.loads(get(f"{url}/run?n=2")) for _ in range(3)]
    finished += [job for reply in more for job in reply["finished"]]
    statuses, _ = expected_counts(finished)
    final = samples(get(f"{url}/metrics"))
    assert value(final, "bg_response_created_total") == 46
    assert by_label(final, "bg_response_finished_total", "status") == statuses
