"""The judge on windows built from known distributions: what passes, what fails, what is not judged."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.judge import Evidence, GateSpec, Judgement, Verdict, judge, worst
from serving.segments import ALL
from serving.sketch import LatencySketch, bucket_upper
from serving.telemetry import ArmStats, FieldStat, Window

LOG_GAMMA = math.log(bucket_upper(1))
P95 = GateSpec("latency_p95_ms", "latency", "maximum_regression_percent", 10.0, quantile=0.95)
ERRORS = GateSpec("error_rate", "error_rate", "maximum", 0.01)
SCHEMA = GateSpec("schema_validation_pass_rate", "schema_pass_rate", "minimum", 0.99)
POLICY = (P95, ERRORS, SCHEMA)


def sketch(rng: np.random.Generator, n: int, scale: float = 1.0, sigma: float = 0.5) -> LatencySketch:
    """``n`` lognormal latencies (median 50 ms × scale) in the Ingress's log buckets."""
    if n == 0:
        return LatencySketch()
    x = rng.lognormal(math.log(0.05 * scale), sigma, n)
    index, counts = np.unique(np.ceil(np.log(x) / LOG_GAMMA).astype(int), return_counts=True)
    return LatencySketch(dict(zip(index.tolist(), counts.tolist(), strict=True)), n, float(x.sum()))


def arm(
    rng: np.random.Generator,
    n: int,
    *,
    errors: float = 0.01,
    schema_failures: float = 0.001,
    scale: float = 1.0,
    sigma: float = 0.5,
) -> ArmStats:
    errs = int(rng.binomial(n, errors))
    contract = int(rng.binomial(n - errs, schema_failures))
    stats = ArmStats(requests=n, ok=n - errs - contract, errors=errs, contract_failures=contract)
    stats.latency = sketch(rng, n, scale, sigma)
    return stats


def window(
    stable: int = 200_000,
    candidate: int = 20_000,
    seed: int = 0,
    candidate_arm: str = "candidate",
    tenants: dict[str, float] | None = None,
    **candidate_kw: float,
) -> Window:
    """A window whose "all" segment is the sum of its tenants (each its share of the traffic)."""
    rng = np.random.default_rng(seed)
    w = Window(start=0.0, end=600.0)
    slow = candidate_kw.pop("slow_tenant_scale", 1.0)
    for name, share in (tenants or {"all": 1.0}).items():
        segment = ALL if name == "all" else ("tenant", name)
        kw = dict(candidate_kw)
        if name == "t0" and slow != 1.0:
            kw["scale"] = slow
        parts = {
            "stable": arm(rng, round(stable * share)),
            candidate_arm: arm(rng, round(candidate * share), **kw),
        }
        for arm_name, stats in parts.items():
            w.arms[(arm_name, segment)] = stats
            if segment != ALL:
                w.arm(arm_name, ALL).merge(stats)
    return w


def evidence(
    w: Window,
    live: bool = True,
    oom_events: dict[str, float] | None = None,
    gpu_memory_bytes: dict[str, float] | None = None,
) -> Evidence:
    ooms = {"stable": 0, "candidate": 0} if oom_events is None else oom_events
    restarts = {"stable": 0, "candidate": 0}
    return Evidence(w, live, ooms, restarts, gpu_memory_bytes or {})


def overall(j: Judgement, gate: str) -> Verdict:
    return next(r.verdict for r in j.results if r.gate == gate and r.segment == "all")


def test_an_identical_candidate_with_enough_data_passes_every_gate_and_is_promotable() -> None:
    j = judge(POLICY, evidence(window()))
    assert [overall(j, g.name) for g in POLICY] == [Verdict.PASS] * 3
    assert j.promotable and not j.rollback and j.worse == ()
    assert json.loads(json.dumps(j.to_dict(), allow_nan=False))["promotable"] is True


def test_a_candidate_fifty_percent_slower_fails_latency_and_rolls_back() -> None:
    j = judge(POLICY, evidence(window(candidate=5_000, scale=1.5)))
    assert overall(j, "latency_p95_ms") is Verdict.FAIL
    assert j.rollback and not j.promotable and j.verdict is Verdict.FAIL
    fail = j.failures()[0]
    assert fail.gate == "latency_p95_ms"
    assert fail.evidence["candidate"]["lower"] > 1.1 * fail.evidence["stable"]["upper"]
    assert "1.1 x stable's upper bound" in fail.evidence["rule"]


def test_latency_within_the_tolerance_never_fails() -> None:
    j = judge([P95], evidence(window(candidate=50_000, scale=1.05)))
    assert overall(j, "latency_p95_ms") in (Verdict.PASS, Verdict.INCONCLUSIVE)
    assert not j.rollback


