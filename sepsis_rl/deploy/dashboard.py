"""The Grafana dashboard of every ``sepsis_rl_*`` metric, generated from the code that defines the metrics.

The metric set is read from the source (``ray.util.metrics`` ``Counter``/``Gauge``/``Histogram`` constructors with
a literal ``sepsis_rl_*`` name), so a metric added in code without a panel, or a panel left behind after a rename,
fails ``tests/test_grafana_dashboard.py``. Queries use Prometheus names as Ray exports them: a ``ray_`` prefix,
``_total`` on counters, ``_bucket`` on histograms. Every panel filters on the ``run_id`` tag.

    python -m sepsis_rl.deploy.dashboard --write     # regenerate cluster/grafana/sepsis_rl_dashboard.json
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("sepsis_rl", "world_model", "serve")
DASHBOARD = ROOT / "cluster" / "grafana" / "sepsis_rl_dashboard.json"
KINDS = ("Counter", "Gauge", "Histogram")
SECTIONS = {"sim": "World-model simulator shards", "rollout": "Rollout workers", "learner": "Learner",
            "serve": "Serving"}
PROM_NAME = re.compile(r"\bray_(sepsis_rl_\w+)")


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str
    description: str
    tag_keys: tuple[str, ...]
    file: str


def _literal_strings(node: ast.AST | None, assigned: dict[str, ast.AST]) -> tuple[str, ...] | None:
    """A tuple/list of string literals, possibly through a name assigned one in the same function or module."""
    if isinstance(node, ast.Name) and node.id in assigned:
        node = assigned[node.id]
    if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in node.elts):
        return tuple(str(e.value) for e in node.elts)
    return None


def _assignments(tree: ast.AST) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = node.value
    return out


def _kind(call: ast.Call) -> str | None:
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    return name if name in KINDS else None


def scan_file(path: Path, root: Path = ROOT) -> list[MetricDef]:
    tree = ast.parse(path.read_text(), filename=str(path))
    assigned = _assignments(tree)
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _kind(node) and node.args):
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("sepsis_rl_")):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        desc = node.args[1] if len(node.args) > 1 else kw.get("description")
        tags = _literal_strings(kw.get("tag_keys"), assigned)
        out.append(MetricDef(first.value, _kind(node) or "", desc.value if isinstance(desc, ast.Constant) else "",
                             tags if tags is not None else ("<not a literal>",), str(path.relative_to(root))))
    return out


def scan(root: Path = ROOT) -> list[MetricDef]:
    """Every ``sepsis_rl_*`` metric the code defines (first definition of each name)."""
    seen: dict[str, MetricDef] = {}
    for src in SOURCES:
        for f in sorted((root / src).rglob("*.py")):
            for m in scan_file(f, root):
                seen.setdefault(m.name, m)
    return sorted(seen.values(), key=lambda m: m.name)


def prometheus_name(m: MetricDef) -> str:
    base = f"ray_{m.name}"
    if m.kind == "Counter":
        return base if base.endswith("_total") else f"{base}_total"
    if m.kind == "Histogram":
        return f"{base}_bucket"
    return base


def series_of(m: MetricDef) -> set[str]:
    """The Prometheus series names Ray exports for a metric."""
    if m.kind == "Histogram":
        return {f"ray_{m.name}{s}" for s in ("_bucket", "_sum", "_count")}
    return {prometheus_name(m)}


def _targets(m: MetricDef) -> list[dict[str, Any]]:
    extra = [t for t in m.tag_keys if t != "run_id"]
    sel = '{run_id=~"$run_id"}'
    legend = " ".join(["{{run_id}}"] + [f"{t}={{{{{t}}}}}" for t in extra])
    by = ", ".join(["run_id", *extra])
    if m.kind == "Counter":
        return [{"expr": f"sum by ({by}) (rate({prometheus_name(m)}{sel}[$__rate_interval]))", "legendFormat": legend}]
    if m.kind == "Histogram":
        return [{"expr": f"histogram_quantile({q}, sum by ({by}, le) (rate({prometheus_name(m)}{sel}[$__rate_interval])))",
                 "legendFormat": f"p{int(q * 100)} {legend}"} for q in (0.5, 0.95)]
    return [{"expr": f"{prometheus_name(m)}{sel}", "legendFormat": legend}]


def _panel(m: MetricDef, pid: int, x: int, y: int) -> dict[str, Any]:
    unit = "s" if m.name.endswith(("_seconds", "_s")) and not m.name.endswith("per_s") else \
        "percentunit" if m.name.endswith("_rate") else "short"
    title = m.name.removeprefix("sepsis_rl_").replace("_", " ")
    if m.kind == "Counter":
        title += " (per s)"
    targets = [{**t, "refId": chr(ord("A") + i), "datasource": "${datasource}"} for i, t in enumerate(_targets(m))]
    return {"id": pid, "type": "timeseries", "title": title, "description": f"{m.description} ({m.name}, {m.file})",
            "datasource": "${datasource}", "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "targets": targets,
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}}}


def build(metrics: list[MetricDef]) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, pid = 0, 1
    sections: dict[str, list[MetricDef]] = {}
    for m in metrics:
        sections.setdefault(m.name.removeprefix("sepsis_rl_").split("_")[0], []).append(m)
    for key in sorted(sections, key=lambda k: (list(SECTIONS).index(k) if k in SECTIONS else 99, k)):
        panels.append({"id": pid, "type": "row", "title": SECTIONS.get(key, key), "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        for i, m in enumerate(sections[key]):
            panels.append(_panel(m, pid, 12 * (i % 2), y + 8 * (i // 2)))
            pid += 1
        y += 8 * ((len(sections[key]) + 1) // 2)
    return {
        "title": "sepsis-rl", "uid": "sepsis-rl", "tags": ["sepsis-rl", "ray"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 0, "current": {}},
            {"name": "run_id", "type": "query", "datasource": "${datasource}", "includeAll": True, "multi": True,
             "allValue": ".+", "refresh": 2, "current": {},
             "definition": "label_values({__name__=~\"ray_sepsis_rl_.+\"}, run_id)",
             "query": {"query": "label_values({__name__=~\"ray_sepsis_rl_.+\"}, run_id)", "refId": "run_id"}},
        ]},
        "panels": panels,
    }


def queried_metrics(dashboard: dict[str, Any]) -> dict[str, set[str]]:
    """Prometheus metric names each panel's queries use (``ray_sepsis_rl_*``), by panel title."""
    out: dict[str, set[str]] = {}
    for p in dashboard.get("panels", []):
        for t in p.get("targets", []):
            out.setdefault(p["title"], set()).update(PROM_NAME.findall(t.get("expr", "")))
    return out


