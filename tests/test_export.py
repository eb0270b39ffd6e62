"""``bgwatch export`` in process: options reach every file, and the exported rule tests pass.

The wheel-installed run is tests/test_export_wheel.py; this file covers the options quickly,
with promtool on the exported rules and tests for several selectors and thresholds, and shows
that the exported tests catch rules that ignore the selector or the thresholds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from bgwatch import _yaml
from bgwatch._export import THRESHOLD_PANELS, ExportOptions, dashboards, export, files, prometheus_rule
from bgwatch._rules import RuleOptions, Thresholds, humanize_duration, parse_selector, percent
from bgwatch.cli import main

from .prometheus_harness import DASHBOARD_DIR, REPO_ROOT, require_tool

CUSTOM = Thresholds(
    failure_ratio=0.25,
    failure_min_finished=40,
    spike_factor=4.5,
    rate_limited=12,
    queue_p95_seconds=123.5,
    stuck_seconds=1800,
    abandoned=4,
)
OPTION_SETS = {
    "defaults": RuleOptions(),
    "namespace": RuleOptions(selector='namespace="prod"'),
    "job and regex": RuleOptions(selector='job="my-app", cluster=~"eu-1|eu-2"', thresholds=CUSTOM),
    "negative": RuleOptions(selector='env!="dev"', uid_prefix="x", runbook_url="https://w.example/r"),
    "thresholds at the edges": RuleOptions(
        thresholds=Thresholds(
            failure_ratio=0.99, failure_min_finished=1, spike_factor=5, rate_limited=1, queue_p95_seconds=3599
        )
    ),
}


def _promtool_test(rules_dir: Path) -> subprocess.CompletedProcess[str]:
    promtool = require_tool("promtool")
    tests = sorted(str(p) for p in (rules_dir / "tests").glob("*.yml"))
    return subprocess.run(
        [promtool, "test", "rules", *tests], capture_output=True, text=True, check=False, cwd=rules_dir
    )


@pytest.mark.prometheus
@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_exported_rules_check_and_their_tests_pass(tmp_path: Path, name: str) -> None:
    export(tmp_path, ExportOptions(rules=OPTION_SETS[name]))
    promtool = require_tool("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules" / "bgwatch.rules.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    proc = _promtool_test(tmp_path / "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("tests_for", "rules_for"),
    [
        (RuleOptions(selector='namespace="prod"'), RuleOptions()),  # rules that ignore the selector
        (RuleOptions(selector='job="my-app"'), RuleOptions()),
        (RuleOptions(thresholds=CUSTOM), RuleOptions()),  # rules with other thresholds
    ],
    ids=["namespace ignored", "job ignored", "thresholds ignored"],
)
def test_exported_tests_fail_on_rules_for_other_options(
    tmp_path: Path, tests_for: RuleOptions, rules_for: RuleOptions
) -> None:
    export(tmp_path, ExportOptions(rules=tests_for))
    (tmp_path / "rules" / "bgwatch.rules.yml").write_text(
        files(ExportOptions(rules=rules_for))["rules/bgwatch.rules.yml"], encoding="utf-8"
    )
    proc = _promtool_test(tmp_path / "rules")
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def test_default_export_equals_the_repository(tmp_path: Path) -> None:
    export(tmp_path, ExportOptions())
    for relative in ("bgwatch.rules.yml", "tests/alerts.test.yml", "tests/recording.test.yml"):
        assert (tmp_path / "rules" / relative).read_text() == (DASHBOARD_DIR / "rules" / relative).read_text()
    for name in ("bgwatch-overview.json", "bgwatch-failures.json"):
        assert (tmp_path / "dashboards" / name).read_text() == (DASHBOARD_DIR / name).read_text()
    assert (tmp_path / "runbook.md").read_text() == (REPO_ROOT / "docs" / "runbook.md").read_text()


def _panels(d: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {p["id"]: p for p in d["panels"]}


def test_dashboard_options() -> None:
    options = ExportOptions(
        rules=RuleOptions(
            selector='namespace="prod"', uid_prefix="team", runbook_url="https://w.example/rb", thresholds=CUSTOM
        ),
        title_prefix="Team",
        datasource_uid="prom-1",
    )
    default = dashboards(ExportOptions())
    for name, d in dashboards(options).items():
        base = default[name]
        assert d["uid"] == base["uid"].replace("bgwatch-", "team-")
        assert d["title"] == base["title"].replace("bgwatch / ", "Team / ", 1)
        text = json.dumps(d)
        assert "${datasource}" not in text and d["templating"]["list"][0]["name"] == "job"
        for panel in d["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"] == {"type": "prometheus", "uid": "prom-1"}
                assert 'namespace="prod", job=~"$job"' in target["expr"]
        job_var = next(v for v in d["templating"]["list"] if v["name"] == "job")
        assert job_var["query"] == 'label_values(bg_response_in_flight{namespace="prod"}, job)'
        # ALERTS carry the alerts' labels only: the annotation keeps its query
        assert d["annotations"]["list"][0] == base["annotations"]["list"][0] | {
            "datasource": {"type": "prometheus", "uid": "prom-1"}
        }
        runbook = next(link for link in d["links"] if link["title"] == "Runbook")
        assert runbook["url"] == "https://w.example/rb"
        for (file, panel_id), threshold in THRESHOLD_PANELS.items():
            if file == name:
                steps = _panels(d)[panel_id]["fieldConfig"]["defaults"]["thresholds"]["steps"]
                base_steps = _panels(base)[panel_id]["fieldConfig"]["defaults"]["thresholds"]["steps"]
                assert base_steps[-1]["value"] == getattr(Thresholds(), threshold)  # the mapping is right
                assert steps[-1]["value"] == getattr(CUSTOM, threshold)


def test_prometheus_rule_manifest() -> None:
    options = ExportOptions(
        rules=RuleOptions(uid_prefix="bg_team"), format="prometheus-operator", namespace="mon", labels={"release": "p"}
    )
    manifest = yaml.safe_load(prometheus_rule(options))
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"] == {
        "name": "bg-team",
        "namespace": "mon",
        "labels": {"app.kubernetes.io/name": "bgwatch", "release": "p"},
    }
    assert manifest["spec"] == yaml.safe_load(files(options)["rules/bgwatch.rules.yml"])
    assert "rules/bgwatch.prometheusrule.yaml" in files(options)
    assert "rules/bgwatch.prometheusrule.yaml" not in files(ExportOptions())


@pytest.mark.parametrize(
    "data",
    [
        {"a": "x", "b": [1, 2.5, True, False], "c": {}, "d": [], "e": "multi\nline\n", "f": "q\"uo'te"},
        {"expr": "sum(x)\n/\n(y > 0)", "k": [{"x": 1, "y": ["z"]}, "s", {"nested": {"deep": "v: w # no comment"}}]},
        {"unicode": "→ ok", "tabs": "a\tb", "app.kubernetes.io/name": "bgwatch", "empty": ""},
    ],
)
def test_yaml_writer_round_trips(data: dict[str, Any]) -> None:
    assert yaml.safe_load(_yaml.dump(data, header="# header\n")) == data


def test_prometheus_formatting_ports() -> None:
    assert percent(0.2) == "20%" and percent(0.625) == "62.5%" and percent(1 / 3) == "33.33%"
    assert humanize_duration(7260) == "2h 1m 0s"
    assert humanize_duration(59) == "59s" and humanize_duration(61.5) == "1m 1s"
    assert humanize_duration(90061) == "1d 1h 1m 1s"


@pytest.mark.parametrize(
    ("selector", "parsed"),
    [
        ("", []),
        ('namespace="prod"', [("namespace", "=", "prod")]),
        ('{job=~"a|b", env!="dev"}', [("job", "=~", "a|b"), ("env", "!=", "dev")]),
        (r'x!~"a\"b"', [("x", "!~", r"a\"b")]),
    ],
)
def test_parse_selector(selector: str, parsed: list[tuple[str, str, str]]) -> None:
    assert parse_selector(selector) == parsed


@pytest.mark.parametrize("selector", ["namespace=prod", 'a="b" c="d"', '__name__="x"', '1a="b"'])
def test_parse_selector_rejects(selector: str) -> None:
    with pytest.raises(ValueError, match="selector"):
        parse_selector(selector)


def test_thresholds_from_strings_and_limits() -> None:
    t = Thresholds().with_values({"failure_ratio": "0.2", "rate_limited": "5"})
    assert (t.failure_ratio, t.rate_limited) == (0.2, 5)
    with pytest.raises(ValueError, match="unknown threshold"):
        Thresholds().with_values({"nope": "1"})
    with pytest.raises(ValueError, match="not a int"):
        Thresholds().with_values({"rate_limited": "1.5"})
    for bad in ({"failure_ratio": 1.0}, {"spike_factor": 6.0}, {"queue_p95_seconds": 3600.0}, {"abandoned": 0}):
        with pytest.raises(ValueError, match="out of range"):
            Thresholds(**bad)  # type: ignore[arg-type]


def test_cli_export_and_demo_still_parse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--out", str(tmp_path), "--threshold", "abandoned=2"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(p) for p in tmp_path.rglob("*") if p.is_file())
    assert "abandoned=2" in (tmp_path / "rules" / "bgwatch.rules.yml").read_text()
    assert main(["export", "--out", str(tmp_path / "bad"), "--selector", "nope"]) == 2
    assert not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    shutil.rmtree(tmp_path)
