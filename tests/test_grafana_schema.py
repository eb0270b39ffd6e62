"""The generated dashboards type-check against Grafana's published schema (@grafana/schema).

For every dashboard (the shipped ones and an export with non-default options) the test writes a
TypeScript module that assigns the JSON to ``Dashboard`` and every panel to
``Panel<Options, FieldConfig>`` of its panel plugin (timeseries, stat, bargauge), then runs
``tsc --noEmit --strict``. Object literals get TypeScript's excess-property check, so a field
the schema no longer has (``style``, ``timepicker.collapse``, a variable's ``auto``) fails like
a wrong type does. The npm packages are pinned in tests/grafana-schema/package-lock.json;
``.ci/run`` installs them with ``npm ci``. Without node_modules the test skips, unless ``$CI``
is set (then it fails).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bgwatch._export import ExportOptions, dashboards
from bgwatch._rules import RuleOptions

from .prometheus_harness import DASHBOARD_DIR, REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "tests" / "grafana-schema"
TSC = SCHEMA_DIR / "node_modules" / "typescript" / "bin" / "tsc"
PANEL_TYPES = {
    "timeseries": "TimeSeriesPanelCfg_types.gen",
    "stat": "StatPanelCfg_types.gen",
    "bargauge": "BarGaugePanelCfg_types.gen",
}
CUSTOM_FIELD_CONFIG = {"timeseries"}  # the panel plugins that define a FieldConfig of their own


# JSON holds an enum's value, never the enum: map every string enum to the union of its values
# (numeric enums already accept numbers). Mapped types keep optionality and excess-property checks.
JSON_OF = """
type JsonOf<T> = T extends string
  ? `${T}`
  : T extends readonly (infer U)[]
    ? JsonOf<U>[]
    : T extends object
      ? { [K in keyof T]: JsonOf<T[K]> }
      : T;
"""


def _require_tsc() -> list[str]:
    node = shutil.which("node")
    if node is None or not TSC.exists():
        reason = "needs node and `npm ci` in tests/grafana-schema (.ci/run does both)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return [node, str(TSC)]


def typescript_module(dashboard: dict[str, Any]) -> str:
    """``dashboard`` as a TypeScript module whose every literal is typed by the schema."""
    lines = [
        'import type { AnnotationQuery, Dashboard, DataQuery, Panel, RowPanel } from "@grafana/schema";',
        JSON_OF,
    ]
    for kind, module in PANEL_TYPES.items():
        name = kind.capitalize()
        field_config = f", FieldConfig as {name}FieldConfig" if kind in CUSTOM_FIELD_CONFIG else ""
        lines.append(
            f"import type {{ Options as {name}Options{field_config} }} "
            f'from "@grafana/schema/dist/esm/raw/composable/{kind}/panelcfg/x/{module}";'
        )
    for index, panel in enumerate(dashboard.get("panels", [])):
        var = f"panel{index}"
        kind = panel["type"]
        if kind == "row":
            lines.append(f"const {var}: JsonOf<RowPanel> = {json.dumps(panel, indent=2)};")
        else:
            assert kind in PANEL_TYPES, f"no schema mapped for panel type {kind}"
            name = kind.capitalize()
            custom = f", {name}FieldConfig" if kind in CUSTOM_FIELD_CONFIG else ""
            lines.append(
                f"const {var}: JsonOf<Panel<{name}Options{custom}> & {{ options: {name}Options }}> = "
                f"{json.dumps(panel, indent=2)};"
            )
        lines.append(f"export {{ {var} }};")
    # Prometheus annotations: DataQuery plus the query's `expr`, referenced from the dashboard
    # (the schema leaves the query type open: AnnotationQuery<TQuery extends DataQuery>)
    body = dict(dashboard, annotations={"list": []})
    names = []
    for index, annotation in enumerate(dashboard["annotations"]["list"]):
        lines.append(
            f"const annotation{index}: JsonOf<AnnotationQuery<DataQuery & {{ expr: string }}>> = "
            f"{json.dumps(annotation, indent=2)};"
        )
        names.append(f"annotation{index}")
    text = json.dumps(body, indent=2).replace('"list": []', f'"list": [{", ".join(names)}]', 1)
    # the whole dashboard once more, panels included, against the generic Panel | RowPanel
    lines.append(f"export const dashboard: JsonOf<Dashboard> = {text};")
    return "\n".join(lines) + "\n"


def _check(tmp_path: Path, named: dict[str, dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    command = _require_tsc()
    workdir = tmp_path / "ts"
    workdir.mkdir()
    (workdir / "node_modules").symlink_to(SCHEMA_DIR / "node_modules")
    shutil.copy(SCHEMA_DIR / "tsconfig.json", workdir / "tsconfig.json")
    (workdir / "package.json").write_text('{"type": "module", "private": true}\n', encoding="utf-8")
    for name, d in named.items():
        (workdir / f"{name}.ts").write_text(typescript_module(d), encoding="utf-8")
    return subprocess.run(
        [*command, "--noEmit", "--strict", "-p", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
        cwd=workdir,
        timeout=240,
    )


def _shipped() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def test_shipped_and_exported_dashboards_type_check_against_grafana_schema(tmp_path: Path) -> None:
    exported = dashboards(
        ExportOptions(
            rules=RuleOptions(selector='namespace="prod"', uid_prefix="team-bg"),
            title_prefix="Team",
            datasource_uid="prom-main",
        )
    )
    named = {**_shipped(), **{f"exported-{Path(n).stem}": d for n, d in exported.items()}}
    proc = _check(tmp_path, named)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("where", "mutate", "message"),
    [
        ("legacy timepicker field", lambda d: d["timepicker"].update(collapse=False), "collapse"),
        ("legacy variable field", lambda d: d["templating"]["list"][1].update(auto_count=30), "auto_count"),
        ("panel style", lambda d: d["panels"][1].update(style="dark"), "style"),
        ("wrong option type", lambda d: d["panels"][1]["options"].update(graphMode=3), '"none" | "area" | "line"'),
    ],
)
def test_the_check_rejects_what_the_schema_does_not_have(tmp_path: Path, where: str, mutate: Any, message: str) -> None:
    d = _shipped()["bgwatch-overview"]
    assert d["panels"][1]["type"] == "stat"
    mutate(d)
    proc = _check(tmp_path, {"mutated": d})
    assert proc.returncode != 0, where
    assert message in proc.stdout, proc.stdout
