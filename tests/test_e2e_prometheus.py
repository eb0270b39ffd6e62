"""End to end: the real ``bgwatch demo``, scraped by a real Prometheus with the shipped rules.

One seeded demo run (a subprocess: ``python -m bgwatch demo --json --keep-serving``, 150
background responses through a real openai client against the embedded simulator, with HTTP
faults) is scraped every second by ``prometheus`` (Debian's 2.42) from its first request to
after its last, with ``dashboards/rules/bgwatch.rules.yml`` loaded. Then, through
Prometheus's HTTP API:

* the counters at the last scrape equal the simulator's ledger exactly (failures by code
  first, then terminal states, incomplete reasons, creations, polls, in flight);
* every panel query of both shipped dashboards (``$job``/``$instance`` = the demo's real
  labels, ``$code`` = ``.*``, ``$__rate_interval`` = the whole run) parses and returns
  finite data whose labels fill its legend, and the dashboards' variables list the real
  job, instance and codes;
* every rule expression parses; every recording rule returns data; every alert expression
  returns exactly the series this run should produce (:data:`EXPECTED_ALERT_CODES`: three
  return nothing, and say why), and the alerts are in the matching state;
* after the demo stopped (so the rate windows no longer change) every recorded series equals
  its expression evaluated ad hoc, and the ratio and 1h-baseline rules equal the direct
  computation from the rules they are built on;
* BgwatchInternalErrors never left inactive.

Skips without ``prometheus`` unless ``$CI`` is set (then it fails). ~25 s.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from .demo_harness import scraped_demo
from .prometheus_harness import (
    DASHBOARD_DIR,
    NEW_METRICS,
    RULES_FILE,
    DashboardTarget,
    Prometheus,
    Rule,
    dashboard_targets,
    metric_names_in,
    require_tool,
    rule_exprs,
    substitute_dashboard_vars,
    wait_until,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(180)]

JOB = "bgwatch-e2e"
SEED = 6
RESPONSES = 150
# Three codes (one the SDK has never seen) at ~15% of finished responses each, so that the
# per-code alerts have something to say; the default mix spreads failures over 22 codes.
CODES = ("server_error", "rate_limit_exceeded", "model_overloaded_v2")
MIX = "completed=40,failed=45,incomplete=10,cancelled=5,codes=" + "|".join(CODES)
DEMO_ARGS = [
    *("--seed", str(SEED), "--responses", str(RESPONSES), "--mix", MIX),
    *("--durations", "0.5,3", "--fault-rate", "0.03", "--progress", "none"),
]

RULES = rule_exprs(RULES_FILE)
RECORDS = [r for r in RULES if r.kind == "record"]
DASHBOARD_TARGETS = [t for p in sorted(DASHBOARD_DIR.glob("*.json")) for t in dashboard_targets(p)]

# What each alert expression returns at the end of this run: the `code` labels of its series
# (alerts without a code label: the empty set means "returns nothing").
EXPECTED_ALERT_CODES: dict[str, set[str]] = {
    # every code is > 10% of the finished responses (see test_demo_run_matched_its_ledger)
    "BgwatchFailureRatioHigh": set(CODES),
    # a run shorter than 5 minutes has the same increase in its 5m and 1h windows, so the 5m
    # rate is 12x the 1h rate: every code with >= 5 failures "spikes", except
    # rate_limit_exceeded, which the expression leaves to BgwatchRateLimited
    "BgwatchFailureCodeSpike": set(CODES) - {"rate_limit_exceeded"},
    "BgwatchRateLimited": {"rate_limit_exceeded"},
    # returns nothing: nothing is in flight at the end, and responses finished all along
    "BgwatchNoResponsesFinishing": set(),
    # returns nothing: bgwatch caught no error of its own (the counters exist, at 0)
    "BgwatchInternalErrors": set(),
    # return nothing: queue waits of a few seconds, nothing stuck or abandoned in a 150-response run
    "BgwatchResponseStuck": set(),
    "BgwatchQueueSlow": set(),
    "BgwatchResponsesAbandoned": set(),
}


@dataclass(frozen=True)
class Run:
    prom: Prometheus
    target: str
    """The demo's ``host:port``, its ``instance`` label."""
    summary: dict[str, Any]
    """The demo's --json summary (bgwatch's counts and the simulator's ledger)."""
    summary_at: float
    at: float
    """Evaluation time: after a scrape of the final counts and a rule evaluation over it."""
    rate_interval: str
    """``$__rate_interval``: a window that covers the whole run at ``at``."""
    exit_status: int | None
    frozen_at: float
    """After the demo stopped and its rate windows stopped moving (see ``run``)."""

    @property
    def ledger(self) -> dict[str, Any]:
        ledger: dict[str, Any] = self.summary["ledger"]
        return ledger


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    binary = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus-e2e")
    with scraped_demo(DEMO_ARGS, job=JOB, rule_files=[RULES_FILE], binary=binary, workdir=workdir) as demo_run:
        prom, demo = demo_run.prom, demo_run.demo
        summary = demo.wait_for_summary(timeout=120)
        demo_run.wait_for_scrape_after(demo.summary_at)
        at = time.time()
        rate_interval = f"{math.ceil(at - demo_run.prom_started_at) + 5}s"
        # Freeze the data: once the demo is gone and Prometheus has evaluated the rules more
        # than 1.1 scrape intervals after its last sample, rate() over the run no longer changes
        # with the evaluation time (its extrapolation to the window's end is capped), so a
        # recorded value and an ad hoc evaluation of its expression must agree exactly.
        exit_status = demo.stop()
        exited_at = time.time()

        def evaluated_after_exit() -> bool:
            groups = prom.rule_groups()
            return all(_epoch(g["lastEvaluation"]) > exited_at + 2.5 for g in groups)

        wait_until(evaluated_after_exit, timeout=15, message="rules not evaluated after the demo stopped")
        yield Run(prom, demo_run.target, summary, demo.summary_at, at, rate_interval, exit_status, time.time())