def dashboard_problems(dashboard: dict[str, Any], metrics: list[MetricDef]) -> list[str]:
    """Panels query only defined metrics, every defined metric has a panel, and every metric carries run_id."""
    series = {s: m.name for m in metrics for s in series_of(m)}
    queried = queried_metrics(dashboard)
    out = [f"panel {title!r}: queries {name}, which no code defines"
           for title, names in queried.items() for name in sorted(names) if f"ray_{name}" not in series]
    shown = {series[f"ray_{n}"] for names in queried.values() for n in names if f"ray_{n}" in series}
    out += [f"{m.name} ({m.file}): no panel queries it" for m in metrics if m.name not in shown]
    out += [f"{m.name} ({m.file}): tag_keys {m.tag_keys} lack 'run_id'" for m in metrics if "run_id" not in m.tag_keys]
    out += [f"panel {p['title']!r}: query does not filter on run_id: {t.get('expr')}"
            for p in dashboard.get("panels", []) for t in p.get("targets", []) if 'run_id=~"$run_id"' not in t.get("expr", "")]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sepsis_rl.deploy.dashboard", description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help=f"write {DASHBOARD.relative_to(ROOT)} (else print)")
    args = p.parse_args(argv)
    text = json.dumps(build(scan()), indent=1) + "\n"
    if args.write:
        DASHBOARD.parent.mkdir(parents=True, exist_ok=True)
        DASHBOARD.write_text(text)
        print(f"wrote {DASHBOARD}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
