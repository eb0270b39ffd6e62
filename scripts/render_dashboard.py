#!/usr/bin/env python3
"""Render bgwatch's Grafana dashboards to PNG from their own queries, against a real Prometheus.

    python scripts/render_dashboard.py          # ~2 min; writes docs/dashboard-overview.png
                                                # and docs/dashboard-failures.png

This is how the README picture is made (Grafana is not installable here, so it is not a
screenshot, but it draws exactly what the dashboard asks Prometheus for):

1. It starts ``prometheus`` (Debian's 2.42 package, or ``$PROMETHEUS_BIN``) with the shipped
   rules, scraping two ``bgwatch demo`` processes every second: ``worker-a`` runs 360
   background responses (32 at a time, ~8% failing over five codes), ``worker-b`` starts 20 s
   later with a failure-heavy mix on another model, like a bad deployment next to a healthy
   one. Both see a few HTTP faults, keep serving /metrics when done, and must match their
   ledger. The time range ends when worker-a stops being busy (``--whole-run``: at the end).
2. For each dashboard JSON it takes every panel's title, type, grid position, field config
   (unit, decimals, min, thresholds, stacking, axis label), legend calcs and targets, and runs
   each target's ``expr`` with the variables substituted (``$job``, ``$instance``, ``$code`` =
   All; ``$__rate_interval`` = ``--rate-interval``) as a range query over the run (instant
   targets: an instant query at its end).
3. It draws the grid with matplotlib in Grafana's dark theme: time series as lines (stacked
   where the panel stacks) with table legends named by ``legendFormat``, stat panels as big
   numbers in their threshold colour over a sparkline, bar gauges as bars.

Against a Prometheus of your own (no demo is started)::

    python scripts/render_dashboard.py --prometheus-url http://localhost:9090 --last 30m --job bgwatch-demo

Needs matplotlib, and PyYAML through the harness it reuses from tests/ (``prometheus_harness``
and ``demo_harness``: the same Prometheus runner and demo subprocess as the end-to-end test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import signal
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

try:
    import matplotlib
except ImportError:
    sys.exit("scripts/render_dashboard.py needs matplotlib: pip install matplotlib")

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator
from matplotlib.transforms import IdentityTransform

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.demo_harness import DemoProcess, wait_for_scrape_loop  # noqa: E402
from tests.prometheus_harness import (  # noqa: E402
    DASHBOARD_DIR,
    RULES_FILE,
    Prometheus,
    find_tool,
    free_port,
    substitute_dashboard_vars,
    wait_until,
)

DASHBOARDS = {
    "bgwatch-overview.json": REPO_ROOT / "docs" / "dashboard-overview.png",
    "bgwatch-failures.json": REPO_ROOT / "docs" / "dashboard-failures.png",
}
JOB = "bgwatch-demo"

# The scenario: a healthy worker, and one on another model that fails a lot, started 20 s later.
# Durations straddle the 5 s histogram bucket, so that the quantile panels have some shape.
CODES_A = "server_error|rate_limit_exceeded|invalid_prompt|vector_store_timeout|model_overloaded_v2"
WORKER_A_CONCURRENCY = 32
WORKER_A = [
    *("--seed", "42", "--responses", "360", "--concurrency", str(WORKER_A_CONCURRENCY), "--durations", "2,12"),
    *("--mix", f"completed=78,failed=8,incomplete=9,cancelled=5,codes={CODES_A}"),
    *("--fault-rate", "0.02", "--model", "gpt-4o-mini", "--progress", "none"),
]
WORKER_B_DELAY = 20.0
WORKER_B = [
    *("--seed", "43", "--responses", "80", "--concurrency", "8", "--durations", "1,8"),
    # codes are drawn uniformly from the list: server_error twice as often as rate_limit_exceeded
    *("--mix", "completed=30,failed=60,incomplete=5,cancelled=5,codes=server_error|server_error|rate_limit_exceeded"),
    *("--fault-rate", "0.05", "--cancel-every", "0", "--model", "o3-deep-research", "--progress", "none"),
]

# --------------------------------------------------------------------------- Grafana's dark theme

BG = "#111217"
PANEL_BG = "#181b1f"
PANEL_BORDER = "#2a2d33"
TEXT = "#ccccdc"
TEXT_MUTED = "#8e8e99"
GRID = "#2a2d33"
FONT = "DejaVu Sans"
NAMED_COLORS = {
    "green": "#73BF69",
    "yellow": "#FADE2A",
    "red": "#F2495C",
    "orange": "#FF9830",
    "blue": "#5794F2",
    "purple": "#B877D9",
    "text": TEXT,
}
# palette-classic, in Grafana's order
CLASSIC = [
    "#7EB26D",
    "#EAB839",
    "#6ED0E0",
    "#EF843C",
    "#E24D42",
    "#1F78C1",
    "#BA43A9",
    "#705DA0",
    "#508642",
    "#CCA300",
    "#447EBC",
    "#C15C17",
]

# Grafana's grid: 24 columns, rows of 30 px with 8 px gaps.
COLUMNS = 24
ROW_PX = 30
GAP_PX = 8
WIDTH_PX = 1400
MARGIN_PX = 14
HEADER_PX = 78
FOOTER_PX = 30


def px_to_pt(px: float) -> float:
    return px * 72 / 100  # the figure is drawn at 100 dpi


# --------------------------------------------------------------------------- data


class QuerySource(Protocol):
    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]: ...

    def query_range(
        self, expr: str, start: float, end: float | None = None, step: float = 1.0
    ) -> list[dict[str, Any]]: ...


class RemotePrometheus:
    """The two API calls the renderer needs, against any Prometheus URL."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _get(self, path: str, params: dict[str, str]) -> Any:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
            payload = json.load(r)
        if payload.get("status") != "success":
            raise RuntimeError(f"{params.get('query')}: {payload.get('error')}")
        return payload["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        data = self._get("query", params)
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float | None = None, step: float = 1.0) -> list[dict[str, Any]]:
        end = time.time() if end is None else end
        data = self._get(
            "query_range", {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
        )
        result: list[dict[str, Any]] = data["result"]
        return result


@dataclass
class Series:
    name: str
    values: list[float]  # on the common time grid; NaN where the series has no sample


@dataclass
class PanelData:
    panel: dict[str, Any]
    series: list[Series] = field(default_factory=list)


@dataclass
class Window:
    start: float
    end: float
    step: float
    rate_interval: str
    job: str = ".*"
    instance: str = ".*"

    @property
    def times(self) -> list[float]:
        n = round((self.end - self.start) / self.step) + 1
        return [self.start + i * self.step for i in range(n)]


def legend_name(fmt: str, metric: dict[str, str], expr: str) -> str:
    """Grafana's series name: ``legendFormat`` with ``{{label}}`` filled in (``__auto``: the labels)."""
    if not fmt or fmt == "__auto":
        labels = {k: v for k, v in metric.items() if k != "__name__"}
        return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else expr
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def fetch(dashboard: dict[str, Any], source: QuerySource, window: Window) -> list[PanelData]:
    """Every panel of ``dashboard`` (rows included) with its targets' series over ``window``."""
    grid = window.times
    out: list[PanelData] = []
    for panel in dashboard["panels"]:
        data = PanelData(panel)
        out.append(data)
        for target in panel.get("targets") or ():
            expr = substitute_dashboard_vars(
                target["expr"], job=window.job, instance=window.instance, code=".*", rate_interval=window.rate_interval
            )
            fmt = str(target.get("legendFormat", ""))
            if target.get("instant"):
                for s in source.query(expr, at=window.end):
                    data.series.append(Series(legend_name(fmt, s["metric"], expr), [float(s["value"][1])]))
                continue
            for s in source.query_range(expr, window.start, window.end, window.step):
                by_time = {round(float(t), 3): float(v) for t, v in s["values"]}
                values = [by_time.get(round(t, 3), math.nan) for t in grid]
                data.series.append(Series(legend_name(fmt, s["metric"], expr), values))
    return out


# --------------------------------------------------------------------------- units


def _auto_decimals(value: float) -> int:
    magnitude = abs(value)
    if magnitude == 0 or magnitude >= 100:
        return 0
    if magnitude >= 10:
        return 1
    if magnitude >= 1:
        return 2
    return min(4, 1 - math.floor(math.log10(magnitude)))


def format_value(value: float, unit: str | None, decimals: int | None = None) -> str:
    """A value the way Grafana's unit formats show it (the units bgwatch's dashboards use)."""
    if value is None or math.isnan(value):
        return "No data"
    if unit == "percentunit":
        pct = value * 100
        d = decimals if decimals is not None else _auto_decimals(pct)
        return f"{pct:.{d}f}%"
    if unit == "s":
        if value != 0 and abs(value) < 1:
            ms = value * 1000
            return f"{ms:.{decimals if decimals is not None else _auto_decimals(ms)}f} ms"
        if abs(value) >= 60:
            minutes = value / 60
            return f"{minutes:.{decimals if decimals is not None else _auto_decimals(minutes)}f} min"
        return f"{value:.{decimals if decimals is not None else _auto_decimals(value)}f} s"
    d = decimals if decimals is not None else _auto_decimals(value)
    text = f"{value:.{d}f}"
    if unit == "ops":  # Grafana's "ops/sec (ops)", the unit of every rate in bgwatch's dashboards
        return f"{text} ops/s"
    if unit == "reqps":
        return f"{text} req/s"
    return text


def tick_formatter(unit: str | None) -> FuncFormatter:
    def fmt(value: float, _pos: int | None) -> str:
        if unit == "percentunit":
            return f"{value * 100:.{_tick_decimals(value * 100)}f}%"
        if unit == "s":
            return f"{value:.{_tick_decimals(value)}f} s"
        return f"{value:.{_tick_decimals(value)}f}"

    return FuncFormatter(fmt)


def _tick_decimals(value: float) -> int:
    if value == 0:
        return 0
    for d in range(4):
        if abs(round(value, d) - value) < 1e-9 * max(1.0, abs(value)):
            return d
    return 3


# --------------------------------------------------------------------------- drawing


class Canvas:
    """Pixel coordinates (origin top left) on a matplotlib figure."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.fig: Figure = plt.figure(figsize=(width / 100, height / 100), dpi=100, facecolor=BG)

    def frac(self, x: float, y: float) -> tuple[float, float]:
        return x / self.width, 1 - y / self.height

    def rect(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        color: str,
        *,
        edge: str | None = None,
        radius: float = 0,
        alpha: float = 1.0,
        zorder: float = 0,
    ) -> None:
        box = FancyBboxPatch(
            (x, self.height - y - h),
            w,
            h,
            boxstyle=f"round,pad=0,rounding_size={radius}" if radius else "square,pad=0",
            facecolor=color,
            edgecolor=edge or color,
            linewidth=1,
            alpha=alpha,
            zorder=zorder,
            transform=IdentityTransform(),
        )
        self.fig.add_artist(box)

    def text(self, x: float, y: float, s: str, size_px: float, color: str = TEXT, **kw: Any) -> float:
        """Draw ``s`` at pixel ``(x, y)``; return its width in pixels."""
        fx, fy = self.frac(x, y)
        kw.setdefault("va", "top")
        kw.setdefault("ha", "left")
        kw.setdefault("zorder", 5)
        artist = self.fig.text(fx, fy, s, fontsize=px_to_pt(size_px), color=color, family=FONT, **kw)
        width: float = artist.get_window_extent(self.fig.canvas.get_renderer()).width  # type: ignore[attr-defined]
        return width

    def axes(self, x: float, y: float, w: float, h: float) -> Any:
        fx, fy = self.frac(x, y + h)
        ax = self.fig.add_axes((fx, fy, w / self.width, h / self.height), zorder=2)
        ax.set_facecolor(PANEL_BG)
        return ax


def _threshold_color(value: float, steps: Sequence[dict[str, Any]]) -> str:
    color = "green"
    for step in steps:
        if step.get("value") is None or (not math.isnan(value) and value >= float(step["value"])):
            color = str(step["color"])
    return NAMED_COLORS.get(color, color)


def _calc(values: Sequence[float], name: str) -> float:
    real = [v for v in values if not math.isnan(v)]
    if not real:
        return math.nan
    if name == "mean":
        return sum(real) / len(real)
    if name == "max":
        return max(real)
    if name == "min":
        return min(real)
    return real[-1]  # lastNotNull / last


CALC_TITLES = {"mean": "Mean", "max": "Max", "min": "Min", "lastNotNull": "Last *", "last": "Last"}


def draw_timeseries(canvas: Canvas, data: PanelData, box: tuple[float, float, float, float], window: Window) -> None:
    x, y, w, h = box
    defaults = data.panel["fieldConfig"]["defaults"]
    custom = defaults.get("custom", {})
    unit, decimals = defaults.get("unit"), defaults.get("decimals")
    legend = data.panel.get("options", {}).get("legend", {})
    calcs = [c for c in legend.get("calcs", []) if c in CALC_TITLES]
    series = data.series
    line_h = 17
    max_rows = max(1, int((h * 0.5 - line_h) // line_h))
    rows = series[:max_rows] if len(series) > max_rows else series
    legend_h = (len(rows) + 1) * line_h + (line_h if len(series) > len(rows) else 0) + 4 if series else 0
    axis_label = custom.get("axisLabel")
    left = 52 + (16 if axis_label else 0)
    ax = canvas.axes(x + left, y + 4, w - left - 12, h - legend_h - 26)
    times = [datetime.fromtimestamp(t) for t in window.times]
    xs = mdates.date2num(times)  # type: ignore[no-untyped-call]
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    alpha = float(custom.get("fillOpacity", 0)) / 100
    base = [0.0] * len(xs)
    top_value = 0.0
    for i, s in enumerate(series):
        color = CLASSIC[i % len(CLASSIC)]
        values = s.values
        if stacked:
            upper = [b + (0.0 if math.isnan(v) else v) for b, v in zip(base, values, strict=True)]
            shown = [u if not math.isnan(v) else math.nan for u, v in zip(upper, values, strict=True)]
            if alpha:
                ax.fill_between(xs, base, upper, color=color, alpha=alpha, linewidth=0)
            ax.plot(xs, shown, color=color, linewidth=1.2)
            base = upper
            top_value = max(top_value, *upper) if upper else top_value
        else:
            if alpha:
                ax.fill_between(xs, 0, [0 if math.isnan(v) else v for v in values], color=color, alpha=alpha, lw=0)
            ax.plot(xs, values, color=color, linewidth=1.2)
            real = [v for v in values if not math.isnan(v)]
            top_value = max(top_value, *real) if real else top_value
    if defaults.get("min") is not None:
        ax.set_ylim(bottom=float(defaults["min"]), top=max(top_value * 1.08, 1e-9) if top_value else 1)
    ax.set_xlim(xs[0], xs[-1])
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, min_n_ticks=3))
    ax.yaxis.set_major_formatter(tick_formatter(unit))
    ax.xaxis.set_major_locator(FixedLocator(time_ticks(window, ax_width=w - left - 12)))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
    ax.tick_params(colors=TEXT_MUTED, labelsize=px_to_pt(11), length=0, pad=4)
    for label in ax.get_xticklabels() + ax.get_yticklabels():
        label.set_family(FONT)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if axis_label:
        ax.set_ylabel(axis_label, color=TEXT_MUTED, fontsize=px_to_pt(11), family=FONT, labelpad=6)
    if not series:
        ax.text(0.5, 0.5, "No data", transform=ax.transAxes, ha="center", va="center", color=TEXT_MUTED)
    # the table legend, as Grafana draws it under the graph
    if series:
        ly = y + h - legend_h
        col_w = 78
        name_x = x + 12
        canvas.text(name_x, ly, "Name", 11, TEXT_MUTED)
        for j, calc in enumerate(calcs):
            canvas.text(x + w - 12 - (len(calcs) - 1 - j) * col_w, ly, CALC_TITLES[calc], 11, "#6E9FFF", ha="right")
        for i, s in enumerate(rows):
            ry = ly + (i + 1) * line_h
            color = CLASSIC[i % len(CLASSIC)]
            canvas.rect(name_x, ry + 6, 14, 3, color)
            canvas.text(name_x + 20, ry + 1, s.name, 11.5, TEXT)
            for j, calc in enumerate(calcs):
                value = format_value(_calc(s.values, calc), unit, _legend_decimals(decimals, unit))
                canvas.text(x + w - 12 - (len(calcs) - 1 - j) * col_w, ry + 1, value, 11.5, TEXT, ha="right")
        if len(series) > len(rows):
            canvas.text(
                name_x + 20, ly + (len(rows) + 1) * line_h + 1, f"+ {len(series) - len(rows)} more", 11, TEXT_MUTED
            )


def time_ticks(window: Window, ax_width: float) -> list[float]:
    """Round times (every 15 s, 30 s, 1 min, ...), about one per 80 px, none at the very left
    (where they would run into the y axis' lowest label)."""
    span = window.end - window.start
    wanted = max(2, int(ax_width // 80))
    step = next((s for s in (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600) if span / s <= wanted), 7200)
    first = math.ceil((window.start + span * 0.04) / step) * step
    ticks = [first + i * step for i in range(int((window.end - first) // step) + 1)]
    return [float(mdates.date2num(datetime.fromtimestamp(t))) for t in ticks]  # type: ignore[no-untyped-call]


def _legend_decimals(decimals: int | None, unit: str | None) -> int | None:
    if decimals is not None:
        return decimals
    return 1 if unit == "percentunit" else None


def draw_stat(canvas: Canvas, data: PanelData, box: tuple[float, float, float, float], window: Window) -> None:
    x, y, w, h = box
    defaults = data.panel["fieldConfig"]["defaults"]
    steps = defaults.get("thresholds", {}).get("steps", [])
    values = data.series[0].values if data.series else []
    last = _calc(values, "lastNotNull") if values else math.nan
    if math.isnan(last) and defaults.get("noValue") is not None:
        text, last_for_color = str(defaults["noValue"]), 0.0
    else:
        text, last_for_color = format_value(last, defaults.get("unit"), defaults.get("decimals")), last
    color = _threshold_color(last_for_color, steps)
    if data.panel.get("options", {}).get("graphMode") == "area" and values:
        ax = canvas.axes(x + 1, y + h * 0.45, w - 2, h * 0.55 - 1)
        ax.set_facecolor("none")
        xs = list(range(len(values)))
        filled = [0 if math.isnan(v) else v for v in values]
        ax.fill_between(xs, 0, filled, color=color, alpha=0.18, linewidth=0)
        ax.plot(xs, values, color=color, linewidth=1.2, alpha=0.9)
        ax.set_xlim(0, len(values) - 1)
        top = max(filled) if filled else 0
        ax.set_ylim(0, top * 1.15 if top > 0 else 1)
        ax.axis("off")
    number, _, suffix = text.partition(" ")
    size = min(40.0, h * 0.42, w / max(4, len(text)) * 1.7)
    canvas.text(
        x + w / 2, y + h * 0.42, number + (" " + suffix if suffix else ""), size, color, ha="center", va="center"
    )


def draw_bargauge(canvas: Canvas, data: PanelData, box: tuple[float, float, float, float], window: Window) -> None:
    x, y, w, h = box
    defaults = data.panel["fieldConfig"]["defaults"]
    unit, decimals = defaults.get("unit"), defaults.get("decimals")
    steps = defaults.get("thresholds", {}).get("steps", [])
    values = [(s.name, _calc(s.values, "lastNotNull")) for s in data.series]
    if not values:
        canvas.text(x + w / 2, y + h / 2, "No data", 14, TEXT_MUTED, ha="center", va="center")
        return
    top = max((v for _, v in values if not math.isnan(v)), default=0.0) or 1.0
    low = float(defaults.get("min") or 0)
    row_h = min(34.0, (h - 8) / len(values))
    name_w = 190
    value_w = 110
    bar_w = w - name_w - value_w - 24
    for i, (name, value) in enumerate(values):
        ry = y + 4 + i * row_h
        color = _threshold_color(value, steps)
        canvas.text(x + 12, ry + row_h / 2, name, 12, TEXT, va="center")
        canvas.rect(x + 12 + name_w, ry + 3, bar_w, row_h - 6, "#22252b", radius=2)
        filled = 0.0 if math.isnan(value) else max(0.0, (value - low) / (top - low)) * bar_w
        if filled > 0:
            # Grafana's gradient mode: the bar fades in towards its threshold colour
            ax = canvas.axes(x + 12 + name_w, ry + 3, filled, row_h - 6)
            rgb = to_rgb(color)
            ramp = [[(*rgb, 0.35 + 0.65 * k / 63) for k in range(64)]]
            ax.imshow(ramp, aspect="auto", extent=(0, 1, 0, 1), interpolation="bilinear")
            ax.axis("off")
        canvas.text(x + w - 12, ry + row_h / 2, format_value(value, unit, decimals), 13, color, ha="right", va="center")


DRAW: dict[str, Callable[[Canvas, PanelData, tuple[float, float, float, float], Window], None]] = {
    "timeseries": draw_timeseries,
    "stat": draw_stat,
    "bargauge": draw_bargauge,
}


def render(dashboard: dict[str, Any], panels: list[PanelData], window: Window, out: Path, note: str) -> None:
    """Draw ``panels`` on Grafana's grid and write a PNG (256-colour palette, to keep it small)."""
    col_px = (WIDTH_PX - 2 * MARGIN_PX + GAP_PX) / COLUMNS
    bottom = max(p.panel["gridPos"]["y"] + p.panel["gridPos"]["h"] for p in panels)
    height = int(HEADER_PX + bottom * (ROW_PX + GAP_PX) + FOOTER_PX)
    canvas = Canvas(WIDTH_PX, height)
    _draw_header(canvas, dashboard, window)
    for data in panels:
        pos = data.panel["gridPos"]
        x = MARGIN_PX + pos["x"] * col_px
        y = HEADER_PX + pos["y"] * (ROW_PX + GAP_PX)
        w = pos["w"] * col_px - GAP_PX
        h = pos["h"] * ROW_PX + (pos["h"] - 1) * GAP_PX
        kind = data.panel["type"]
        if kind == "row":
            canvas.text(
                x, y + ROW_PX / 2, "\u25be  " + str(data.panel.get("title", "")), 15, TEXT, va="center", weight="bold"
            )
            continue
        canvas.rect(x, y, w, h, PANEL_BG, edge=PANEL_BORDER, radius=3, zorder=-10)
        canvas.text(x + 10, y + 8, str(data.panel.get("title", "")), 13.5, TEXT, weight="bold")
        draw = DRAW.get(kind)
        inner = (x, y + 30, w, h - 32)
        if draw is None:
            canvas.text(x + w / 2, y + h / 2, f"({kind} panel)", 12, TEXT_MUTED, ha="center")
        else:
            draw(canvas, data, inner, window)
    canvas.text(MARGIN_PX, height - FOOTER_PX / 2, note, 11, TEXT_MUTED, va="center")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.fig.savefig(out, dpi=100, facecolor=BG)
    plt.close(canvas.fig)
    _shrink_png(out)


def _draw_header(canvas: Canvas, dashboard: dict[str, Any], window: Window) -> None:
    canvas.rect(0, 0, canvas.width, 36, "#181b1f", zorder=-5)
    canvas.rect(0, 36, canvas.width, 1, PANEL_BORDER, zorder=-5)
    crumbs = canvas.text(
        MARGIN_PX, 18, "Home  \u203a  Dashboards  \u203a  bgwatch  \u203a  ", 13, TEXT_MUTED, va="center"
    )
    canvas.text(MARGIN_PX + crumbs, 18, str(dashboard.get("title", "")), 13, TEXT, va="center", weight="bold")
    start = datetime.fromtimestamp(window.start)
    end = datetime.fromtimestamp(window.end)
    span = f"{start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S}"
    canvas.rect(canvas.width - MARGIN_PX - 330, 6, 250, 24, "#22252b", edge=PANEL_BORDER, radius=2, zorder=-4)
    canvas.text(canvas.width - MARGIN_PX - 205, 18, span, 12, TEXT, ha="center", va="center")
    canvas.rect(canvas.width - MARGIN_PX - 72, 6, 72, 24, "#22252b", edge=PANEL_BORDER, radius=2, zorder=-4)
    canvas.text(canvas.width - MARGIN_PX - 36, 18, "\u27f3 30s", 12, TEXT, ha="center", va="center")
    x = float(MARGIN_PX)
    for var in dashboard.get("templating", {}).get("list", []):
        label = str(var.get("label") or var["name"])
        value = "Prometheus" if var["type"] == "datasource" else "All"
        label_w = canvas.text(x + 8, 57, label, 12, "#6E9FFF", va="center") + 16
        value_w = canvas.text(x + label_w + 8, 57, value + "  \u25be", 12, TEXT, va="center") + 16
        canvas.rect(x, 44, label_w, 26, "#22252b", edge=PANEL_BORDER, radius=2, zorder=-5)
        canvas.rect(x + label_w, 44, value_w, 26, BG, edge=PANEL_BORDER, radius=2, zorder=-5)
        x += label_w + value_w + 10


def _shrink_png(path: Path) -> None:
    try:
        from PIL import Image
    except ImportError:  # matplotlib depends on Pillow; keep the full-colour PNG if it is missing
        return
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


# --------------------------------------------------------------------------- the demo run


def run_demos_and_render(args: argparse.Namespace) -> int:
    binary = find_tool("prometheus")
    if binary is None:
        print("needs Debian's `prometheus` (apt-get install prometheus) or $PROMETHEUS_BIN", file=sys.stderr)
        return 2
    ports: list[int] = []
    while len(ports) < 2:
        port = free_port()
        if port not in ports:
            ports.append(port)
    targets = [f"127.0.0.1:{p}" for p in ports]
    with Prometheus(targets, job=JOB, rule_files=[RULES_FILE], binary=binary) as prom:
        print(f"prometheus {prom.url} scraping {', '.join(targets)} every second (job {JOB})")
        wait_for_scrape_loop(prom)
        workers = [DemoProcess(WORKER_A, metrics_port=ports[0]), DemoProcess(WORKER_B, metrics_port=ports[1])]
        try:
            started = time.time()
            for i, (worker, delay) in enumerate(zip(workers, (0.0, WORKER_B_DELAY), strict=True)):
                if delay:
                    print(f"worker-b starts in {delay:.0f} s ...")
                    time.sleep(max(0.0, started + delay - time.time()))  # the scenario's shape, not a wait
                worker.start()
                actual = worker.wait_for_target(timeout=60)
                if actual != targets[i]:  # its port was taken meanwhile: it serves on another one
                    targets[i] = actual
                    prom.targets = list(targets)
                    prom.reload()
                print(f"bgwatch demo {' '.join(worker.command[4:])}\n  -> /metrics on {actual}")
            summaries = [worker.wait_for_summary(timeout=600) for worker in workers]
            for worker, summary in zip(workers, summaries, strict=True):
                took = f"{summary['responses']} responses in {summary['wall_seconds']:.0f} s"
                print(f"  {took}, ledger match: {summary['match']}")
                if summary["match"] is not True:
                    print(worker.stderr_text(), file=sys.stderr)
                    return 1
            ended = max(w.summary_at for w in workers)
            wait_until(
                lambda: all(_scraped_after(prom, t, ended) for t in targets),
                timeout=30,
                message="no scrape after the end of the run",
            )
            # Like a look at the dashboard during the run: the range ends when worker-a stops
            # running at full concurrency (its last responses draining), unless --whole-run.
            end = ended + 2 if args.whole_run else _steady_until(prom, targets[0], started, ended)
            window = Window(
                start=round(started - 3), end=end, step=args.step, rate_interval=args.rate_interval or "15s"
            )
            note = (
                f"Rendered by scripts/render_dashboard.py from the dashboard JSON's own queries "
                f"($__rate_interval={window.rate_interval}, step {window.step:g}s) against Prometheus "
                f"{_prometheus_version(prom.url)} scraping two `bgwatch demo` processes: not a Grafana screenshot."
            )
            render_all(args, prom, window, note)
            if args.hold:
                print(f"holding: prometheus at {prom.url}, range {window.start:.0f}..{window.end:.0f}; Ctrl-C ends")
                with contextlib.suppress(KeyboardInterrupt):
                    while all(w.running for w in workers):
                        time.sleep(1)
        finally:
            for worker in workers:
                worker.stop()
    return 0


def _steady_until(prom: Prometheus, target: str, start: float, end: float) -> float:
    """The last second at which worker-a had (about) its full concurrency in flight."""
    series = prom.query_range(f'bg_response_in_flight{{instance="{target}"}}', start, end, 1.0)
    busy = [float(t) for t, v in (series[0]["values"] if series else []) if float(v) >= 0.9 * WORKER_A_CONCURRENCY]
    return busy[-1] if busy else end


def _prometheus_version(url: str) -> str:
    try:
        with urllib.request.urlopen(f"{url}/api/v1/status/buildinfo", timeout=10) as r:
            return str(json.load(r)["data"]["version"]).split("+")[0]
    except (OSError, ValueError, KeyError):
        return "(version unknown)"


def _scraped_after(prom: Prometheus, target: str, when: float) -> bool:
    up = f'up{{instance="{target}"}}'
    result = prom.query(f"timestamp({up}) and ({up} == 1)")
    return bool(result) and float(result[0]["value"][1]) > when


def render_all(args: argparse.Namespace, source: QuerySource, window: Window, note: str) -> None:
    for name in args.dashboard:
        path = Path(name) if Path(name).exists() else DASHBOARD_DIR / name
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        out = Path(args.out) if args.out and len(args.dashboard) == 1 else DASHBOARDS.get(path.name)
        if out is None:
            out = REPO_ROOT / "docs" / f"{path.stem}.png"
        panels = fetch(dashboard, source, window)
        render(dashboard, panels, window, out, note)
        print(f"wrote {out} ({out.stat().st_size // 1024} KB, {len(panels)} panels)")


def _duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected e.g. 90s, 30m, 2h, got {text!r}")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--dashboard",
        action="append",
        help="dashboard JSON (a path or a name in dashboards/); repeatable (default: both shipped dashboards)",
    )
    parser.add_argument("--out", help="output PNG (with a single --dashboard; default docs/dashboard-<name>.png)")
    parser.add_argument("--rate-interval", help="value of $__rate_interval (default 15s; 1m with --prometheus-url)")
    parser.add_argument("--step", type=float, default=None, help="range query step in seconds (default 1; auto)")
    parser.add_argument(
        "--whole-run", action="store_true", help="render until the run has ended (default: while worker-a is busy)"
    )
    parser.add_argument("--hold", action="store_true", help="keep Prometheus and the demos up after rendering")
    own = parser.add_argument_group("against your own Prometheus (no demo is started)")
    own.add_argument("--prometheus-url", help="e.g. http://localhost:9090")
    own.add_argument("--last", type=_duration, default=None, help="time range ending now, e.g. 30m (default 1h)")
    own.add_argument("--start", type=float, help="range start (epoch seconds), instead of --last")
    own.add_argument("--end", type=float, help="range end (epoch seconds; default now)")
    own.add_argument("--job", default=".*", help="value of $job (a regex; default all)")
    own.add_argument("--instance", default=".*", help="value of $instance (a regex; default all)")
    args = parser.parse_args(argv)
    args.dashboard = args.dashboard or list(DASHBOARDS)
    if not args.prometheus_url:
        args.step = args.step or 1.0
        # SIGTERM unwinds like Ctrl-C, so that the demos and Prometheus are always stopped
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
        try:
            return run_demos_and_render(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
    end = args.end or time.time()
    start = args.start or end - (args.last or 3600)
    step = args.step or max(1.0, round((end - start) / 400))
    window = Window(start, end, step, args.rate_interval or "1m", job=args.job, instance=args.instance)
    note = (
        f"Rendered by scripts/render_dashboard.py from the dashboard JSON's own queries against {args.prometheus_url}."
    )
    render_all(args, RemotePrometheus(args.prometheus_url), window, note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
