"""The promotion and rollback rule of each gate kind, applied to every segment of a gate at once.

Each rule gathers a segment's inputs, the confidence sequences of all segments are solved in one vectorised
pass (`rollout.sequential`), then each segment is decided. The rules, in words, are in `rollout.judge.judge`
and, per gate, in each result's ``evidence["rule"]``. Pure: no Ray, no HTTP, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

from rollout import sequential as seq
from rollout.sequential import Interval
from serving.segments import ALL, Segment
from serving.sketch import LatencySketch, bucket_upper
from serving.telemetry import ArmStats, FieldStat

if TYPE_CHECKING:
    from rollout.judge import Context, GateSpec, Histogram


class Verdict(StrEnum):
    """A gate's state. Worst wins: FAIL > ERROR > NODATA > INCONCLUSIVE > PASS. Only FAIL rolls back."""

    PASS = "PASS"
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"
    NODATA = "NODATA"
    ERROR = "ERROR"


# Promotion needs "no evidence of violation, with the power to have seen one". The margins say how large a
# violation must have been ruled out before a PASS; a candidate that bad would have hit the FAIL rule at
# about the same sample size, so a PASS means the test could have caught it.
RATE_POWER_MARGIN = 1.0  # rates: rule out twice the limit (or twice stable's rate when stable breaks it)
LATENCY_POWER_MARGIN = 0.10  # latency ceilings when stable itself breaks them: rule out +10% over stable
MEAN_POWER_MARGIN_SD = 0.10  # means with absolute limits: rule out a violation of 0.1 standard deviations
COUNT_POWER_MARGIN = 1.0  # counts above their maximum: rule out twice stable's rate (Lindon & Malek)
MIN_COUNT_EXPOSURE = 1000  # candidate requests before "no OOM / restart so far" can PASS
MIN_TAIL_SAMPLES = 10  # latency: candidate samples beyond the quantile (n × (1 − q)) before a PASS
# latency tolerance X: a PASS rules out a whole-distribution regression of (1 + LATENCY_SHIFT_POWER × X), as
# the rate gates rule out twice their limit, and needs the estimates within the tolerance itself
LATENCY_SHIFT_POWER = 2.0
MIN_LOCATION_SAMPLES = 50  # the log-location test is asymptotic: each arm needs this many before it counts


class MalformedEvidence(ValueError):
    """A counter, sum or gate spec that cannot be right (negative, NaN, unsupported rule): judged ERROR."""


class Outcome(NamedTuple):
    """One segment's verdict with the JSON-safe parts of its evidence."""

    verdict: Verdict
    reason: str
    stable: dict[str, Any] | None = None
    candidate: dict[str, Any] | None = None
    e_value: float = 0.0  # evidence that this segment is worse, for e-BH (0 = none)
    extra: dict[str, Any] | None = None


def _error(exc: Exception) -> Outcome:
    return Outcome(Verdict.ERROR, f"cannot judge: {type(exc).__name__}: {exc}")


def _nodata(why: str) -> Outcome:
    return Outcome(Verdict.NODATA, why)


Target = tuple[Segment, float]  # (segment, alpha for its test)
Row = TypeVar("Row")


def _solve(
    targets: list[Target],
    gather: Callable[[Segment, float], Row | Outcome],
    batch: Callable[[list[Row | None]], Callable[[int, Row], Outcome]],
) -> list[Outcome]:
    """Gathers each segment's inputs, solves all segments' confidence sequences in one vectorised ``batch``,
    then decides each segment. A malformed input is an ERROR in its own segment only."""
    rows: list[Row | Outcome] = []
    for segment, level in targets:
        try:
            rows.append(gather(segment, level))
        except Exception as exc:
            rows.append(_error(exc))
    decide = batch([None if isinstance(r, Outcome) else r for r in rows])
    out: list[Outcome] = []
    for i, row in enumerate(rows):
        try:
            out.append(row if isinstance(row, Outcome) else decide(i, row))
        except Exception as exc:
            out.append(_error(exc))
    return out


def _num(value: float | None) -> float | None:
    """JSON-safe: None for a missing or infinite value."""
    return None if value is None or value in _INFINITE or value != value else float(value)


_INFINITE = (math.inf, -math.inf)