def _epoch(rfc3339: str) -> float:
    """Prometheus's RFC 3339 timestamps (up to nanoseconds, Z or an offset) to epoch seconds."""
    m = re.fullmatch(r"([^.Z+]+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert m, rfc3339
    whole, frac, tz = m.groups()
    seconds = datetime.fromisoformat(whole + ("+00:00" if tz == "Z" else tz)).timestamp()
    return seconds + (float(f"0.{frac}") if frac else 0.0)


def _rule_id(rule: Rule) -> str:
    quantile = (rule.raw.get("labels") or {}).get("quantile")
    return f"{rule.name}{{quantile={quantile}}}" if quantile else rule.name


def _by(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


def _regex_escape(value: str) -> str:
    """What Grafana puts into a ``=~`` matcher for one value of a multi-value variable."""
    return re.sub(r"[$^*{}\[\]'+?.()|\\]", lambda m: "\\\\" + m.group(0), value)


def _panel_expr(run: Run, expr: str) -> str:
    return substitute_dashboard_vars(
        expr, job=_regex_escape(JOB), instance=_regex_escape(run.target), code=".*", rate_interval=run.rate_interval
    )


def _skip_if_not_exported_yet(run: Run, expr: str) -> None:
    """The metrics of issues 12 and 15 come from other branches: until the demo exports a series
    of them, a query over it is empty. Skip (not pass) those, so that the merge tightens itself."""
    names = metric_names_in(expr)
    names |= {n for r in RECORDS if r.name in names for n in metric_names_in(r.expr)}
    for name in names & NEW_METRICS:
        if not run.prom.query(f'count({{__name__="{name}", job="{JOB}"}})', at=run.at):
            pytest.skip(f"{name}: not exported by this build's demo yet (issues 12/15)")


def _finite(result: list[dict[str, Any]]) -> bool:
    return all(math.isfinite(float(s["value"][1])) for s in result)


# --------------------------------------------------------------------------- the run itself


def test_demo_run_matched_its_ledger(run: Run) -> None:
    summary, ledger = run.summary, run.ledger
    assert summary["match"] is True, summary["mismatches"]
    assert summary["bgwatch"] == ledger
    assert summary["errors"] == {}
    assert summary["faults_injected"] > 0  # retried by the SDK and the wait, counted once
    assert ledger["created"] == RESPONSES and sum(ledger["finished"].values()) == RESPONSES
    assert ledger["queue_waits"] == RESPONSES and summary["queue_wait"]["ledger_seconds"] > 0
    assert {kind.split()[1] for kind in ledger["tokens"]} == {"completed", "failed", "incomplete", "cancelled"}
    assert run.exit_status == 0  # --keep-serving, stopped with SIGTERM: exits with the match status
    # The preconditions of EXPECTED_ALERT_CODES (a changed simulator draw shows up here first).
    assert set(ledger["failed"]) == set(CODES)
    for code, n in ledger["failed"].items():
        assert n >= 0.13 * RESPONSES, f"{code}: {n} failures, too few for BgwatchFailureRatioHigh (10%)"


def test_prometheus_scraped_the_whole_workload(run: Run) -> None:
    prom = run.prom
    window = run.rate_interval
    polls = prom.query(f'bg_response_polls_total{{job="{JOB}", status="queued"}}[{window}]', at=run.at)
    assert len(polls) == 1
    values = polls[0]["values"]
    # The demo starts its workload as soon as /metrics is up, and Prometheus scrapes it within a
    # second: the first scrape saw only the first few polls (often none).
    first, last = float(values[0][1]), float(values[-1][1])
    assert first <= 0.2 * last, f"the first scrape came late: {values[:3]}"
    scrapes = prom.query_value(f'sum_over_time((up{{instance="{run.target}"}} == 1)[{window}:1s])', at=run.at)
    assert scrapes is not None and scrapes >= math.floor(run.summary["wall_seconds"])


# --------------------------------------------------------------------------- exact counts


def test_failure_counts_by_code_at_the_last_scrape_equal_the_ledger(run: Run) -> None:
    selector = f'bg_response_failed_total{{job="{JOB}"}}'
    counted = _by(run.prom.query(f"sum by (code) ({selector})", at=run.at), "code")
    assert counted == {code: float(n) for code, n in run.ledger["failed"].items()}
    # ... read from a scrape that happened after the workload had ended
    oldest = run.prom.query_value(f"min(timestamp({selector}))", at=run.at)
    assert oldest is not None and oldest > run.summary_at


@pytest.mark.parametrize(
    ("expr", "label", "key"),
    [
        ('sum by (status) (bg_response_finished_total{{job="{job}"}})', "status", "finished"),
        ('sum by (reason) (bg_response_incomplete_total{{job="{job}"}})', "reason", "incomplete"),
        ('sum(bg_response_created_total{{job="{job}"}})', "", "created"),
        ('sum(bg_response_polls_total{{job="{job}"}})', "", "polls"),
        ('sum(bg_response_in_flight{{job="{job}"}})', "", "in_flight"),
    ],
    ids=["finished", "incomplete", "created", "polls", "in_flight"],
)
def test_other_counts_at_the_last_scrape_equal_the_ledger(run: Run, expr: str, label: str, key: str) -> None:
    counted = _by(run.prom.query(expr.format(job=JOB), at=run.at), label)
    expected = run.ledger[key]
    if isinstance(expected, dict):
        assert counted == {k: float(v) for k, v in expected.items()}
    else:
        assert counted == {"": float(expected)}


def test_tokens_by_type_and_status_at_the_last_scrape_equal_the_ledger(run: Run) -> None:
    result = run.prom.query(f'sum by (type, status) (bg_response_tokens_total{{job="{JOB}"}})', at=run.at)
    counted = {f"{s['metric']['type']} {s['metric']['status']}": float(s["value"][1]) for s in result}
    assert {k: v for k, v in counted.items() if v} == {k: float(v) for k, v in run.ledger["tokens"].items()}


def test_queue_wait_at_the_last_scrape_equals_the_demo_and_the_ledger(run: Run) -> None:
    selector = f'{{job="{JOB}"}}'
    count = run.prom.query_value(f"sum(bg_response_queue_seconds_count{selector})", at=run.at)
    total = run.prom.query_value(f"sum(bg_response_queue_seconds_sum{selector})", at=run.at)
    queue = run.summary["queue_wait"]
    assert count == run.ledger["queue_waits"]  # one wait per response, every one seen past queued
    assert total == pytest.approx(queue["bgwatch_seconds"], rel=1e-9)  # what the demo read in-process
    assert abs(total - queue["ledger_seconds"]) <= queue["tolerance_seconds"]
    # Polling sees the end of the queue up to a poll late, never early (less a round trip each).
    assert total >= queue["really_queued_seconds"] - queue["tolerance_seconds"]


def test_oldest_in_flight_rose_during_the_run_and_is_zero_at_the_end(run: Run) -> None:
    selector = f'bg_response_oldest_in_flight_seconds{{job="{JOB}"}}'
    assert run.prom.query_value(f"sum({selector})", at=run.at) == 0.0
    highest = run.prom.query_value(f"max(max_over_time({selector}[{run.rate_interval}]))", at=run.at)
    # responses run 0.5-3 s (queue included); HTTP faults and their retries add a little
    assert highest is not None and 0.5 < highest < 30


# --------------------------------------------------------------------------- dashboards


@pytest.mark.parametrize("target", DASHBOARD_TARGETS, ids=str)
def test_dashboard_panel_query_returns_data(run: Run, target: DashboardTarget) -> None:
    _skip_if_not_exported_yet(run, target.expr)
    result = run.prom.query(_panel_expr(run, target.expr), at=run.at)
    assert result, f"{target}: no data"
    assert _finite(result), f"{target}: {result}"
    legend = _legend_format(target)
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        assert all(label in s["metric"] for s in result), f"{target}: legend {legend!r} needs {label}: {result}"


def _legend_format(target: DashboardTarget) -> str:
    data = json.loads((DASHBOARD_DIR / target.dashboard).read_text(encoding="utf-8"))
    for panel in data["panels"]:
        if panel.get("id") == target.panel_id:
            for t in panel.get("targets") or ():
                if t.get("refId") == target.ref_id:
                    return str(t.get("legendFormat", ""))
    return ""


def test_dashboard_variables_list_the_real_labels(run: Run) -> None:
    expected = {"job": {JOB}, "instance": {run.target}, "code": set(run.ledger["failed"])}
    seen = 0
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        for var in json.loads(path.read_text(encoding="utf-8"))["templating"]["list"]:
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", str(var.get("query")))
            if var["type"] != "query" or not m:
                continue
            selector = substitute_dashboard_vars(m.group(1), job=_regex_escape(JOB), instance=_regex_escape(run.target))
            result = run.prom.query(f"group by ({m.group(2)}) ({selector})", at=run.at)
            assert {s["metric"][m.group(2)] for s in result} == expected[var["name"]], f"{path.name} ${var['name']}"
            seen += 1
    assert seen == 5  # job + instance in both dashboards, code in the failures dashboard


# --------------------------------------------------------------------------- rules


def test_rules_are_loaded_and_healthy(run: Run) -> None:
    groups = run.prom.rule_groups()
    loaded = {(g["name"], r["name"]) for g in groups for r in g["rules"]}
    assert loaded == {(r.group, r.name) for r in RULES}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] == "ok" and not rule.get("lastError"), rule


@pytest.mark.parametrize("rule", RULES, ids=_rule_id)
def test_rule_expression_at_the_end_of_the_run(run: Run, rule: Rule) -> None:
    result = run.prom.query(rule.expr, at=run.at)  # raises PromQLError if it does not parse
    assert _finite(result), result
    assert all(s["metric"].get("job") == JOB for s in result), result
    if rule.kind == "record":
        _skip_if_not_exported_yet(run, rule.expr)
        assert result, f"{rule.name}: no data"
    else:
        assert {s["metric"].get("code", "") for s in result} == EXPECTED_ALERT_CODES[rule.name], result


def test_alert_states_at_the_end_of_the_run(run: Run) -> None:
    active = run.prom.query(f'ALERTS{{job="{JOB}"}}', at=run.at)
    states = {(s["metric"]["alertname"], s["metric"].get("code", ""), s["metric"]["alertstate"]) for s in active}
    # Every alert has a `for:` of 5 minutes or more: what returns data is pending, nothing fires.
    expected = {(name, code, "pending") for name, codes in EXPECTED_ALERT_CODES.items() for code in codes}
    assert states == expected


def test_internal_errors_alert_stays_inactive(run: Run) -> None:
    prom, window = run.prom, run.rate_interval
    stages = prom.query(f'max_over_time(bgwatch_internal_errors_total{{job="{JOB}"}}[{window}])', at=run.at)
    assert stages and all(s["value"][1] == "0" for s in stages), stages  # the counters exist and stayed 0
    ever = prom.query(f'ALERTS{{alertname="BgwatchInternalErrors"}}[{window}]', at=run.at)
    assert ever == [], "BgwatchInternalErrors was pending or firing during the run"
    assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "BgwatchInternalErrors"]


