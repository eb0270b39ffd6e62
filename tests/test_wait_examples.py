"""The polling-worker and webhook-receiver examples run to completion and exit 0 by themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgwatch.simulator import Simulator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_polling_worker_with_its_own_simulator() -> None:
    out = run("polling_worker.py", "--count", "8")
    assert "every response counted once: True" in out
    assert out.count("job ") == 8


def test_polling_worker_against_a_given_base_url() -> None:
    with Simulator(seed=2, mix="completed=50,failed=50", durations=(0.01, 0.05)) as sim:
        out = run("polling_worker.py", "--base-url", sim.base_url, "--count", "6")
        assert sim.request_log.count("POST", "/v1/responses") == 6
    assert "every response counted once: True" in out


@pytest.mark.parametrize("external", [False, True], ids=["own-simulator", "base-url"])
def test_webhook_receiver_fastapi(external: bool) -> None:
    if not external:
        out = run("webhook_receiver_fastapi.py", "--count", "5")
    else:
        with Simulator(seed=4, durations=(0.01, 0.05)) as sim:
            out = run("webhook_receiver_fastapi.py", "--base-url", sim.base_url, "--count", "5")
    assert "forged delivery answered 401" in out
    assert "answered 200, then 409" in out
    assert "every response counted once: True" in out