def _side(ci: Interval, scale: float = 1.0) -> dict[str, Any]:
    n, est, lower, upper = ci
    if scale != 1.0:
        est, lower, upper = est * scale if est is not None else None, lower * scale, upper * scale
    return {"n": n, "estimate": _num(est), "lower": _num(lower), "upper": _num(upper)}


def _decide(fail: bool, passed: bool) -> Verdict:
    return Verdict.FAIL if fail else Verdict.PASS if passed else Verdict.INCONCLUSIVE


def _alphas(rows: Sequence[tuple[Any, ...] | None]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The per-arm levels (last item of each row); 0.5 for rows without data, whose bounds go unused."""
    return np.array([r[-1] if r is not None else 0.5 for r in rows], dtype=np.float64)


# --- latency: quantile confidence sequences on the log-bucket histogram -----------------------------------


_LatencyRow = tuple["Histogram", "Histogram", LatencySketch, LatencySketch, float]


def _latency(gate: GateSpec, targets: list[Target], ctx: Context) -> tuple[str, list[Outcome]]:
    q = gate.quantile
    if q is None or not 0.0 < q < 1.0:
        raise MalformedEvidence(f"latency gate {gate.name!r} needs a quantile in (0, 1), got {q!r}")
    label, t = f"p{100 * q:g}", float(gate.threshold)
    if gate.rule == "maximum_regression_percent":
        f = 1.0 + t / 100.0
        power = 1.0 + LATENCY_SHIFT_POWER * t / 100.0
        rule = (
            f"FAIL when the candidate's {label} lower bound > {f:g} x stable's upper bound, or when its "
            f"whole distribution is proven slower by more than {f:g}x (geometric-mean ratio lower bound "
            f"> {f:g}); PASS when its {label} upper bound <= {f:g} x stable's lower bound, or when the "
            f"geometric-mean ratio's upper bound <= {power:g} (the power to have seen a {power:g}x shift) "
            f"while its estimate and the {label} estimate are within {f:g}x of stable's, with at least "
            f"{MIN_TAIL_SAMPLES} candidate samples beyond the {label}"
        )
    elif gate.rule == "maximum":
        rule = (
            f"FAIL when the candidate's {label} lower bound > {t:g} ms and > stable's upper bound; PASS when "
            f"its upper bound <= max({t:g} ms, {1 + LATENCY_POWER_MARGIN:g} x stable's lower bound)"
        )
    else:
        raise MalformedEvidence(f"rule {gate.rule!r} does not apply to latency")

    def gather(segment: Segment, level: float) -> _LatencyRow | Outcome:
        s_arm, c_arm = (ctx.arm(arm, segment) for arm in ctx.pair(gate.rule == "maximum_regression_percent"))
        if s_arm is None or c_arm is None or not s_arm.latency.count or not c_arm.latency.count:
            return _nodata("needs latencies from both arms")
        # four tests share the level: the quantile and the location test, each on two arms
        return ctx.hist(s_arm.latency), ctx.hist(c_arm.latency), s_arm.latency, c_arm.latency, level / 4

    def batch(rows: list[_LatencyRow | None]) -> Callable[[int, Any], Outcome]:
        levels = _alphas(rows)
        k = len(rows)
        ns = [r[0].n if r else 1 for r in rows] + [r[1].n if r else 1 for r in rows]
        lo, hi = (v.tolist() for v in seq.quantile_ranks(ns, q, np.concatenate([levels, levels])))

        def decide(i: int, row: _LatencyRow) -> Outcome:
            sh, ch, s_sketch, c_sketch, level = row
            s = seq.quantile_interval(sh.edges, sh.cumulative, q, (lo[i], hi[i]))
            c = seq.quantile_interval(ch.edges, ch.cumulative, q, (lo[k + i], hi[k + i]))
            extra = None
            if gate.rule == "maximum_regression_percent":
                at = f * s.upper
                # The quantile bounds alone need thousands of tail samples to prove a 10 % margin either way;
                # the location of log latency (a geometric-mean ratio) carries most of the information about a
                # whole-distribution shift, so it backs both decisions, with the tail checked by estimate.
                ls = seq.asymptotic_mean_cs(*_log_moments(s_sketch), level)
                lc = seq.asymptotic_mean_cs(*_log_moments(c_sketch), level)
                ratio_lo, ratio_hi = math.exp(lc.lower - ls.upper), math.exp(lc.upper - ls.lower)
                ratio = math.exp((lc.estimate or 0.0) - (ls.estimate or 0.0))
                if min(ch.n, sh.n) < MIN_LOCATION_SAMPLES:  # too few for a central limit: no verdict from it
                    ratio_lo, ratio_hi = 0.0, math.inf
                tail_ok = (
                    ch.n * (1.0 - q) >= MIN_TAIL_SAMPLES
                    and ratio <= f
                    and c.estimate is not None
                    and s.estimate is not None
                    and c.estimate <= f * s.estimate
                )
                verdict = _decide(
                    c.lower > at or ratio_lo > f,
                    c.upper <= f * s.lower or (ratio_hi <= power and tail_ok),
                )
                extra = {
                    "geometric_mean_ratio": {
                        "estimate": _num(ratio),
                        "lower": _num(ratio_lo),
                        "upper": _num(ratio_hi),
                    }
                }
            else:
                at = max(t / 1000.0, s.upper)
                ok = c.upper <= max(t / 1000.0, (1 + LATENCY_POWER_MARGIN) * s.lower)
                verdict = _decide(c.lower > at, ok)
            reason = (
                f"candidate {label} in [{_ms(c.lower)}, {_ms(c.upper)}] ms, "
                f"stable {label} in [{_ms(s.lower)}, {_ms(s.upper)}] ms"
            )
            e_value = seq.bernoulli_evalue_above(ch.exceeding(at), c.n, 1.0 - q)
            return Outcome(verdict, reason, _side(s, 1000), _side(c, 1000), e_value, extra)

        return decide

    return rule, _solve(targets, gather, batch)


def _log_moments(sketch: LatencySketch) -> tuple[float, float, float]:
    """Sum, sum of squares and count of log(latency) from the sketch's buckets (1 % resolution)."""
    total = total_sq = 0.0
    for index, count in sketch.bins.items():
        value = index * _LOG_GAMMA
        total += count * value
        total_sq += count * value * value
    return total, total_sq, float(sketch.count)


_LOG_GAMMA = math.log(bucket_upper(1))


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f}" if math.isfinite(seconds) else "inf"


