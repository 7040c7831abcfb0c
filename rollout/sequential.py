"""Anytime-valid confidence sequences and e-values: the statistics under the judge. Pure math, no state.

The judge looks at cumulative data about once a second, so every bound here holds *uniformly over time*:
with probability at least ``1 - alpha`` the true value lies inside the interval at every look, however
many looks there are (Ville's inequality applied to a nonnegative (super)martingale). A fixed-horizon
interval recomputed every second would not: its error rate grows with the number of looks.

The primitives, each with its source:

- `beta_binomial_bounds`: the conjugate beta-binomial mixture confidence sequence for a proportion (Robbins
  1970; Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
  sequences", Ann. Statist. 2021, Sec. 3). Exact for Bernoulli data; by convexity of ``x -> a**x b**(1-x)``
  it also holds for any observations in [0, 1] ("sub-Bernoulli"), with their sum in place of the number of
  successes.
- `quantile_ranks` / `quantile_cs`: a quantile's confidence sequence from the same mixture applied to the
  single Bernoulli process ``1{X_i <= q-quantile}`` (Howard & Ramdas, "Sequential estimation of quantiles
  with applications to A/B-testing and best-arm identification", Bernoulli 2022), read off histogram edges.
- `asymptotic_mean_cs`: the asymptotic confidence sequence for a mean with the empirical variance
  (Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit theory and asymptotic
  confidence sequences", 2021, Thm 2.2, the Robbins normal-mixture boundary).
- `bounded_mean_bounds`: for [0, 1]-bounded means, the intersection of the two above (each at ``alpha/2``):
  exact validity from the first, adaptation to a small variance from the second.
- `rate_ratio_cs`: the sequential count test of Lindon & Malek ("Anytime-valid inference for multinomial
  count data", NeurIPS 2022): two Poisson processes compared through the candidate's share of all events,
  which given the total is binomial with the candidate's exposure share when the rates are equal.
- `bernoulli_evalue_above`, `gaussian_evalue_above`, `e_bh`: one-sided e-values and the e-BH procedure
  (Wang & Ramdas, "False discovery rate control with e-values", JRSS-B 2022) for naming worse segments.

The root-finding functions take arrays, so the judge solves all segments of a gate in one pass.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

JEFFREYS = (0.5, 0.5)
"""Beta(1/2, 1/2): the default mixing prior; its density is high near 0 and 1, where error rates live."""

_NEWTON_STEPS = 60
_EVALUE_GRID = tuple(0.02 * 2 ** (k / 2) for k in range(20))  # log-odds steps above p0: 0.02 ... 14.5
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
_LOG_E_CAP = 700.0  # e-values are capped at e^700 to stay finite


class Interval(NamedTuple):
    """A confidence-sequence interval at the current look: ``lower <= value <= upper``.

    ``estimate`` is the point estimate (None without data); ``upper`` may be ``math.inf`` when the data
    cannot yet bound the value from above. (A named tuple: the judge makes thousands a second.)
    """

    n: float
    estimate: float | None
    lower: float
    upper: float


def _shifted(x: npt.ArrayLike) -> tuple[tuple[int, ...], npt.NDArray[np.intp], Array, Array]:
    """Flattens ``x`` and shifts its values below 8 up by 8, for the recurrences of `lgamma` and `digamma`:
    (original shape, indices shifted, their original values, the shifted array)."""
    flat = np.asarray(x, dtype=np.float64)
    shape, flat = flat.shape, flat.ravel()
    small = np.flatnonzero(flat < 8.0)
    xs = flat[small]
    y = flat
    if len(small):
        y = flat.copy()
        y[small] = xs + 8.0
    return shape, small, xs, y


def lgamma(x: npt.ArrayLike) -> Array:
    """``log Gamma(x)`` for ``x > 0``, elementwise: values below 8 shifted up by the recurrence, then
    Stirling's series (error within a few ulps of the result). The judge calls it on small arrays, so it
    keeps the number of numpy operations low rather than the number of flops."""
    shape, small, xs, y = _shifted(x)
    inv = 1.0 / y
    inv2 = inv * inv
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 / 1680)))
    result: Array = (y - 0.5) * np.log(y) - y + _HALF_LOG_2PI + series
    if len(small):
        result[small] -= np.log(
            xs * (xs + 1) * (xs + 2) * (xs + 3) * (xs + 4) * (xs + 5) * (xs + 6) * (xs + 7)
        )
    return result.reshape(shape)


def digamma(x: npt.ArrayLike) -> Array:
    """``psi(x)`` for ``x > 0``, elementwise: values below 8 shifted up by the recurrence, then the
    asymptotic series."""
    shape, small, xs, y = _shifted(x)
    inv2 = 1.0 / (y * y)
    result: Array = np.log(y) - 0.5 / y - inv2 * (1 / 12 - inv2 * (1 / 120 - inv2 / 252))
    if len(small):
        result[small] -= (
            1 / xs + 1 / (xs + 1) + 1 / (xs + 2) + 1 / (xs + 3) + 1 / (xs + 4) + 1 / (xs + 5) + 1 / (xs + 6)
        ) + 1 / (xs + 7)
    return result.reshape(shape)


def beta_binomial_log_mixture(
    successes: float, trials: float, p: float, prior: tuple[float, float] = JEFFREYS
) -> float:
    """``log M_t(p)``: the log of the beta-mixture likelihood ratio against the point ``p`` after ``trials``
    observations summing to ``successes``. Under ``p`` it is a nonnegative martingale with initial value 1,
    so ``P(sup_t M_t(p) >= 1/alpha) <= alpha`` (Ville).

    Example:
        >>> beta_binomial_log_mixture(50, 100, 0.5) < 0 < beta_binomial_log_mixture(90, 100, 0.5)
        True
    """
    a, b = prior
    mix = _log_beta(a + successes, b + trials - successes) - _log_beta(a, b)
    return mix - _xlogy(successes, p) - _xlogy(trials - successes, 1.0 - p)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _xlogy(x: float, y: float) -> float:
    if x == 0:
        return 0.0
    return -math.inf if y <= 0 else x * math.log(y)


def beta_binomial_bounds(
    successes: npt.ArrayLike,
    trials: npt.ArrayLike,
    alpha: npt.ArrayLike,
    prior: tuple[float, float] = JEFFREYS,
) -> tuple[Array, Array]:
    """The beta-binomial mixture confidence sequence ``{p : M_t(p) < 1/alpha}``, elementwise.

    The set is an interval because ``log M_t(p)`` is convex in ``p``. Its ends solve ``S log p + (n - S)
    log(1 - p) = log B(a + S, b + n - S) - log B(a, b) - log(1/alpha)``; Newton's method on that concave
    function in log coordinates converges monotonically from outside, so it needs no bracketing.

    Args:
        successes: number (or sum, for [0, 1]-valued observations) of successes, ``0 <= S <= trials``.
        trials: number of observations (``[0, 1]`` is returned where it is 0).
        alpha: miscoverage allowed over all looks together.
        prior: the Beta(a, b) mixing distribution (fixed in advance; any choice is valid).

    Returns:
        ``(lower, upper)`` arrays.
    """
    s, n, al = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (successes, trials, alpha)))
    shape, s, n, al = s.shape, s.ravel(), n.ravel(), al.ravel()
    a, b = prior
    k = len(n)
    empty = n <= 0
    n = np.where(empty, 1.0, n)
    s = np.where(empty, 0.0, np.clip(s, 0.0, n))
    lg = lgamma(np.concatenate([a + s, b + n - s, a + b + n]))  # one call: the arrays are small
    c = lg[:k] + lg[k : 2 * k] - lg[2 * k :] - _log_beta(a, b) + np.log(al)
    # both ends at once: the upper end of p is 1 - the lower end for the failures
    ends = _lower_roots(np.concatenate([s, n - s]), np.concatenate([n, n]), np.concatenate([c, c]))
    lower, upper = np.where(empty, 0.0, ends[:k]), np.where(empty, 1.0, 1.0 - ends[k:])
    return lower.reshape(shape), upper.reshape(shape)


def _lower_roots(s: Array, n: Array, c: Array) -> Array:
    """The smallest p with ``s log p + (n - s) log(1 - p) >= c``, elementwise (0 where s == 0)."""
    f = n - s
    regular = (s > 0) & (f > 0)
    # placeholders where the root is known in closed form keep the arithmetic finite
    p_hat = np.where(regular, s / n, 0.5)
    ss, ff, cc = np.where(regular, s, 1.0), np.where(regular, f, 1.0), np.where(regular, c, -10.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # p_hat within 1e-16 of 1, subnormals
        gap = np.maximum(ss * np.log(p_hat) + ff * np.log1p(-p_hat) - cc, 0.0)  # > 0: p_hat is inside
        radius = np.sqrt(2.0 * gap * p_hat * (1.0 - p_hat) / n)
        v = np.log(np.maximum(np.maximum(p_hat - radius, p_hat * 1e-3), 1e-300))
        for _ in range(_NEWTON_STEPS):
            odds = 1.0 / np.expm1(-v)  # p / (1 - p) for p = exp(v)
            step = (ss * v - ff * np.log1p(odds) - cc) / (ss - ff * odds)
            v = v - step
            if not (np.abs(step) > 1e-9).any():  # after the first step every iterate is outside: wider
                break
        root = np.minimum(np.exp(v), p_hat)
        all_successes = np.exp(np.minimum(0.0, c / np.where(s > 0, s, 1.0)))  # s log p = c
    root = np.where(np.isfinite(root), root, 0.0)  # 0 is always a valid (wider) lower end
    result: Array = np.where(regular, root, np.where((s > 0) & (f <= 0), all_successes, 0.0))
    return result


def beta_binomial_cs(
    successes: float, trials: float, alpha: float, prior: tuple[float, float] = JEFFREYS
) -> Interval:
    """`beta_binomial_bounds` for one proportion, in scalar arithmetic (numpy costs more for one value).

    Example:
        >>> ci = beta_binomial_cs(100, 10_000, 0.05)
        >>> 0.006 < ci.lower < 0.01 < ci.upper < 0.015
        True
    """
    if trials <= 0:
        return Interval(0, None, 0.0, 1.0)
    a, b = prior
    s = min(max(successes, 0.0), trials)
    c = _log_beta(a + s, b + trials - s) - _log_beta(a, b) + math.log(alpha)
    lower = _lower_root(s, trials, c)
    upper = 1.0 - _lower_root(trials - s, trials, c)
    return Interval(trials, s / trials, lower, upper)


def _lower_root(s: float, n: float, c: float) -> float:
    """`_lower_roots` for one value."""
    f = n - s
    if s <= 0:
        return 0.0
    if f <= 0:
        return math.exp(min(0.0, c / s))
    p_hat = s / n
    try:
        gap = max(s * math.log(p_hat) + f * math.log1p(-p_hat) - c, 0.0)
        v = math.log(max(p_hat - math.sqrt(2.0 * gap * p_hat * (1.0 - p_hat) / n), p_hat * 1e-3, 1e-300))
        for _ in range(_NEWTON_STEPS):
            odds = math.exp(v) / -math.expm1(v)  # p / (1 - p) for p = exp(v)
            step = (s * v - f * math.log1p(odds) - c) / (s - f * odds)
            v -= step
            if abs(step) <= 1e-9:
                break
        root = min(math.exp(v), p_hat)
    except (ArithmeticError, ValueError):  # only at rounding's edge: p_hat within 1e-16 of 1, subnormals
        return 0.0  # 0 is always a valid (wider) lower end
    return root if root == root else 0.0


def quantile_prior(q: float) -> tuple[float, float]:
    """Beta(q/(1-q), 1) on the indicator ``X <= quantile``: mean ``q``, so the mixture spends its mass near
    the proportion it is tested at (a fixed choice, hence valid; tighter than Jeffreys in the tails)."""
    return (q / (1.0 - q), 1.0)


def quantile_ranks(
    trials: npt.ArrayLike, q: float, alpha: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The counts ``[lo, hi]`` the number of observations at or below the true ``q``-quantile stays within at
    every look with probability ``1 - alpha``: the acceptance region of the mixture test of ``p = q``.

    ``log M_t(q)`` is convex in the count, so the region is an interval; its real ends are found by Newton's
    method (monotone from outside, as for any convex function), then settled exactly on integers. Both ends
    of every element are solved in one array, to keep the number of numpy calls small.
    """
    n_all, al_all = np.broadcast_arrays(
        np.asarray(trials, dtype=np.float64), np.asarray(alpha, dtype=np.float64)
    )
    n_all, al_all = n_all.ravel(), al_all.ravel()
    lo_all, hi_all = np.zeros(len(n_all), np.int64), np.zeros(len(n_all), np.int64)
    todo = []
    for i, (trial, level) in enumerate(zip(n_all.tolist(), al_all.tolist(), strict=True)):
        known = _RANKS.get((trial, q, level))
        if known is None:
            todo.append(i)
        else:
            lo_all[i], hi_all[i] = known
    if todo:
        lo, hi = _solve_ranks(n_all[todo], q, al_all[todo])
        lo_all[todo], hi_all[todo] = lo, hi
        if len(_RANKS) > 50_000:  # a memo, not a store: the controller's counts only grow
            _RANKS.clear()
        for i, low, high in zip(todo, lo.tolist(), hi.tolist(), strict=True):
            _RANKS[(float(n_all[i]), q, float(al_all[i]))] = (low, high)
    return lo_all, hi_all