def _series(result: list[dict[str, Any]], extra: dict[str, str] | None = None) -> dict[frozenset[tuple[str, str]], str]:
    out = {}
    for s in result:
        labels = {k: v for k, v in s["metric"].items() if k != "__name__"} | (extra or {})
        out[frozenset(labels.items())] = s["value"][1]
    return out


@pytest.mark.parametrize("rule", RECORDS, ids=_rule_id)
def test_recorded_series_equal_their_expression(run: Run, rule: Rule) -> None:
    labels = {str(k): str(v) for k, v in (rule.raw.get("labels") or {}).items()}
    matchers = ", ".join(f'{k}="{v}"' for k, v in {"job": JOB, **labels}.items())
    # A gauge read by an instant selector goes stale when the demo stops: compare those at the
    # end of the run, when in flight had settled at 0 (constant, so no window effects either).
    _skip_if_not_exported_yet(run, rule.expr)
    gauges = {"bg_response_in_flight", "bg_response_oldest_in_flight_seconds"}
    at = run.at if gauges & metric_names_in(rule.expr) else run.frozen_at
    recorded = _series(run.prom.query(f"{rule.name}{{{matchers}}}", at=at))
    adhoc = _series(run.prom.query(rule.expr, at=at), labels)
    assert recorded, f"{rule.name}: nothing recorded"
    assert recorded == adhoc