# --- rates: beta-binomial confidence sequences on the failure count -----------------------------------------

# metric -> (failure count of an arm, name of the failure rate, is the policy's metric 1 - failure rate?)
_RATES: dict[str, tuple[Callable[[ArmStats], int], str, bool]] = {
    "error_rate": (lambda a: a.errors + a.overloaded, "error rate", False),
    "timeout_rate": (lambda a: a.timeouts, "timeout rate", False),
    "schema_pass_rate": (lambda a: a.contract_failures, "schema failure rate (1 - pass rate)", True),
    "fallback_rate": (lambda a: a.fallbacks, "fallback rate", False),
    "shadow_agreement": (lambda a: 0, "disagreement rate (1 - agreement)", True),
}
_SINGLE_ARM = ("fallback_rate", "shadow_agreement")  # stable never falls back; agreement is of a pair
_RateRow = tuple[int, int, int, int, float]  # candidate failures, n; stable failures, n; level per arm


def _rates(gate: GateSpec, targets: list[Target], ctx: Context) -> tuple[str, list[Outcome]]:
    failures, noun, good = _RATES[gate.metric]
    rule, limit = _failure_rule(gate, good)
    single = gate.metric in _SINGLE_ARM
    if single and rule != "maximum":
        raise MalformedEvidence(f"{gate.metric} takes rule '{'minimum' if good else 'maximum'}' only")
    text = _rate_rule_text(rule, limit, noun, single)
    stable, candidate = ctx.pair(not single and rule in _RELATIVE_RULES)

    def gather(segment: Segment, level: float) -> _RateRow | Outcome:
        if gate.metric == "shadow_agreement":
            pairs = ctx.window.shadow.get(segment)
            if pairs is None or not pairs.compared:
                return _nodata("no compared shadow pairs")
            if not 0 <= pairs.agreed <= pairs.compared:
                raise MalformedEvidence(f"agreed={pairs.agreed} with compared={pairs.compared}")
            return pairs.compared - pairs.agreed, pairs.compared, 0, 0, level
        c_arm = ctx.arm(candidate, segment)
        if c_arm is None or not c_arm.requests:
            return _nodata("no candidate requests")
        if single:
            return failures(c_arm), c_arm.requests, 0, 0, level
        s_arm = ctx.arm(stable, segment)
        if s_arm is None or not s_arm.requests:
            return _nodata("no stable requests to compare with")
        return failures(c_arm), c_arm.requests, failures(s_arm), s_arm.requests, level / 2

    def batch(rows: list[_RateRow | None]) -> Callable[[int, _RateRow], Outcome]:
        k = len(rows)
        full = [r if r is not None else (0, 0, 0, 0, 0.5) for r in rows]
        levels = _alphas(rows)
        lo, hi = seq.beta_binomial_bounds(
            [r[0] for r in full] + [r[2] for r in full],
            [r[1] for r in full] + [r[3] for r in full],
            [*levels, *levels],
        )

        def decide(i: int, row: _RateRow) -> Outcome:
            c = Interval(row[1], row[0] / row[1], float(lo[i]), float(hi[i]))
            s = None if single else Interval(row[3], row[2] / row[3], float(lo[k + i]), float(hi[k + i]))
            return _rate_outcome(rule, limit, c, s, noun, good)

        return decide

    return text, _solve(targets, gather, batch)


