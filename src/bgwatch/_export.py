"""``bgwatch export``: the shipped dashboards, rules, rule tests and runbook, written for a deployment.

The dashboards and the runbook are package data (``bgwatch/_assets/``, copied there from
``dashboards/`` and ``docs/`` by ``scripts/generate_dashboards.py``); the rules and their
promtool unit tests are built by :mod:`bgwatch._rules` from the same options, so that the
exported tests check exactly the exported rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from . import _yaml
from ._rules import DEFAULT_RUNBOOK_URL, RuleOptions, rule_groups, rule_tests

__all__ = [
    "FORMATS",
    "ExportOptions",
    "dashboards",
    "export",
    "files",
    "prometheus_rule",
    "rule_test_files",
    "rules_file",
]

FORMATS = ("prometheus", "prometheus-operator")
DASHBOARD_FILES = {"bgwatch-overview.json": "overview", "bgwatch-failures.json": "failures"}
DATASOURCE_VARIABLE = {"type": "prometheus", "uid": "${datasource}"}
# Panels that draw an alert threshold as a red line: (file, panel id) -> Thresholds field.
THRESHOLD_PANELS = {
    ("bgwatch-overview.json", 8): "failure_ratio",
    ("bgwatch-failures.json", 105): "failure_ratio",
    ("bgwatch-overview.json", 18): "queue_p95_seconds",
    ("bgwatch-overview.json", 19): "stuck_seconds",
}
RULES_HEADER = """\
# Prometheus recording and alerting rules for bgwatch (OpenAI background responses).
# Written by `bgwatch export`{options}. Load with `rule_files:`; check with
# `promtool check rules` and `promtool test rules tests/*.yml`. Runbook: {runbook}
"""


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``bgwatch export`` can change; the defaults reproduce the repository's files."""

    rules: RuleOptions = field(default_factory=RuleOptions)
    title_prefix: str = "bgwatch"
    """Dashboard titles are ``<title_prefix> / …``."""
    datasource_uid: str | None = None
    """Pin every query to this Prometheus data source uid (and drop the data source variable)."""
    format: str = "prometheus"
    """``prometheus`` (a rule file) or ``prometheus-operator`` (also a ``PrometheusRule`` manifest)."""
    namespace: str | None = None
    """``metadata.namespace`` of the ``PrometheusRule``."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """``metadata.labels`` of the ``PrometheusRule`` (what the operator's ``ruleSelector`` matches)."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: one of {', '.join(FORMATS)}")
        if self.datasource_uid is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", self.datasource_uid):
            raise ValueError("data source uid: 1-40 letters, digits, '.', '-' or '_'")
        for key in self.labels:
            if not re.fullmatch(r"([a-z0-9.-]+/)?[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?", key):
                raise ValueError(f"label {key!r} is not a Kubernetes label key")


def _asset(*parts: str) -> str:
    return resources.files("bgwatch").joinpath("_assets", *parts).read_text(encoding="utf-8")


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _with_selector(promql: str, matchers: str) -> str:
    """Add ``matchers`` to the dashboards' selectors: they all carry ``job=~"$job"``, and the
    variable query that lists jobs reads ``bg_response_in_flight`` bare."""
    if not matchers or promql.startswith("ALERTS"):  # ALERTS carry the alerts' labels only
        return promql
    promql = re.sub(r'([{,]\s*)job=~"\$job"', lambda m: f'{m.group(1)}{matchers}, job=~"$job"', promql)
    return promql.replace("label_values(bg_response_in_flight, ", f"label_values(bg_response_in_flight{{{matchers}}}, ")


def dashboards(options: ExportOptions) -> dict[str, dict[str, Any]]:
    """The shipped dashboards, rewritten for ``options``: ``{file name: dashboard JSON}``."""
    o = options.rules
    uids = {"overview": o.overview_uid(), "failures": o.failures_uid()}
    out: dict[str, dict[str, Any]] = {}
    for name, kind in DASHBOARD_FILES.items():
        d: dict[str, Any] = json.loads(_asset("dashboards", name))
        d["uid"] = uids[kind]
        d["title"] = re.sub(r"^bgwatch(?= / )", lambda _m: options.title_prefix, d["title"])
        for node in _walk(d):
            for key in ("expr", "query"):
                if isinstance(node.get(key), str):
                    node[key] = _with_selector(node[key], o.matchers)
            if isinstance(node.get("url"), str) and node["url"].startswith(DEFAULT_RUNBOOK_URL):
                node["url"] = o.runbook_url + node["url"][len(DEFAULT_RUNBOOK_URL) :]
            if options.datasource_uid and node.get("datasource") == DATASOURCE_VARIABLE:
                node["datasource"] = {"type": "prometheus", "uid": options.datasource_uid}
        for panel in d["panels"]:
            threshold = THRESHOLD_PANELS.get((name, panel.get("id")))
            if threshold is not None:
                steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
                steps[-1]["value"] = getattr(o.thresholds, threshold)
        if options.datasource_uid:
            variables = d["templating"]["list"]
            d["templating"]["list"] = [v for v in variables if v.get("type") != "datasource"]
        out[name] = d
    return out


def _describe(options: ExportOptions) -> str:
    o, defaults = options.rules, RuleOptions()
    changed = []
    if o.selector:
        changed.append(f"selector {o.matchers}")
    for name in type(o.thresholds).names():
        value = getattr(o.thresholds, name)
        if value != getattr(defaults.thresholds, name):
            changed.append(f"{name}={value}")
    return f" ({', '.join(changed)})" if changed else ""


def rules_file(options: ExportOptions) -> str:
    """The plain Prometheus rule file."""
    header = RULES_HEADER.format(options=_describe(options), runbook=options.rules.runbook_url)
    return _yaml.dump({"groups": rule_groups(options.rules)}, header=header)


def prometheus_rule(options: ExportOptions) -> str:
    """The same groups as a prometheus-operator ``PrometheusRule`` (monitoring.coreos.com/v1)."""
    metadata: dict[str, Any] = {"name": options.rules.uid_prefix.lower().replace("_", "-")}
    if options.namespace:
        metadata["namespace"] = options.namespace
    metadata["labels"] = {"app.kubernetes.io/name": "bgwatch", **options.labels}
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata,
        "spec": {"groups": rule_groups(options.rules)},
    }
    header = "# bgwatch's rules for the Prometheus Operator: kubectl apply -f this file.\n"
    return _yaml.dump(manifest, header=header)


def rule_test_files(options: ExportOptions) -> dict[str, str]:
    """The promtool unit tests of :func:`rules_file` for the same options: ``{file name: text}``."""
    header = "# promtool test rules: the unit tests of ../bgwatch.rules.yml, written for the same options.\n"
    return {name: _yaml.dump(test, header=header) for name, test in rule_tests(options.rules).items()}


def files(options: ExportOptions) -> dict[str, str]:
    """Every exported file: ``{relative path: text}``."""
    out = {
        f"dashboards/{name}": json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, d in dashboards(options).items()
    }
    out["rules/bgwatch.rules.yml"] = rules_file(options)
    if options.format == "prometheus-operator":
        out["rules/bgwatch.prometheusrule.yaml"] = prometheus_rule(options)
    out.update({f"rules/tests/{name}": text for name, text in rule_test_files(options).items()})
    out["runbook.md"] = _asset("runbook.md")
    return out


def export(out: Path, options: ExportOptions) -> list[Path]:
    """Write every file under ``out``; return their paths."""
    written = []
    for relative, text in files(options).items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