def test_too_little_candidate_data_is_inconclusive_and_none_is_nodata() -> None:
    little = judge(POLICY, evidence(window(candidate=50)))
    assert {overall(little, g.name) for g in POLICY} == {Verdict.INCONCLUSIVE}
    none = judge(POLICY, evidence(window(candidate=0)))
    assert {overall(none, g.name) for g in POLICY} == {Verdict.NODATA}
    assert none.verdict is Verdict.NODATA and not none.promotable and not none.rollback
    assert judge([], evidence(window())).verdict is Verdict.NODATA


def test_stable_at_the_limit_promotes_an_identical_candidate_and_fails_a_tripled_error_rate() -> None:
    same = judge([ERRORS], evidence(window(candidate=6_000, errors=0.01)))
    assert overall(same, "error_rate") is Verdict.PASS and same.promotable
    worse = judge([ERRORS], evidence(window(candidate=3_000, errors=0.03)))
    assert overall(worse, "error_rate") is Verdict.FAIL


def test_a_stable_that_breaks_the_limit_itself_is_no_reason_to_roll_back() -> None:
    w = window(candidate=6_000, errors=0.03)
    for stats in (w.arms[("stable", ALL)],):
        stats.errors = round(0.03 * stats.requests)
        stats.ok = stats.requests - stats.errors - stats.contract_failures
    j = judge([ERRORS], evidence(w))
    assert overall(j, "error_rate") is Verdict.PASS and not j.rollback


def test_a_regression_in_one_segment_fails_there_and_is_named_in_worse() -> None:
    tenants = {f"t{i}": 0.1 for i in range(10)}
    j = judge(
        [P95], evidence(window(stable=300_000, candidate=30_000, tenants=tenants, slow_tenant_scale=1.5))
    )
    by_segment = {r.segment: r.verdict for r in j.results}
    assert by_segment["tenant=t0"] is Verdict.FAIL
    assert by_segment["all"] is not Verdict.FAIL
    assert all(v is not Verdict.FAIL for s, v in by_segment.items() if s != "tenant=t0")
    assert j.worse == ("tenant=t0",) and j.rollback and not j.promotable


def test_segments_get_their_share_of_the_budget() -> None:
    tenants = {"a": 0.5, "b": 0.5}
    j = judge(
        POLICY,
        evidence(window(tenants=tenants)),
        alpha=0.06,
        labels=["tenant", "tier"],
        max_values_per_label=8,
    )
    alphas = {(r.gate, r.segment): r.evidence["alpha"] for r in j.results}
    assert alphas[("error_rate", "all")] == pytest.approx(0.06 / 3 / 2)
    assert alphas[("error_rate", "tenant=a")] == pytest.approx(0.06 / 3 / 2 / (2 * 8))
    only_tier = judge(POLICY, evidence(window(tenants=tenants)), labels=["tier"])
    assert {r.segment for r in only_tier.results} == {"all"}


def test_a_label_with_more_values_than_budgeted_judges_the_busiest() -> None:
    tenants = {f"t{i}": share for i, share in enumerate([0.4, 0.3, 0.2, 0.1])}
    j = judge([ERRORS], evidence(window(tenants=tenants)), max_values_per_label=2)
    assert {r.segment for r in j.results} == {"all", "tenant=t0", "tenant=t1"}
    assert ("(segments)", "label 'tenant' has 4 values; judged the 2 busiest") in j.skipped


def test_a_shadow_stage_skips_latency_feedback_and_fallbacks_and_judges_the_shadow_arm() -> None:
    gates = [
        P95,
        ERRORS,
        GateSpec("review_score", "feedback", "minimum_delta", -0.05, key="review_score"),
        GateSpec("fallback_rate", "fallback_rate", "maximum", 0.01),
        GateSpec("shadow_agreement_rate", "shadow_agreement", "minimum", 0.9),
    ]
    w = window(candidate_arm="shadow", errors=0.05)
    w.shadow_in(ALL).compared, w.shadow_in(ALL).agreed = 20_000, 19_000
    j = judge(gates, evidence(w, live=False))
    assert {g for g, _ in j.skipped} == {"latency_p95_ms", "review_score", "fallback_rate"}
    assert overall(j, "error_rate") is Verdict.FAIL  # the shadow arm's 5% errors, against stable's 1%
    assert overall(j, "shadow_agreement_rate") is Verdict.PASS
    live = judge(gates[-1:], evidence(window()))
    assert live.skipped == (("shadow_agreement_rate", "no shadow pairs at a live stage"),)


def test_shadow_agreement_below_its_minimum_fails() -> None:
    w = window(candidate_arm="shadow")
    w.shadow_in(ALL).compared, w.shadow_in(ALL).agreed = 5_000, 4_000
    gate = GateSpec("shadow_agreement_rate", "shadow_agreement", "minimum", 0.9)
    assert overall(judge([gate], evidence(w, live=False)), gate.name) is Verdict.FAIL