POOLED = "candidate+shadow"  # the candidate's live and mirrored answers together
_POOLABLE = frozenset({"error_rate", "schema_pass_rate"})


def _pooled_rates(gate: GateSpec, targets: list[Target], ctx: Context) -> tuple[str, list[Outcome]]:
    """Errors and broken outputs are properties of the model's answers, mirrored or live, so at a canary stage
    a PASS may rest on both (the shadow stage's thousands of answers settle what a 5 % stage would need many
    minutes for). A FAIL on the live answers alone still rolls back, so live-only failures are not diluted:
    each test gets half the level."""
    if (
        not ctx.evidence.live
        or gate.metric not in _POOLABLE
        or ctx.arm("shadow", ALL) is None
        or (ctx.matched and is_relative(gate))  # mirrored answers are not matched in time
    ):
        return _rates(gate, targets, ctx)
    half = [(segment, level / 2) for segment, level in targets]
    text, live = _rates(gate, half, ctx)
    _, pooled = _rates(gate, half, ctx.pooled())
    combined = []
    for lv, pl in zip(live, pooled, strict=True):
        if lv.verdict is Verdict.FAIL or pl.verdict is Verdict.NODATA:
            combined.append(lv)
        else:
            combined.append(pl._replace(extra={**(pl.extra or {}), "live_candidate": lv.candidate}))
    return (
        text + "; at canary stages PASS may rest on live and mirrored answers together, FAIL on either",
        combined,
    )


def _failure_rule(gate: GateSpec, good: bool) -> tuple[str, float]:
    """The gate restated on the failure rate: a minimum pass rate is a maximum failure rate."""
    t = float(gate.threshold)
    if not math.isfinite(t):
        raise MalformedEvidence(f"threshold must be finite, got {gate.threshold!r}")
    if good:
        mapped = {"minimum": ("maximum", 1.0 - t), "minimum_delta": ("maximum_delta", -t)}
    else:
        mapped = {r: (r, t) for r in ("maximum", "maximum_delta", "maximum_regression_percent")}
    if gate.rule not in mapped:
        raise MalformedEvidence(f"rule {gate.rule!r} does not apply to {gate.metric}")
    return mapped[gate.rule]


def _rate_rule_text(rule: str, limit: float, noun: str, single: bool) -> str:
    if rule == "maximum" and single:
        return (
            f"FAIL when the candidate's {noun} lower bound > {limit:.6g}; "
            f"PASS when its upper bound <= {1 + RATE_POWER_MARGIN:g} x {limit:.6g}"
        )
    if rule == "maximum":
        return (
            f"FAIL when the candidate's {noun} lower bound > {limit:.6g} and > stable's upper bound; "
            f"PASS when its upper bound <= {1 + RATE_POWER_MARGIN:g} x max({limit:.6g}, stable's lower bound)"
        )
    if rule == "maximum_delta":
        return (
            f"PASS when the upper bound of candidate - stable {noun} <= {limit:.6g}; "
            f"FAIL when its lower bound > {limit:.6g}"
        )
    f = 1.0 + limit / 100.0
    return (
        f"PASS when the candidate's {noun} upper bound <= {f:g} x stable's lower bound; "
        f"FAIL when its lower bound > {f:g} x stable's upper bound"
    )


