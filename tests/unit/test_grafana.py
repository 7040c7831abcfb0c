"""configs/grafana/canary.json imports into Grafana and queries only series that GET /metrics exposes."""

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollout.metrics import SnapshotCollector
from rollout.state import TelemetryState
from serving.telemetry import Window

DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana" / "canary.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "or", "and", "unless", "bool"}


def exprs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from exprs(value)


def series_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers before a selector's `{` or a range's `[`."""
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr)) - PROMQL_WORDS


def exposed() -> dict[str, set[str]]:
    """Every sample name /metrics renders for a state where each family has data, with its label names."""
    state = TelemetryState()
    w = Window()
    for arm in ("stable", "candidate", "shadow"):
        for status in ("ok", "error", "timeout", "overloaded", "contract"):
            w.arm(arm).record(status, 0.02, {"usage.completion_tokens": 12})
            w.arm(arm, ("tier", "gold")).record(status, 0.02, {"usage.completion_tokens": 12})
    w.arm("candidate").fallbacks = 1
    w.shadow_in().mirrored = w.shadow_in().completed = 1
    w.shadow_in().compare({"prediction": 1, "confidence": 0.9}, {"prediction": 1, "confidence": 0.8})
    state.ingest("i1", w, 0, now=0)
    gpu = {
        "index": 0,
        "name": "H100",
        "memory_used_bytes": 5,
        "memory_total_bytes": 10,
        "utilization_ratio": 0.5,
        "process_memory_bytes": 3,
    }
    state.report_replica("candidate", "r1", {"oom_events": 1, "gpus": [gpu]}, now=0)
    text = SnapshotCollector(
        "canary",
        state.total,
        {"candidate_weight": 5, "shadow_percent": 10, "stage": "canary", "mode": "auto"},
        state.replica_reports(),
        state.per_arm(),
        [{"gate": "latency_p95_ms", "segment": "all", "verdict": "PASS"}],
    ).render()
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def test_the_dashboard_is_importable(dashboard):
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"DS_PROMETHEUS", "app"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}" and target["expr"].strip()
            # selectors and parentheses balance, so Grafana can parse the query
            for a, b in ("{}", "()", "[]"):
                assert target["expr"].count(a) == target["expr"].count(b), target["expr"]


def test_every_query_uses_series_and_labels_that_metrics_exposes(dashboard):
    names = exposed()
    queries = list(exprs(dashboard))
    assert len(queries) >= 20
    for expr in queries:
        used = series_names(expr)
        assert used, expr
        for name in used:
            assert name in names, f"{name} (in {expr!r}) is not exposed by /metrics"
        for selector in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
            labels = set(re.findall(r"([a-zA-Z_]+)\s*(?:=~|!=|=)", selector[1]))
            assert labels <= names[selector[0]], (selector, names[selector[0]])


def test_stable_and_candidate_are_side_by_side_in_the_latency_panels(dashboard):
    latency = [p for p in dashboard["panels"] if "latency by arm" in p["title"]]
    assert [p["title"][:3] for p in latency] == ["p50", "p95", "p99"]
    for panel in latency:
        assert "by (le, arm)" in panel["targets"][0]["expr"]
        colors = {o["matcher"]["options"] for o in panel["fieldConfig"]["overrides"]}
        assert {"^stable.*", "^candidate.*"} <= colors