_RANKS: dict[tuple[float, float, float], tuple[int, int]] = {}  # (n, q, alpha) -> ranks, memoised


def _solve_ranks(n: Array, q: float, al: Array) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    k = len(n)
    a, b = quantile_prior(q)
    log_odds = math.log(q / (1.0 - q))
    const = _log_beta(a, b) + lgamma(a + b + n) + n * math.log1p(-q) - np.log(al)
    mid = n * q
    n2, n4, const2, const4 = np.tile(n, 2), np.tile(n, 4), np.tile(const, 2), np.tile(const, 4)

    def excess(s: Array, nn: Array, cc: Array) -> Array:  # log M_t(q) - log(1/alpha) at counts s
        lg = lgamma(np.concatenate([a + s, b + nn - s]))
        result: Array = lg[: len(s)] + lg[len(s) :] - s * log_odds - cc
        return result

    # start near the ends: a Laplace approximation of the mixture (n KL ~ log(1/alpha) + its log n cost)
    var = n * q * (1.0 - q)
    log_prior = (a - 1) * math.log(q) + (b - 1) * math.log1p(-q) - _log_beta(a, b)
    spread = np.sqrt(2.0 * var * np.maximum(-np.log(al) + 0.5 * np.log1p(var) - log_prior, 0.5)) + 1.0
    s = np.concatenate([np.maximum(mid - spread, 0.0), np.minimum(mid + spread, n)])
    for _ in range(_NEWTON_STEPS):
        psi = digamma(np.concatenate([a + s, b + n2 - s]))
        slope = psi[: 2 * k] - psi[2 * k :] - log_odds
        moved = np.clip(s - excess(s, n2, const2) / np.where(slope == 0, 1e-12, slope), 0.0, n2)
        step, s = moved - s, moved  # an end beyond 0 or n stops there: that whole side is accepted
        if not (np.abs(step) >= 0.05).any():  # then settled exactly on integers below
            break
    lo, hi = np.ceil(s[:k] - 1e-9), np.floor(s[k:] + 1e-9)
    for _ in range(64):  # lo: the first accepted integer; hi: the last
        at = excess(np.concatenate([lo, np.maximum(lo - 1, 0.0), hi, np.minimum(hi + 1, n)]), n4, const4)
        e_lo, e_below, e_hi, e_above = at[:k], at[k : 2 * k], at[2 * k : 3 * k], at[3 * k :]
        up, down = (e_lo >= 0) & (lo < mid), (lo > 0) & (e_below < 0)
        left, right = (e_hi >= 0) & (hi > mid), (hi < n) & (e_above < 0)
        if not (up.any() or down.any() or left.any() or right.any()):
            break
        lo, hi = lo + up - down, hi - left + right
    return lo.astype(np.int64), hi.astype(np.int64)