def _rate_outcome(rule: str, limit: float, c: Interval, s: Interval | None, noun: str, good: bool) -> Outcome:
    if s is None:  # the absolute limit alone
        at = limit
        verdict = _decide(c.lower > at, c.upper <= (1 + RATE_POWER_MARGIN) * limit)
    elif rule == "maximum":
        at = max(limit, s.upper)
        verdict = _decide(c.lower > at, c.upper <= (1 + RATE_POWER_MARGIN) * max(limit, s.lower))
    elif rule == "maximum_delta":
        at = s.upper + limit
        verdict = _decide(c.lower > at, c.upper - s.lower <= limit)
    else:
        f = 1.0 + limit / 100.0
        at = f * s.upper
        verdict = _decide(c.lower > at, c.upper <= f * s.lower)
    reason = f"candidate {noun} in [{c.lower:.4g}, {c.upper:.4g}]"
    if s is not None:
        reason += f", stable in [{s.lower:.4g}, {s.upper:.4g}]"
    e_value = seq.bernoulli_evalue_above((c.estimate or 0.0) * c.n, c.n, at) if at < 1 else 0.0
    show = _flip if good else _side
    return Outcome(verdict, reason, show(s) if s is not None else None, show(c), e_value)


def _flip(ci: Interval) -> dict[str, Any]:
    """A failure-rate interval reported as the pass rate the policy names."""
    est = 1.0 - ci.estimate if ci.estimate is not None else None
    return {"n": ci.n, "estimate": _num(est), "lower": _num(1.0 - ci.upper), "upper": _num(1.0 - ci.lower)}


# --- means: extracted fields (asymptotic CS) and feedback in [0, 1] -----------------------------------------

_MeanRow = tuple[FieldStat, FieldStat, float]  # stable, candidate, level per arm


