"""A time-matched baseline for the comparative gates: stable's answers sampled at the candidate's pace.

The evidence is everything since the rollout started. The candidate's answers come mostly from the later,
larger stages; stable's from the whole rollout. When the load, and with it every model's latency or error
rate, drifts over the rollout, the two arms differ by the drift as well as by the models: a rising load
rolls back a candidate identical to stable, a falling one hides a real regression. A stable sample taken at
the candidate's pace has the candidate's time profile, so the drift cancels (Kayenta compares a canary with
a baseline started beside it for the same reason, not with all of production).

How: every telemetry delta (one Ingress replica's last second or so) is thinned. With ``c`` and ``s`` its
candidate and stable requests and ``k`` the baseline's size relative to the candidate's, stable's counts are
kept with probability ``min(1, k c / s)`` and the candidate's with ``min(1, s / (k c))``, so what is kept is
``k : 1`` in every delta. Binomial thinning of a count or of a histogram bucket is distributed exactly as
keeping each request independently, so each gate's confidence sequence stays valid (the routing counts that
set the probabilities say nothing about the outcomes). The latency histogram is the sample's: as many
values as it has answered requests, drawn without replacement. Sums (answer fields, feedback) keep their
mean: the count is thinned, the totals scaled with it. Pure: the random generator is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serving.segments import ALL
from serving.sketch import LatencySketch
from serving.telemetry import ArmStats, FieldStat, Window

MATCHED_STABLE = "stable@matched"
MATCHED_CANDIDATE = "candidate@matched"
MATCHED = {"stable": MATCHED_STABLE, "candidate": MATCHED_CANDIDATE}
# Baseline answers kept per candidate answer. Three keeps the early stages (1 %, 5 %, 25 %) near the power
# of a whole-stable baseline; above 25 % stable has fewer than three answers per candidate answer, so the
# candidate's are sampled too (at 50 %, one in three). In `benchmarks.drift_sim` a +20 % regression was
# caught in a median 220 s at k = 3 against 150 s with all of stable (on 12 seeds: 195 s at k = 3, 320 s
# at k = 1).
RATIO = 3.0

_STATUSES = ("ok", "errors", "timeouts", "overloaded", "contract_failures")


def shares(candidate: int, stable: int, ratio: float) -> tuple[float, float]:
    """The probabilities ``(stable, candidate)`` of keeping a request of each arm in one delta: ``0, 0``
    unless both arms answered in it."""
    if candidate <= 0 or stable <= 0:
        return 0.0, 0.0
    return min(1.0, ratio * candidate / stable), min(1.0, stable / (ratio * candidate))


def thin(stats: ArmStats, p: float, rng: np.random.Generator) -> ArmStats:
    """A sample of ``stats``'s requests, each kept with probability ``p`` (exactly ``stats`` at ``p >= 1``).

    Example:
        >>> st = ArmStats()
        >>> for _ in range(1000):
        ...     st.record("ok", 0.05)
        >>> kept = thin(st, 0.1, np.random.default_rng(1))
        >>> 50 < kept.requests < 150 and kept.requests == kept.ok == kept.latency.count
        True
    """
    if p >= 1.0:
        return stats
    out = ArmStats()
    if p <= 0.0:
        return out
    counts = rng.binomial([getattr(stats, name) for name in _STATUSES], p).tolist()
    for name, n in zip(_STATUSES, counts, strict=True):
        setattr(out, name, n)
    out.requests = sum(counts)
    out.fallbacks = min(int(rng.binomial(stats.fallbacks, p)), out.requests)
    out.latency = _sample_sketch(stats.latency, out.requests - out.timeouts, rng)
    out.fields = {name: _thin_sum(stat, p, rng) for name, stat in stats.fields.items()}
    out.feedback = {name: _thin_sum(stat, p, rng) for name, stat in stats.feedback.items()}
    return out


def _sample_sketch(sketch: LatencySketch, kept: int, rng: np.random.Generator) -> LatencySketch:
    """``kept`` of the sketch's values drawn without replacement, so that the sample's latencies are those of
    its answered requests (given how many a Bernoulli thinning keeps, which it keeps is a uniform subset)."""
    kept = min(kept, sketch.count)
    if kept <= 0 or not sketch.bins:
        return LatencySketch()
    index = list(sketch.bins)
    drawn = rng.multivariate_hypergeometric([sketch.bins[i] for i in index], kept).tolist()
    bins = {i: n for i, n in zip(index, drawn, strict=True) if n}
    return LatencySketch(bins, kept, sketch.total * kept / sketch.count)


def _thin_sum(stat: FieldStat, p: float, rng: np.random.Generator) -> FieldStat:
    count = int(rng.binomial(stat.count, p)) if stat.count > 0 else 0
    scale = count / stat.count if stat.count > 0 else 0.0
    return FieldStat(stat.total * scale, count, stat.total_sq * scale)


class Matcher:
    """Adds each delta's time-matched sample to the evidence, under the arms `MATCHED_STABLE` and
    `MATCHED_CANDIDATE`; the stable and candidate arms are left whole.

    Args:
        rng: the random generator (seeded in tests).
        ratio: ``k``, baseline answers kept per candidate answer.
    """

    def __init__(self, rng: np.random.Generator, ratio: float = RATIO) -> None:
        if not ratio > 0:
            raise ValueError(f"ratio must be > 0, got {ratio!r}")
        self.ratio, self.rng = ratio, rng
        self.last: dict[str, float] = {"stable": 0.0, "candidate": 0.0}  # the latest shares, for feedback

    def add(self, delta: Window, into: Sequence[Window]) -> None:
        """Thins ``delta`` and merges the sample into every window of ``into``."""
        stable, candidate = delta.arms.get(("stable", ALL)), delta.arms.get(("candidate", ALL))
        p_stable, p_candidate = shares(
            candidate.requests if candidate else 0, stable.requests if stable else 0, self.ratio
        )
        if not p_stable:
            return
        self.last = {"stable": p_stable, "candidate": p_candidate}
        for (arm, segment), stats in delta.arms.items():
            p = p_stable if arm == "stable" else p_candidate if arm == "candidate" else 0.0
            if not p:
                continue
            sample = thin(stats, p, self.rng)
            if sample.requests or sample.feedback:
                for window in into:
                    window.arm(MATCHED[arm], segment).merge(sample)

    def feedback_arm(self, arm: str) -> str | None:
        """The matched arm a feedback value for ``arm`` also counts in, or None: kept at the latest delta's
        share of that arm (feedback arrives after its answer, so its own delta's share is gone)."""
        p = self.last.get(arm, 0.0)
        if p and (p >= 1.0 or self.rng.random() < p):
            return MATCHED[arm]
        return None
