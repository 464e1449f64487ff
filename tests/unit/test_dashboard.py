"""The shipped Grafana dashboard asks only for metrics the gateway exports."""

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from slurm_gateway.metrics import GatewayMetrics, StateCollector

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
# What Prometheus itself adds for every target.
PROMETHEUS_OWN = {"up"}
# PromQL words that are not metric names (functions are followed by "(").
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and"}
KEYWORDS |= {"or", "unless", "offset"}


SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}


def exported_names() -> set[str]:
    """Every sample name the gateway exports (``_bucket``, ``_count``, ``_total``...), with
    every optional part on, whether or not a labelled metric has samples yet."""
    metrics = GatewayMetrics()
    metrics.add_state(
        StateCollector(lambda: [], lambda: {"slurm": True, "accounting": True}, per_user=True)
    )
    text = metrics.exposition().decode()
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, [""])
    }


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression uses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # Grafana's label_values(METRIC, LABEL): the metric is PromQL, the label not.
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query["query"]))
    return exprs


def test_the_parser_finds_metric_names():
    expr = 'histogram_quantile(0.9, sum by (le) (rate(a_bucket{job=~"x"}[5m]))) > 0 or b'
    assert metric_names(expr) == {"a_bucket", "b"}


def test_every_dashboard_query_names_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exported = exported_names() | PROMETHEUS_OWN
    exprs = expressions(dashboard)
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, (expr, names - exported)
        used |= names
    # the dashboard shows each family of the gateway's own metrics
    for family in ("clusters", "workers", "cluster_failures", "slurm_command_duration"):
        assert any(name.startswith(f"slurm_gateway_{family}") for name in used), family