def quantile_interval(
    edges: Sequence[float], cumulative: Sequence[int], q: float, ranks: tuple[int, int]
) -> Interval:
    """The quantile's interval from a histogram and its `quantile_ranks`.

    The count ``N(t)`` of values at or below ``t`` is nondecreasing, so the true quantile lies above every
    edge with fewer than ``lo`` values at or below it and below the first edge with more than ``hi``. The
    same comparison at a threshold ``t`` is the test "the CS upper bound of P(X > t) < 1 - q"; with bucketed
    data the two coincide at bucket resolution.

    Args:
        edges: ascending upper edges of the histogram's buckets.
        cumulative: number of values at or below each edge (nondecreasing; the last is the total).
        q: the quantile, ``0 < q < 1``.
        ranks: ``(lo, hi)`` from `quantile_ranks` for the total.

    Returns:
        ``lower`` is 0.0 and ``upper`` is ``inf`` where the data cannot bound yet; ``estimate`` is the edge
        of the bucket holding the quantile.
    """
    n = cumulative[-1] if cumulative else 0
    if n <= 0:
        return Interval(0, None, 0.0, math.inf)
    lo, hi = ranks
    below = bisect.bisect_left(cumulative, lo) - 1  # last edge with N(edge) < lo
    above = bisect.bisect_right(cumulative, hi)  # first edge with N(edge) > hi
    est = bisect.bisect_left(cumulative, q * n)
    return Interval(
        n,
        edges[min(est, len(edges) - 1)],
        edges[below] if below >= 0 else 0.0,
        edges[above] if above < len(edges) else math.inf,
    )


