"""The ``purger_*`` metric names that the Grafana dashboard and the alert rules query.

``referenced_metric_names()`` reads the files of the chart by path (relative to this file),
needs neither helm nor a cluster, and returns base names as a scrape exports them: counters with
their ``_total`` suffix, histograms without ``_bucket`` / ``_sum`` / ``_count``. An integration
test compares this set with what the running service exports on ``/metrics``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "purger"
DASHBOARD = CHART / "dashboards" / "purger.json"
RULES_TEMPLATE = CHART / "templates" / "prometheusrule.yaml"

# A metric name as PromQL writes it: not preceded by a name character or a quote-free label
# position, i.e. a whole identifier that starts with purger_.
_METRIC = re.compile(r"(?<![A-Za-z0-9_:.\"'])purger_[A-Za-z0-9_:]*[A-Za-z0-9_]")
# Inside label matchers ({outcome="purger_x"}) and strings, names are values, not metrics.
_QUOTED = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def base_name(sample_name: str) -> str:
    """A histogram's sample name to its base name; any other name as it is."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name.removesuffix(suffix)
    return sample_name


def metric_names_in(expr: str) -> set[str]:
    """The ``purger_*`` metric base names a PromQL expression queries."""
    unquoted = _QUOTED.sub('""', expr)
    return {base_name(m) for m in _METRIC.findall(unquoted)}


def _walk_exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _walk_exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_exprs(item)


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    """Every PromQL query of the dashboard: panel targets and template variables."""
    return list(_walk_exprs(json.loads(path.read_text(encoding="utf-8"))))


def alert_exprs(path: Path = RULES_TEMPLATE) -> list[str]:
    """The ``expr`` blocks of the PrometheusRule template (read as text, without helm).

    An expression starts at an ``expr:`` key and runs over the lines indented deeper than it.
    """
    exprs: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        if not match:
            i += 1
            continue
        indent = len(match.group(1))
        body = [match.group(2)] if match.group(2) not in ("|", "|-", ">", ">-") else []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i].strip())
            i += 1
        exprs.append("\n".join(body))
    return exprs


def names_in(exprs: Iterable[str]) -> set[str]:
    names: set[str] = set()
    for expr in exprs:
        names |= metric_names_in(expr)
    return names


def referenced_metric_names() -> set[str]:
    """Every ``purger_*`` metric the dashboard or the alert rules reference (base names)."""
    return names_in(dashboard_exprs()) | names_in(alert_exprs())
