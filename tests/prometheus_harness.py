"""A real Prometheus for tests, and PromQL helpers for bgwatch's dashboards and rules.

Start a ``prometheus`` binary on a free loopback port, scraping loopback targets every second
and evaluating rule files every second, with its TSDB in a temporary directory::

    from .prometheus_harness import RULES_FILE, Prometheus, require_tool

    @pytest.fixture
    def prom(tmp_path):
        binary = require_tool("prometheus")  # skips when absent, fails when $CI is set
        target = f"127.0.0.1:{port}"         # e.g. `bgwatch demo`'s metrics server
        with Prometheus([target], rule_files=[RULES_FILE], binary=binary, workdir=tmp_path) as p:
            p.wait_for_scrapes(target, 3)
            yield p

    def test_something(prom):
        assert prom.query('sum(rate(bg_response_failed_total[15s]))')
        prom.wait_for_alert("BgwatchInternalErrors", state="pending")

To evaluate the dashboards against it: ``for t in dashboard_targets(path):
prom.query(substitute_dashboard_vars(t.expr))`` (see tests/test_rules.py).

Timing: Prometheus is ready within ~0.1 s, but 2.42 applies scrape targets on a fixed 5 s
tick, so the first scrape happens ~5 s after start; then one per second.

Every wait polls until a deadline (no fixed sleeps) and, on timeout, raises with the reason
and the tail of Prometheus's log. Beyond the standard library it needs PyYAML (rule files)
and pytest (:func:`require_tool` only).

The module also knows the metric contract (:data:`CONTRACT_METRICS`) and how to pull the
PromQL out of ``dashboards/*.json`` (:func:`dashboard_targets`) and
``dashboards/rules/*.yml`` (:func:`rule_exprs`), so that an end-to-end test can evaluate
exactly what Grafana and Prometheus will evaluate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml  # type: ignore[import-untyped,unused-ignore]  # types-PyYAML is not a dev dependency

__all__ = [
    "CONTRACT_METRICS",
    "DASHBOARD_DIR",
    "DURATION_BUCKETS",
    "NEW_METRICS",
    "QUEUE_BUCKETS",
    "REPO_ROOT",
    "RULES_FILE",
    "RULE_TESTS_DIR",
    "DashboardTarget",
    "PromQLError",
    "Prometheus",
    "PrometheusError",
    "Rule",
    "contract_series_names",
    "dashboard_targets",
    "free_port",
    "metric_names_in",
    "promtool_check_exprs",
    "require_tool",
    "rule_exprs",
    "substitute_dashboard_vars",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = REPO_ROOT / "dashboards"
RULES_FILE = DASHBOARD_DIR / "rules" / "bgwatch.rules.yml"
RULE_TESTS_DIR = DASHBOARD_DIR / "rules" / "tests"

# The metric contract of DESIGN.md: name -> (type, labels). Dashboards and rules may use these
# names only (histograms through their _bucket/_count/_sum series).
CONTRACT_METRICS: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "bg_response_failed_total": ("counter", ("code", "model")),
    "bg_response_incomplete_total": ("counter", ("reason", "model")),
    "bg_response_finished_total": ("counter", ("status", "model")),
    "bg_response_created_total": ("counter", ("model",)),
    "bg_response_polls_total": ("counter", ("status",)),
    "bg_response_duration_seconds": ("histogram", ("status", "model")),
    "bg_response_in_flight": ("gauge", ()),
    "bgwatch_internal_errors_total": ("counter", ("stage",)),
    "bg_response_abandoned_total": ("counter", ("model",)),
    "bg_response_queue_seconds": ("histogram", ("model",)),
    "bg_response_oldest_in_flight_seconds": ("gauge", ()),
    "bg_response_tokens_total": ("counter", ("type", "status", "model")),
}
# Added by issues 12 and 15 (other branches): the end-to-end test skips what the demo does not
# export yet.
NEW_METRICS = frozenset(
    {
        "bg_response_abandoned_total",
        "bg_response_queue_seconds_bucket",
        "bg_response_queue_seconds_count",
        "bg_response_queue_seconds_sum",
        "bg_response_oldest_in_flight_seconds",
        "bg_response_tokens_total",
    }
)
QUEUE_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600)
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800)


def contract_series_names() -> frozenset[str]:
    """Every series name the contract exposes (histograms as _bucket, _count and _sum)."""
    names: set[str] = set()
    for name, (kind, _labels) in CONTRACT_METRICS.items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_count", "_sum"))
        else:
            names.add(name)
    return frozenset(names)


# --------------------------------------------------------------------------- tools


def find_tool(name: str) -> str | None:
    """``$PROMETHEUS_BIN`` / ``$PROMTOOL_BIN`` if set, else ``name`` on PATH."""
    override = os.environ.get(f"{name.upper()}_BIN")
    if override:
        return override if Path(override).is_file() else None
    return shutil.which(name)


def require_tool(name: str) -> str:
    """The path of ``name`` (prometheus, promtool). Absent: skip, or fail when ``$CI`` is set."""
    import pytest

    path = find_tool(name)
    if path is not None:
        return path
    reason = f"`{name}` is not installed (apt-get install prometheus, or set {name.upper()}_BIN); it is required in CI"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (callers retry if someone else takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


T = TypeVar("T")


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.1,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``probe`` until it returns something truthy; return it. TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise TimeoutError(f"after {timeout:.1f}s: {text}")
        time.sleep(interval)


# --------------------------------------------------------------------------- Prometheus


class PrometheusError(RuntimeError):
    """Prometheus did not start, stopped, or answered an API call with an error."""


class PromQLError(PrometheusError):
    """The API rejected an expression (errorType bad_data: it does not parse, or is invalid)."""

    def __init__(self, expr: str, error_type: str, error: str) -> None:
        super().__init__(f"{error_type}: {error}\n  expr: {expr}")
        self.expr = expr
        self.error_type = error_type
        self.error = error


class Prometheus:
    """A ``prometheus`` process for one test (or one module): start, query, stop.

    ``targets`` are ``host:port`` strings scraped as job ``job`` at ``metrics_path``; more scrape
    jobs can be passed as raw ``scrape_configs`` entries. ``rule_files`` are loaded and evaluated
    every ``evaluation_interval``. The TSDB, config and log live in ``workdir`` (a fresh
    temporary directory, removed on stop, when not given).
    """

    def __init__(
        self,
        targets: Sequence[str] = (),
        *,
        job: str = "bgwatch",
        metrics_path: str = "/metrics",
        target_labels: Mapping[str, str] | None = None,
        rule_files: Sequence[str | os.PathLike[str]] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        extra_scrape_configs: Sequence[Mapping[str, Any]] = (),
        binary: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.targets = list(targets)
        self.job = job
        self.metrics_path = metrics_path
        self.target_labels = dict(target_labels or {})
        self.rule_files = [Path(f).resolve() for f in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.extra_scrape_configs = [dict(c) for c in extra_scrape_configs]
        self.binary = binary or find_tool("prometheus") or "prometheus"
        self.host = host
        self.start_timeout = start_timeout
        self.extra_args = list(extra_args)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="bgwatch-prom-"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        """The configuration written to :attr:`config_path` (JSON is valid YAML)."""
        static: dict[str, Any] = {"targets": self.targets}
        if self.target_labels:
            static["labels"] = self.target_labels
        scrape_configs: list[dict[str, Any]] = []
        if self.targets:
            scrape_configs.append({"job_name": self.job, "metrics_path": self.metrics_path, "static_configs": [static]})
        scrape_configs.extend(self.extra_scrape_configs)
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(f) for f in self.rule_files],
            "scrape_configs": scrape_configs,
        }

    def start(self) -> Prometheus:
        if self._proc is not None:
            raise PrometheusError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        for attempt in range(3):
            self.port = free_port(self.host)
            self._spawn()
            try:
                self._wait_ready()
                return self
            except PrometheusError:
                log = self.log_tail()
                self.stop(_keep_workdir=True)
                if "address already in use" in log and attempt < 2:
                    continue  # the free port was taken in between: try another one
                if self._own_workdir:
                    shutil.rmtree(self.workdir, ignore_errors=True)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self) -> None:
        self._log_file = self.log_path.open("ab")
        args = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=info",
            *self.extra_args,
        ]
        self._proc = subprocess.Popen(
            args, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise PrometheusError(f"prometheus exited with {code} while starting\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() >= deadline:
                raise PrometheusError(f"prometheus not ready after {self.start_timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, *, _keep_workdir: bool = False) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL. Removes the workdir if the harness made it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_workdir and not _keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def reload(self, timeout: float = 10.0) -> None:
        """Rewrite the config from the current attributes (targets, rule_files...) and reload."""
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        req = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if r.status != 200:
                raise PrometheusError(f"reload answered {r.status}\n{self.log_tail()}")

    # -- HTTP API -------------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> Any:
        """POST ``/api/v1/<path>`` with form ``params``; return ``data`` or raise on an error."""
        if not self.running:
            raise PrometheusError(f"prometheus is not running\n{self.log_tail()}")
        items = list(params.items()) if isinstance(params, Mapping) else list(params)
        body = urllib.parse.urlencode(items).encode()
        req = urllib.request.Request(
            f"{self.url}/api/v1/{path}",
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                payload = json.load(r)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                raise PrometheusError(f"{path}: HTTP {e.code}: {raw[:500]!r}") from None
        if payload.get("status") != "success":
            expr = dict(items).get("query") or dict(items).get("match[]") or path
            raise PromQLError(expr, str(payload.get("errorType")), str(payload.get("error")))
        return payload["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result list (vector samples). Scalars come back as one sample.

        Raises :class:`PromQLError` when the expression does not parse.
        """
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_value(self, expr: str, at: float | None = None) -> float | None:
        """The value of a query expected to return at most one sample (None when empty)."""
        result = self.query(expr, at)
        if not result:
            return None
        if len(result) > 1:
            raise AssertionError(f"{expr!r} returned {len(result)} samples, expected one: {result}")
        return float(result[0]["value"][1])

    def query_range(self, expr: str, start: float, end: float | None = None, step: float = 1.0) -> list[dict[str, Any]]:
        """Range query: the result list (matrix series with ``values``)."""
        data = self.api(
            "query_range",
            {
                "query": expr,
                "start": f"{start:.3f}",
                "end": f"{(time.time() if end is None else end):.3f}",
                "step": f"{step}",
            },
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_status(self) -> list[dict[str, Any]]:
        """``/api/v1/targets`` active targets (``scrapeUrl``, ``health``, ``lastError``...)."""
        req = urllib.request.Request(f"{self.url}/api/v1/targets?state=active")
        with urllib.request.urlopen(req, timeout=10) as r:
            active: list[dict[str, Any]] = json.load(r)["data"]["activeTargets"]
            return active

    def rule_groups(self) -> list[dict[str, Any]]:
        """``/api/v1/rules`` groups (each with ``rules``, ``lastEvaluation``...)."""
        req = urllib.request.Request(f"{self.url}/api/v1/rules")
        with urllib.request.urlopen(req, timeout=10) as r:
            groups: list[dict[str, Any]] = json.load(r)["data"]["groups"]
            return groups

    def alerts(self) -> list[dict[str, Any]]:
        """``/api/v1/alerts``: pending and firing alerts."""
        req = urllib.request.Request(f"{self.url}/api/v1/alerts")
        with urllib.request.urlopen(req, timeout=10) as r:
            alerts: list[dict[str, Any]] = json.load(r)["data"]["alerts"]
            return alerts

    # -- waits ----------------------------------------------------------------------------

    def wait_for_scrapes(self, target: str, count: int = 2, timeout: float = 30.0) -> int:
        """Wait until ``target`` (``host:port``, the instance label) was scraped successfully
        ``count`` times; return the number of successful scrapes."""
        expr = f'sum_over_time(up{{instance="{target}"}}[1d])'

        def probe() -> int | None:
            value = self.query_value(expr)
            return int(value) if value is not None and value >= count else None

        def why() -> str:
            status = [
                f"{t.get('scrapeUrl')}: health={t.get('health')} lastError={t.get('lastError')!r}"
                for t in self.targets_status()
            ]
            return f"{target} not scraped {count} times; targets: {status}\n{self.log_tail(10)}"

        return wait_until(probe, timeout=timeout, message=why)

    def wait_for_rule_evaluations(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until every loaded rule group was evaluated ``count`` times from now on."""
        for _ in range(count):
            since = time.time()

            def probe(since: float = since) -> bool:
                groups = self.rule_groups()
                return bool(groups) and all(_rfc3339_to_epoch(g["lastEvaluation"]) > since for g in groups)

            wait_until(probe, timeout=timeout, message=lambda: f"rule groups not evaluated: {self.rule_groups()}")

    def wait_for_alert(self, alertname: str, state: str = "firing", timeout: float = 30.0) -> dict[str, Any]:
        """Wait until an alert named ``alertname`` is in ``state`` (pending or firing); return it."""

        def probe() -> dict[str, Any] | None:
            for alert in self.alerts():
                if alert["labels"].get("alertname") == alertname and alert["state"] == state:
                    return alert
            return None

        return wait_until(probe, timeout=timeout, message=lambda: f"no {state} {alertname}: {self.alerts()}")


def _rfc3339_to_epoch(value: str) -> float:
    """Prometheus's RFC 3339 timestamps (nanoseconds, Z or offset) to epoch seconds."""
    from datetime import datetime

    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", value)
    if not m:
        return 0.0
    base, frac, tz = m.groups()
    tz = "+00:00" if tz == "Z" else tz
    seconds = datetime.fromisoformat(base + tz).timestamp()
    return seconds + (float(f"0.{frac}") if frac else 0.0)


# --------------------------------------------------------------------------- dashboards and rules


@dataclass(frozen=True)
class DashboardTarget:
    dashboard: str
    panel_id: int | None
    panel_title: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} panel {self.panel_id} {self.panel_title!r} {self.ref_id}"


def _walk_panels(panels: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels") or ())


def dashboard_targets(path: str | os.PathLike[str]) -> list[DashboardTarget]:
    """Every Prometheus query of every panel (rows included) of a dashboard JSON file."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    found: list[DashboardTarget] = []
    for panel in _walk_panels(data.get("panels") or ()):
        for target in panel.get("targets") or ():
            if "expr" in target:
                found.append(
                    DashboardTarget(
                        Path(path).name,
                        panel.get("id"),
                        str(panel.get("title", "")),
                        str(target.get("refId", "")),
                        str(target["expr"]),
                    )
                )
    return found


def substitute_dashboard_vars(
    expr: str,
    *,
    job: str = ".*",
    instance: str = ".*",
    code: str = ".*",
    rate_interval: str = "15s",
    extra: Mapping[str, str] | None = None,
) -> str:
    """Replace Grafana's variables the way Grafana would for a regex matcher."""
    values = {
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": "1h",
        "job": job,
        "instance": instance,
        "code": code,
        **(extra or {}),
    }

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


@dataclass(frozen=True)
class Rule:
    group: str
    name: str  # the recorded series, or the alert name
    kind: str  # "record" or "alert"
    expr: str
    raw: Mapping[str, Any]


def rule_exprs(path: str | os.PathLike[str] = RULES_FILE) -> list[Rule]:
    """Every rule of a Prometheus rule file, in file order."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    rules: list[Rule] = []
    for group in data["groups"]:
        for rule in group["rules"]:
            kind = "alert" if "alert" in rule else "record"
            rules.append(Rule(group["name"], rule[kind], kind, str(rule["expr"]), rule))
    return rules


_PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)


def metric_names_in(expr: str) -> set[str]:
    """The metric names an expression selects (a lexical scan, enough for our expressions).

    Removes string literals, ``{...}`` matchers, ``[...]`` ranges, the label lists of
    ``by/without/on/ignoring/group_left/group_right``, function names (an identifier before
    ``(``), keywords and numbers; what remains are metric names. Also ``{__name__="x"}``.
    """
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        token, call = m.group(1), m.group(2)
        if call or token.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def promtool_check_exprs(exprs: Sequence[str], promtool: str, workdir: str | os.PathLike[str]) -> None:
    """Parse expressions offline with ``promtool check rules``, as recording rules of a scratch
    file (promtool 2.42 has no query-parse command). AssertionError with promtool's output."""
    rules = [{"record": f"bgwatch_check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = Path(workdir) / "exprs.rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "exprs", "rules": rules}]}, indent=2), encoding="utf-8")
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        numbered = "\n".join(f"  expr_{i}: {e}" for i, e in enumerate(exprs))
        raise AssertionError(f"promtool check rules failed:\n{proc.stdout}{proc.stderr}\n{numbered}")
