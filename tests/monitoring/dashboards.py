"""The Grafana dashboards in monitoring/dashboards/ as the tests read them: every panel's queries,
and the series names a PromQL expression selects."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parents[2] / "monitoring" / "dashboards"
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "inf", "nan"}
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def dashboards() -> dict[str, dict]:
    """{file stem: dashboard JSON}."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard stem, panel title, PromQL) for every target of every panel."""
    return [(stem, panel["title"], target["expr"]) for stem, board in dashboards().items()
            for panel in board["panels"] for target in panel.get("targets", [])]


def series_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels and durations left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        rest = text[match.end():].lstrip()
        if match.group() in _KEYWORDS or rest.startswith("("):
            continue
        names.add(match.group())
    return names


def grafana_query(expr: str, variables: dict[str, str]) -> str:
    """`expr` with Grafana's template variables replaced, as Grafana would send it."""
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    return expr
