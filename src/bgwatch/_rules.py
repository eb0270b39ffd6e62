"""bgwatch's Prometheus recording and alerting rules, and their promtool unit tests, as data.

Both are built from :class:`RuleOptions`, so that ``bgwatch export`` can write rules for a
user's selector, runbook, Grafana and thresholds together with unit tests that check exactly
those rules (``promtool test rules``). ``dashboards/rules/`` in the repository holds the output
for the default options (``scripts/generate_dashboards.py`` writes it).

Conventions (monitoring-mixins): every alert is named ``Bgwatch…``; recording rules are
``level:metric:operations`` with ratios as ``level:a_per_b:ratio_rate5m``; ``summary`` is one
plain sentence, ``description`` carries the values; every alert has ``runbook_url`` and
``dashboard_url``. Ratios divide by ``(denominator > 0)``: no traffic gives no sample, never
NaN or +Inf.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "DEFAULT_GRAFANA_URL",
    "DEFAULT_RUNBOOK_URL",
    "RuleOptions",
    "Thresholds",
    "parse_selector",
    "rule_groups",
    "rule_tests",
]

DEFAULT_RUNBOOK_URL = "https://github.com/bgwatch/openai-bgwatch/blob/main/docs/runbook.md"
DEFAULT_GRAFANA_URL = "http://localhost:3000"
GROUP = "bgwatch"
_JOB, _INSTANCE, _CODE, _MODEL, _STAGE = (
    f"{{{{ $labels.{name} }}}}" for name in ("job", "instance", "code", "model", "stage")
)
QUEUE_TOP_BUCKET = 3600.0  # bg_response_queue_seconds' largest finite bucket (the contract: 0.1 s … 1 h)


@dataclass(frozen=True)
class Thresholds:
    """The alert thresholds users tune (``bgwatch export --threshold NAME=VALUE``)."""

    failure_ratio: float = 0.10
    """BgwatchFailureRatioHigh: one error code's share of the responses finishing (0..1)."""
    failure_min_finished: int = 10
    """BgwatchFailureRatioHigh: responses that must finish in 5 minutes before it may fire."""
    spike_factor: float = 3.0
    """BgwatchFailureCodeSpike: a code's 5m failure rate over its 1h rate (1 < x <= 5)."""
    rate_limited: int = 3
    """BgwatchRateLimited: responses failing with rate_limit_exceeded in 5 minutes."""
    queue_p95_seconds: float = 300.0
    """BgwatchQueueSlow: p95 of created_at → in_progress, by model (< 3600, the top bucket)."""
    stuck_seconds: float = 7200.0
    """BgwatchResponseStuck: age of the oldest response still in flight in a process."""
    abandoned: int = 1
    """BgwatchResponsesAbandoned: responses that left tracking without a terminal state, per hour."""

    def __post_init__(self) -> None:
        checks = {
            "failure_ratio": 0 < self.failure_ratio < 1,
            "failure_min_finished": self.failure_min_finished >= 1,
            # A step up of a code's rate can exceed 6x its 1h baseline (which includes the step)
            # only briefly: above 5x the alert could never stay true for its 5 minutes.
            "spike_factor": 1 < self.spike_factor <= 5,
            "rate_limited": self.rate_limited >= 1,
            "queue_p95_seconds": 0 < self.queue_p95_seconds < QUEUE_TOP_BUCKET,
            "stuck_seconds": 60 <= self.stuck_seconds <= 7 * 86400,
            "abandoned": self.abandoned >= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"threshold out of range: {', '.join(f'{n}={getattr(self, n)}' for n in bad)}")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def with_values(self, values: Mapping[str, str]) -> Thresholds:
        """A copy with ``values`` (strings, as from the command line) parsed by field type."""
        known = {f.name: f for f in fields(self)}
        parsed: dict[str, Any] = {}
        for name, text in values.items():
            if name not in known:
                raise ValueError(f"unknown threshold {name!r}; known: {', '.join(known)}")
            kind = int if known[name].type in (int, "int") else float
            try:
                parsed[name] = kind(text)
            except ValueError:
                raise ValueError(f"threshold {name}: {text!r} is not a {kind.__name__}") from None
        return replace(self, **parsed)


_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')


def parse_selector(selector: str) -> list[tuple[str, str, str]]:
    """``'namespace="prod", job=~"api|worker"'`` -> ``[(label, op, value), ...]``; ValueError if bad."""
    text = selector.strip().strip("{}").strip()
    if not text:
        return []
    matchers: list[tuple[str, str, str]] = []
    pos = 0
    while pos < len(text):
        m = _MATCHER.match(text, pos)
        if not m:
            raise ValueError(f'selector {selector!r}: expected label="value" matchers separated by commas')
        matchers.append((m.group(1), m.group(2), m.group(3)))
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"selector {selector!r}: expected a comma at {text[pos:]!r}")
            pos += 1
    if any(label == "__name__" for label, _, _ in matchers):
        raise ValueError("selector: __name__ is not a label to select on")
    return matchers


