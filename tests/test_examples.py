"""The examples run to completion against the simulator and exit 0 by themselves; the
docker-compose files point at the files they mount. (examples/multiworker runs under gunicorn
in tests/test_exposition.py; polling_worker and the webhook receiver in test_wait_examples.py.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bgwatch.simulator import Simulator

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
COMPOSE = EXAMPLES / "docker-compose"


def run(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PROMETHEUS_"))}
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


@pytest.mark.parametrize("script", ["quickstart.py", "async_quickstart.py", "fastapi_app.py"])
def test_example_with_its_own_simulator(script: str) -> None:
    out = run(script)
    assert "every response counted once: True" in out
    assert "bg_response_finished_total{" in out
    assert 'bg_response_failed_total{code="' in out


@pytest.mark.parametrize("script", ["quickstart.py", "async_quickstart.py", "fastapi_app.py"])
def test_example_against_a_base_url(script: str) -> None:
    with Simulator(seed=6, mix="completed=50,failed=50,codes=server_error", durations=(0.05, 0.2)) as sim:
        out = run(script, "--base-url", sim.base_url, "--count", "4")
        assert sim.request_log.count("POST", "/v1/responses") == 4
        failed = sum(o.status == "failed" for o in sim.ledger().values())
    assert "every response counted once: True" in out
    if failed:
        assert f'bg_response_failed_total{{code="server_error",model="gpt-4o-mini"}} {float(failed)}' in out


def test_quickstart_raises_typed_exceptions_for_failed_polls() -> None:
    out = run("quickstart.py", "--count", "8")
    assert "failed: " in out and "retryable=" in out


def test_fastapi_app_module_serves_metrics_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """``uvicorn examples.fastapi_app:app``: importable without OPENAI_API_KEY; /metrics routed."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    spec = importlib.util.spec_from_file_location("bgwatch_example_fastapi_app", EXAMPLES / "fastapi_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = {getattr(route, "path", None) for route in module.app.routes}
    assert {"/metrics", "/jobs", "/jobs/{response_id}"} <= paths


# -- docker-compose ---------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (resolved against the compose directory)."""
    out: dict[str, Path] = {}
    for volume in service["volumes"]:
        host, container, *_ = volume.split(":")
        out[container] = (COMPOSE / host).resolve()
    return out


def test_compose_mounts_exist_and_match_the_configs() -> None:
    compose = load_yaml(COMPOSE / "docker-compose.yml")
    prometheus, grafana = compose["services"]["prometheus"], compose["services"]["grafana"]

    prom_mounts = mounts(prometheus)
    for host in prom_mounts.values():
        assert host.exists(), host
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == (COMPOSE / "prometheus.yml").resolve()
    config = load_yaml(COMPOSE / "prometheus.yml")
    for rule_file in config["rule_files"]:
        assert prom_mounts[rule_file] == (REPO / "dashboards" / "rules" / "bgwatch.rules.yml").resolve()
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["host.docker.internal:9464"]  # bgwatch demo's default --metrics-port
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]

    graf_mounts = mounts(grafana)
    for host in graf_mounts.values():
        assert host.exists(), host
    provisioning = graf_mounts["/etc/grafana/provisioning"]
    providers = load_yaml(provisioning / "dashboards" / "bgwatch.yml")["providers"]
    dashboard_dir = providers[0]["options"]["path"]
    mounted_json = {c: h for c, h in graf_mounts.items() if c.startswith(dashboard_dir + "/")}
    assert {h.name for h in mounted_json.values()} == {p.name for p in (REPO / "dashboards").glob("*.json")}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in mounted_json

    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    for path in mounted_json.values():
        variables = json.loads(path.read_text())["templating"]["list"]
        datasource = next(v for v in variables if v["name"] == "datasource")
        # The variable picks the default data source of this type (no fixed default uid to match).
        assert datasource["type"] == "datasource" and datasource["query"] == source["type"]
        if datasource.get("current", {}).get("value"):
            assert datasource["current"]["value"] == source["uid"]


@pytest.mark.prometheus
def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    config = load_yaml(COMPOSE / "prometheus.yml")
    rules = tmp_path / "bgwatch.rules.yml"
    shutil.copy(REPO / "dashboards" / "rules" / "bgwatch.rules.yml", rules)
    config["rule_files"] = [str(rules)]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    done = subprocess.run([promtool, "check", "config", str(checked)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