def quantile_cs(edges: Sequence[float], cumulative: Sequence[int], q: float, alpha: float) -> Interval:
    """A confidence sequence for the ``q``-quantile of one histogram: `quantile_ranks`, `quantile_interval`.

    Example:
        >>> edges = [float(i) for i in range(1, 101)]
        >>> ci = quantile_cs(edges, [100 * i for i in range(1, 101)], 0.5, 0.05)
        >>> ci.lower < 50 < ci.upper and ci.upper - ci.lower < 6
        True
    """
    n = cumulative[-1] if cumulative else 0
    lo, hi = quantile_ranks(n, q, alpha)
    return quantile_interval(edges, cumulative, q, (int(lo[0]), int(hi[0])))


def normal_mixture_radius(n: float, alpha: float, t_opt: float = 500.0) -> float:
    """The half-width, in standard deviations, of the two-sided asymptotic confidence sequence after ``n``
    observations (Waudby-Smith et al. 2021, eq. (11)): ``sqrt(2 (n r^2 + 1) / (n^2 r^2) log(sqrt(n r^2 + 1)
    / alpha))``, with ``r`` chosen to make the boundary tightest at ``n = t_opt``.

    Example:
        >>> 0.06 < normal_mixture_radius(2000, 0.05) < 0.08
        True
    """
    if n <= 0:
        return math.inf
    la = -2.0 * math.log(alpha)
    r2 = (la + math.log(la + 1.0)) / t_opt
    return math.sqrt(2.0 * (n * r2 + 1.0) / (n * n * r2) * math.log(math.sqrt(n * r2 + 1.0) / alpha))