@dataclass(frozen=True)
class RuleOptions:
    """What differs between deployments. The defaults are what ``dashboards/rules/`` holds."""

    selector: str = ""
    """PromQL matchers added to every series the rules read, e.g. ``namespace="prod"``."""
    runbook_url: str = DEFAULT_RUNBOOK_URL
    """Base URL of the runbook; each alert links ``<runbook_url>#<alertname lowercased>``."""
    grafana_url: str = DEFAULT_GRAFANA_URL
    """Base URL of the Grafana that has the dashboards, for ``dashboard_url``."""
    uid_prefix: str = "bgwatch"
    """The dashboards' uids are ``<uid_prefix>-overview`` and ``<uid_prefix>-failures``."""
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        parse_selector(self.selector)  # fail early on a malformed selector
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,30}", self.uid_prefix):
            raise ValueError("uid prefix: 1-30 letters, digits, '-' or '_' (Grafana uids are at most 40 characters)")

    @property
    def matchers(self) -> str:
        return ", ".join(f'{label}{op}"{value}"' for label, op, value in parse_selector(self.selector))

    def sel(self, metric: str, *extra: str) -> str:
        """``metric{selector, extra...}`` (bare ``metric`` when there is nothing to match)."""
        inner = ", ".join(m for m in (self.matchers, *extra) if m)
        return f"{metric}{{{inner}}}" if inner else metric

    def overview_uid(self) -> str:
        return f"{self.uid_prefix}-overview"

    def failures_uid(self) -> str:
        return f"{self.uid_prefix}-failures"

    def runbook(self, alert: str) -> str:
        return f"{self.runbook_url}#{alert.lower()}"

    def dashboard(self, uid: str, *variables: str) -> str:
        query = "&".join(f"var-{v}={{{{ $labels.{v} }}}}" for v in variables)
        return f"{self.grafana_url.rstrip('/')}/d/{uid}" + (f"?{query}" if query else "")


# --------------------------------------------------------------------------- formatting


def percent(value: float) -> str:
    """Prometheus's ``humanizePercentage`` (Go ``%.4g`` of value * 100, then ``%``)."""
    return f"{_go_g4(value * 100)}%"


def _go_g4(value: float) -> str:
    return f"{value:.4g}"


def humanize_duration(seconds: float) -> str:
    """Prometheus's ``humanizeDuration`` for a value >= 1 s (``1h 2m 3s``, ``2d 0h 0m 0s``)."""
    if seconds < 1 or not math.isfinite(seconds):
        return f"{_go_g4(seconds)}s"
    whole = int(seconds)
    days, hours, minutes, secs = whole // 86400, whole // 3600 % 24, whole // 60 % 60, whole % 60
    if days == 0 and hours == 0 and minutes == 0:
        return f"{_go_g4(seconds)}s"
    if days == 0 and hours == 0:
        return f"{minutes}m {secs}s"
    if days == 0:
        return f"{hours}h {minutes}m {secs}s"
    return f"{days}d {hours}h {minutes}m {secs}s"