def test_malformed_input_is_an_error_that_neither_rolls_back_nor_passes() -> None:
    w = window(candidate=5_000, scale=1.5)
    w.arms[("candidate", ALL)].errors = -1
    j = judge(POLICY, evidence(w))
    assert {overall(j, g.name) for g in POLICY} == {Verdict.ERROR}
    assert not j.rollback and not j.promotable and j.verdict is Verdict.ERROR
    w = window()
    w.arms[("stable", ALL)].latency.bins[-5] = 3  # counts no longer add up
    nan = replace(GateSpec("score", "field", "minimum_delta", -0.1, key="score"))
    w.arm("stable", ALL).fields["score"] = FieldStat(total=math.nan, count=3)
    w.arm("candidate", ALL).fields["score"] = FieldStat(total=1.0, count=3, total_sq=1.0)
    j = judge([P95, nan, ERRORS], evidence(w, oom_events={"candidate": math.nan}))
    assert overall(j, "latency_p95_ms") is Verdict.ERROR and overall(j, "score") is Verdict.ERROR
    assert overall(j, "error_rate") is Verdict.ERROR  # the stable arm's NaN field makes the arm malformed
    assert "cannot judge" in j.results[0].evidence["reason"]


@pytest.mark.parametrize(
    "gate",
    [
        GateSpec("error_rate", "error_rate", "minimum", 0.01),
        GateSpec("latency_p95_ms", "latency", "maximum_regression_percent", 10.0),  # no quantile
        GateSpec("score", "field", "minimum_delta", 0.0),  # no key
        GateSpec("gpu_oom_events", "oom_events", "minimum", 1.0),
    ],
)
def test_a_gate_the_judge_cannot_apply_is_an_error_everywhere(gate: GateSpec) -> None:
    j = judge([gate], evidence(window(tenants={"a": 1.0})))
    assert {r.verdict for r in j.results} == {Verdict.ERROR}


def test_ooms_fail_at_once_under_a_zero_maximum_and_only_when_worse_than_stable_above_it() -> None:
    zero = GateSpec("gpu_oom_events", "oom_events", "maximum", 0)
    three = replace(zero, threshold=3)
    w = window(candidate=10_000)  # 5% of the traffic on the candidate
    once = judge([zero], evidence(w, oom_events={"stable": 0, "candidate": 1}))
    assert once.rollback
    quiet = judge([zero, three], evidence(w, oom_events={"stable": 40, "candidate": 0}))
    assert overall(quiet, "gpu_oom_events") is Verdict.PASS
    as_often = judge(
        [three], evidence(w, oom_events={"stable": 100, "candidate": 5})
    )  # same rate per request
    assert overall(as_often, "gpu_oom_events") is not Verdict.FAIL
    five_fold = judge([three], evidence(w, oom_events={"stable": 100, "candidate": 25}))
    assert overall(five_fold, "gpu_oom_events") is Verdict.FAIL
    assert five_fold.results[0].evidence["rate_ratio"]["lower"] > 1.0
    early = judge([three], evidence(window(candidate=200), oom_events={"stable": 0, "candidate": 0}))
    assert overall(early, "gpu_oom_events") is Verdict.INCONCLUSIVE  # too little exposure to PASS
    unknown = judge([three], evidence(w, oom_events={}))
    assert overall(unknown, "gpu_oom_events") is Verdict.NODATA
    garbled = judge([zero], evidence(w, oom_events={"stable": 0, "candidate": math.nan}))
    assert overall(garbled, "gpu_oom_events") is Verdict.ERROR and not garbled.rollback


def test_gpu_memory_is_skipped_without_a_gpu_and_compared_as_measured_with_one() -> None:
    gate = GateSpec("gpu_memory", "gpu_memory_bytes", "maximum_regression_percent", 20.0)
    assert judge([gate], evidence(window())).skipped == (("gpu_memory", "no GPU memory reported (no GPU)"),)
    grown = judge([gate], evidence(window(), gpu_memory_bytes={"stable": 1e9, "candidate": 1.5e9}))
    assert overall(grown, "gpu_memory") is Verdict.FAIL
    same = judge([gate], evidence(window(), gpu_memory_bytes={"stable": 1e9, "candidate": 1.1e9}))
    assert overall(same, "gpu_memory") is Verdict.PASS
    half = judge([gate], evidence(window(), gpu_memory_bytes={"stable": 1e9}))
    assert overall(half, "gpu_memory") is Verdict.NODATA


