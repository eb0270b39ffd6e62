"""``bgwatch export`` from a built wheel in a fresh venv: everything ships, and promtool passes.

Builds the wheel (``pip wheel --no-deps``), installs only it (and its runtime dependencies) into
a new virtualenv, runs ``bgwatch export`` there with the default and with non-default options
(selector, URLs, uids, titles, thresholds, ``--format prometheus-operator``), and checks the
output with ``promtool check rules`` and ``promtool test rules``. ~1 minute (pip's cache).
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from .prometheus_harness import REPO_ROOT, require_tool

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(600)]

NON_DEFAULT = [
    *("--selector", 'namespace="prod", job=~"api|worker"'),
    *("--runbook-url", "https://wiki.example.com/bgwatch"),
    *("--grafana-url", "https://grafana.example.com"),
    *("--uid-prefix", "team-bg", "--title-prefix", "Team BG", "--datasource-uid", "prom-main"),
    *("--threshold", "failure_ratio=0.3", "--threshold", "queue_p95_seconds=90", "--threshold", "stuck_seconds=1800"),
    *("--threshold", "rate_limited=7", "--threshold", "abandoned=3", "--threshold", "spike_factor=4.5"),
    *("--format", "prometheus-operator", "--namespace", "monitoring", "--label", "release=prometheus"),
]


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, cwd=cwd, timeout=540)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bgwatch`` script of a fresh venv holding the built wheel."""
    work = tmp_path_factory.mktemp("wheel")
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", REPO_ROOT)
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("openai_bgwatch-*.whl")
    venv.EnvBuilder(with_pip=True).create(work / "venv")
    python = work / "venv" / "bin" / "python"
    install = _run(python, "-m", "pip", "install", "-q", wheel)
    assert install.returncode == 0, install.stderr
    where = _run(python, "-c", "import bgwatch, sys; print(bgwatch.__file__)")
    assert str(work / "venv") in where.stdout, "bgwatch must come from the wheel, not the source tree"
    return work / "venv" / "bin" / "bgwatch"


def _promtool(out: Path) -> None:
    promtool = require_tool("promtool")
    check = _run(promtool, "check", "rules", out / "rules" / "bgwatch.rules.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    tests = sorted((out / "rules" / "tests").glob("*.yml"))
    assert [t.name for t in tests] == ["alerts.test.yml", "recording.test.yml"]
    unit = _run(promtool, "test", "rules", *tests, cwd=out / "rules")
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert unit.stdout.count("SUCCESS") == 2


def test_default_export_from_the_wheel_passes_promtool(installed: Path, tmp_path: Path) -> None:
    proc = _run(installed, "export", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert names == {
        "dashboards/bgwatch-overview.json",
        "dashboards/bgwatch-failures.json",
        "rules/bgwatch.rules.yml",
        "rules/tests/alerts.test.yml",
        "rules/tests/recording.test.yml",
        "runbook.md",
    }
    _promtool(tmp_path)
    # the defaults are exactly the repository's files
    for relative in ("rules/bgwatch.rules.yml", "rules/tests/alerts.test.yml", "rules/tests/recording.test.yml"):
        assert yaml.safe_load((tmp_path / relative).read_text()) == yaml.safe_load(
            (REPO_ROOT / "dashboards" / relative).read_text()
        )
    for name in ("bgwatch-overview.json", "bgwatch-failures.json"):
        assert json.loads((tmp_path / "dashboards" / name).read_text()) == json.loads(
            (REPO_ROOT / "dashboards" / name).read_text()
        )
    assert (tmp_path / "runbook.md").read_text() == (REPO_ROOT / "docs" / "runbook.md").read_text()


def test_non_default_export_from_the_wheel_passes_promtool(installed: Path, tmp_path: Path) -> None:
    proc = _run(installed, "export", "--out", tmp_path, *NON_DEFAULT)
    assert proc.returncode == 0, proc.stderr
    _promtool(tmp_path)
    rules = yaml.safe_load((tmp_path / "rules" / "bgwatch.rules.yml").read_text())
    manifest = yaml.safe_load((tmp_path / "rules" / "bgwatch.prometheusrule.yaml").read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1" and manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["namespace"] == "monitoring"
    assert manifest["metadata"]["labels"]["release"] == "prometheus"
    assert manifest["spec"] == rules
    by_name = {r.get("alert") or r["record"]: r for r in rules["groups"][0]["rules"]}
    assert "> 0.3\n" in by_name["BgwatchFailureRatioHigh"]["expr"]
    assert (
        by_name["BgwatchQueueSlow"]["annotations"]["runbook_url"] == "https://wiki.example.com/bgwatch#bgwatchqueueslow"
    )
    assert by_name["BgwatchQueueSlow"]["annotations"]["dashboard_url"].startswith(
        "https://grafana.example.com/d/team-bg-overview?var-job="
    )
    assert (
        'bg_response_created_total{namespace="prod", job=~"api|worker"}'
        in by_name["job:bg_response_created:rate5m"]["expr"]
    )
    overview = json.loads((tmp_path / "dashboards" / "bgwatch-overview.json").read_text())
    assert overview["uid"] == "team-bg-overview" and overview["title"].startswith("Team BG / ")
    assert "datasource" not in {v["name"] for v in overview["templating"]["list"]}
    exprs = [t["expr"] for p in overview["panels"] for t in p.get("targets", [])]
    assert exprs and all('namespace="prod", job=~"api|worker", job=~"$job"' in e for e in exprs)
    assert "${datasource}" not in json.dumps(overview)


def test_export_refuses_bad_options(installed: Path, tmp_path: Path) -> None:
    for bad in (
        ["--threshold", "failure_ratio=2"],
        ["--threshold", "nonsense=1"],
        ["--selector", "namespace=prod"],
        ["--threshold", "queue_p95_seconds=7200"],
    ):
        proc = _run(installed, "export", "--out", tmp_path / "x", *bad)
        assert proc.returncode == 2, (bad, proc.stdout, proc.stderr)
        assert "bgwatch export:" in proc.stderr
        assert not (tmp_path / "x").exists()