def test_ratio_and_baseline_rules_equal_the_direct_computation(run: Run) -> None:
    prom, at = run.prom, run.frozen_at

    def value(expr: str) -> float:
        v = prom.query_value(f'{expr}{{job="{JOB}"}}', at=at)
        assert v is not None, expr
        return v

    failed, finished = value("job:bg_response_failed:rate5m"), value("job:bg_response_finished:rate5m")
    assert value("job:bg_response_failed_per_finished:ratio_rate5m") == pytest.approx(failed / finished, rel=1e-12)
    by_code_5m = _by(prom.query(f'job_code:bg_response_failed:rate5m{{job="{JOB}"}}', at=at), "code")
    by_code_1h = _by(prom.query(f'job_code:bg_response_failed:rate1h{{job="{JOB}"}}', at=at), "code")
    ratio = _by(prom.query(f'job_code:bg_response_failed_per_finished:ratio_rate5m{{job="{JOB}"}}', at=at), "code")
    assert set(by_code_5m) == set(by_code_1h) == set(ratio) == set(CODES)
    assert sum(by_code_5m.values()) == pytest.approx(failed, rel=1e-12)
    for code in CODES:
        assert ratio[code] == pytest.approx(by_code_5m[code] / finished, rel=1e-12)
        # the whole run lies in both windows: the same increase over 300 s and over 3600 s
        assert by_code_1h[code] * 3600 == pytest.approx(by_code_5m[code] * 300, rel=1e-9)
    polls = value("job:bg_response_polls_per_finished:ratio_rate5m")
    polls_rate = sum(_by(prom.query(f'job_status:bg_response_polls:rate5m{{job="{JOB}"}}', at=at), "status").values())
    assert polls == pytest.approx(polls_rate / finished, rel=1e-12)
