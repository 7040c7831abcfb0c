"""The telemetry records of one Ingress replica: per arm × segment stats and shadow comparisons, in one
typed, mergeable shape. Pure: no Ray, no HTTP, no clock (times are passed in).

A `Window` holds `ArmStats` keyed by (arm, segment) where arm is ``stable``, ``candidate`` or ``shadow`` (the
candidate's answers to mirrored requests) and segment is ``("all", "all")`` or a (label, value) pair, plus
`ShadowStats` keyed by segment. Merging two windows adds every counter and histogram, so the merged window
equals the window of all requests exactly, whichever replica saw them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from serving.segments import ALL, Segment
from serving.sketch import LatencySketch

CONFIDENCE_BINS = 20  # for the confidence distribution of each arm (PSI)
DIFF_BINS = 100  # |Δ confidence| in [0, 1] at 0.01 resolution


@dataclass
class FieldStat:
    """Sum, sum of squares and count of a number: a mean for numbers, a rate for booleans (0/1)."""

    total: float = 0.0
    count: int = 0
    total_sq: float = 0.0  # sum of squares, for the variance the judge's confidence sequences need

    def add(self, value: float) -> None:
        self.total += value
        self.total_sq += value * value
        self.count += 1

    def merge(self, other: FieldStat) -> None:
        self.total += other.total
        self.count += other.count
        self.total_sq += other.total_sq

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class ArmStats:
    """What one arm did in one segment: outcomes, latency, extracted fields."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    overloaded: int = 0
    contract_failures: int = 0
    fallbacks: int = 0  # requests this (candidate) arm failed and stable answered instead
    latency: LatencySketch = field(default_factory=LatencySketch)
    fields: dict[str, FieldStat] = field(default_factory=dict)
    feedback: dict[str, FieldStat] = field(default_factory=dict)  # POST /feedback values by metric

    def record_feedback(self, metric: str, value: float) -> None:
        self.feedback.setdefault(metric, FieldStat()).add(value)

    def record(self, status: str, latency_s: float, values: dict[str, float] | None = None) -> None:
        self.requests += 1
        if status == "ok":
            self.ok += 1
        elif status == "timeout":
            self.timeouts += 1
        elif status == "overloaded":
            self.overloaded += 1
        elif status == "contract":
            self.contract_failures += 1
        else:
            self.errors += 1
        if status != "timeout":  # a time-out's latency is the time-out, not the model's
            self.latency.add(latency_s)
        for name, value in (values or {}).items():
            self.fields.setdefault(name, FieldStat()).add(value)

    def merge(self, other: ArmStats) -> None:
        for name in _ARM_COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency.merge(other.latency)
        for key, stat in other.fields.items():
            self.fields.setdefault(key, FieldStat()).merge(stat)
        for key, stat in other.feedback.items():
            self.feedback.setdefault(key, FieldStat()).merge(stat)

    def summary(self) -> dict[str, Any]:
        def ms(q: float) -> float | None:
            value = self.latency.quantile(q)
            return round(value * 1000, 3) if value is not None else None

        n = self.requests
        return {
            "requests": n,
            "ok": self.ok,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "overloaded": self.overloaded,
            "contract_failures": self.contract_failures,
            "fallbacks": self.fallbacks,
            "error_rate": (self.errors + self.overloaded) / n if n else None,
            "timeout_rate": self.timeouts / n if n else None,
            "contract_pass_rate": 1 - self.contract_failures / n if n else None,
            "latency_ms": {"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99)},
            "fields": {k: s.mean for k, s in sorted(self.fields.items())},
            "feedback": {k: {"mean": s.mean, "count": s.count} for k, s in sorted(self.feedback.items())},
        }


@dataclass(frozen=True, slots=True)
class PairComparison:
    """One pair of valid answers, compared: whether the predictions agree and, when both answers carry a
    confidence (a finite number in [0, 1]), the two confidences."""

    agreed: bool
    confidences: tuple[float, float] | None = None

    @classmethod
    def of(cls, stable: dict[str, Any], candidate: dict[str, Any]) -> PairComparison:
        """Compares two answers; a contract need not require ``confidence``, so only ``prediction`` always
        counts.

        Example:
            >>> PairComparison.of({"prediction": "yes"}, {"prediction": "yes", "confidence": 0.7})
            PairComparison(agreed=True, confidences=None)
        """
        agreed = bool(stable.get("prediction") == candidate.get("prediction"))
        a, b = _confidence(stable), _confidence(candidate)
        return cls(agreed, (a, b) if a is not None and b is not None else None)


def _confidence(answer: dict[str, Any]) -> float | None:
    value = answer.get("confidence")
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        return None  # absent, not a number, NaN (which compares false) or not a probability
    return float(value)


@dataclass
class ShadowStats:
    """Mirrored pairs in one segment. Invariant: mirrored = completed + dropped + timed_out + failed."""

    mirrored: int = 0
    completed: int = 0
    dropped: int = 0
    timed_out: int = 0
    failed: int = 0
    compared: int = 0  # completed pairs where both answers kept the contract
    agreed: int = 0
    # Over the compared pairs where both answers carry a confidence (their count is the histogram's sum).
    confidence_diff: list[int] = field(default_factory=lambda: [0] * (DIFF_BINS + 1))
    confidence_diff_total: float = 0.0
    confidence_stable: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)
    confidence_candidate: list[int] = field(default_factory=lambda: [0] * CONFIDENCE_BINS)

    def compare(self, stable: dict[str, Any], candidate: dict[str, Any]) -> None:
        """Records one pair of valid answers."""
        self.add(PairComparison.of(stable, candidate))

    def add(self, pair: PairComparison) -> None:
        """Records one compared pair (counting only: it cannot fail half-way)."""
        self.compared += 1
        self.agreed += pair.agreed
        if pair.confidences is not None:
            a, b = pair.confidences
            diff = abs(a - b)
            self.confidence_diff[min(DIFF_BINS, round(diff * DIFF_BINS))] += 1
            self.confidence_diff_total += diff
            self.confidence_stable[_confidence_bin(a)] += 1
            self.confidence_candidate[_confidence_bin(b)] += 1

    @property
    def confidence_pairs(self) -> int:
        """Compared pairs where both answers carried a confidence."""
        return sum(self.confidence_diff)

    def merge(self, other: ShadowStats) -> None:
        for name in ("mirrored", "completed", "dropped", "timed_out", "failed", "compared", "agreed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.confidence_diff_total += other.confidence_diff_total
        for mine, theirs in (
            (self.confidence_diff, other.confidence_diff),
            (self.confidence_stable, other.confidence_stable),
            (self.confidence_candidate, other.confidence_candidate),
        ):
            for i, n in enumerate(theirs):
                mine[i] += n

    @property
    def agreement_rate(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    def confidence_diff_quantile(self, q: float) -> float | None:
        pairs = self.confidence_pairs
        if not pairs:
            return None
        rank, seen = q * (pairs - 1), 0
        for i, n in enumerate(self.confidence_diff):
            seen += n
            if seen > rank:
                return i / DIFF_BINS
        return 1.0

    def psi(self) -> float | None:
        """Population stability index of the candidate's confidence against stable's (0 = same shape;
        > 0.25 is the usual "significant shift" reading)."""
        return population_stability_index(self.confidence_stable, self.confidence_candidate)

    def summary(self) -> dict[str, Any]:
        pairs = self.confidence_pairs
        return {
            "mirrored": self.mirrored,
            "completed": self.completed,
            "dropped": self.dropped,
            "timed_out": self.timed_out,
            "failed": self.failed,
            "compared": self.compared,
            "agreement_rate": self.agreement_rate,
            "confidence_diff_mean": self.confidence_diff_total / pairs if pairs else None,
            "confidence_diff_p95": self.confidence_diff_quantile(0.95),
            "confidence_psi": self.psi(),
        }


def _confidence_bin(confidence: float) -> int:
    return min(CONFIDENCE_BINS - 1, max(0, int(confidence * CONFIDENCE_BINS)))


def population_stability_index(expected: list[int], actual: list[int], floor: float = 1e-4) -> float | None:
    """PSI = Σ (a − e) ln(a / e) over bins of proportions; None when either side is empty."""
    e_total, a_total = sum(expected), sum(actual)
    if not e_total or not a_total:
        return None
    psi = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = max(e / e_total, floor), max(a / a_total, floor)
        psi += (pa - pe) * math.log(pa / pe)
    return psi


@dataclass
class Window:
    """Telemetry over a span of time from one or more Ingress replicas."""

    start: float = 0.0
    end: float = 0.0
    arms: dict[tuple[str, Segment], ArmStats] = field(default_factory=dict)
    shadow: dict[Segment, ShadowStats] = field(default_factory=dict)

    def arm(self, arm: str, segment: Segment = ALL) -> ArmStats:
        key = (arm, segment)
        stats = self.arms.get(key)
        if stats is None:
            stats = self.arms[key] = ArmStats()
        return stats

    def shadow_in(self, segment: Segment = ALL) -> ShadowStats:
        stats = self.shadow.get(segment)
        if stats is None:
            stats = self.shadow[segment] = ShadowStats()
        return stats

    def merge(self, other: Window) -> None:
        self.start = min(self.start, other.start) if self.arms or self.shadow else other.start
        self.end = max(self.end, other.end)
        for key, stats in other.arms.items():
            self.arm(*key).merge(stats)
        for segment, shadow in other.shadow.items():
            self.shadow_in(segment).merge(shadow)

    def segments(self) -> list[Segment]:
        return sorted({segment for _, segment in self.arms if segment != ALL})

    def empty(self) -> bool:
        return not self.arms and not self.shadow

    def to_dict(self) -> dict[str, Any]:
        """A plain-data form (JSON-safe) for sending to the controller and for the store."""
        return {
            "start": self.start,
            "end": self.end,
            "arms": [
                {
                    "arm": arm,
                    "segment": list(segment),
                    **{k: getattr(st, k) for k in _ARM_COUNTERS},
                    "latency": st.latency.to_dict(),
                    "fields": {k: [f.total, f.count, f.total_sq] for k, f in st.fields.items()},
                    "feedback": {k: [f.total, f.count, f.total_sq] for k, f in st.feedback.items()},
                }
                for (arm, segment), st in self.arms.items()
            ],
            "shadow": [
                {"segment": list(segment), **{k: getattr(sh, k) for k in _SHADOW_FIELDS}}
                for segment, sh in self.shadow.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Window:
        window = cls(start=float(data["start"]), end=float(data["end"]))
        for row in data["arms"]:
            st = window.arm(row["arm"], (row["segment"][0], row["segment"][1]))
            for k in _ARM_COUNTERS:
                setattr(st, k, int(row[k]))
            st.latency = LatencySketch.from_dict(row["latency"])
            st.fields = {k: _field_stat(v) for k, v in row["fields"].items()}
            st.feedback = {k: _field_stat(v) for k, v in row.get("feedback", {}).items()}
        for row in data["shadow"]:
            sh = window.shadow_in((row["segment"][0], row["segment"][1]))
            for k in _SHADOW_FIELDS:
                value = row[k]
                setattr(sh, k, list(value) if isinstance(value, list) else value)
        return window


def _field_stat(row: list[float]) -> FieldStat:
    return FieldStat(float(row[0]), int(row[1]), float(row[2]) if len(row) > 2 else 0.0)


_ARM_COUNTERS = ("requests", "ok", "errors", "timeouts", "overloaded", "contract_failures", "fallbacks")
_SHADOW_FIELDS = (
    "mirrored",
    "completed",
    "dropped",
    "timed_out",
    "failed",
    "compared",
    "agreed",
    "confidence_diff",
    "confidence_diff_total",
    "confidence_stable",
    "confidence_candidate",
)
