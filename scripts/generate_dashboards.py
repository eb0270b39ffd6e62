#!/usr/bin/env python3
"""Generate bgwatch's Grafana dashboards with grafana-foundation-sdk.

The JSON in ``dashboards/`` is generated from this file and checked in. Edit the code, then:

    python scripts/generate_dashboards.py            # rewrite dashboards/, dashboards/rules/, src/bgwatch/_assets/
    python scripts/generate_dashboards.py --check    # exit 1 if a checked-in file is stale

Conventions every panel follows (tests/test_dashboards.py enforces them):

* the data source is the ``$datasource`` variable (type prometheus), so the same file works
  with file provisioning and with a UI import;
* every series selector carries ``job=~"$job", instance=~"$instance"``;
* every range is ``[$__rate_interval]``;
* only the metric names of the contract in DESIGN.md are used (no recording rules), so the
  dashboards work without ``dashboards/rules/`` being loaded;
* every rate has the unit ``ops`` (see RATE_UNIT), ratios ``percentunit``, durations ``s``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from bgwatch._export import ExportOptions, rule_test_files, rules_file
from bgwatch._rules import DEFAULT_RUNBOOK_URL, Thresholds

REPO_ROOT = Path(__file__).resolve().parent.parent

OVERVIEW_UID = "bgwatch-overview"
FAILURES_UID = "bgwatch-failures"
RUNBOOK_URL = DEFAULT_RUNBOOK_URL

DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE_INTERVAL = "$__rate_interval"
TARGET_MATCHERS = 'job=~"$job", instance=~"$instance"'

Panel = timeseries.Panel | stat.Panel | bargauge.Panel

# One unit for every rate: responses, polls, errors and tokens are events, not HTTP requests,
# so "ops" ("N ops/s", scaled to k/M) rather than "reqps"; the axis label says what is counted.
RATE_UNIT = "ops"


# --------------------------------------------------------------------------- PromQL helpers


def sel(metric: str, *matchers: str) -> str:
    """``metric{matchers..., job=~"$job", instance=~"$instance"}``."""
    return f"{metric}{{{', '.join((*matchers, TARGET_MATCHERS))}}}"


def rate(metric: str, *matchers: str) -> str:
    return f"rate({sel(metric, *matchers)}[{RATE_INTERVAL}])"


def sum_rate(metric: str, *matchers: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} ({rate(metric, *matchers)})"


def ratio(numerator: str, denominator: str) -> str:
    """``numerator / denominator``, with no result (instead of NaN/Inf) while the denominator is 0."""
    return f"{numerator}\n/\n({denominator} > 0)"


def quantile(q: float, *matchers: str, by: str = "", metric: str = "bg_response_duration_seconds") -> str:
    grouping = f"le, {by}" if by else "le"
    buckets = sum_rate(f"{metric}_bucket", *matchers, by=grouping)
    return f"histogram_quantile({q}, {buckets})"


def query(expr: str, legend: str, ref_id: str = "A", *, instant: bool = False) -> prometheus.Dataquery:
    q = (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref_id)
        .datasource(DATASOURCE)
        .editor_mode(prometheus_models.QueryEditorMode.CODE)
    )
    return q.instant() if instant else q.range()


# --------------------------------------------------------------------------- panel helpers


def _thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=v, color=c) for v, c in steps])
    )


GREEN_ONLY = ((None, "green"),)


def ts(
    panel_id: int,
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    *,
    unit: str = "short",
    axis_label: str = "",
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    thresholds: Sequence[tuple[float | None, str]] = GREEN_ONLY,
    show_thresholds: bool = False,
    decimals: float | None = None,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(list(targets))
        .unit(unit)
        .min(0)
        .span(width)
        .height(height)
        .fill_opacity(10)
        .line_width(1)
        .show_points(common_models.VisibilityMode.NEVER)
        .span_nulls(False)
        .thresholds(_thresholds(*thresholds))
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.TABLE)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(
            common.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
    )
    if axis_label:
        p = p.axis_label(axis_label)
    if decimals is not None:
        p = p.decimals(decimals)
    if stacked:
        p = p.stacking(common.StackingConfig().mode(common_models.StackingMode.NORMAL).group("A"))
    if show_thresholds:
        p = p.thresholds_style(common.GraphThresholdsStyleConfig().mode(common_models.GraphThresholdsStyleMode.LINE))
    return p


def single_stat(
    panel_id: int,
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    thresholds: Sequence[tuple[float | None, str]] = GREEN_ONLY,
    decimals: float | None = None,
    width: int = 4,
    no_value: str = "0",
) -> stat.Panel:
    p = (
        stat.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(query(expr, "__auto"))
        .unit(unit)
        .span(width)
        .height(4)
        .no_value(no_value)
        .thresholds(_thresholds(*thresholds))
        .color_mode(common_models.BigValueColorMode.VALUE)
        .graph_mode(common_models.BigValueGraphMode.AREA)
        .justify_mode(common_models.BigValueJustifyMode.AUTO)
        .text_mode(common_models.BigValueTextMode.AUTO)
        .orientation(common_models.VizOrientation.AUTO)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if decimals is not None:
        p = p.decimals(decimals)
    return p


def variables(with_code: bool) -> list[dashboard.DatasourceVariable | dashboard.QueryVariable]:
    all_option = dashboard_models.VariableOption(selected=True, text="All", value="$__all")
    result: list[dashboard.DatasourceVariable | dashboard.QueryVariable] = [
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .description("The Prometheus that scrapes the processes instrumented with bgwatch."),
        # bg_response_in_flight has no labels of its own: it exists from the moment the
        # instruments are registered, before any response was seen.
        dashboard.QueryVariable("job")
        .label("job")
        .datasource(DATASOURCE)
        .query("label_values(bg_response_in_flight, job)")
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(all_option),
        dashboard.QueryVariable("instance")
        .label("instance")
        .datasource(DATASOURCE)
        .query('label_values(bg_response_in_flight{job=~"$job"}, instance)')
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(all_option),
    ]
    if with_code:
        result.append(
            dashboard.QueryVariable("code")
            .label("error code")
            .description("error.code of failed background responses (unknown = no code, other = capped).")
            .datasource(DATASOURCE)
            .query(f"label_values({sel('bg_response_failed_total')}, code)")
            .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(all_option)
        )
    return result


def alerts_annotation() -> dashboard.AnnotationQuery:
    """Firing bgwatch alerts (from dashboards/rules/) as annotations, when the rules are loaded."""
    return (
        dashboard.AnnotationQuery()
        .name("bgwatch alerts")
        .datasource(DATASOURCE)
        .enable(True)
        .hide(False)
        .icon_color("red")
        .type("prometheus")
        .expr('ALERTS{alertstate="firing", alertname=~"Bgwatch.*", job=~"$job"}')
    )


def base_dashboard(uid: str, title: str, description: str, *, with_code: bool) -> dashboard.Dashboard:
    d = (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["bgwatch", "openai"])
        .editable()
        .timezone("browser")
        .time("now-6h", "now")
        .refresh("30s")
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .timepicker(dashboard.TimePicker().refresh_intervals(["30s", "1m", "5m", "15m", "1h"]))
        .annotation(alerts_annotation())
        .link(
            dashboard.DashboardLink("bgwatch")
            .type(dashboard_models.DashboardLinkType.DASHBOARDS)
            .tags(["bgwatch"])
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
        )
        .link(
            dashboard.DashboardLink("Runbook")
            .type(dashboard_models.DashboardLinkType.LINK)
            .url(RUNBOOK_URL)
            .icon("doc")
            .target_blank(True)
        )
    )
    for v in variables(with_code):
        d = d.with_variable(v)
    return d


# --------------------------------------------------------------------------- dashboards

FAILED = "bg_response_failed_total"
FINISHED = "bg_response_finished_total"
CREATED = "bg_response_created_total"
INCOMPLETE = "bg_response_incomplete_total"
POLLS = "bg_response_polls_total"
IN_FLIGHT = "bg_response_in_flight"
INTERNAL = "bgwatch_internal_errors_total"
QUEUE = "bg_response_queue_seconds"
OLDEST = "bg_response_oldest_in_flight_seconds"
TOKENS = "bg_response_tokens_total"
ABANDONED = "bg_response_abandoned_total"
NOT_COMPLETED = 'status!="completed"'
# The alert thresholds that panels draw as lines: the defaults of bgwatch._rules.Thresholds
# (`bgwatch export --threshold` rewrites them together with the rules).
DEFAULTS = Thresholds()

RATIO_THRESHOLDS = ((None, "green"), (0.01, "yellow"), (0.1, "red"))


def overview() -> dashboard.Dashboard:
    d = base_dashboard(
        OVERVIEW_UID,
        "bgwatch / OpenAI background responses",
        "Lifecycle of OpenAI background responses as seen by bgwatch: creations, terminal states, "
        "failures by error.code (which the API reports with HTTP 200), time to a terminal state, "
        "responses in flight, polling cost and bgwatch's own errors.",
        with_code=False,
    )
    panels: list[tuple[str, list[Panel]]] = [
        (
            "Now",
            [
                single_stat(
                    1,
                    "In flight",
                    "Background responses seen but not yet seen in a terminal state (sum over processes).",
                    f"sum({sel(IN_FLIGHT)})",
                    decimals=0,
                ),
                single_stat(
                    2,
                    "Created / s",
                    "Background responses created through an instrumented client.",
                    sum_rate(CREATED),
                    unit=RATE_UNIT,
                    decimals=2,
                ),
                single_stat(
                    3,
                    "Finished / s",
                    "Background responses that reached a terminal state (completed, failed, cancelled, incomplete).",
                    sum_rate(FINISHED),
                    unit=RATE_UNIT,
                    decimals=2,
                ),
                single_stat(
                    4,
                    "Failure ratio",
                    "Failed / finished background responses. Empty while nothing finishes.",
                    ratio(sum_rate(FAILED), sum_rate(FINISHED)),
                    unit="percentunit",
                    thresholds=RATIO_THRESHOLDS,
                    decimals=1,
                    no_value="-",
                ),
                single_stat(
                    5,
                    "p95 time to terminal state",
                    "95th percentile of created_at → terminal state, all statuses.",
                    quantile(0.95),
                    unit="s",
                    no_value="-",
                ),
                single_stat(
                    6,
                    "bgwatch internal errors / s",
                    "Errors caught inside bgwatch. The user's calls went through untouched, but "
                    "the metrics may undercount. Should be 0.",
                    sum_rate(INTERNAL),
                    unit=RATE_UNIT,
                    thresholds=((None, "green"), (1e-9, "red")),
                ),
            ],
        ),
        (
            "Failures",
            [
                ts(
                    7,
                    "Failed responses / s by code",
                    "Background responses that ended `failed`, by error.code (once per response id, not per poll).",
                    [query(sum_rate(FAILED, by="code"), "{{code}}")],
                    unit=RATE_UNIT,
                    axis_label="responses / s",
                    stacked=True,
                ),
                ts(
                    8,
                    "Failure ratio (failed / finished)",
                    "Share of the background responses reaching a terminal state that failed, overall "
                    "and by model. Empty while nothing finishes. The BgwatchFailureRatioHigh alert "
                    "fires on the per-code ratio above 10%.",
                    [
                        query(ratio(sum_rate(FAILED), sum_rate(FINISHED)), "all models"),
                        query(
                            ratio(sum_rate(FAILED, by="model"), sum_rate(FINISHED, by="model")),
                            "{{model}}",
                            "B",
                        ),
                    ],
                    unit="percentunit",
                    thresholds=((None, "green"), (0.1, "red")),
                    show_thresholds=True,
                ),
                ts(
                    9,
                    "Terminal states / s",
                    "Background responses reaching each terminal status.",
                    [query(sum_rate(FINISHED, by="status"), "{{status}}")],
                    unit=RATE_UNIT,
                    axis_label="responses / s",
                    stacked=True,
                ),
                ts(
                    10,
                    "Incomplete responses / s by reason",
                    "Background responses that ended `incomplete`, by incomplete_details.reason.",
                    [query(sum_rate(INCOMPLETE, by="reason"), "{{reason}}")],
                    unit=RATE_UNIT,
                    axis_label="responses / s",
                    stacked=True,
                ),
            ],
        ),
        (
            "Latency and load",
            [
                ts(
                    11,
                    "Time to terminal state (p50 / p95 / p99)",
                    "created_at → terminal state, from the bg_response_duration_seconds histogram "
                    "(buckets up to 8 h: quantiles are interpolated within buckets).",
                    [
                        query(quantile(0.5), "p50"),
                        query(quantile(0.95), "p95", "B"),
                        query(quantile(0.99), "p99", "C"),
                    ],
                    unit="s",
                ),
                ts(
                    12,
                    "p95 time to terminal state by status",
                    "A failure that takes as long as a success usually points at the provider; "
                    "a fast failure at the request.",
                    [query(quantile(0.95, by="status"), "{{status}}")],
                    unit="s",
                ),
                ts(
                    13,
                    "In flight",
                    "Background responses seen but not yet seen in a terminal state, by instance. "
                    "A plateau with no terminal states is what BgwatchNoResponsesFinishing alerts on.",
                    [query(f"sum by (instance) ({sel(IN_FLIGHT)})", "{{instance}}")],
                    decimals=0,
                ),
                ts(
                    14,
                    "Created vs finished / s",
                    "Creation rate against terminal-state rate: a lasting gap means responses pile up.",
                    [
                        query(sum_rate(CREATED), "created"),
                        query(sum_rate(FINISHED), "finished", "B"),
                    ],
                    unit=RATE_UNIT,
                    axis_label="responses / s",
                ),
                ts(
                    15,
                    "Polls per finished response",
                    "Retrieve calls per response reaching a terminal state: the polling cost. "
                    "Empty while nothing finishes.",
                    [query(ratio(sum_rate(POLLS), sum_rate(FINISHED)), "polls / finished")],
                    decimals=1,
                ),
                ts(
                    16,
                    "Polls / s by observed status",
                    "Retrieve calls by the status the poll saw (queued, in_progress, completed, ...).",
                    [query(sum_rate(POLLS, by="status"), "{{status}}")],
                    unit=RATE_UNIT,
                    axis_label="polls / s",
                    stacked=True,
                ),
            ],
        ),
        (
            "Queue, stuck responses and cost",
            [
                ts(
                    18,
                    "Queue wait p50 / p95 by model",
                    "created_at → first in_progress (bg_response_queue_seconds). Its resolution is the "
                    "poll interval (a stream gives it exactly). BgwatchQueueSlow fires when p95 stays "
                    f"above {DEFAULTS.queue_p95_seconds:g} s for 15 minutes.",
                    [
                        query(quantile(0.5, by="model", metric=QUEUE), "p50 {{model}}"),
                        query(quantile(0.95, by="model", metric=QUEUE), "p95 {{model}}", "B"),
                    ],
                    unit="s",
                    thresholds=((None, "green"), (DEFAULTS.queue_p95_seconds, "red")),
                    show_thresholds=True,
                ),
                ts(
                    19,
                    "Oldest response in flight",
                    "Age of the oldest background response still in flight, per process (0 when none). "
                    "A line that only grows is a stuck response: BgwatchResponseStuck fires above "
                    f"{DEFAULTS.stuck_seconds:g} s.",
                    [query(f"max by (instance) ({sel(OLDEST)})", "{{instance}}")],
                    unit="s",
                    thresholds=((None, "green"), (DEFAULTS.stuck_seconds, "red")),
                    show_thresholds=True,
                ),
                ts(
                    20,
                    "Share of tokens spent on responses that did not complete",
                    "Tokens (usage of terminal bodies) of failed, cancelled and incomplete responses / all "
                    "tokens, overall and by type: spend with nothing to show for it. 0 while everything "
                    "completes, empty while no tokens are counted.",
                    [
                        query(
                            ratio(f"({sum_rate(TOKENS, NOT_COMPLETED)} or {sum_rate(TOKENS)} * 0)", sum_rate(TOKENS)),
                            "all tokens",
                        ),
                        query(
                            ratio(
                                f"({sum_rate(TOKENS, NOT_COMPLETED, by='type')} or {sum_rate(TOKENS, by='type')} * 0)",
                                sum_rate(TOKENS, by="type"),
                            ),
                            "{{type}} tokens",
                            "B",
                        ),
                    ],
                    unit="percentunit",
                ),
                ts(
                    21,
                    "Tokens / s by terminal status",
                    "Input and output tokens of responses that reached each terminal status.",
                    [query(sum_rate(TOKENS, by="type, status"), "{{type}} · {{status}}")],
                    unit=RATE_UNIT,
                    axis_label="tokens / s",
                    stacked=True,
                ),
                ts(
                    22,
                    "Abandoned responses / s by model",
                    "Responses that left bgwatch's tracking (TTL) without a terminal state being seen: "
                    "nobody polled them to the end. BgwatchResponsesAbandoned fires on any.",
                    [query(sum_rate(ABANDONED, by="model"), "{{model}}")],
                    unit=RATE_UNIT,
                    axis_label="responses / s",
                    width=24,
                    height=6,
                ),
            ],
        ),
        (
            "bgwatch health",
            [
                ts(
                    17,
                    "bgwatch internal errors / s by stage",
                    "Errors caught inside bgwatch, by stage. Each one means an observation may be "
                    "missing from the other panels; the user's call itself was not affected.",
                    [query(sum_rate(INTERNAL, by="stage"), "{{stage}}")],
                    unit=RATE_UNIT,
                    axis_label="errors / s",
                    width=24,
                    height=6,
                    thresholds=((None, "green"), (1e-9, "red")),
                ),
            ],
        ),
    ]
    return _layout(d, panels)


def failures() -> dashboard.Dashboard:
    d = base_dashboard(
        FAILURES_UID,
        "bgwatch / failures by error code",
        "Drill-down into failed OpenAI background responses by error.code: pick codes in the "
        "`code` variable. Failures arrive with HTTP 200; bgwatch reads the terminal status.",
        with_code=True,
    )
    code = 'code=~"$code"'
    panels: list[tuple[str, list[Panel]]] = [
        (
            "Selected codes",
            [
                single_stat(
                    101,
                    "Failed / s (selected codes)",
                    "Failed background responses with the selected error codes.",
                    sum_rate(FAILED, code),
                    unit=RATE_UNIT,
                    decimals=3,
                    width=8,
                ),
                single_stat(
                    102,
                    "Share of all failures",
                    "Selected codes / all failed responses.",
                    ratio(sum_rate(FAILED, code), sum_rate(FAILED)),
                    unit="percentunit",
                    decimals=1,
                    width=8,
                    no_value="-",
                ),
                single_stat(
                    103,
                    "Failure ratio (selected codes / finished)",
                    "Selected codes / all responses that reached a terminal state.",
                    ratio(sum_rate(FAILED, code), sum_rate(FINISHED)),
                    unit="percentunit",
                    thresholds=RATIO_THRESHOLDS,
                    decimals=1,
                    width=8,
                    no_value="-",
                ),
            ],
        ),
        (
            "By code",
            [
                ts(
                    104,
                    "Failed responses / s by code",
                    "Once per response id (not per poll).",
                    [query(sum_rate(FAILED, code, by="code"), "{{code}}")],
                    unit=RATE_UNIT,
                    axis_label="responses / s",
                    stacked=True,
                ),
                ts(
                    105,
                    "Failure ratio by code (failed / finished)",
                    "Per code: failed with that code / all finished. BgwatchFailureRatioHigh fires above 10% for 10m.",
                    [
                        query(
                            f"sum by (code) ({rate(FAILED, code)})\n"
                            f"/ on () group_left ()\n"
                            f"(sum ({rate(FINISHED)}) > 0)",
                            "{{code}}",
                        )
                    ],
                    unit="percentunit",
                    thresholds=((None, "green"), (0.1, "red")),
                    show_thresholds=True,
                ),
                ts(
                    106,
                    "Failed responses / s by code and model",
                    "Does one model fail more than the others?",
                    [query(sum_rate(FAILED, code, by="code, model"), "{{code}} · {{model}}")],
                    unit=RATE_UNIT,
                    axis_label="responses / s",
                ),
                ts(
                    107,
                    "Failed responses / s by code and instance",
                    "Is the failure local to one process (its key, its region, its proxy)?",
                    [query(sum_rate(FAILED, code, by="code, instance"), "{{code}} · {{instance}}")],
                    unit=RATE_UNIT,
                    axis_label="responses / s",
                ),
                bargauge.Panel()
                .id(108)
                .title("Current failure rate by code")
                .description("Latest rate per selected code, largest first.")
                .datasource(DATASOURCE)
                .with_target(
                    query(
                        f"sort_desc({sum_rate(FAILED, code, by='code')})",
                        "{{code}}",
                        instant=True,
                    )
                )
                .unit(RATE_UNIT)
                .decimals(3)
                .min(0)
                .span(12)
                .height(8)
                .thresholds(_thresholds(*GREEN_ONLY))
                .orientation(common_models.VizOrientation.HORIZONTAL)
                .display_mode(common_models.BarGaugeDisplayMode.GRADIENT)
                .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)),
                ts(
                    109,
                    "Time to failure (p50 / p95 / p99)",
                    "created_at → failed, all codes (the histogram has no code label). A failure "
                    "after hours costs more than one at once.",
                    [
                        query(quantile(0.5, 'status="failed"'), "p50"),
                        query(quantile(0.95, 'status="failed"'), "p95", "B"),
                        query(quantile(0.99, 'status="failed"'), "p99", "C"),
                    ],
                    unit="s",
                ),
            ],
        ),
    ]
    return _layout(d, panels)


def _layout(d: dashboard.Dashboard, rows: list[tuple[str, list[Panel]]]) -> dashboard.Dashboard:
    for index, (title, row_panels) in enumerate(rows):
        d = d.with_row(dashboard.Row(title).id(1000 + index))
        for p in row_panels:
            d = d.with_panel(p)
    return d


DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "bgwatch-overview.json": overview,
    "bgwatch-failures.json": failures,
}


# --------------------------------------------------------------------------- output


# Interval-variable fields the SDK writes on every variable, which Grafana's current schema
# (@grafana/schema 13, tests/test_grafana_schema.py) no longer has.
LEGACY_VARIABLE_FIELDS = ("auto", "auto_count", "auto_min")
# The schema version of @grafana/schema 13. The SDK for Grafana 11.6 writes 41; Grafana's only
# migration from 41 to 42 adds hideFrom.tooltip to field overrides that hide a series
# (hideFrom.viz), and these dashboards have no overrides (tests/test_dashboards.py checks), so
# their JSON is already version 42.
SCHEMA_VERSION = 42


def render(builder: dashboard.Dashboard) -> str:
    """Deterministic JSON: sorted keys, 2-space indent, trailing newline, no legacy fields."""
    data = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    assert data["schemaVersion"] in (41, SCHEMA_VERSION), "a new SDK: review the migrations in between"
    data["schemaVersion"] = SCHEMA_VERSION
    for variable in data["templating"]["list"]:
        for name in LEGACY_VARIABLE_FIELDS:
            variable.pop(name, None)
    # A Prometheus annotation's query lives in `target` (the schema has no top-level `expr`; the
    # SDK's AnnotationQuery only knows the legacy field).
    for annotation in data["annotations"]["list"]:
        if "expr" in annotation:
            annotation["target"] = {"expr": annotation.pop("expr"), "refId": "Anno"}
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


ASSETS = Path("src/bgwatch/_assets")


def render_all() -> dict[str, str]:
    """Every generated file, ``{path relative to the repository: text}``.

    The dashboards go to ``dashboards/`` and, with the runbook, into the package data
    (``src/bgwatch/_assets/``) that ``bgwatch export`` reads; the rules and their promtool tests
    for the default options go to ``dashboards/rules/`` (``bgwatch export`` builds them from the
    same code for other options).
    """
    out: dict[str, str] = {}
    for name, factory in DASHBOARDS.items():
        text = render(factory())
        out[f"dashboards/{name}"] = text
        out[f"{ASSETS}/dashboards/{name}"] = text
    out[f"{ASSETS}/runbook.md"] = (REPO_ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    defaults = ExportOptions()
    out["dashboards/rules/bgwatch.rules.yml"] = rules_file(defaults)
    for name, text in rule_test_files(defaults).items():
        out[f"dashboards/rules/tests/{name}"] = text
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT, help="write under this directory instead of the repository (tests)"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file under --root differs from the code"
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    stale = 0
    for relative, text in render_all().items():
        path = root / relative
        if args.check:
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != text:
                stale += 1
                diff = difflib.unified_diff(
                    current.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"{relative} (checked in)",
                    f"{relative} (generated)",
                    n=2,
                )
                sys.stderr.writelines(list(diff)[:80])
                print(f"STALE {relative}", file=sys.stderr)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        print(f"wrote {relative}")
    if stale:
        print(f"{stale} file(s) out of date: run python scripts/generate_dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
