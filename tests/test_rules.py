"""Prometheus rules, checked and unit-tested with promtool, and the real-Prometheus harness.

* ``promtool check rules`` and ``promtool test rules dashboards/rules/tests/*.yml``;
* static checks of the rule file (names, metadata, runbook anchors, guarded divisions);
* end to end: a real ``prometheus`` scrapes a tiny prometheus_client exporter that serves the
  contract's metrics, loads the rule file, and evaluates every dashboard query and every rule
  expression through its HTTP API.

Without the binaries the promtool/prometheus tests skip, unless ``$CI`` is set: then they fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]  # types-PyYAML is not a dev dependency
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .prometheus_harness import (
    CONTRACT_METRICS,
    DASHBOARD_DIR,
    DURATION_BUCKETS,
    QUEUE_BUCKETS,
    REPO_ROOT,
    RULE_TESTS_DIR,
    RULES_FILE,
    DashboardTarget,
    Prometheus,
    PromQLError,
    Rule,
    contract_series_names,
    dashboard_targets,
    metric_names_in,
    require_tool,
    rule_exprs,
    substitute_dashboard_vars,
    wait_until,
)

RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/bgwatch/openai-bgwatch/blob/main/docs/runbook.md"
RULES = rule_exprs(RULES_FILE)
ALERTS = [r for r in RULES if r.kind == "alert"]
RECORDS = [r for r in RULES if r.kind == "record"]
RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.yml"))
DASHBOARD_TARGETS = [t for p in sorted(DASHBOARD_DIR.glob("*.json")) for t in dashboard_targets(p)]
EXPECTED_ALERTS = {
    "BgwatchFailureRatioHigh",
    "BgwatchFailureCodeSpike",
    "BgwatchRateLimited",
    "BgwatchNoResponsesFinishing",
    "BgwatchResponseStuck",
    "BgwatchQueueSlow",
    "BgwatchResponsesAbandoned",
    "BgwatchInternalErrors",
}


# --------------------------------------------------------------------------- promtool


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    proc = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in proc.stdout


def test_promtool_unit_tests() -> None:
    promtool = require_tool("promtool")
    assert RULE_TEST_FILES, "no rule unit tests"
    proc = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TEST_FILES)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout


# --------------------------------------------------------------------------- static checks


def test_expected_alerts() -> None:
    assert {a.name for a in ALERTS} == EXPECTED_ALERTS
    assert len(ALERTS) == len(EXPECTED_ALERTS), "one rule per alert name"


@pytest.mark.parametrize("rule", RECORDS, ids=lambda r: r.name)
def test_recording_rule_name_is_level_metric_operations(rule: Rule) -> None:
    level, metric, operations = rule.name.split(":")
    assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level)
    assert "job" in level.split("_"), "aggregate to at least job"
    assert re.fullmatch(r"(bg_response|bgwatch)_[a-z_]+", metric)
    assert not metric.endswith("_total"), "drop _total from a rate's metric name"
    assert re.fullmatch(r"[a-z0-9_]+", operations)
    if re.search(r"\n/", rule.expr):  # a ratio: level:a_per_b:ratio_rate5m (monitoring-mixins)
        assert "_per_" in metric and operations == "ratio_rate5m", rule.name


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rule_uses_only_contract_metrics_and_recorded_series(rule: Rule) -> None:
    known = contract_series_names() | {r.name for r in RECORDS}
    names = metric_names_in(rule.expr)
    assert names, rule.expr
    assert names <= known, f"unknown series: {names - known}"


def _denominators(expr: str) -> Iterator[str]:
    """The parenthesised operand after every ``/`` (skipping ``on (...) group_left (...)``)."""
    for m in re.finditer(r"/", expr):
        rest = expr[m.end() :]
        rest = re.sub(r"^\s*(?:on|ignoring)\s*\([^)]*\)\s*(?:group_left|group_right)?\s*(?:\([^)]*\))?", "", rest)
        rest = rest.lstrip()
        assert rest.startswith("("), f"denominator not parenthesised: /{rest[:60]}"
        depth = 0
        for i, ch in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                yield rest[1:i]
                break


@pytest.mark.parametrize("rule", [r for r in RULES if "/" in r.expr], ids=lambda r: r.name)
def test_divisions_are_guarded_against_zero_traffic(rule: Rule) -> None:
    for denominator in _denominators(rule.expr):
        assert re.search(r">\s*0\s*$", denominator.strip()), f"unguarded / ({denominator})"


def _github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("alert", ALERTS, ids=lambda r: r.name)
def test_alert_metadata(alert: Rule) -> None:
    raw = alert.raw
    assert re.fullmatch(r"\d+[smh]", str(raw.get("for", ""))), "every alert needs `for`"
    assert raw["labels"]["severity"] in {"warning", "critical"}
    assert alert.name.startswith("Bgwatch"), "one alert-name prefix"
    annotations = raw["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}
    summary = annotations["summary"]
    assert summary[0].isupper() or summary.startswith("bgwatch"), "a sentence"
    assert summary.endswith(".") and "{{" not in summary, "summaries are plain sentences"
    assert "$labels.job" in annotations["description"]
    assert re.fullmatch(
        r"http://localhost:3000/d/bgwatch-(overview|failures)\?var-job=\{\{ \$labels.job \}\}.*",
        annotations["dashboard_url"],
    )
    assert "$value" in annotations["description"], "say how bad it is"
    assert annotations["runbook_url"] == f"{RUNBOOK_URL}#{alert.name.lower()}"
    anchors = _github_anchors(RUNBOOK.read_text(encoding="utf-8"))
    assert alert.name.lower() in anchors, f"docs/runbook.md has no section {alert.name}"


def _rule_tests() -> list[dict[str, Any]]:
    tests: list[dict[str, Any]] = []
    for path in RULE_TEST_FILES:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert data["rule_files"] == ["../bgwatch.rules.yml"], path
        tests.extend(data["tests"])
    return tests


@pytest.mark.parametrize("alert", ALERTS, ids=lambda r: r.name)
def test_every_alert_has_a_firing_and_a_quiet_unit_test(alert: Rule) -> None:
    cases = [c for t in _rule_tests() for c in t.get("alert_rule_test", []) if c["alertname"] == alert.name]
    firing = [c for c in cases if c.get("exp_alerts")]
    quiet = [c for c in cases if not c.get("exp_alerts")]
    assert firing, f"no unit test where {alert.name} fires"
    assert quiet, f"no unit test where {alert.name} stays quiet"
    for case in firing:
        for exp in case["exp_alerts"]:
            assert exp["exp_labels"]["severity"] == alert.raw["labels"]["severity"]
            assert set(exp["exp_annotations"]) == {"summary", "description", "runbook_url", "dashboard_url"}


def test_every_recording_rule_has_a_unit_test() -> None:
    exprs = " ".join(c["expr"] for t in _rule_tests() for c in t.get("promql_expr_test", []))
    missing = {r.name for r in RECORDS} - metric_names_in(exprs)
    assert not missing, f"recording rules without a promql_expr_test: {missing}"


# --------------------------------------------------------------------------- end to end

CODES = ("server_error", "rate_limit_exceeded", "invalid_prompt", "unknown")
MODELS = ("gpt-5", "o3-deep-research")


class ContractExporter:
    """A prometheus_client HTTP server with the contract's metrics, kept moving by a thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        labels = {name: list(spec[1]) for name, spec in CONTRACT_METRICS.items()}
        self.failed = Counter("bg_response_failed", "failed", labels["bg_response_failed_total"], registry=reg)
        self.incomplete = Counter(
            "bg_response_incomplete", "incomplete", labels["bg_response_incomplete_total"], registry=reg
        )
        self.finished = Counter("bg_response_finished", "finished", labels["bg_response_finished_total"], registry=reg)
        self.created = Counter("bg_response_created", "created", labels["bg_response_created_total"], registry=reg)
        self.polls = Counter("bg_response_polls", "polls", labels["bg_response_polls_total"], registry=reg)
        self.duration = Histogram(
            "bg_response_duration_seconds",
            "duration",
            labels["bg_response_duration_seconds"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge("bg_response_in_flight", "in flight", registry=reg)
        self.abandoned = Counter("bg_response_abandoned", "abandoned", ["model"], registry=reg)
        self.queue = Histogram("bg_response_queue_seconds", "queue", ["model"], buckets=QUEUE_BUCKETS, registry=reg)
        self.oldest = Gauge("bg_response_oldest_in_flight_seconds", "oldest", registry=reg)
        self.tokens = Counter("bg_response_tokens", "tokens", ["type", "status", "model"], registry=reg)
        self.internal = Counter(
            "bgwatch_internal_errors", "internal", labels["bgwatch_internal_errors_total"], registry=reg
        )
        self._stop = threading.Event()
        self._ticks = 0
        self.tick()  # every series exists before the first scrape
        self.server, self._server_thread = start_http_server(0, addr="127.0.0.1", registry=reg)
        self.target = f"127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self._run, name="contract-exporter", daemon=True)
        self._thread.start()

    def tick(self) -> None:
        self._ticks += 1
        n = self._ticks
        for i, model in enumerate(MODELS):
            self.created.labels(model).inc(3)
            self.finished.labels("completed", model).inc(2)
            self.finished.labels("failed", model).inc()
            self.failed.labels(CODES[(n + i) % len(CODES)], model).inc()
            self.finished.labels("cancelled", model).inc()
            self.finished.labels("incomplete", model).inc()
            self.incomplete.labels("max_output_tokens", model).inc()
            self.duration.labels("completed", model).observe(30.0 + 60 * (n % 7))
            self.duration.labels("failed", model).observe(5.0 + 10 * (n % 5))
            self.queue.labels(model).observe(0.2 + 3 * (n % 4))
            self.abandoned.labels(model).inc()
            for status, k in (("completed", 40), ("failed", 7), ("cancelled", 2), ("incomplete", 3)):
                self.tokens.labels("input", status, model).inc(k)
                self.tokens.labels("output", status, model).inc(2 * k)
        for status, k in (("queued", 1), ("in_progress", 5), ("completed", 4), ("failed", 2), ("incomplete", 2)):
            self.polls.labels(status).inc(k)
        self.in_flight.set(3 + n % 4)
        self.oldest.set(10.0 + n % 30)
        self.internal.labels("classify").inc()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.tick()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def exporter() -> Iterator[ContractExporter]:
    exp = ContractExporter()
    try:
        yield exp
    finally:
        exp.close()


@pytest.fixture(scope="module")
def prom(exporter: ContractExporter, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = require_tool("prometheus")
    with Prometheus(
        [exporter.target],
        job="bgwatch-test",
        rule_files=[RULES_FILE],
        binary=binary,
        workdir=tmp_path_factory.mktemp("prometheus"),
    ) as p:
        p.wait_for_scrapes(exporter.target, 4, timeout=30)
        yield p


def _eventually(prom: Prometheus, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The query's result once it is non-empty (rates need two samples, rules one evaluation)."""
    return wait_until(lambda: prom.query(expr), timeout=timeout, message=f"no data for {expr}")


@pytest.mark.prometheus
def test_harness_scrapes_the_target(prom: Prometheus, exporter: ContractExporter) -> None:
    (target,) = prom.targets_status()
    assert target["health"] == "up", target
    assert target["labels"] == {"instance": exporter.target, "job": "bgwatch-test"}
    assert prom.wait_for_scrapes(exporter.target, 4, timeout=1) >= 4
    assert prom.query_value(f'up{{job="bgwatch-test", instance="{exporter.target}"}}') == 1.0
    before = time.time()
    series = prom.query_range("sum(bg_response_in_flight)", start=before - 5, end=before, step=1)
    assert len(series) == 1 and len(series[0]["values"]) >= 3


@pytest.mark.prometheus
def test_harness_reports_bad_promql(prom: Prometheus) -> None:
    with pytest.raises(PromQLError) as info:
        prom.query("sum by (code (rate(bg_response_failed_total[15s]))")
    assert info.value.error_type == "bad_data"
    assert prom.query("bg_response_does_not_exist") == []


@pytest.mark.prometheus
def test_exporter_serves_exactly_the_contract(prom: Prometheus) -> None:
    names = {
        s["__name__"]
        for s in prom.api("series", [("match[]", '{job="bgwatch-test", __name__=~"bg.*"}')])
        if not s["__name__"].endswith("_created")
    }
    assert names == contract_series_names()


@pytest.mark.prometheus
@pytest.mark.parametrize("target", DASHBOARD_TARGETS, ids=str)
def test_dashboard_query_returns_data(prom: Prometheus, target: DashboardTarget) -> None:
    expr = substitute_dashboard_vars(target.expr, code="server_error|rate_limit_exceeded")
    result = _eventually(prom, expr)
    for sample in result:
        assert sample["value"][1] not in ("NaN", "+Inf", "-Inf"), f"{target}: {sample}"


@pytest.mark.prometheus
def test_dashboard_variable_queries_have_values(prom: Prometheus) -> None:
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        for var in json.loads(path.read_text(encoding="utf-8"))["templating"]["list"]:
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", str(var.get("query")))
            if var["type"] != "query" or not m:
                continue
            selector = substitute_dashboard_vars(m.group(1))
            values = {s["metric"].get(m.group(2)) for s in _eventually(prom, f"group by ({m.group(2)}) ({selector})")}
            assert values - {None}, f"{path.name}: ${var['name']} would be empty"


@pytest.mark.prometheus
def test_rules_are_loaded_and_healthy(prom: Prometheus) -> None:
    prom.wait_for_rule_evaluations(2)
    loaded = {(g["name"], r["name"], r["type"]) for g in prom.rule_groups() for r in g["rules"]}
    expected = {(r.group, r.name, "alerting" if r.kind == "alert" else "recording") for r in RULES}
    assert loaded == expected
    for group in prom.rule_groups():
        for rule in group["rules"]:
            assert rule["health"] == "ok", rule
            assert not rule.get("lastError"), rule


@pytest.mark.prometheus
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_rule_expression_evaluates(prom: Prometheus, rule: Rule) -> None:
    if rule.kind == "record":
        # the expression itself, and the series Prometheus recorded from it
        _eventually(prom, rule.expr, timeout=15)
        labels = ", ".join(f'{k}="{v}"' for k, v in (rule.raw.get("labels") or {}).items())
        recorded = _eventually(prom, f"{rule.name}{{{labels}}}", timeout=15)
        assert all(s["metric"]["job"] == "bgwatch-test" for s in recorded)
    else:
        prom.query(rule.expr)  # parses and evaluates; thresholds decide whether it returns data


@pytest.mark.prometheus
def test_internal_errors_alert_goes_pending(prom: Prometheus, exporter: ContractExporter) -> None:
    alert = prom.wait_for_alert("BgwatchInternalErrors", state="pending", timeout=15)
    assert alert["labels"] == {
        "alertname": "BgwatchInternalErrors",
        "severity": "warning",
        "job": "bgwatch-test",
        "instance": exporter.target,
        "stage": "classify",
    }
    assert alert["annotations"]["runbook_url"].endswith("#bgwatchinternalerrors")


@pytest.mark.prometheus
def test_harness_start_failure_is_reported(tmp_path: Path) -> None:
    binary = require_tool("prometheus")
    bad_rules = tmp_path / "bad.rules.yml"
    bad_rules.write_text("groups: [{name: x, rules: [{record: 'a:b:c', expr: 'sum('}]}]\n", encoding="utf-8")
    harness = Prometheus([], rule_files=[bad_rules], binary=binary, workdir=tmp_path / "w", start_timeout=15)
    with pytest.raises(RuntimeError, match="exited"):
        harness.start()
    assert not harness.running
