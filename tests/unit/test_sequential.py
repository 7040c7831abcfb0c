"""Confidence-sequence primitives: exact where they claim to be, time-uniform coverage in simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout import sequential as seq

ALPHA = 0.05
RUNS, LOOKS = 200, 2000
SLACK = 0.03  # two standard errors of a miscoverage rate near 0.05 over 200 runs


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    log_pmf = (
        math.lgamma(n + 1)
        - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in k])
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )
    return np.exp(log_pmf)


@settings(max_examples=200, deadline=None)
@given(st.floats(0.01, 60.0), st.floats(8.0, 1e7))
def test_lgamma_and_digamma_match_the_standard_library(x: float, big: float) -> None:
    for v in (x, big):
        assert seq.lgamma(v) == pytest.approx(math.lgamma(v), abs=1e-7, rel=1e-12)
    h = 1e-4 * x
    numeric = (math.lgamma(x + h) - math.lgamma(x - h)) / (2 * h) if x > 2 * h else None
    if numeric is not None:
        assert seq.digamma(x) == pytest.approx(numeric, abs=1e-5)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 100_000),
    frac=st.floats(0.0, 1.0),
    alpha=st.sampled_from([0.2, 0.05, 1e-3, 1e-6]),
)
def test_beta_binomial_ends_are_exactly_where_the_mixture_crosses_one_over_alpha(
    n: int, frac: float, alpha: float
) -> None:
    s = round(frac * n)
    lower, upper = (float(v) for v in seq.beta_binomial_bounds(s, n, alpha))
    assert 0.0 <= lower <= s / n <= upper <= 1.0
    target = math.log(1 / alpha)
    for end in (lower, upper):
        if 1e-9 < end < 1 - 1e-9:
            assert seq.beta_binomial_log_mixture(s, n, end) == pytest.approx(target, abs=1e-6)
    # just inside each end the point is in the set, just outside it is not
    inside = [e + d for e, d in ((lower, 1e-7), (upper, -1e-7)) if 1e-6 < e < 1 - 1e-6]
    assert all(seq.beta_binomial_log_mixture(s, n, p) < target for p in inside if lower < p < upper)


@settings(max_examples=300, deadline=None)
@given(
    n=st.one_of(st.just(0.0), st.floats(1.0, 1e6)),
    frac=st.floats(0.0, 1.0),
    alpha=st.sampled_from([0.3, 0.05, 1e-4, 1e-9]),
    prior=st.sampled_from([seq.JEFFREYS, (1.0, 1.0), seq.quantile_prior(0.95)]),
)
def test_the_scalar_and_the_vectorised_solver_agree(
    n: float, frac: float, alpha: float, prior: tuple[float, float]
) -> None:
    one = seq.beta_binomial_cs(frac * n, n, alpha, prior)
    lower, upper = seq.beta_binomial_bounds([frac * n, 0.0], [n, 1.0], alpha, prior)
    assert one.lower == pytest.approx(float(lower[0]), abs=1e-9)
    assert one.upper == pytest.approx(float(upper[0]), abs=1e-9)


def test_quantile_ranks_are_the_same_whether_solved_or_remembered() -> None:
    ns = np.array([10, 1_000, 123_457, 10])
    first = seq.quantile_ranks(ns, 0.95, 1e-4)
    again = seq.quantile_ranks(ns[::-1], 0.95, 1e-4)
    assert first[0].tolist() == again[0][::-1].tolist() and first[1].tolist() == again[1][::-1].tolist()
    assert first[0][0] == first[0][3]


def test_beta_binomial_bounds_narrow_with_data_and_widen_with_confidence() -> None:
    widths = [seq.beta_binomial_cs(n // 100, n, ALPHA) for n in (100, 1000, 10_000)]
    assert [w.upper - w.lower for w in widths] == sorted((w.upper - w.lower for w in widths), reverse=True)
    strict, loose = seq.beta_binomial_cs(100, 10_000, 1e-6), seq.beta_binomial_cs(100, 10_000, ALPHA)
    assert strict.lower < loose.lower and strict.upper > loose.upper


def test_beta_binomial_is_uniform_over_time_where_a_repeated_fixed_interval_is_not() -> None:
    rng = np.random.default_rng(7)
    for p in (0.01, 0.3):
        draws = rng.random((RUNS, LOOKS)) < p
        s = np.cumsum(draws, axis=1).astype(float)
        n = np.broadcast_to(np.arange(1, LOOKS + 1, dtype=float), s.shape)
        lower, upper = seq.beta_binomial_bounds(s, n, ALPHA)
        missed = ((lower > p) | (upper < p)).any(axis=1).mean()
        assert missed <= ALPHA + SLACK, (p, missed)
        # the same data, judged each look with a 95% Wald interval from n = 30 on, misses far more often
        phat = s / n
        half = 1.96 * np.sqrt(phat * (1 - phat) / n)
        wald = ((np.abs(phat - p) > half) & (n >= 30)).any(axis=1).mean()
        assert wald > 2 * ALPHA, (p, wald)


def test_quantile_ranks_are_the_exact_acceptance_region_of_the_mixture() -> None:
    for q in (0.5, 0.95, 0.99):
        ns = np.array([1, 2, 7, 50, 333, 2000])
        lo, hi = seq.quantile_ranks(ns, q, 1e-3)
        for n, a, b in zip(ns, lo, hi, strict=True):
            accepted = [
                s
                for s in range(n + 1)
                if seq.beta_binomial_log_mixture(s, n, q, seq.quantile_prior(q)) < math.log(1e3)
            ]
            assert (a, b) == (accepted[0], accepted[-1])


def test_quantile_confidence_sequence_covers_the_true_quantile_at_every_look() -> None:
    rng = np.random.default_rng(11)
    looks = np.arange(1, LOOKS + 1)
    for q in (0.5, 0.95):
        lo, hi = seq.quantile_ranks(looks, q, ALPHA)
        # N(xi) = number of values at or below the true quantile: a Bernoulli(q) count
        counts = np.cumsum(rng.random((RUNS, LOOKS)) < q, axis=1)
        missed = ((counts < lo) | (counts > hi)).any(axis=1).mean()
        assert missed <= ALPHA + SLACK, (q, missed)


def test_quantile_interval_reads_bounds_off_histogram_edges() -> None:
    rng = np.random.default_rng(3)
    values = np.sort(rng.lognormal(0.0, 0.5, 20_000))
    edges = np.quantile(values, np.linspace(0.001, 1.0, 1000))
    cumulative = np.searchsorted(values, edges, side="right").tolist()
    ci = seq.quantile_cs(edges.tolist(), cumulative, 0.95, ALPHA)
    truth = math.exp(1.6448536 * 0.5)
    assert ci.lower < truth < ci.upper
    assert ci.upper / ci.lower < 1.1
    empty = seq.quantile_cs([], [], 0.95, ALPHA)
    assert (empty.lower, empty.upper, empty.estimate) == (0.0, math.inf, None)


def test_asymptotic_mean_sequence_covers_at_every_look() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(3.0, 2.0, (RUNS, LOOKS))
    n = np.arange(1, LOOKS + 1, dtype=float)
    total, total_sq = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    mean = total / n
    sd = np.sqrt(np.maximum(total_sq - total * total / n, 0) / np.maximum(n - 1, 1))
    radius = np.array([seq.normal_mixture_radius(k, ALPHA) for k in n])
    looks = n >= 30  # an asymptotic sequence: judged once the variance estimate means something
    missed = ((np.abs(mean - 3.0) > sd * radius) & looks).any(axis=1).mean()
    assert missed <= ALPHA + SLACK
    one = seq.asymptotic_mean_cs(float(total[0, -1]), float(total_sq[0, -1]), LOOKS, ALPHA)
    assert one.lower == pytest.approx(mean[0, -1] - sd[0, -1] * radius[-1])


def test_bounded_mean_is_valid_at_small_n_and_adapts_to_a_small_variance() -> None:
    rng = np.random.default_rng(9)
    misses = 0
    for _ in range(RUNS):
        x = rng.beta(8, 2, 400)  # mean 0.8, sd 0.12
        s = np.cumsum(x)
        ss = np.cumsum(x * x)
        lo, hi = seq.beta_binomial_bounds(s, np.arange(1, 401), ALPHA / 2)
        for k in (1, 5, 50, 400):
            exact = seq.Interval(k, None, float(lo[k - 1]), float(hi[k - 1]))
            ci = seq.bounded_mean_cs(float(s[k - 1]), float(ss[k - 1]), k, ALPHA, exact)
            misses += not ci.lower <= 0.8 <= ci.upper
            assert exact.lower <= ci.lower <= ci.upper <= exact.upper
    assert misses / RUNS <= ALPHA + SLACK
    assert ci.upper - ci.lower < 0.5 * (exact.upper - exact.lower)  # the variance is 1/10 of Bernoulli's


def test_rate_ratio_separates_a_five_fold_rate_from_an_equal_one() -> None:
    rng = np.random.default_rng(2)
    exposure_c, exposure_s = 5_000.0, 95_000.0
    equal = [
        seq.rate_ratio_cs(
            int(rng.poisson(exposure_c * 1e-3)),
            int(rng.poisson(exposure_s * 1e-3)),
            exposure_c,
            exposure_s,
            ALPHA,
        )
        for _ in range(RUNS)
    ]
    assert sum(not r.lower <= 1.0 <= r.upper for r in equal) / RUNS <= ALPHA + SLACK
    worse = seq.rate_ratio_cs(25, 95, exposure_c, exposure_s, ALPHA)
    assert worse.lower > 1.0 and worse.estimate == pytest.approx(5.0)
    assert seq.rate_ratio_cs(0, 0, exposure_c, exposure_s, ALPHA).upper == math.inf


@pytest.mark.parametrize("p0", [0.001, 0.05, 0.5])
@pytest.mark.parametrize("n", [10, 200, 2000])
def test_bernoulli_evalue_has_expectation_at_most_one_under_the_null(p0: float, n: int) -> None:
    for p in (p0, p0 / 2):  # the null is composite: every mean at or below p0
        pmf = _binomial_pmf(n, p)
        expectation = sum(w * seq.bernoulli_evalue_above(k, n, p0) for k, w in enumerate(pmf))
        assert expectation <= 1.0 + 1e-9
    assert seq.bernoulli_evalue_above(n * min(1.0, 3 * p0 + 0.05), n, p0) > 1.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1e6), max_size=40), st.sampled_from([0.05, 0.1]))
def test_e_bh_rejects_the_largest_evalues_passing_its_threshold(evalues: list[float], alpha: float) -> None:
    rejected = seq.e_bh(evalues, alpha)
    m, k = len(evalues), len(rejected)
    if k:
        assert min(evalues[i] for i in rejected) >= m / (alpha * k)
        assert all(evalues[i] <= min(evalues[j] for j in rejected) for i in set(range(m)) - set(rejected))
    assert all(e < m / alpha for e in evalues) or k > 0  # anything past m / alpha is always rejected


def test_gaussian_evalue_grows_with_the_excess() -> None:
    values = [seq.gaussian_evalue_above(x, 0.1, 100.0) for x in (0.0, 0.1, 0.3, 0.6)]
    assert values[0] == 0.0 and values[1] < values[2] < values[3]
    assert values[3] > 1 / ALPHA