def sample_sd(total: float, total_sq: float, count: float) -> float:
    """The sample standard deviation from sums (0 for fewer than two values)."""
    if count < 2:
        return 0.0
    return math.sqrt(max(0.0, (total_sq - total * total / count) / (count - 1)))


def asymptotic_mean_cs(total: float, total_sq: float, count: float, alpha: float) -> Interval:
    """The asymptotic confidence sequence for a mean, ``mean ± sd * normal_mixture_radius`` (Waudby-Smith et
    al. 2021, Thm 2.2). Unbounded with fewer than two observations.

    Example:
        >>> ci = asymptotic_mean_cs(total=1000.0, total_sq=1100.0, count=1000, alpha=0.05)
        >>> ci.lower < 1.0 < ci.upper
        True
    """
    if count < 2:
        return Interval(count, total / count if count else None, -math.inf, math.inf)
    mean = total / count
    r = sample_sd(total, total_sq, count) * normal_mixture_radius(count, alpha)
    return Interval(count, mean, mean - r, mean + r)


def bounded_mean_cs(total: float, total_sq: float, count: float, alpha: float, exact: Interval) -> Interval:
    """A confidence sequence for the mean of observations in [0, 1]: the intersection of ``exact``, the
    sub-Bernoulli `beta_binomial_bounds` of the sum at ``alpha / 2`` (valid at any sample size), and the
    asymptotic one at ``alpha / 2`` (tight when the variance is small).

    Example:
        >>> exact = beta_binomial_cs(800.0, 1000, 0.025)
        >>> ci = bounded_mean_cs(total=800.0, total_sq=650.0, count=1000, alpha=0.05, exact=exact)
        >>> 0.77 < ci.lower < 0.8 < ci.upper < 0.83 and ci.upper - ci.lower < exact.upper - exact.lower
        True
    """
    if count <= 0:
        return Interval(0, None, 0.0, 1.0)
    approx = asymptotic_mean_cs(total, total_sq, count, alpha / 2)
    lower, upper = max(exact.lower, approx.lower), min(exact.upper, approx.upper)
    if lower > upper:  # the asymptotic part is off at small n; keep the exact one
        lower, upper = exact.lower, exact.upper
    return Interval(count, total / count, lower, upper)