def short_duration(seconds: float) -> str:
    """A threshold for people: ``300`` -> ``5m``, ``7200`` -> ``2h``, ``90`` -> ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _num(value: float) -> str:
    return f"{value:g}"


# --------------------------------------------------------------------------- rules


def _record(name: str, expr: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"record": name, "expr": expr}
    if labels:
        rule["labels"] = dict(labels)
    return rule


def _alert(
    o: RuleOptions,
    name: str,
    expr: str,
    *,
    for_: str,
    severity: str,
    summary: str,
    description: str,
    dashboard_url: str,
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": o.runbook(name),
            "dashboard_url": dashboard_url,
        },
    }


def rule_groups(o: RuleOptions) -> list[dict[str, Any]]:
    """The ``groups:`` of the rule file.

    One group on purpose: rules in a group are evaluated in order, so every alert reads the
    recording rules of the same evaluation (across groups the order is not defined, and an alert
    may see the previous cycle's value).
    """
    t = o.thresholds
    s = o.sel

    def rate(metric: str, window: str = "5m") -> str:
        return f"rate({s(metric)}[{window}])"

    not_completed = s("bg_response_tokens_total", 'status!="completed"')
    records = [
        # throughput
        _record("job:bg_response_created:rate5m", f"sum by (job) ({rate('bg_response_created_total')})"),
        _record(
            "job_status:bg_response_finished:rate5m", f"sum by (job, status) ({rate('bg_response_finished_total')})"
        ),
        _record("job:bg_response_finished:rate5m", f"sum by (job) ({rate('bg_response_finished_total')})"),
        # failures
        _record("job_code:bg_response_failed:rate5m", f"sum by (job, code) ({rate('bg_response_failed_total')})"),
        # the baseline of BgwatchFailureCodeSpike
        _record("job_code:bg_response_failed:rate1h", f"sum by (job, code) ({rate('bg_response_failed_total', '1h')})"),
        _record("job:bg_response_failed:rate5m", f"sum by (job) ({rate('bg_response_failed_total')})"),
        # failed / finished; 0 (not absent) when responses finish and none failed
        _record(
            "job:bg_response_failed_per_finished:ratio_rate5m",
            "(job:bg_response_failed:rate5m or job:bg_response_finished:rate5m * 0)\n"
            "/\n(job:bg_response_finished:rate5m > 0)\n",
        ),
        # failed with this code / all finished (of any status) in the same job
        _record(
            "job_code:bg_response_failed_per_finished:ratio_rate5m",
            "job_code:bg_response_failed:rate5m\n/ on (job) group_left ()\n(job:bg_response_finished:rate5m > 0)\n",
        ),
        _record(
            "job_reason:bg_response_incomplete:rate5m", f"sum by (job, reason) ({rate('bg_response_incomplete_total')})"
        ),
        # polling cost
        _record("job_status:bg_response_polls:rate5m", f"sum by (job, status) ({rate('bg_response_polls_total')})"),
        _record(
            "job:bg_response_polls_per_finished:ratio_rate5m",
            f"sum by (job) ({rate('bg_response_polls_total')})\n/\n(job:bg_response_finished:rate5m > 0)\n",
        ),
        # time to a terminal state
        _record(
            "job_le:bg_response_duration_seconds_bucket:rate5m",
            f"sum by (job, le) ({rate('bg_response_duration_seconds_bucket')})",
        ),
        *(
            _record(
                "job_quantile:bg_response_duration_seconds:histogram_quantile",
                f"histogram_quantile({q}, job_le:bg_response_duration_seconds_bucket:rate5m)",
                {"quantile": q},
            )
            for q in ("0.5", "0.95", "0.99")
        ),
        # time in the queue (created_at → first in_progress), by model
        _record(
            "job_model_le:bg_response_queue_seconds_bucket:rate5m",
            f"sum by (job, model, le) ({rate('bg_response_queue_seconds_bucket')})",
        ),
        *(
            _record(
                "job_model_quantile:bg_response_queue_seconds:histogram_quantile",
                f"histogram_quantile({q}, job_model_le:bg_response_queue_seconds_bucket:rate5m)",
                {"quantile": q},
            )
            for q in ("0.5", "0.95")
        ),
        # in flight (gauges: summed or maxed, never rated)
        _record("job_instance:bg_response_in_flight:sum", f"sum by (job, instance) ({s('bg_response_in_flight')})"),
        _record("job:bg_response_in_flight:sum", f"sum by (job) ({s('bg_response_in_flight')})"),
        _record(
            "job_instance:bg_response_oldest_in_flight_seconds:max",
            f"max by (job, instance) ({s('bg_response_oldest_in_flight_seconds')})",
        ),
        # tokens, and the share spent on responses that did not complete
        _record(
            "job_type_status:bg_response_tokens:rate5m",
            f"sum by (job, type, status) ({rate('bg_response_tokens_total')})",
        ),
        _record(
            "job:bg_response_tokens_not_completed_per_tokens:ratio_rate5m",
            f"(\n  sum by (job) (rate({not_completed}[5m]))\n"
            f"  or sum by (job) ({rate('bg_response_tokens_total')}) * 0\n)\n"
            f"/\n(sum by (job) ({rate('bg_response_tokens_total')}) > 0)\n",
        ),
        _record(
            "job_model:bg_response_abandoned:rate1h",
            f"sum by (job, model) ({rate('bg_response_abandoned_total', '1h')})",
        ),
        # bgwatch itself
        _record(
            "job_stage:bgwatch_internal_errors:rate5m", f"sum by (job, stage) ({rate('bgwatch_internal_errors_total')})"
        ),
    ]

    overview, failures = o.overview_uid(), o.failures_uid()
    internal, abandoned = s("bgwatch_internal_errors_total"), s("bg_response_abandoned_total")
    alerts = [
        _alert(
            o,
            "BgwatchFailureRatioHigh",
            f"job_code:bg_response_failed_per_finished:ratio_rate5m > {_num(t.failure_ratio)}\n"
            f"and on (job)\n(job:bg_response_finished:rate5m * 300 >= {t.failure_min_finished})\n",
            for_="10m",
            severity="critical",
            summary="Too many background responses fail with one error code.",
            description=f"{{{{ $value | humanizePercentage }}}} of the background responses of job {_JOB} "
            f"that reached a terminal state in the last 5 minutes ended failed with error code "
            f"{_CODE} (threshold {percent(t.failure_ratio)}, at least {t.failure_min_finished} "
            f"finishing, for 10 minutes). The API answered these polls with HTTP 200.",
            dashboard_url=o.dashboard(failures, "job", "code"),
        ),
        _alert(
            o,
            "BgwatchFailureCodeSpike",
            # rate_limit_exceeded has its own alert (BgwatchRateLimited)
            f'(\n  job_code:bg_response_failed:rate5m{{code!="rate_limit_exceeded"}}\n  /\n'
            f"  (job_code:bg_response_failed:rate1h > 0)\n) > {_num(t.spike_factor)}\n"
            f"and\n(job_code:bg_response_failed:rate5m * 300 >= 5)\n",
            for_="5m",
            severity="warning",
            summary="Failures with one error code spike above their rate of the last hour.",
            description=f"Background responses of job {_JOB} fail with code {_CODE} at "
            f'{{{{ $value | printf "%.1f" }}}}x their rate of the last hour (5m rate vs 1h rate, threshold '
            f"{_num(t.spike_factor)}x, at least 5 failures in 5 minutes, for 5 minutes).",
            dashboard_url=o.dashboard(failures, "job", "code"),
        ),
        _alert(
            o,
            "BgwatchRateLimited",
            f'job_code:bg_response_failed:rate5m{{code="rate_limit_exceeded"}} * 300 >= {t.rate_limited}\n',
            for_="10m",
            severity="warning",
            summary="Accepted background responses fail on a rate or token limit.",
            description=f'About {{{{ $value | printf "%.0f" }}}} background responses of job {_JOB} ended '
            f"failed with code rate_limit_exceeded in the last 5 minutes (threshold {t.rate_limited}, for 10 "
            f"minutes). These are not 429s on create: the work already done is lost.",
            dashboard_url=o.dashboard(failures, "job", "code"),
        ),
        _alert(
            o,
            "BgwatchNoResponsesFinishing",
            "job_instance:bg_response_in_flight:sum > 0\nunless on (job, instance)\n"
            f"(sum by (job, instance) (increase({s('bg_response_finished_total')}[30m])) > 0)\n",
            for_="15m",
            severity="warning",
            summary="A process has background responses in flight and none reaching a terminal state.",
            description='{{ $labels.instance }} (job {{ $labels.job }}) has {{ $value | printf "%.0f" }} '
            "background response(s) in flight, and none of its responses has reached a terminal state for "
            "at least 45 minutes.",
            dashboard_url=o.dashboard(overview, "job", "instance"),
        ),
        _alert(
            o,
            "BgwatchResponseStuck",
            f"job_instance:bg_response_oldest_in_flight_seconds:max > {_num(t.stuck_seconds)}\n",
            for_="10m",
            severity="warning",
            summary="A background response has been in flight for too long.",
            description=f"The oldest background response in flight in {_INSTANCE} (job {_JOB}) "
            f"was created {{{{ $value | humanizeDuration }}}} ago (threshold {short_duration(t.stuck_seconds)}, "
            f"for 10 minutes).",
            dashboard_url=o.dashboard(overview, "job", "instance"),
        ),
        _alert(
            o,
            "BgwatchQueueSlow",
            f'job_model_quantile:bg_response_queue_seconds:histogram_quantile{{quantile="0.95"}}\n'
            f"> {_num(t.queue_p95_seconds)}\n",
            for_="15m",
            severity="warning",
            summary="Background responses wait too long in the queue before they run.",
            description=f"The 95th percentile of the time background responses of job {_JOB} and model "
            f'{_MODEL} waited before running is {{{{ $value | printf "%.0f" }}}} s over the last '
            f"5 minutes (threshold {short_duration(t.queue_p95_seconds)}, for 15 minutes).",
            dashboard_url=o.dashboard(overview, "job"),
        ),
        _alert(
            o,
            "BgwatchResponsesAbandoned",
            # second branch: a counter that first appears already above 0 (increase() cannot see it)
            f"sum by (job, model) (increase({abandoned}[1h])) >= {t.abandoned}\nor\n"
            f"sum by (job, model) ({abandoned} unless {abandoned} offset 1h) >= {t.abandoned}\n",
            for_="5m",
            severity="warning",
            summary="Background responses leave tracking without a terminal state.",
            description=f'About {{{{ $value | printf "%.0f" }}}} background responses of job {_JOB} and model '
            f"{_MODEL} were dropped from tracking in the last hour without a terminal state "
            f"being seen (threshold {t.abandoned}): paid-for work whose outcome nobody read.",
            dashboard_url=o.dashboard(overview, "job"),
        ),
        _alert(
            o,
            "BgwatchInternalErrors",
            f"sum by (job, instance, stage) (increase({internal}[10m])) > 0\nor\n"
            f"sum by (job, instance, stage) (\n  {internal} unless {internal} offset 10m\n) > 0\n",
            for_="1m",
            severity="warning",
            summary="bgwatch caught errors of its own; its metrics may undercount.",
            description=f'bgwatch in {_INSTANCE} (job {_JOB}) caught about {{{{ $value | printf "%.0f" }}}} '
            f"internal error(s) at stage {_STAGE} in the last 10 minutes. The application's calls "
            "went through untouched, but bgwatch's metrics, spans or raises may have missed those observations.",
            dashboard_url=o.dashboard(overview, "job", "instance"),
        ),
    ]
    return [{"name": GROUP, "rules": [*records, *alerts]}]


# --------------------------------------------------------------------------- unit tests

_PLAIN_ALTERNATIVES = re.compile(r"[\w.:/-]+(\|[\w.:/-]+)*")


class _Scenario:
    """Labels and series values for the unit tests of one :class:`RuleOptions`.

    Every input series carries labels that satisfy the selector (so that the rules see it) and
    the firing tests add decoys that violate it (so that a rule that ignores the selector
    fires for the decoy too and fails the test).
    """

    def __init__(self, o: RuleOptions) -> None:
        self.o = o
        self.extra: dict[str, str] = {}
        self.decoy: dict[str, str] | None = {}
        for label, op, value in parse_selector(o.selector):
            if op == "=":
                self.extra[label] = value
                self._decoy(label, value + "-decoy")
            elif op == "=~" and _PLAIN_ALTERNATIVES.fullmatch(value):
                self.extra[label] = value.split("|")[0]
                self._decoy(label, "decoy-" + value.split("|")[0])
            elif op in ("!=", "!~") and not re.fullmatch(value, ""):
                self._decoy(label, value if op == "!=" else None)
            else:
                raise ValueError(
                    f'cannot write unit tests for the matcher {label}{op}"{value}": give label="value", '
                    'label=~"a|b" (plain alternatives) or a negative matcher that does not match ""'
                )
        self.job = self.extra.pop("job", "app")

    def _decoy(self, label: str, value: str | None) -> None:
        if self.decoy is None or value is None:
            self.decoy = None  # no value is sure to violate this matcher: no decoys
            return
        self.decoy[label] = value

    def series(self, metric: str, /, **labels: str) -> str:
        return _selector(metric, {"job": self.job, **labels, **self.extra})

    def decoy_series(self, metric: str, /, **labels: str) -> str:
        assert self.decoy is not None
        return _selector(metric, {**labels, **self.extra, "job": "decoy", **self.decoy})

    def inputs(self, *pairs: tuple[str, str], decoys: bool = False) -> list[dict[str, str]]:
        """``[(series, values), ...]`` plus, with ``decoys``, the same series violating the selector."""
        out = [{"series": s, "values": v} for s, v in pairs]
        if decoys and self.decoy:
            out += [{"series": _redecoy(s, self), "values": v} for s, v in pairs]
        return out


def _redecoy(series: str, sc: _Scenario) -> str:
    metric, _, rest = series.partition("{")
    labels = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    for k in (*sc.extra, "job"):
        labels.pop(k, None)
    return sc.decoy_series(metric, **labels)


def _selector(metric: str, labels: Mapping[str, str]) -> str:
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def counter(*segments: tuple[float, int]) -> str:
    """A counter from 0 in promtool's series notation: runs of ``(increase per minute, minutes)``."""
    value, out = 0.0, ["0"]
    for per_minute, minutes in segments:
        if minutes <= 0:
            continue
        if out == ["0"]:  # fold the first run into the leading 0
            out = [f"0x{minutes}" if per_minute == 0 else f"0+{per_minute:.10g}x{minutes}"]
        else:
            start = value + per_minute
            step = "" if per_minute == 0 else f"+{per_minute:.10g}"
            out.append(f"{start:.10g}" if minutes == 1 else f"{start:.10g}{step}x{minutes - 1}")
        value += per_minute * minutes
    return " ".join(out)


def _render(template: str, labels: Mapping[str, str], value: float) -> str:
    """Prometheus's rendering of our annotation templates (the subset they use)."""
    formats: dict[str, Callable[[float], str]] = {
        "humanizePercentage": percent,
        "humanizeDuration": humanize_duration,
        'printf "%.1f"': lambda v: f"{v:.1f}",
        'printf "%.0f"': lambda v: f"{v:.0f}",
    }

    def sub(m: re.Match[str]) -> str:
        expr = m.group(1).strip()
        if expr.startswith("$labels."):
            return labels[expr.removeprefix("$labels.")]
        name = expr.removeprefix("$value").strip().removeprefix("|").strip()
        return formats[name](value)

    return re.sub(r"\{\{(.*?)\}\}", sub, template)


def _expect(
    alert: Mapping[str, Any], sc: _Scenario, labels: Mapping[str, str], value: float
) -> dict[str, dict[str, str]]:
    all_labels = {"severity": alert["labels"]["severity"], "job": sc.job, **labels}
    annotations = {k: _render(v, all_labels, value) for k, v in alert["annotations"].items()}
    return {"exp_labels": all_labels, "exp_annotations": annotations}


def _case(name: str, inputs: list[dict[str, str]], checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": name, "interval": "1m", "input_series": inputs, "alert_rule_test": checks}


def _check(minute: int, alertname: str, expected: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"eval_time": f"{minute}m", "alertname": alertname, "exp_alerts": expected or []}


def alert_tests(o: RuleOptions) -> list[dict[str, Any]]:
    """For every alert: a case where it fires (exact labels and annotations) and near misses.

    promtool lists no pending alerts, so ``exp_alerts: []`` shortly after a condition starts
    also proves the ``for:`` clause.
    """
    t, sc = o.thresholds, _Scenario(o)
    alerts = {r["alert"]: r for r in rule_groups(o)[0]["rules"] if "alert" in r}
    cases: list[dict[str, Any]] = []
    a = "a:9464"

    # BgwatchFailureRatioHigh: F finished per minute, k of them failed with server_error.
    name = "BgwatchFailureRatioHigh"
    finished = 100 * max(1, math.ceil(t.failure_min_finished / 500))
    k = min(finished, math.ceil(finished * (1 + t.failure_ratio) / 2))

    def workload(failing: int, minutes: int = 40, **extra: str) -> list[tuple[str, str]]:
        lbl = {"instance": a, "model": "gpt-5", **extra}
        return [
            (
                sc.series("bg_response_finished_total", status="completed", **lbl),
                counter((finished - failing, minutes)),
            ),
            (sc.series("bg_response_finished_total", status="failed", **lbl), counter((failing, minutes))),
            (sc.series("bg_response_failed_total", code="server_error", **lbl), counter((failing, minutes))),
        ]

    cases.append(
        _case(
            f"{name} fires when server_error is {percent(k / finished)} of {finished} finishing per minute",
            sc.inputs(*workload(k), decoys=True),
            [
                _check(9, name),  # pending: `for: 10m`
                _check(15, name, [_expect(alerts[name], sc, {"code": "server_error"}, k / finished)]),
            ],
        )
    )
    below = math.floor(finished * t.failure_ratio / 2)
    cases.append(
        _case(
            f"{name} stays quiet at half the threshold",
            sc.inputs(*workload(below)),
            [_check(20, name), _check(40, name)],
        )
    )
    if t.failure_min_finished > 1:
        per_minute = (t.failure_min_finished - 1) / 5
        lbl = {"instance": a, "model": "gpt-5"}
        cases.append(
            _case(
                f"{name} stays quiet when every response fails but too few finish",
                sc.inputs(
                    (sc.series("bg_response_finished_total", status="failed", **lbl), counter((per_minute, 40))),
                    (sc.series("bg_response_failed_total", code="server_error", **lbl), counter((per_minute, 40))),
                ),
                [_check(20, name), _check(40, name)],
            )
        )
    lbl = {"instance": a, "model": "gpt-5"}
    cases.append(
        _case(
            f"{name} stays quiet through a 5-minute burst",
            sc.inputs(
                (
                    sc.series("bg_response_finished_total", status="completed", **lbl),
                    counter((finished, 10), (finished - k, 5), (finished, 25)),
                ),
                (sc.series("bg_response_finished_total", status="failed", **lbl), counter((0, 10), (k, 5), (0, 25))),
                (sc.series("bg_response_failed_total", code="server_error", **lbl), counter((0, 10), (k, 5), (0, 25))),
            ),
            [_check(20, name), _check(25, name), _check(40, name)],
        )
    )

    # BgwatchFailureCodeSpike: 1 failure per minute for an hour, then r per minute. At 70m the
    # 5m rate is r/min and the 1h rate (50 + 10 r) / 60 per minute.
    name = "BgwatchFailureCodeSpike"
    x = t.spike_factor
    r = max(10, 2 * math.ceil(50 * x / (60 - 10 * x)))

    def failing(code: str, *segments: tuple[float, int]) -> tuple[str, str]:
        return (sc.series("bg_response_failed_total", instance=a, code=code, model="gpt-5"), counter(*segments))

    cases.append(
        _case(
            f"{name} fires when a code jumps from 1/min to {r}/min",
            sc.inputs(failing("server_error", (1, 60), (r, 30)), decoys=True),
            [
                _check(60, name),
                _check(64, name),  # pending
                _check(70, name, [_expect(alerts[name], sc, {"code": "server_error"}, 60 * r / (50 + 10 * r))]),
            ],
        )
    )
    cases.append(
        _case(
            f"{name} stays quiet for a steady rate, for rate_limit_exceeded and below 5 failures in 5m",
            sc.inputs(
                failing("server_error", (1, 120)),
                failing("rate_limit_exceeded", (1, 60), (r, 30)),
                failing("invalid_prompt", (0, 60), (0.8, 30)),
            ),
            [_check(70, name), _check(90, name)],
        )
    )

    # BgwatchRateLimited
    name = "BgwatchRateLimited"
    inc = max(1, math.ceil(t.rate_limited / 5))
    cases.append(
        _case(
            f"{name} fires at {5 * inc} rate_limit_exceeded failures per 5 minutes",
            sc.inputs(failing("rate_limit_exceeded", (0, 10), (inc, 50)), decoys=True),
            [
                _check(14, name),  # pending: `for: 10m`
                _check(30, name, [_expect(alerts[name], sc, {"code": "rate_limit_exceeded"}, 5 * inc)]),
            ],
        )
    )
    quiet = [failing("rate_limit_exceeded", (0, 10), (max(20, t.rate_limited), 1), (0, 50))]
    if t.rate_limited > 1:
        quiet.append(failing("rate_limit_exceeded", ((t.rate_limited - 1) / 5, 60)))
    for i, pair in enumerate(quiet):
        cases.append(
            _case(
                f"{name} stays quiet for " + ("a one-off burst" if i == 0 else "a rate just below the threshold"),
                sc.inputs(pair),
                [_check(14, name), _check(30, name), _check(60, name)],
            )
        )

    # BgwatchNoResponsesFinishing
    name = "BgwatchNoResponsesFinishing"

    def process(instance: str, in_flight: str, finished_values: str) -> list[tuple[str, str]]:
        return [
            (sc.series("bg_response_in_flight", instance=instance), in_flight),
            (
                sc.series("bg_response_finished_total", instance=instance, status="completed", model="gpt-5"),
                finished_values,
            ),
        ]

    cases.append(
        _case(
            f"{name} fires when nothing finishes for 45 minutes, not for a busy sibling",
            sc.inputs(
                *process(a, "3x120", counter((1, 30), (0, 90))),
                *process("b:9464", "2x120", counter((1, 120))),
                decoys=True,
            ),
            [
                _check(70, name),  # pending since 60m
                _check(80, name, [_expect(alerts[name], sc, {"instance": a}, 3)]),
            ],
        )
    )
    cases.append(
        _case(
            f"{name} stays quiet when slow but moving, and when idle",
            sc.inputs(
                *process(a, "4x120", counter((0, 19), *[(1, 1), (0, 19)] * 5)),
                (sc.series("bg_response_in_flight", instance="b:9464"), "0x120"),
            ),
            [_check(80, name), _check(120, name)],
        )
    )

    # BgwatchResponseStuck: the oldest response in flight ages 60 s per minute.
    name = "BgwatchResponseStuck"
    crossing = math.floor(t.stuck_seconds / 60) + 1  # first minute with age > threshold
    minutes = crossing + 20
    cases.append(
        _case(
            f"{name} fires {crossing + 10} minutes after a response was created and never ended",
            sc.inputs(
                (sc.series("bg_response_oldest_in_flight_seconds", instance=a), f"0+60x{minutes}"),
                (sc.series("bg_response_oldest_in_flight_seconds", instance="b:9464"), f"30x{minutes}"),
                decoys=True,
            ),
            [
                _check(crossing + 5, name),  # pending: `for: 10m`
                _check(crossing + 12, name, [_expect(alerts[name], sc, {"instance": a}, 60.0 * (crossing + 12))]),
            ],
        )
    )
    cases.append(
        _case(
            f"{name} stays quiet at exactly the threshold",
            sc.inputs(
                (sc.series("bg_response_oldest_in_flight_seconds", instance=a), f"{_num(t.stuck_seconds)}x{minutes}")
            ),
            [_check(crossing + 12, name)],
        )
    )

    # BgwatchQueueSlow: 10 responses per minute per model, all in one bucket.
    name = "BgwatchQueueSlow"
    q = t.queue_p95_seconds
    bounds = [q / 4, q / 2, q, 2 * q, 4 * q]

    def queue(model: str, upper: float) -> list[tuple[str, str]]:
        out = []
        for le in (*bounds, math.inf):
            per_minute = 10 if le >= upper else 0
            out.append(
                (
                    sc.series(
                        "bg_response_queue_seconds_bucket",
                        instance=a,
                        model=model,
                        le="+Inf" if le == math.inf else _num(le),
                    ),
                    counter((per_minute, 40)),
                )
            )
        return out

    cases.append(
        _case(
            f"{name} fires when the queue wait of one model is between 2x and 4x the threshold",
            sc.inputs(*queue("gpt-5", 4 * q), *queue("gpt-5-mini", q / 4), decoys=True),
            [
                _check(10, name),  # pending: `for: 15m`
                # 95% of the bucket (2q, 4q]: 2q + 2q * 0.95
                _check(25, name, [_expect(alerts[name], sc, {"model": "gpt-5", "quantile": "0.95"}, 3.9 * q)]),
            ],
        )
    )
    cases.append(
        _case(
            f"{name} stays quiet just below the threshold",
            sc.inputs(*queue("gpt-5", q)),  # p95 = q/2 + q/2 * 0.95
            [_check(25, name)],
        )
    )

    # BgwatchResponsesAbandoned
    name = "BgwatchResponsesAbandoned"
    n = t.abandoned
    abandoned = sc.series("bg_response_abandoned_total", instance=a, model="gpt-5")
    cases.append(
        _case(
            f"{name} fires when {n} response(s) leave tracking unfinished",
            sc.inputs((abandoned, counter((0, 70), (n, 1), (0, 30))), decoys=True),
            [_check(72, name), _check(80, name, [_expect(alerts[name], sc, {"model": "gpt-5"}, n)])],
        )
    )
    cases.append(
        _case(
            f"{name} fires when the counter first appears at {n}",
            sc.inputs((abandoned, f"_x70 {n}x30")),
            [_check(80, name, [_expect(alerts[name], sc, {"model": "gpt-5"}, n)])],
        )
    )
    quiet_abandoned = [(abandoned, f"{n}x200")]
    if n > 1:
        quiet_abandoned = [(abandoned, counter((0, 70), (n - 1, 1), (0, 130)))]
    cases.append(
        _case(
            f"{name} stays quiet for old or too few abandoned responses",
            sc.inputs(*quiet_abandoned),
            [_check(80, name), _check(100, name), _check(200, name)],
        )
    )

    # BgwatchInternalErrors
    name = "BgwatchInternalErrors"
    errors = sc.series("bgwatch_internal_errors_total", instance=a, stage="classify")
    cases.append(
        _case(
            f"{name} fires on a single internal error, and resolves",
            sc.inputs((errors, "0x10 1x30"), decoys=True),
            [
                _check(11, name),  # pending (`for: 1m`)
                _check(15, name, [_expect(alerts[name], sc, {"instance": a, "stage": "classify"}, 1)]),
                _check(25, name),
            ],
        )
    )
    sse = sc.series("bgwatch_internal_errors_total", instance=a, stage="sse")
    cases.append(
        _case(
            f"{name} fires when the counter first appears above 0",
            sc.inputs((sse, "_x20 2x30")),
            [_check(25, name, [_expect(alerts[name], sc, {"instance": a, "stage": "sse"}, 2)])],
        )
    )
    cases.append(
        _case(f"{name} stays quiet for old errors", sc.inputs((errors, "3x60")), [_check(15, name), _check(60, name)])
    )
    return cases


def recording_tests(o: RuleOptions) -> list[dict[str, Any]]:
    """Every recording rule on a steady workload whose rates are exact binary fractions."""
    sc = _Scenario(o)
    a, b = {"instance": "a:9464"}, {"instance": "b:9464"}
    m = {"model": "gpt-5"}
    job = sc.job

    def rec(name: str, *samples: tuple[dict[str, str], float], at: int = 30, wrap: str = "") -> dict[str, Any]:
        expr = f"{wrap}({name})" if wrap else name
        prefix = "" if wrap else name
        return {
            "expr": expr,
            "eval_time": f"{at}m",
            "exp_samples": [
                {
                    "labels": prefix + "{" + ", ".join(f'{k}="{v}"' for k, v in {"job": job, **lbl}.items()) + "}",
                    "value": v,
                }
                for lbl, v in samples
            ],
        }

    per_min = {
        # per minute: 120 created; 60 completed, 45 failed (30 server_error, 15 rate_limit_exceeded),
        # 15 incomplete: 120 finished per minute = 2/s
        sc.series("bg_response_created_total", **a, **m): 60,
        sc.series("bg_response_created_total", **b, **m): 60,
        sc.series("bg_response_finished_total", **a, status="completed", **m): 60,
        sc.series("bg_response_finished_total", **a, status="failed", **m): 30,
        sc.series("bg_response_finished_total", **b, status="failed", **m): 15,
        sc.series("bg_response_finished_total", **b, status="incomplete", **m): 15,
        sc.series("bg_response_failed_total", **a, code="server_error", **m): 30,
        sc.series("bg_response_failed_total", **b, code="rate_limit_exceeded", **m): 15,
        sc.series("bg_response_incomplete_total", **b, reason="max_output_tokens", **m): 15,
        # 360 polls per minute = 6/s: 3 polls per finished response
        sc.series("bg_response_polls_total", **a, status="in_progress"): 240,
        sc.series("bg_response_polls_total", **a, status="completed"): 60,
        sc.series("bg_response_polls_total", **b, status="failed"): 45,
        sc.series("bg_response_polls_total", **b, status="incomplete"): 15,
        # durations: 300 <= 60 s, 900 <= 300 s, 1200 <= 1800 s, all 1200 (20/s)
        **{
            sc.series("bg_response_duration_seconds_bucket", **a, status="completed", **m, le=le): n
            for le, n in (("1", 0), ("60", 300), ("300", 900), ("1800", 1200), ("+Inf", 1200))
        },
        # queue wait: 1/s <= 1 s, 2/s <= 10 s, 3/s <= 60 s, 4/s in all
        **{
            sc.series("bg_response_queue_seconds_bucket", **a, **m, le=le): n
            for le, n in (("1", 60), ("10", 120), ("60", 180), ("+Inf", 240))
        },
        # tokens per second: input completed 10, output completed 5, input failed 4, output incomplete 1
        sc.series("bg_response_tokens_total", **a, type="input", status="completed", **m): 600,
        sc.series("bg_response_tokens_total", **a, type="output", status="completed", **m): 300,
        sc.series("bg_response_tokens_total", **b, type="input", status="failed", **m): 240,
        sc.series("bg_response_tokens_total", **b, type="output", status="incomplete", **m): 60,
        sc.series("bg_response_abandoned_total", **a, **m): 6,
        sc.series("bgwatch_internal_errors_total", **a, stage="classify"): 3,
    }
    inputs = [{"series": s, "values": counter((n, 60))} for s, n in per_min.items()]
    inputs += [
        {"series": sc.series("bg_response_in_flight", **a), "values": "7x60"},
        {"series": sc.series("bg_response_in_flight", **b), "values": "5x60"},
        {"series": sc.series("bg_response_oldest_in_flight_seconds", **a), "values": "120x60"},
        {"series": sc.series("bg_response_oldest_in_flight_seconds", **b), "values": "30x60"},
    ]
    steady = [
        rec("job:bg_response_created:rate5m", ({}, 2)),
        rec(
            "job_status:bg_response_finished:rate5m",
            ({"status": "completed"}, 1),
            ({"status": "failed"}, 0.75),
            ({"status": "incomplete"}, 0.25),
        ),
        rec("job:bg_response_finished:rate5m", ({}, 2)),
        rec(
            "job_code:bg_response_failed:rate5m",
            ({"code": "server_error"}, 0.5),
            ({"code": "rate_limit_exceeded"}, 0.25),
        ),
        rec(
            "job_code:bg_response_failed:rate1h",
            ({"code": "server_error"}, 0.5),
            ({"code": "rate_limit_exceeded"}, 0.25),
            at=60,
        ),
        rec("job:bg_response_failed:rate5m", ({}, 0.75)),
        rec("job:bg_response_failed_per_finished:ratio_rate5m", ({}, 0.375)),
        rec(
            "job_code:bg_response_failed_per_finished:ratio_rate5m",
            ({"code": "server_error"}, 0.25),
            ({"code": "rate_limit_exceeded"}, 0.125),
        ),
        rec("job_reason:bg_response_incomplete:rate5m", ({"reason": "max_output_tokens"}, 0.25)),
        rec(
            "job_status:bg_response_polls:rate5m",
            ({"status": "in_progress"}, 4),
            ({"status": "completed"}, 1),
            ({"status": "failed"}, 0.75),
            ({"status": "incomplete"}, 0.25),
        ),
        rec("job:bg_response_polls_per_finished:ratio_rate5m", ({}, 3)),
        # round(): rate() and histogram_quantile() add noise in the last bit
        rec(
            "job_le:bg_response_duration_seconds_bucket:rate5m",
            *[({"le": le}, v) for le, v in (("1", 0), ("60", 5), ("300", 15), ("1800", 20), ("+Inf", 20))],
            wrap="round",
        ),
        # rank 10 of 20/s in (60, 300]: 180; rank 19 in (300, 1800]: 1500; rank 19.8: 1740
        rec(
            "job_quantile:bg_response_duration_seconds:histogram_quantile",
            ({"quantile": "0.5"}, 180),
            ({"quantile": "0.95"}, 1500),
            ({"quantile": "0.99"}, 1740),
            wrap="round",
        ),
        rec(
            "job_model_le:bg_response_queue_seconds_bucket:rate5m",
            *[({"model": "gpt-5", "le": le}, v) for le, v in (("1", 1), ("10", 2), ("60", 3), ("+Inf", 4))],
            wrap="round",
        ),
        # rank 2 of 4/s in (1, 10]: 10; rank 3.8 falls in +Inf: the largest finite bound, 60
        rec(
            "job_model_quantile:bg_response_queue_seconds:histogram_quantile",
            ({"model": "gpt-5", "quantile": "0.5"}, 10),
            ({"model": "gpt-5", "quantile": "0.95"}, 60),
            wrap="round",
        ),
        rec("job_instance:bg_response_in_flight:sum", (a, 7), (b, 5)),
        rec("job:bg_response_in_flight:sum", ({}, 12)),
        rec("job_instance:bg_response_oldest_in_flight_seconds:max", (a, 120), (b, 30)),
        rec(
            "job_type_status:bg_response_tokens:rate5m",
            ({"type": "input", "status": "completed"}, 10),
            ({"type": "output", "status": "completed"}, 5),
            ({"type": "input", "status": "failed"}, 4),
            ({"type": "output", "status": "incomplete"}, 1),
        ),
        rec("job:bg_response_tokens_not_completed_per_tokens:ratio_rate5m", ({}, 0.25)),
        rec("job_model:bg_response_abandoned:rate1h", ({"model": "gpt-5"}, 0.1), at=60),
        rec("job_stage:bgwatch_internal_errors:rate5m", ({"stage": "classify"}, 0.05)),
    ]
    idle = [
        (sc.series("bg_response_finished_total", **a, status="completed", **m), counter((60, 30))),
        (sc.series("bg_response_tokens_total", **a, type="input", status="completed", **m), counter((60, 30))),
        (sc.series("bg_response_polls_total", **b, status="in_progress"), counter((10, 30))),
    ]
    return [
        {
            "name": "steady workload in one job, two instances",
            "interval": "1m",
            "input_series": inputs,
            "promql_expr_test": steady,
        },
        {
            "name": "ratios are 0, not absent, when nothing failed; absent when nothing finished",
            "interval": "1m",
            "input_series": sc.inputs(*idle),
            "promql_expr_test": [
                rec("job:bg_response_failed_per_finished:ratio_rate5m", ({}, 0), at=20),
                rec("job:bg_response_tokens_not_completed_per_tokens:ratio_rate5m", ({}, 0), at=20),
                {
                    "expr": "job_code:bg_response_failed_per_finished:ratio_rate5m",
                    "eval_time": "20m",
                    "exp_samples": [],
                },
            ],
        },
    ]


def rule_tests(o: RuleOptions) -> dict[str, dict[str, Any]]:
    """``{file name: promtool test file}``; each reads ``../bgwatch.rules.yml``."""
    head = {"rule_files": ["../bgwatch.rules.yml"], "evaluation_interval": "1m"}
    return {
        "alerts.test.yml": {**head, "tests": alert_tests(o)},
        "recording.test.yml": {**head, "tests": recording_tests(o)},
    }
