"""Latency sketches, per arm × segment stats and shadow comparisons: accuracy, exact merging, bounds."""

import random

import pytest

from serving.segments import ALL
from serving.sketch import RELATIVE_ACCURACY, LatencySketch
from serving.telemetry import ShadowStats, Window, population_stability_index


def test_every_quantile_is_within_one_percent_relative_error():
    rng = random.Random(4)
    values = sorted(rng.lognormvariate(-3, 1.2) for _ in range(50_000))
    sketch = LatencySketch()
    for v in values:
        sketch.add(v)
    for q in (0.01, 0.1, 0.5, 0.9, 0.95, 0.99, 0.999):
        true = values[int(q * (len(values) - 1))]
        assert abs(sketch.quantile(q) - true) / true <= RELATIVE_ACCURACY + 1e-9, q


def test_merging_sketches_equals_the_sketch_of_all_values():
    rng = random.Random(5)
    parts = [[rng.expovariate(20) for _ in range(3000)] for _ in range(4)]
    merged, whole = LatencySketch(), LatencySketch()
    for part in parts:
        s = LatencySketch()
        for v in part:
            s.add(v)
            whole.add(v)
        merged.merge(s)
    assert merged.bins == whole.bins and merged.count == whole.count
    assert LatencySketch.from_dict(merged.to_dict()).bins == merged.bins


def test_sketch_memory_is_bounded_whatever_the_values():
    sketch = LatencySketch()
    rng = random.Random(6)
    for _ in range(100_000):
        sketch.add(10 ** rng.uniform(-9, 6))  # far outside the clamp range on both sides
    assert len(sketch.bins) < 1200


def test_window_merge_is_exact_across_replicas():
    rng = random.Random(7)
    replicas = [Window() for _ in range(3)]
    whole = Window()
    for _ in range(3000):
        w = rng.choice(replicas)
        arm = rng.choice(["stable", "candidate"])
        status = rng.choice(["ok", "ok", "ok", "error", "timeout", "contract"])
        segment = ("tenant", rng.choice(["a", "b", "c"]))
        latency = rng.expovariate(50)
        for target in (w, whole):
            for seg in (ALL, segment):
                target.arm(arm, seg).record(status, latency, {"tokens": 3.0})
    merged = Window()
    for w in replicas:
        merged.merge(w)
    for key, stats in whole.arms.items():
        m = merged.arms[key]
        assert (m.requests, m.errors, m.timeouts, m.contract_failures) == (
            stats.requests,
            stats.errors,
            stats.timeouts,
            stats.contract_failures,
        )
        assert (
            m.latency.bins == stats.latency.bins and m.fields["tokens"].count == stats.fields["tokens"].count
        )


def test_arm_summary_rates_and_quantiles():
    w = Window()
    stats = w.arm("candidate")
    for i in range(100):
        stats.record("ok" if i < 90 else "error", 0.010 + i / 10_000, {"cited": float(i % 2)})
    summary = stats.summary()
    assert summary["requests"] == 100 and summary["error_rate"] == pytest.approx(0.1)
    assert summary["latency_ms"]["p50"] == pytest.approx(15.0, rel=0.02)
    assert summary["fields"]["cited"] == pytest.approx(0.5)


def test_shadow_comparison_agreement_confidence_difference_and_shift():
    shadow = ShadowStats()
    for i in range(100):
        stable = {"prediction": "legit", "confidence": 0.9}
        candidate = {"prediction": "legit" if i < 80 else "fraud", "confidence": 0.9 if i < 50 else 0.6}
        shadow.compare(stable, candidate)
    summary = shadow.summary()
    assert summary["agreement_rate"] == pytest.approx(0.8)
    assert summary["confidence_diff_mean"] == pytest.approx(0.15)
    assert summary["confidence_diff_p95"] == pytest.approx(0.3)
    assert summary["confidence_psi"] > 0.25  # half the mass moved: a significant shift


def test_psi_is_zero_for_identical_distributions_and_none_without_data():
    assert population_stability_index([5, 10, 5], [10, 20, 10]) == pytest.approx(0.0)
    assert population_stability_index([0, 0], [1, 2]) is None


def test_agreement_is_compared_always_and_confidence_only_when_both_are_numbers_in_0_1():
    shadow = ShadowStats()
    shadow.compare({"prediction": "a", "confidence": 0.9}, {"prediction": "a", "confidence": 0.7})
    for stable_confidence, candidate_confidence in [
        (None, 0.5),  # absent on one side
        ("high", 0.5),
        (float("nan"), 0.5),
        (0.5, float("inf")),
        (True, 0.5),
        (10**400, 0.5),  # too large for a float
        (0.5, 3.0),  # outside [0, 1]: not a probability
    ]:
        stable = (
            {"prediction": "a"}
            if stable_confidence is None
            else {"prediction": "a", "confidence": stable_confidence}
        )
        shadow.compare(stable, {"prediction": "b", "confidence": candidate_confidence})
    summary = shadow.summary()
    assert summary["compared"] == 8 and summary["agreement_rate"] == pytest.approx(1 / 8)
    assert summary["confidence_diff_mean"] == pytest.approx(0.2)  # over the one pair with both
    assert summary["confidence_diff_p95"] == pytest.approx(0.2)
    restored = Window.from_dict(_window_with(shadow).to_dict()).shadow_in(ALL)
    assert restored.summary() == summary


def _window_with(shadow: ShadowStats) -> Window:
    window = Window()
    window.shadow[ALL] = shadow
    return window