def rate_ratio_cs(
    events_candidate: int, events_stable: int, exposure_candidate: float, exposure_stable: float, alpha: float
) -> Interval:
    """A confidence sequence for the ratio of two Poisson rates ``lambda_c / lambda_s`` (Lindon & Malek 2022).

    Given ``N`` events in all, the candidate's count is Binomial(N, theta) with ``theta = e_c r / (e_c r +
    e_s)`` for exposures ``e_c, e_s`` and ratio ``r``; a confidence sequence for ``theta`` over the sequence
    of events maps to one for ``r``. Exact when the exposure share is constant (within one stage);
    across stages the cumulative share is used, and the count's variance is then only smaller.

    Example:
        >>> rate_ratio_cs(30, 10, 500.0, 9500.0, 0.05).lower > 1.0  # 3x the events on 1/20 of the traffic
        True
    """
    n = events_candidate + events_stable
    if n <= 0 or exposure_candidate <= 0 or exposure_stable <= 0:
        return Interval(n, None, 0.0, math.inf)
    theta = beta_binomial_cs(events_candidate, n, alpha)
    scale = exposure_stable / exposure_candidate

    def ratio(t: float) -> float:
        return math.inf if t >= 1.0 else scale * t / (1.0 - t)

    estimate = scale * events_candidate / events_stable if events_stable else math.inf
    return Interval(n, estimate, ratio(theta.lower), ratio(theta.upper))


