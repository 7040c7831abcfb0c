"""The time-matched baseline: thinning keeps a stats cell consistent and its means, the matcher keeps both
arms in the ratio in every delta, and the judge compares the matched arms for comparative gates only."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import drift_sim
from rollout.gate_rules import is_relative
from rollout.judge import Evidence, GateSpec, judge
from rollout.matching import MATCHED_CANDIDATE, MATCHED_STABLE, RATIO, Matcher, shares, thin
from serving.segments import ALL
from serving.telemetry import ArmStats, Window

P95 = GateSpec("latency_p95_ms", "latency", "maximum_regression_percent", 10.0, quantile=0.95)
ERRORS = GateSpec("error_rate", "error_rate", "maximum", 0.01)


def cell(n: int, errors: int = 0, latency_s: float = 0.05, score: float | None = None) -> ArmStats:
    stats = ArmStats()
    for i in range(n):
        stats.record(
            "error" if i < errors else "ok", latency_s * (1 + (i % 7) / 10), {"amount": float(i % 5)}
        )
        if score is not None:
            stats.record_feedback("human_review_score", score)
    return stats


def test_shares_keep_ratio_to_one_and_nothing_without_both_arms() -> None:
    assert shares(5, 95, 3.0) == pytest.approx((15 / 95, 1.0))
    assert shares(50, 50, 3.0) == pytest.approx((1.0, 1 / 3))
    assert shares(0, 100, 3.0) == shares(100, 0, 3.0) == (0.0, 0.0)


def test_thinning_keeps_a_cell_consistent_and_its_means() -> None:
    stats = cell(2000, errors=200, score=0.7)
    stats.fallbacks = 150
    kept = thin(stats, 0.25, np.random.default_rng(3))
    counters = (kept.ok, kept.errors, kept.timeouts, kept.overloaded, kept.contract_failures)
    assert kept.requests == sum(counters) == kept.latency.count == sum(kept.latency.bins.values())
    assert 400 < kept.requests < 600 and 30 < kept.errors < 70 and kept.fallbacks <= kept.requests
    assert kept.latency.mean == pytest.approx(stats.latency.mean)
    assert kept.fields["amount"].mean == pytest.approx(stats.fields["amount"].mean)
    assert kept.feedback["human_review_score"].mean == pytest.approx(0.7)
    assert 400 < kept.feedback["human_review_score"].count < 600
    assert thin(stats, 1.0, np.random.default_rng(3)) is stats
    assert thin(stats, 0.0, np.random.default_rng(3)).requests == 0


def test_thinning_is_a_binomial_sample_on_average() -> None:
    rng, stats = np.random.default_rng(11), cell(100)
    kept = [thin(stats, 0.3, rng).requests for _ in range(2000)]
    assert np.mean(kept) == pytest.approx(30, abs=0.5)
    assert np.var(kept) == pytest.approx(100 * 0.3 * 0.7, rel=0.15)


def delta(stable: int, candidate: int, tier: bool = True) -> Window:
    w = Window()
    for arm, n in (("stable", stable), ("candidate", candidate)):
        if n:
            w.arms[(arm, ALL)] = cell(n)
            if tier:
                w.arms[(arm, ("tier", "gold"))] = cell(n)
    return w


def test_the_matcher_keeps_the_ratio_per_delta_and_thins_the_candidate_above_it() -> None:
    rng = np.random.default_rng(5)
    early, late = Window(), Window()
    matcher = Matcher(rng)
    for _ in range(200):
        matcher.add(delta(95, 5), (early,))  # a 5 % stage: stable sampled, the candidate whole
        matcher.add(delta(50, 50), (late,))  # a 50 % stage: stable whole, the candidate sampled
    assert early.arm(MATCHED_CANDIDATE).requests == 1000
    assert early.arm(MATCHED_STABLE).requests == pytest.approx(RATIO * 1000, rel=0.08)
    assert late.arm(MATCHED_STABLE).requests == 10_000
    assert late.arm(MATCHED_CANDIDATE).requests == pytest.approx(10_000 / RATIO, rel=0.08)
    assert early.arm(MATCHED_STABLE, ("tier", "gold")).requests == pytest.approx(3000, rel=0.08)
    assert ("stable", ALL) not in early.arms  # the whole arms are the caller's to merge


def test_the_matcher_adds_nothing_while_one_arm_is_silent() -> None:
    into = Window()
    matcher = Matcher(np.random.default_rng(0))
    matcher.add(delta(100, 0), (into,))  # a shadow stage, or a second without candidate requests
    matcher.add(delta(0, 100), (into,))  # the 100 % stage
    assert into.empty()
    assert matcher.feedback_arm("stable") is None


def test_feedback_follows_the_latest_share() -> None:
    matcher = Matcher(np.random.default_rng(2))
    matcher.add(delta(95, 5, tier=False), (Window(),))
    assert matcher.feedback_arm("candidate") == MATCHED_CANDIDATE
    kept = sum(matcher.feedback_arm("stable") == MATCHED_STABLE for _ in range(4000))
    assert kept / 4000 == pytest.approx(RATIO * 5 / 95, abs=0.02)


def drifted(regression_in_all: float) -> Window:
    """Whole arms that differ by drift (the candidate's answers came later, under more load), matched arms
    that do not."""
    w = Window()
    w.arms[("stable", ALL)] = cell(20_000, latency_s=0.050)
    w.arms[("candidate", ALL)] = cell(2_000, errors=60, latency_s=0.050 * regression_in_all)
    w.arms[(MATCHED_STABLE, ALL)] = cell(6_000, latency_s=0.060)
    w.arms[(MATCHED_CANDIDATE, ALL)] = cell(2_000, latency_s=0.061)
    return w


def test_matched_evidence_judges_comparative_gates_on_the_matched_arms_only() -> None:
    w = drifted(1.3)
    whole = judge([P95, ERRORS], Evidence(w, True, {}, {}, {}))
    matched = judge([P95, ERRORS], Evidence(w, True, {}, {}, {}, matched=True))
    verdicts = {(r.gate, r.segment): r for r in matched.results}
    assert {(r.gate, str(r.verdict)) for r in whole.results} == {
        ("latency_p95_ms", "FAIL"),
        ("error_rate", "FAIL"),
    }
    assert str(verdicts[("latency_p95_ms", "all")].verdict) == "PASS"
    assert verdicts[("latency_p95_ms", "all")].evidence["baseline"] == "matched"
    assert verdicts[("latency_p95_ms", "all")].evidence["stable"]["n"] == 6000
    # an absolute limit still judges every candidate answer (3 % errors against 1 %)
    assert str(verdicts[("error_rate", "all")].verdict) == "FAIL"
    assert "baseline" not in verdicts[("error_rate", "all")].evidence
    # at a shadow stage nothing is matched: the mirrored answers are stable's own requests
    shadow = Window()
    shadow.arms[("stable", ALL)], shadow.arms[("shadow", ALL)] = cell(3000), cell(3000, latency_s=0.08)
    assert judge([P95], Evidence(shadow, False, {}, {}, {}, matched=True)).results == ()


def test_which_rules_are_comparative() -> None:
    assert is_relative(P95) and not is_relative(ERRORS)
    assert is_relative(GateSpec("s", "schema_pass_rate", "minimum_delta", -0.005))
    assert is_relative(GateSpec("h", "feedback", "minimum_delta", -0.02, key="human_review_score"))
    assert not is_relative(GateSpec("f", "fallback_rate", "maximum", 0.01))
    assert not is_relative(GateSpec("o", "oom_events", "maximum", 0))


def test_a_drifting_load_rolls_back_a_tolerated_candidate_only_against_all_of_stable() -> None:
    """The tiny run of `benchmarks.drift_sim`: +5 % (10 % tolerated) while every latency rises 40 % over the
    rollout. (Seconds, CPU; no speed asserted.)"""
    scenario = next(s for s in drift_sim.SCENARIOS if s.regression == 1.05)
    out = drift_sim.run(scenario, seed=3)
    assert out["all"]["fail_s"] is not None
    assert out["matched"]["fail_s"] is None and out["matched"]["passed"]
    steady = drift_sim.run(drift_sim.Scenario("+20%", regression=1.2), seed=3, stage_s=120)
    assert steady["all"]["fail_s"] is not None and steady["matched"]["fail_s"] is not None
