"""Prometheus text for `GET /metrics`, rendered with prometheus_client from the controller's merged state.

One scrape target for the whole application: the numbers are merged across Ingress and model replicas
before they are rendered, so series are per arm (and per capped segment), never per replica, except the GPU
gauges, which are per replica by nature. Ray's own ``ray_serve_*`` metrics stay where Ray exports them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from serving.segments import ALL
from serving.sketch import bucket_value
from serving.telemetry import Window

# Geometric bucket bounds, ratio 1.25, 0.5 ms .. ~55 s: histogram_quantile over them stays within ~12 % of
# the sketch's quantile, which itself is within 1 %.
LATENCY_BUCKETS: tuple[float, ...] = tuple(0.0005 * 1.25**i for i in range(53))
ARMS = ("stable", "candidate", "shadow")


def _latency_buckets(bins: dict[int, int]) -> list[tuple[str, float]]:
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    for index, n in bins.items():
        value = bucket_value(index)
        slot = next((i for i, le in enumerate(LATENCY_BUCKETS) if value <= le), len(LATENCY_BUCKETS))
        counts[slot] += n
    out, running = [], 0
    for le, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
        running += n
        out.append(("+Inf" if le == float("inf") else f"{le:.6g}", float(running)))
    return out


class SnapshotCollector(Collector):
    """Yields every canary series from one merged `Window` plus the rollout and replica state."""

    def __init__(
        self,
        app: str,
        window: Window,
        rollout: dict[str, Any],
        replicas: list[dict[str, Any]],
        per_arm: dict[str, dict[str, int]],
        verdicts: list[dict[str, Any]] | None = None,
        current: Window | None = None,
    ) -> None:
        """``window``: everything since the controller started, for the counters and the histogram (they
        must only grow); ``current``: the current rollout's, for the gauges (p95, means, agreement, PSI), so
        they describe this candidate, not a blend of every candidate since start-up (``window`` if None)."""
        self.app, self.window, self.rollout, self.replicas = app, window, rollout, replicas
        self.current = current if current is not None else window
        self.per_arm = per_arm  # {"oom_events": {arm: n}, "restarts": {arm: n}}, cumulative
        self.verdicts = verdicts or []

    def render(self) -> bytes:
        """The Prometheus text exposition of this state (a fresh registry per call)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)

    def collect(self) -> Iterator[Metric]:
        app, w = self.app, self.window
        seg = ["app", "arm", "segment", "value"]

        requests = CounterMetricFamily(
            "canary_requests", "Requests per arm, segment and outcome.", labels=[*seg, "outcome"]
        )
        fallbacks = CounterMetricFamily(
            "canary_fallbacks", "Candidate failures answered by stable.", labels=seg
        )
        latency_p95 = GaugeMetricFamily(
            "canary_latency_p95_seconds", "p95 latency per arm and segment (sketch, 1%).", labels=seg
        )
        fields = GaugeMetricFamily(
            "canary_answer_field_mean", "Mean (or rate) of an extracted answer field.", labels=[*seg, "field"]
        )
        feedback = CounterMetricFamily(
            "canary_feedback", "POST /feedback values counted (stored once each).", labels=[*seg, "metric"]
        )
        feedback_mean = GaugeMetricFamily(
            "canary_feedback_mean", "Mean of the feedback values counted.", labels=[*seg, "metric"]
        )
        for (arm, (label, value)), st in sorted(w.arms.items()):
            labels = [app, arm, label, value]
            for outcome, n in (
                ("ok", st.ok),
                ("error", st.errors),
                ("timeout", st.timeouts),
                ("overloaded", st.overloaded),
                ("contract_violation", st.contract_failures),
            ):
                requests.add_metric([*labels, outcome], n)
            if arm == "candidate":
                fallbacks.add_metric(labels, st.fallbacks)
            for name, stat in sorted(st.feedback.items()):
                feedback.add_metric([*labels, name], stat.count)
        for (arm, (label, value)), st in sorted(self.current.arms.items()):
            if arm not in ARMS:  # the time-matched samples are the judge's, not series of their own
                continue
            labels = [app, arm, label, value]
            p95 = st.latency.quantile(0.95)
            if p95 is not None:
                latency_p95.add_metric(labels, p95)
            for name, stat in st.fields.items():
                if stat.mean is not None:
                    fields.add_metric([*labels, name], stat.mean)
            for name, stat in sorted(st.feedback.items()):
                if stat.mean is not None:
                    feedback_mean.add_metric([*labels, name], stat.mean)
        yield from (requests, fallbacks, latency_p95, fields, feedback, feedback_mean)

        latency = HistogramMetricFamily(
            "canary_request_latency_seconds",
            "Model call latency seen by the Ingress, per arm.",
            labels=["app", "arm"],
        )
        for arm in ARMS:
            st = w.arms.get((arm, ALL))
            if st is not None and st.latency.count:
                latency.add_metric([app, arm], _latency_buckets(st.latency.bins), st.latency.total)
        yield latency

        shadow = CounterMetricFamily(
            "canary_shadow", "Mirrored requests by result.", labels=["app", "result"]
        )
        sh, now = w.shadow.get(ALL), self.current.shadow.get(ALL)
        agreement = GaugeMetricFamily(
            "canary_shadow_agreement_ratio",
            "Share of mirrored pairs with the same prediction.",
            labels=["app", "segment", "value"],
        )
        psi = GaugeMetricFamily(
            "canary_shadow_confidence_psi",
            "Population stability index of candidate vs stable confidence.",
            labels=["app"],
        )
        if sh is not None:
            for result in ("mirrored", "completed", "dropped", "timed_out", "failed"):
                shadow.add_metric([app, result], getattr(sh, result))
        if now is not None and now.psi() is not None:
            psi.add_metric([app], now.psi())  # type: ignore[arg-type]
        for (label, value), s in sorted(self.current.shadow.items()):
            if s.agreement_rate is not None:
                agreement.add_metric([app, label, value], s.agreement_rate)
        yield from (shadow, agreement, psi)

        r = self.rollout
        yield _gauge(
            "canary_candidate_weight_percent",
            "Percent of live traffic on the candidate.",
            app,
            r.get("candidate_weight"),
        )
        yield _gauge(
            "canary_shadow_percent",
            "Percent of stable's traffic mirrored to the candidate.",
            app,
            r.get("shadow_percent"),
        )
        stage = GaugeMetricFamily(
            "canary_stage_info", "The rollout's current stage and mode.", labels=["app", "stage", "mode"]
        )
        stage.add_metric([app, str(r.get("stage", "")), str(r.get("mode", ""))], 1)
        yield stage
        gates = GaugeMetricFamily(
            "canary_gate_verdict",
            "1 for each gate's current verdict, per segment judged ('all' is the whole traffic).",
            labels=["app", "gate", "segment", "verdict"],
        )
        for v in self.verdicts:
            gates.add_metric([app, str(v["gate"]), str(v.get("segment", "all")), str(v["verdict"])], 1)
        yield gates

        yield from self._replica_metrics(app)

    def _replica_metrics(self, app: str) -> Iterator[Metric]:
        labels = ["app", "arm", "replica", "gpu"]
        used = GaugeMetricFamily(
            "canary_gpu_memory_used_bytes", "Device memory used on the replica's GPU.", labels=labels
        )
        total = GaugeMetricFamily(
            "canary_gpu_memory_total_bytes", "Device memory of the replica's GPU.", labels=labels
        )
        proc = GaugeMetricFamily(
            "canary_gpu_process_memory_bytes", "GPU memory of the replica's own process.", labels=labels
        )
        util = GaugeMetricFamily("canary_gpu_utilization_ratio", "GPU utilisation, 0–1.", labels=labels)
        ooms = CounterMetricFamily(
            "canary_gpu_oom_events", "CUDA out-of-memory events in the batch path.", labels=["app", "arm"]
        )
        for rep in self.replicas:
            arm, replica = rep["arm"], rep["replica_id"]
            for g in rep.get("gpus") or []:
                lab = [app, arm, replica, str(g["index"])]
                used.add_metric(lab, g["memory_used_bytes"])
                total.add_metric(lab, g["memory_total_bytes"])
                if g.get("process_memory_bytes") is not None:
                    proc.add_metric(lab, g["process_memory_bytes"])
                if g.get("utilization_ratio") is not None:
                    util.add_metric(lab, g["utilization_ratio"])
        for arm in ("stable", "candidate"):
            ooms.add_metric([app, arm], self.per_arm.get("oom_events", {}).get(arm, 0))
        restarts = CounterMetricFamily(
            "canary_replica_restarts",
            "Model replicas replaced (crash, failed health check) per arm.",
            labels=["app", "arm"],
        )
        for arm in ("stable", "candidate"):
            restarts.add_metric([app, arm], self.per_arm.get("restarts", {}).get(arm, 0))
        yield from (used, total, proc, util, ooms, restarts)


def _gauge(name: str, doc: str, app: str, value: Any) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["app"])
    if value is not None:
        g.add_metric([app], float(value))
    return g