def bernoulli_evalue_above(successes: float, trials: float, p0: float) -> float:
    """An e-value against "the mean is at most ``p0``" for observations in [0, 1]: an equal-weight mixture of
    likelihood ratios ``q^S (1-q)^(n-S) / (p0^S (1-p0)^(n-S))`` over ``q`` above ``p0`` on a log-odds grid.
    Each is a supermartingale under every mean ``<= p0`` (sub-Bernoulli), so the mixture is an e-process.
    It is reported as 0 when the sample mean is at or below ``p0``: a smaller e-value is still an e-value,
    and such a one could never be selected.

    Example:
        >>> bernoulli_evalue_above(30, 1000, 0.01) > 100 > 1 > bernoulli_evalue_above(12, 1000, 0.01)
        True
    """
    if trials <= 0 or p0 >= 1.0 or successes <= p0 * trials:
        return 0.0
    if p0 <= 0.0:
        return math.inf
    up, down = _evalue_grid(p0)
    f = trials - successes
    logs = [successes * u + f * d for u, d in zip(up, down, strict=True)]
    top = max(logs)
    log_e = top + math.log(sum(math.exp(x - top) for x in logs) / len(logs))
    return math.exp(min(log_e, _LOG_E_CAP))  # a capped e-value is still one (smaller is always valid)


@lru_cache(maxsize=256)
def _evalue_grid(p0: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``log(q / p0)`` and ``log((1 - q) / (1 - p0))`` over the grid of ``q`` above ``p0``."""
    base = math.log(p0 / (1.0 - p0))
    qs = [1.0 / (1.0 + math.exp(-(base + step))) for step in _EVALUE_GRID]
    return tuple(math.log(q / p0) for q in qs), tuple(math.log((1.0 - q) / (1.0 - p0)) for q in qs)


def gaussian_evalue_above(excess: float, se: float, info_opt: float, alpha: float = 0.05) -> float:
    """An asymptotic e-value against "the mean (difference) is at most its null value" from an estimate
    that exceeds it by ``excess`` with standard error ``se``: the normal mixture over positive drifts (a
    half-normal prior) in information time ``I = 1 / se^2``; ``info_opt`` tunes where it is most powerful.
    0 when the estimate does not exceed the null value.

    Example:
        >>> gaussian_evalue_above(0.5, 0.1, 100.0) > 20 > 1 > gaussian_evalue_above(0.1, 0.1, 100.0)
        True
    """
    if se <= 0 or not math.isfinite(se) or excess <= 0:
        return 0.0
    info = 1.0 / (se * se)
    s = excess * info
    la = -2.0 * math.log(alpha)
    r2 = (la + math.log(la + 1.0)) / info_opt
    scale = 1.0 + r2 * info
    log_e = math.log(2.0) - 0.5 * math.log(scale) + r2 * s * s / (2.0 * scale)
    log_e += math.log(0.5 * math.erfc(-math.sqrt(r2 / scale) * s / math.sqrt(2.0)))
    return math.exp(min(log_e, _LOG_E_CAP))


def e_bh(evalues: Sequence[float], alpha: float) -> list[int]:
    """The e-BH procedure (Wang & Ramdas 2022): rejects the ``k*`` hypotheses with the largest e-values, for
    the largest ``k`` with ``e_(k) >= K / (alpha k)``. Controls the false discovery rate at ``alpha`` under
    any dependence between the e-values. Returns the rejected indices, ascending.

    Example:
        >>> e_bh([1.0, 500.0, 0.2, 80.0], 0.05)
        [1, 3]
    """
    m = len(evalues)
    order = sorted(range(m), key=lambda i: -evalues[i])
    keep = 0
    for k, i in enumerate(order, start=1):
        if evalues[i] >= m / (alpha * k):
            keep = k
    return sorted(order[:keep])
