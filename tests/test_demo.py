"""``bgwatch demo`` end to end: bgwatch's counts must equal the simulator's ledger exactly.

Most runs are in-process (``main()`` with ``--private-registry``, so that nothing touches the
global registry of the test process); the ``--keep-serving`` run is a real subprocess using
the global registry, scraped over HTTP while it serves.
"""

from __future__ import annotations

import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import bgwatch
from bgwatch._demo import Counts, _Progress, read_counts
from bgwatch.cli import main
from bgwatch.simulator import Simulator

FAST = ["--durations", "0.05,0.5", "--poll-after-ms", "50", "--metrics-port", "0", "--progress", "none"]


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    """``bgwatch demo --json --private-registry ...`` in-process: (exit status, summary, stderr)."""
    code = main(["demo", "--json", "--private-registry", *FAST, *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def check_matches(summary: dict[str, Any], responses: int) -> None:
    assert summary["match"] is True, summary["mismatches"]
    assert summary["mismatches"] == []
    assert summary["bgwatch"] == summary["ledger"]
    counted = summary["bgwatch"]
    assert counted["created"] == responses
    assert sum(counted["finished"].values()) == responses
    assert sum(counted["failed"].values()) == counted["finished"].get("failed", 0)
    assert sum(counted["incomplete"].values()) == counted["finished"].get("incomplete", 0)
    assert counted["in_flight"] == 0
    assert counted["polls"] >= responses
    assert summary["errors"] == {}
    # What the workload's own code saw agrees too: returned + raised = counted.
    seen = Counter(summary["returned"]) + Counter(summary["raised"])
    assert dict(seen) == {k: v for k, v in counted["finished"].items() if v}


RUNS = {
    "sync-default-mix": ["--seed", "11"],
    "async-faults": [
        "--async",
        "--seed",
        "12",
        "--mix",
        "completed=30,failed=50,incomplete=10,cancelled=10,codes=server_error|rate_limit_exceeded,unknown=model_overloaded_v2",
        "--fault-rate",
        "0.05",
    ],
    "sync-raise": ["--seed", "13", "--raise-on", "failed,incomplete,cancelled", "--cancel-every", "10"],
}


@pytest.mark.parametrize("name", list(RUNS))
def test_demo_counts_match_the_ledger(capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, summary, err = run_json(capsys, "--responses", "100", *RUNS[name])
    assert code == 0, err
    check_matches(summary, 100)
    assert summary["cancelled_via_api"] > 0
    assert summary["ledger"]["finished"]["cancelled"] >= summary["cancelled_via_api"]
    assert summary["metrics_url"].startswith("http://127.0.0.1:")
    if name == "sync-default-mix":
        assert summary["mode"] == "sync"
        assert len(summary["bgwatch"]["failed"]) >= 5  # codes drawn from every code the SDK knows
    if name == "async-faults":
        assert summary["mode"] == "async"
        assert summary["faults_injected"] > 0  # retried by the SDK, never counted twice
        assert set(summary["bgwatch"]["failed"]) <= {"server_error", "rate_limit_exceeded", "model_overloaded_v2"}
    if name == "sync-raise":
        counted = summary["bgwatch"]["finished"]
        assert summary["returned"] == {"completed": counted["completed"]}
        assert summary["raised"] == {s: counted[s] for s in ("failed", "incomplete", "cancelled") if counted.get(s)}
        assert sum(summary["exceptions"].values()) == sum(summary["raised"].values())
        for example in summary["exception_examples"]:
            cls = bgwatch.exception_class_for(example["status"], example["code"] or example["reason"])
            assert cls.__name__ == example["cls"]
            assert example["response_id"].startswith("resp_")
            assert example["retryable"] == (
                example["code"] in ("server_error", "rate_limit_exceeded", "vector_store_timeout")
            )


def test_demo_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["demo", "--private-registry", *FAST, "-n", "30", "--seed", "5", "--raise-on", "failed", "--progress", "lines"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "bgwatch demo: 30 background responses" in out
    assert re.search(r"^metrics: http://127\.0\.0\.1:\d+/metrics$", out, re.M)
    rows = re.findall(r"^ {2}([a-z_]+) +(\d+) +(\d+)$", out, re.M)
    assert rows, out
    assert all(a == b for _, a, b in rows), out
    assert re.search(r"^created +30 +30$", out, re.M)
    assert "typed exceptions caught (raise_on=failed)" in out
    assert "MATCH: bgwatch counted each of the 30 responses once" in out


def test_demo_reports_a_mismatch(capsys: pytest.CaptureFixture[str]) -> None:
    # An error code that is no valid label value is counted as code="other": the ledger disagrees.
    code, summary, err = run_json(
        capsys, "-n", "12", "--seed", "3", "--mix", "completed=50,failed=50,codes=Not-A-Label,unknown="
    )
    assert code == 1
    assert summary["match"] is False
    failed = summary["ledger"]["finished"]["failed"]
    assert summary["bgwatch"]["failed"] == {"other": failed}
    assert any("failed Not-A-Label" in m for m in summary["mismatches"])
    assert "MISMATCH" in err


def test_demo_against_a_base_url(capsys: pytest.CaptureFixture[str]) -> None:
    with Simulator(seed=8, mix="completed=50,failed=50,codes=server_error", durations=(0.05, 0.2)) as sim:
        code, summary, err = run_json(capsys, "--base-url", sim.base_url, "--cancel-every", "0")
        ledger = sim.ledger()
    assert code == 0, err
    assert summary["match"] is None and summary["ledger"] is None
    assert "no ledger to compare with" in err
    assert summary["responses"] == 10  # the default against a real API
    assert len(ledger) == 10
    expected = Counter(o.status for o in ledger.values())
    assert summary["bgwatch"]["finished"] == dict(expected)


def test_keep_serving_exposes_the_drawn_codes_on_metrics() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PROMETHEUS_"))}
    command = [sys.executable, "-m", "bgwatch", "demo", "--json", "--keep-serving", *FAST]
    command += ["-n", "40", "--seed", "21", "--mix", "completed=40,failed=60"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True).start()
    try:
        summary = json.loads(lines.get(timeout=60))
        assert summary["match"] is True
        with urllib.request.urlopen(summary["metrics_url"], timeout=10) as reply:
            text = reply.read().decode()
        failed = {
            s.labels["code"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "bg_response_failed_total"
        }
        drawn = summary["ledger"]["failed"]
        assert drawn and failed == drawn
        for code, n in drawn.items():
            assert f'bg_response_failed_total{{code="{code}",model="gpt-4o-mini"}} {float(n)}' in text
        assert "python_info" in text  # the global registry, as users get it
        assert process.poll() is None  # still serving
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert "until Ctrl-C" in (process.stderr.read() if process.stderr else "")


@pytest.mark.slow
def test_default_demo_through_the_console_script() -> None:
    """``make demo`` as shipped: 200 responses, default mix and durations, global registry."""
    script = Path(sys.executable).with_name("bgwatch")
    if not script.exists():
        pytest.skip("the bgwatch console script is not installed in this environment")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PROMETHEUS_"))}
    started = time.monotonic()
    done = subprocess.run(
        [str(script), "demo", "--metrics-port", "0"], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "bgwatch demo: 200 background responses" in out
    assert re.search(r"^\[ *\d+/200 finished\]", out, re.M)  # progress lines (not a TTY)
    assert re.search(r"^created +200 +200$", out, re.M)
    assert "MATCH: bgwatch counted each of the 200 responses once" in out
    assert wall < 60


def test_busy_metrics_port_falls_back_to_a_free_one(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["demo", "--json", "--private-registry", *FAST, "--metrics-port", str(port), "-n", "3"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"port {port} is in use" in captured.err
    assert f":{port}/" not in json.loads(captured.out)["metrics_url"]


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    for bad in (["--raise-on", "completed"], ["--mix", "completed=x"], ["--durations", "3,1"], ["-n", "0"]):
        with pytest.raises(SystemExit) as info:
            main(["demo", *bad])
        assert info.value.code == 2
    capsys.readouterr()


def test_progress_line_on_a_tty() -> None:
    registry = CollectorRegistry()
    with Simulator(seed=2, durations=(0.0, 0.0)) as sim:
        client = OpenAI(base_url=sim.base_url, api_key="sk-test", http_client=bgwatch.http_client(registry=registry))
        before = read_counts(registry)
        stream = io.StringIO()
        with _Progress(registry, before, 2, stream, "tty") as progress:
            for _ in range(2):
                created = client.responses.create(model="m", input="x", background=True)
                bgwatch.wait(client, created.id, raise_on=())
            time.sleep(0.3)
        client.close()
    assert progress.mode == "tty"
    output = stream.getvalue()
    assert output.startswith("\r[") and output.endswith("\x1b[K\n")
    assert "[2/2 finished]" in output.rsplit("\r", 1)[-1]


def test_counts_minus_keeps_the_gauge() -> None:
    before = Counts(finished={"failed": 2}, created=3, polls=10, in_flight=1)
    after = Counts(finished={"failed": 5, "completed": 1}, failed={"x": 3}, created=9, polls=30, in_flight=0)
    delta = after.minus(before)
    assert delta == Counts(finished={"failed": 3, "completed": 1}, failed={"x": 3}, created=6, polls=20, in_flight=0)