def _means(gate: GateSpec, targets: list[Target], ctx: Context) -> tuple[str, list[Outcome]]:
    key, bounded, t = gate.key, gate.metric == "feedback", float(gate.threshold)
    if not key or not math.isfinite(t):
        raise MalformedEvidence(f"{gate.metric} gate {gate.name!r} needs a key and a finite threshold")
    noun, m = f"mean {key}", MEAN_POWER_MARGIN_SD
    texts = {
        "minimum_delta": f"PASS when the lower bound of candidate - stable {noun} >= {t:g}; "
        f"FAIL when its upper bound < {t:g}",
        "maximum_delta": f"PASS when the upper bound of candidate - stable {noun} <= {t:g}; "
        f"FAIL when its lower bound > {t:g}",
        "maximum": f"FAIL when the candidate's {noun} lower bound > {t:g} and > stable's upper bound; "
        f"PASS when its upper bound <= max({t:g}, stable's lower bound) + {m:g} sd",
        "minimum": f"FAIL when the candidate's {noun} upper bound < {t:g} and < stable's lower bound; "
        f"PASS when its lower bound >= min({t:g}, stable's upper bound) - {m:g} sd",
    }
    if gate.rule not in texts:
        raise MalformedEvidence(f"rule {gate.rule!r} does not apply to {gate.metric}")

    def gather(segment: Segment, level: float) -> _MeanRow | Outcome:
        stats: list[FieldStat] = []
        for arm in ctx.pair(gate.rule in _RELATIVE_RULES):
            st = ctx.arm(arm, segment)
            table = (st.feedback if bounded else st.fields) if st is not None else {}
            stat = table.get(key) or FieldStat()
            if bounded and not (0 <= stat.total <= stat.count and stat.total_sq <= stat.total + 1e-9):
                raise MalformedEvidence(f"feedback {key!r} outside [0, 1]: {stat}")
            stats.append(stat)
        if not stats[0].count or not stats[1].count:
            return _nodata(f"needs {key!r} values from both arms")
        return stats[0], stats[1], level / 2

    def batch(rows: list[_MeanRow | None]) -> Callable[[int, _MeanRow], Outcome]:
        k, levels = len(rows), _alphas(rows) / 2  # feedback: half exact, half asymptotic
        stats = [(r[0], r[1]) if r is not None else (FieldStat(), FieldStat()) for r in rows]
        if bounded:
            lo, hi = seq.beta_binomial_bounds(
                [s.total for s, _ in stats] + [c.total for _, c in stats],
                [s.count for s, _ in stats] + [c.count for _, c in stats],
                [*levels, *levels],
            )

        def cs(stat: FieldStat, level: float, j: int) -> Interval:
            if not bounded:
                return seq.asymptotic_mean_cs(stat.total, stat.total_sq, stat.count, level)
            exact = Interval(stat.count, None, float(lo[j]), float(hi[j]))
            return seq.bounded_mean_cs(stat.total, stat.total_sq, stat.count, level, exact)

        def decide(i: int, row: _MeanRow) -> Outcome:
            s_stat, c_stat, level = row
            s, c = cs(s_stat, level, i), cs(c_stat, level, k + i)
            sd_s = seq.sample_sd(s_stat.total, s_stat.total_sq, s_stat.count)
            sd_c = seq.sample_sd(c_stat.total, c_stat.total_sq, c_stat.count)
            diff, info_opt = (c.estimate or 0.0) - (s.estimate or 0.0), 500.0 / max(sd_c * sd_c, 1e-12)
            se_diff = math.sqrt(sd_c**2 / c_stat.count + sd_s**2 / s_stat.count)
            se_c, margin = sd_c / math.sqrt(c_stat.count), m * max(sd_c, sd_s)
            if gate.rule == "minimum_delta":
                verdict = _decide(c.upper - s.lower < t, c.lower - s.upper >= t)
                e_value = seq.gaussian_evalue_above(t - diff, se_diff, info_opt)
            elif gate.rule == "maximum_delta":
                verdict = _decide(c.lower - s.upper > t, c.upper - s.lower <= t)
                e_value = seq.gaussian_evalue_above(diff - t, se_diff, info_opt)
            elif gate.rule == "maximum":
                verdict = _decide(c.lower > max(t, s.upper), c.upper <= max(t, s.lower) + margin)
                e_value = seq.gaussian_evalue_above((c.estimate or 0.0) - max(t, s.upper), se_c, info_opt)
            else:
                verdict = _decide(c.upper < min(t, s.lower), c.lower >= min(t, s.upper) - margin)
                e_value = seq.gaussian_evalue_above(min(t, s.lower) - (c.estimate or 0.0), se_c, info_opt)
            reason = f"candidate {noun} in [{c.lower:.4g}, {c.upper:.4g}], "
            reason += f"stable in [{s.lower:.4g}, {s.upper:.4g}]"
            return Outcome(verdict, reason, _side(s), _side(c), e_value)

        return decide

    return texts[gate.rule], _solve(targets, gather, batch)


# --- counts (Lindon & Malek) and GPU memory: global only ----------------------------------------------------


def _count(gate: GateSpec, targets: list[Target], ctx: Context) -> tuple[str, list[Outcome]]:
    limit = float(gate.threshold)
    if gate.rule != "maximum" or not (math.isfinite(limit) and limit >= 0):
        raise MalformedEvidence(f"{gate.metric} takes rule 'maximum' with a count >= 0")
    text = f"FAIL when the candidate's count > {limit:g}"
    if limit > 0:
        text += " and its rate per request is above stable's (Lindon & Malek)"
    text += f"; PASS at <= {limit:g} after {MIN_COUNT_EXPOSURE} candidate requests"
    if limit > 0:
        text += f", or above it with a rate shown <= {1 + COUNT_POWER_MARGIN:g} x stable's"
    return text, [_count_outcome(gate, limit, targets[0][1], ctx)]


