"""The Grafana dashboards: generated from code, checked in, and only using the metric contract.

The end-to-end evaluation of every panel query against a real Prometheus scraping the
contract's metrics is in tests/test_rules.py (it shares that Prometheus with the rules).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .prometheus_harness import (
    DASHBOARD_DIR,
    REPO_ROOT,
    DashboardTarget,
    contract_series_names,
    dashboard_targets,
    metric_names_in,
    promtool_check_exprs,
    require_tool,
    substitute_dashboard_vars,
)

SCRIPT = REPO_ROOT / "scripts" / "generate_dashboards.py"
EXPECTED_FILES = {"bgwatch-overview.json": "bgwatch-overview", "bgwatch-failures.json": "bgwatch-failures"}
TARGET_MATCHERS = ('job=~"$job"', 'instance=~"$instance"')
# The generator needs grafana-foundation-sdk, which requires Python 3.11+; the checks of the
# checked-in JSON below run everywhere.
needs_sdk = pytest.mark.skipif(sys.version_info < (3, 11), reason="grafana-foundation-sdk needs Python 3.11+")

TARGETS: list[DashboardTarget] = [t for name in EXPECTED_FILES for t in dashboard_targets(DASHBOARD_DIR / name)]


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DASHBOARD_DIR / name).read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        out.append(panel)
        stack.extend(panel.get("panels") or [])
    return out


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False, cwd=REPO_ROOT
    )


# --------------------------------------------------------------------------- generated == checked in


GENERATED = {
    *(f"dashboards/{n}" for n in EXPECTED_FILES),
    *(f"src/bgwatch/_assets/dashboards/{n}" for n in EXPECTED_FILES),
    "src/bgwatch/_assets/runbook.md",
    "dashboards/rules/bgwatch.rules.yml",
    "dashboards/rules/tests/alerts.test.yml",
    "dashboards/rules/tests/recording.test.yml",
}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@needs_sdk
def test_checked_in_files_match_the_generator_byte_for_byte(tmp_path: Path) -> None:
    """Dashboards, package data (dashboards and runbook) and the default rules with their tests."""
    proc = run_script("--root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    fresh = _tree(tmp_path)
    assert set(fresh) == GENERATED
    for relative, data in sorted(fresh.items()):
        assert data == (REPO_ROOT / relative).read_bytes(), (
            f"{relative} is stale: run python scripts/generate_dashboards.py"
        )
    assert {p.name for p in DASHBOARD_DIR.glob("*.json")} == set(EXPECTED_FILES), "stray or missing dashboards"
    assert {p.name for p in (REPO_ROOT / "src/bgwatch/_assets/dashboards").iterdir()} == set(EXPECTED_FILES)


@needs_sdk
def test_generation_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    assert run_script("--root", str(first)).returncode == 0
    assert run_script("--root", str(second)).returncode == 0
    assert _tree(first) == _tree(second)


@needs_sdk
def test_check_mode(tmp_path: Path) -> None:
    ok = run_script("--check")
    assert ok.returncode == 0, ok.stderr
    for relative in GENERATED:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / relative, tmp_path / relative)
    stale = tmp_path / "dashboards" / "bgwatch-failures.json"
    stale.write_text(stale.read_text(encoding="utf-8").replace("Failed", "Faield", 1), encoding="utf-8")
    proc = run_script("--check", "--root", str(tmp_path))
    assert proc.returncode == 1
    assert "STALE dashboards/bgwatch-failures.json" in proc.stderr
    assert proc.stderr.count("STALE") == 1
    assert stale.read_text(encoding="utf-8").count("Faield") == 1, "--check must not write"


LEGACY = {"style", "auto", "auto_count", "auto_min"}


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_no_legacy_fields_and_one_unit_per_kind(name: str) -> None:
    d = load(name)
    assert set(d["timepicker"]) <= {"hidden", "refresh_intervals", "nowDelay", "quick_ranges"}
    assert not LEGACY & set(d)
    for v in d["templating"]["list"]:
        assert not LEGACY & set(v), v["name"]
    for a in d["annotations"]["list"]:
        assert "expr" not in a and a["target"]["expr"].startswith("ALERTS{")
    for p in all_panels(d):
        if p["type"] == "row":
            continue
        unit = p["fieldConfig"]["defaults"].get("unit")
        exprs = " ".join(t["expr"] for t in p["targets"])
        if "histogram_quantile" in exprs or p["title"].startswith("Oldest"):
            assert unit == "s", p["title"]
        elif re.search(r"\n/( on \(\) group_left \(\))?\n", exprs):
            assert unit in {"percentunit", "short"}, p["title"]  # ratios; polls per response is a count
        elif "rate(" in exprs:
            assert unit == "ops", f"{p['title']}: every rate is ops, not {unit}"
        else:
            assert unit == "short", p["title"]


# --------------------------------------------------------------------------- dashboard structure


@pytest.mark.parametrize(("name", "uid"), sorted(EXPECTED_FILES.items()))
def test_dashboard_metadata(name: str, uid: str) -> None:
    d = load(name)
    assert d["uid"] == uid
    assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert d["title"].startswith("bgwatch")
    assert "bgwatch" in d["tags"]
    assert "id" not in d or d["id"] is None, "a provisioned dashboard must not carry a numeric id"
    assert isinstance(d["annotations"].get("list"), list)


@needs_sdk
def test_schema_version_is_42_and_the_sdk_is_the_one_for_grafana_11_6() -> None:
    """The SDK writes 41; Grafana's 41 -> 42 migration only touches field overrides with
    hideFrom.viz, and the dashboards have no overrides, so they are version 42 as written."""
    from grafana_foundation_sdk.models.dashboard import Dashboard

    assert Dashboard().schema_version == 41
    for name in EXPECTED_FILES:
        d = load(name)
        assert d["schemaVersion"] == 42
        for p in all_panels(d):
            assert not (p.get("fieldConfig") or {}).get("overrides"), p["title"]


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_variables(name: str) -> None:
    variables = {v["name"]: v for v in load(name)["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    expected = ["datasource", "job", "instance"] + (["code"] if "failures" in name else [])
    assert list(variables) == expected
    for var_name in expected[1:]:
        v = variables[var_name]
        assert v["type"] == "query"
        assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert v["multi"] is True and v["includeAll"] is True and v["allValue"] == ".*"
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", v["query"])
        assert m, v["query"]
        assert m.group(2) == var_name
        assert metric_names_in(m.group(1)) <= contract_series_names()
    assert variables["instance"]["query"] == 'label_values(bg_response_in_flight{job=~"$job"}, instance)'


@pytest.mark.parametrize("name", sorted(EXPECTED_FILES))
def test_panels_use_the_datasource_variable_and_fit_the_grid(name: str) -> None:
    panels = all_panels(load(name))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    occupied: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        assert p.get("description"), f"panel {p['title']!r} needs a description"
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]


REQUIRED_PANELS = {
    "bgwatch-overview.json": {
        "Failed responses / s by code",
        "Failure ratio (failed / finished)",
        "Terminal states / s",
        "Incomplete responses / s by reason",
        "Time to terminal state (p50 / p95 / p99)",
        "In flight",
        "Polls per finished response",
        "bgwatch internal errors / s by stage",
        "Queue wait p50 / p95 by model",
        "Oldest response in flight",
        "Share of tokens spent on responses that did not complete",
        "Abandoned responses / s by model",
    },
    "bgwatch-failures.json": {
        "Failed responses / s by code",
        "Failure ratio by code (failed / finished)",
        "Time to failure (p50 / p95 / p99)",
    },
}


@pytest.mark.parametrize("name", sorted(REQUIRED_PANELS))
def test_required_panels_exist(name: str) -> None:
    titles = {p["title"] for p in all_panels(load(name))}
    assert REQUIRED_PANELS[name] <= titles


def test_failures_dashboard_filters_every_failed_query_by_code() -> None:
    for t in TARGETS:
        scoped = t.dashboard == "bgwatch-failures.json" and t.panel_title != "Share of all failures"
        if scoped and "bg_response_failed_total" in t.expr:
            assert 'code=~"$code"' in t.expr, t


# --------------------------------------------------------------------------- queries


def test_there_are_queries() -> None:
    assert len(TARGETS) >= 20


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_query_uses_only_contract_metrics(target: DashboardTarget) -> None:
    names = metric_names_in(target.expr)
    assert names, f"no metric found in {target.expr!r}"
    assert names <= contract_series_names(), f"{target}: not in the contract: {names - contract_series_names()}"


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_every_selector_is_scoped_to_job_and_instance(target: DashboardTarget) -> None:
    selectors = re.findall(r"([A-Za-z_:][\w:]*)(\{[^{}]*\})?", re.sub(r"\b\w+\s*\(", "(", target.expr))
    metric_selectors = [(n, m) for n, m in selectors if n in contract_series_names()]
    assert metric_selectors
    for metric, matchers in metric_selectors:
        assert matchers, f"{target}: bare selector {metric}"
        for required in TARGET_MATCHERS:
            assert required in matchers, f"{target}: {metric}{matchers} lacks {required}"


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_every_range_is_the_rate_interval(target: DashboardTarget) -> None:
    ranges = re.findall(r"\[([^\]]*)\]", target.expr)
    assert all(r == "$__rate_interval" for r in ranges), f"{target}: {ranges}"
    for fn in re.findall(r"\b(rate|irate|increase|\w+_over_time)\s*\(", target.expr):
        assert fn == "rate", f"{target}: use rate(...[$__rate_interval]), not {fn}"
    for inner in re.findall(r"\brate\(([^()]*)\)", target.expr):
        assert inner.endswith("[$__rate_interval]"), f"{target}: rate({inner})"


@pytest.mark.parametrize("target", TARGETS, ids=str)
def test_rates_only_on_counters_and_quantiles_by_le(target: DashboardTarget) -> None:
    for inner in re.findall(r"\brate\(([^()]*)\)", target.expr):
        (name,) = metric_names_in(inner)
        assert name.endswith(("_total", "_bucket")), f"{target}: rate() of non-counter {name}"
    assert ("bg_response_in_flight" not in target.expr) or "rate(bg_response_in_flight" not in target.expr
    if "_bucket" in target.expr:
        assert target.expr.startswith("histogram_quantile("), target
        assert re.search(r"sum by \(le\b", target.expr), f"{target}: aggregate buckets by le"


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    exprs = [substitute_dashboard_vars(t.expr, code="server_error|rate_limit_exceeded") for t in TARGETS]
    for name in EXPECTED_FILES:
        for annotation in load(name)["annotations"]["list"]:
            exprs.append(substitute_dashboard_vars(annotation["target"]["expr"]))
    promtool_check_exprs(exprs, promtool, tmp_path)


def test_promtool_parse_check_rejects_bad_promql(tmp_path: Path) -> None:
    """The offline parse check itself must catch a broken expression."""
    promtool = require_tool("promtool")
    with pytest.raises(AssertionError, match="promtool check rules failed"):
        promtool_check_exprs(["sum by (code (rate(bg_response_failed_total[15s]))"], promtool, tmp_path)