def _with_means(w: Window, arm_name: str, *, field_mean: float, review_mean: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    stats = w.arm(arm_name, ALL)
    x = rng.normal(field_mean, 1.0, stats.requests)
    stats.fields["score"] = FieldStat(float(x.sum()), len(x), float((x * x).sum()))
    r = np.clip(rng.normal(review_mean, 0.1, stats.requests // 5), 0, 1)
    stats.feedback["review_score"] = FieldStat(float(r.sum()), len(r), float((r * r).sum()))


@pytest.mark.parametrize(("shift", "expected"), [(0.0, Verdict.PASS), (-0.2, Verdict.FAIL)])
def test_fields_and_feedback_are_judged_as_differences_of_means(shift: float, expected: Verdict) -> None:
    gates = [
        GateSpec("score", "field", "minimum_delta", -0.1, key="score"),
        GateSpec("review_score", "feedback", "minimum_delta", -0.05, key="review_score"),
    ]
    w = window(candidate=20_000)
    _with_means(w, "stable", field_mean=0.0, review_mean=0.8, seed=1)
    _with_means(w, "candidate", field_mean=shift, review_mean=0.8 + shift, seed=2)
    j = judge(gates, evidence(w))
    assert overall(j, "score") is expected and overall(j, "review_score") is expected


def test_feedback_outside_zero_one_is_an_error() -> None:
    w = window()
    for name in ("stable", "candidate"):
        w.arm(name, ALL).feedback["review_score"] = FieldStat(total=5.0, count=2, total_sq=13.0)
    gate = GateSpec("review_score", "feedback", "minimum_delta", -0.05, key="review_score")
    assert overall(judge([gate], evidence(w)), "review_score") is Verdict.ERROR


def test_worst_wins_in_the_documented_order() -> None:
    order = [Verdict.PASS, Verdict.INCONCLUSIVE, Verdict.NODATA, Verdict.ERROR, Verdict.FAIL]
    for i, v in enumerate(order):
        assert worst(order[: i + 1]) is v
        assert worst(reversed(order[: i + 1])) is v
    assert worst([]) is Verdict.NODATA


def test_a_timeout_rate_delta_gate_is_non_inferiority_of_the_difference() -> None:
    gate = GateSpec("timeout_rate", "timeout_rate", "maximum_delta", 0.005)
    w = window(candidate=20_000)
    for name, rate in (("stable", 0.01), ("candidate", 0.03)):
        stats = w.arm(name, ALL)
        stats.timeouts = round(rate * stats.requests)
        stats.ok -= stats.timeouts
    j = judge([gate], evidence(w))
    assert overall(j, "timeout_rate") is Verdict.FAIL
    assert "candidate - stable timeout rate" in j.results[0].evidence["rule"]


def test_repeated_looks_at_an_identical_candidate_do_not_roll_back() -> None:
    """A small A/A replay: 20 rollouts judged at 30 cumulative looks each never fail (the benchmark runs
    thousands; this guards the wiring of the budget into every gate)."""
    for seed in range(20):
        rng = np.random.default_rng(seed)
        w = Window()
        for _look in range(30):
            for name, n in (("stable", 1_900), ("candidate", 100)):
                w.arm(name, ALL).merge(arm(rng, n))
            assert not judge(POLICY, evidence(w)).rollback


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.lists(st.integers(-3, 50), min_size=7, max_size=7),
    total=st.floats(allow_nan=True, allow_infinity=True),
    bins=st.dictionaries(st.integers(-400, 400), st.integers(-2, 30), max_size=6),
    oom=st.one_of(st.none(), st.integers(-2, 5), st.floats(allow_nan=True)),
)
def test_the_judge_never_raises_and_never_fails_on_malformed_input(
    counts: list[int], total: float, bins: dict[int, int], oom: float | None
) -> None:
    w = window(stable=2_000, candidate=200)
    bad = w.arm("candidate", ALL)
    for name, value in zip(
        ("requests", "ok", "errors", "timeouts", "overloaded", "contract_failures", "fallbacks"),
        counts,
        strict=True,
    ):
        setattr(bad, name, value)
    bad.latency = LatencySketch(dict(bins), sum(bins.values()), 0.0)
    bad.fields["score"] = FieldStat(total=total, count=counts[0], total_sq=total)
    w.arm("stable", ALL).fields["score"] = FieldStat(total=1.0, count=10, total_sq=1.0)
    gates = [
        *POLICY,
        GateSpec("score", "field", "maximum", 1.0, key="score"),
        GateSpec("oom", "oom_events", "maximum", 0),
    ]
    j = judge(
        gates, evidence(w, oom_events={"stable": 0} if oom is None else {"stable": 0, "candidate": oom})
    )
    json.dumps(j.to_dict(), allow_nan=False)
    malformed = any(c < 0 for c in counts) or any(c > counts[0] for c in counts[1:])
    if malformed:
        assert all(r.verdict is Verdict.ERROR for r in j.results if r.gate != "oom")