def _count_outcome(gate: GateSpec, limit: float, level: float, ctx: Context) -> Outcome:
    counts = ctx.evidence.oom_events if gate.metric == "oom_events" else ctx.evidence.restarts
    c, s = _counter(counts, "candidate"), _counter(counts, "stable")
    if c is None:
        return _nodata(f"no {gate.metric} reported for the candidate")
    # the candidate model serves its live share and any mirrored requests
    exposure_c = sum(a.requests for a in (ctx.arm("candidate", ALL), ctx.arm("shadow", ALL)) if a is not None)
    s_arm = ctx.arm("stable", ALL)
    exposure_s = s_arm.requests if s_arm is not None else 0
    ratio = seq.rate_ratio_cs(c, s, exposure_c, exposure_s, level) if s is not None else None
    enough = exposure_c >= MIN_COUNT_EXPOSURE
    if c <= limit:
        verdict = _decide(False, enough)
    elif limit == 0 or ratio is None:
        verdict = Verdict.FAIL
    else:
        verdict = _decide(ratio.lower > 1.0, enough and ratio.upper <= 1 + COUNT_POWER_MARGIN)
    return Outcome(
        verdict,
        f"candidate {c} over {exposure_c} requests, stable {s} over {exposure_s}",
        {"n": exposure_s, "estimate": s, "lower": None, "upper": None},
        {"n": exposure_c, "estimate": c, "lower": None, "upper": None},
        extra={"rate_ratio": _side(ratio)} if ratio is not None else None,
    )


def _counter(counts: dict[str, int], arm: str) -> int | None:
    value = counts.get(arm)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0 or value != int(value):
        raise MalformedEvidence(f"{arm} count must be a non-negative integer, got {value!r}")
    return int(value)


def _gpu_memory(gate: GateSpec, targets: list[Target], ctx: Context) -> tuple[str, list[Outcome]]:
    t = float(gate.threshold)
    if gate.rule == "maximum_regression_percent":
        text = (
            f"peak per replica, measured: FAIL when the candidate's > {1 + t / 100:g} x stable's, else PASS"
        )
    elif gate.rule == "maximum":
        text = (
            f"peak per replica, measured: FAIL when the candidate's > {t:g} bytes and > stable's, else PASS"
        )
    else:
        raise MalformedEvidence(f"rule {gate.rule!r} does not apply to gpu_memory_bytes")
    peaks = ctx.evidence.gpu_memory_bytes
    c, s = peaks.get("candidate"), peaks.get("stable")
    if c is None or s is None:
        return text, [_nodata("needs peak GPU memory from both arms")]
    if not all(isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in (c, s)):
        raise MalformedEvidence(f"peak GPU memory must be finite numbers >= 0, got {c!r}, {s!r}")
    fail = c > (1 + t / 100) * s if gate.rule == "maximum_regression_percent" else c > t and c > s
    sides = [{"n": 1, "estimate": _num(v), "lower": _num(v), "upper": _num(v)} for v in (s, c)]
    reason = f"candidate {c:.4g} bytes, stable {s:.4g} bytes"
    return text, [Outcome(_decide(fail, True), reason, sides[0], sides[1])]


_RELATIVE_RULES = frozenset({"maximum_regression_percent", "maximum_delta", "minimum_delta"})


def is_relative(gate: GateSpec) -> bool:
    """Whether the gate's rule compares the two arms (a regression percent, a delta), rather than holding the
    candidate to an absolute limit: only those can use a time-matched baseline."""
    return gate.rule in _RELATIVE_RULES and gate.metric not in _SINGLE_ARM and gate.metric in _TWO_ARMED


_TWO_ARMED = frozenset({"latency", "field", "feedback", *_RATES})


def evaluate(gate: GateSpec, targets: list[Target], ctx: Context) -> tuple[str, list[Outcome]]:
    """The gate's rule in words and one outcome per ``(segment, alpha)`` target. Never raises: a gate that
    cannot be judged at all (an unsupported rule, a missing quantile) is ERROR in every segment."""
    try:
        return _RULES[gate.metric](gate, targets, ctx)
    except Exception as exc:
        return "", [_error(exc)] * len(targets)


_RULES: dict[str, Callable[[GateSpec, list[Target], Context], tuple[str, list[Outcome]]]] = {
    "latency": _latency,
    "error_rate": _pooled_rates,
    "timeout_rate": _rates,
    "fallback_rate": _rates,
    "schema_pass_rate": _pooled_rates,
    "shadow_agreement": _rates,
    "field": _means,
    "feedback": _means,
    "oom_events": _count,
    "restarts": _count,
    "gpu_memory_bytes": _gpu_memory,
}
