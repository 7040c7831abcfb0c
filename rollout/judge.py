"""The promotion-gate judge: gates × segments → PASS, FAIL, INCONCLUSIVE, NODATA or ERROR, with evidence.

Pure: no Ray, no HTTP, no clock, no randomness. The controller calls `judge` about once a second on the
telemetry merged over the rollout so far; every bound is a confidence *sequence* (`rollout.sequential`), so
looking that often does not inflate false rollbacks.

Budget: the false-rollback budget ``alpha`` is split equally over the gates; within a gate half goes to the
global ("all") test and half to the segments, Bonferroni over ``labels × max_values_per_label`` (segments
appear over time, so the divisor must not depend on how many have appeared). Within a test that compares
two arms each arm's confidence sequence gets half. Gates judged only globally (OOMs, restarts, GPU memory)
spend their whole share on the global test.

`Judgement.worse` names the segments where the candidate is worse: every segment with a FAIL, plus those the
e-BH procedure (Wang & Ramdas 2022) selects at level ``alpha`` from one-sided e-values of each segment's
rollback condition; e-BH controls the false discovery rate under any dependence between segments (a request
is in several segments at once).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from rollout import sequential as seq
from rollout.gate_rules import POOLED, MalformedEvidence, Verdict, evaluate, is_relative
from rollout.matching import MATCHED_CANDIDATE, MATCHED_STABLE
from serving.segments import ALL, Segment
from serving.sketch import LatencySketch, bucket_upper
from serving.telemetry import ArmStats, Window

__all__ = ["Evidence", "GateResult", "GateSpec", "Judgement", "Verdict", "judge", "worst"]


_SEVERITY = {Verdict.PASS: 0, Verdict.INCONCLUSIVE: 1, Verdict.NODATA: 2, Verdict.ERROR: 3, Verdict.FAIL: 4}


def worst(verdicts: Iterable[Verdict]) -> Verdict:
    """The worst of ``verdicts``; NODATA when there are none."""
    return max(verdicts, key=_SEVERITY.__getitem__, default=Verdict.NODATA)


Metric = Literal[
    "latency", "error_rate", "timeout_rate", "fallback_rate", "schema_pass_rate", "oom_events", "restarts",
    "gpu_memory_bytes", "shadow_agreement", "field", "feedback",
]  # fmt: skip
Rule = Literal["maximum_regression_percent", "maximum", "minimum", "minimum_delta", "maximum_delta"]

_SHADOW_SKIPS = {
    "latency": "not judged at a shadow stage: shadow latencies include batching and mirroring waits",
    "feedback": "not judged at a shadow stage: shadow answers reach no client, so they get no feedback",
    "fallback_rate": "not judged at a shadow stage: shadow failures fall back to nothing",
}
_GLOBAL_ONLY = frozenset({"oom_events", "restarts", "gpu_memory_bytes"})


@dataclass(frozen=True)
class GateSpec:
    """One promotion gate as written in the policy.

    Attributes:
        name: the key as written in the policy, e.g. ``"latency_p95_ms"``.
        metric: what is measured.
        rule: how the threshold applies (see each metric's rule in `judge`).
        threshold: the limit; milliseconds for a latency ``maximum``, percent for ``*_regression_percent``.
        quantile: latency gates only: 0.5, 0.95 or 0.99.
        key: the field name (metric ``field``) or feedback metric name (metric ``feedback``).
    """

    name: str
    metric: Metric
    rule: Rule
    threshold: float
    quantile: float | None = None
    key: str | None = None


@dataclass
class Evidence:
    """What the judge looks at: the merged window and the model servers' counters over the same span.

    Attributes:
        window: telemetry merged over the rollout so far (both arms, same time span).
        live: True at canary stages (the candidate's answers are arm ``candidate``); False at a shadow stage
            (arm ``shadow``, the candidate's answers to mirrored requests).
        oom_events: ``"stable"``/``"candidate"`` → GPU OOM events over the span.
        restarts: ``"stable"``/``"candidate"`` → replica restarts over the span.
        gpu_memory_bytes: ``"stable"``/``"candidate"`` → peak GPU memory per replica; empty without a GPU.
        matched: at canary stages the comparative rules (a regression percent, a delta) compare the
            window's time-matched arms (`rollout.matching`) instead of all of stable with all of the
            candidate; absolute limits still judge every candidate answer.
    """

    window: Window
    live: bool
    oom_events: dict[str, int]
    restarts: dict[str, int]
    gpu_memory_bytes: dict[str, float]
    matched: bool = False


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict in one segment (``"all"`` or ``"label=value"``), with JSON-safe evidence:
    ``rule``, ``threshold``, ``stable`` and ``candidate`` (``n``, ``estimate``, ``lower``, ``upper``),
    ``alpha`` (the level of this test) and ``reason``."""

    gate: str
    segment: str
    verdict: Verdict
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "segment": self.segment,
            "verdict": str(self.verdict),
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class Judgement:
    """All gates' results at one look.

    Attributes:
        results: one result per judged (gate, segment).
        skipped: ``(gate name, why it was not judged now)``.
        worse: segments where the candidate is worse (a FAIL, or selected by e-BH), sorted.
    """

    results: tuple[GateResult, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    worse: tuple[str, ...] = ()

    @property
    def verdict(self) -> Verdict:
        """The worst verdict over all results (NODATA when there are none)."""
        return worst(r.verdict for r in self.results)

    @property
    def rollback(self) -> bool:
        """Any FAIL, globally or in any segment."""
        return any(r.verdict is Verdict.FAIL for r in self.results)

    @property
    def promotable(self) -> bool:
        """Every judged gate PASSes globally and nothing FAILs anywhere (segments need not PASS)."""
        overall = [r for r in self.results if r.segment == "all"]
        return bool(overall) and all(r.verdict is Verdict.PASS for r in overall) and not self.rollback

    def failures(self) -> tuple[GateResult, ...]:
        return tuple(r for r in self.results if r.verdict is Verdict.FAIL)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict),
            "rollback": self.rollback,
            "promotable": self.promotable,
            "worse": list(self.worse),
            "skipped": [{"gate": g, "reason": why} for g, why in self.skipped],
            "results": [r.to_dict() for r in self.results],
        }


def judge(
    gates: Sequence[GateSpec],
    evidence: Evidence,
    *,
    alpha: float = 0.05,
    labels: Collection[str] | None = None,
    max_values_per_label: int = 64,
) -> Judgement:
    """Judges every gate globally and in every segment.

    The rule of each gate kind (bounds are confidence sequences; "c" is the candidate, "s" stable):

    - latency ``maximum_regression_percent X`` (f = 1+X/100): FAIL when c's quantile lower bound > f × s's
      upper bound, or when c's geometric-mean latency is proven more than f × s's (a whole-distribution
      shift); PASS when c's quantile upper bound ≤ f × s's lower bound, or when the geometric-mean ratio's
      upper bound ≤ 1+2X/100 (the power to have seen twice the tolerated shift, as the rate gates rule out
      twice their limit) with the ratio's and the quantile's estimates within f and ≥ 10 samples beyond the
      quantile. (Quantile bounds alone need thousands of tail samples to settle a 10 % margin; the location
      of log latency carries most of the information about a shift and settles it in hundreds.)
    - latency ``maximum`` (a ceiling in ms): FAIL when c's lower bound > the ceiling and > s's upper bound;
      PASS when c's upper bound ≤ max(ceiling, 1.1 × s's lower bound).
    - rates, ``maximum`` (``minimum`` on schema pass / shadow agreement is the same on the failure rate):
      FAIL when c's bound is past the limit and c is worse than s (a stable that also breaks the limit is no
      reason to roll back); PASS when c's upper bound ≤ 2 × max(limit, s's lower bound).
    - rates, ``maximum_delta`` / ``minimum_delta`` / ``maximum_regression_percent``: non-inferiority of c − s
      or c / s.
    - means (fields, feedback), ``minimum_delta`` / ``maximum_delta``: non-inferiority of c − s;
      ``minimum`` / ``maximum``: like rates, with a margin of 0.1 standard deviations.
    - ``oom_events`` / ``restarts`` ``maximum``: FAIL when c's count > maximum (and, when maximum > 0, c's
      rate per request is above s's by the Lindon & Malek test); PASS at ≤ maximum after 1,000 requests.
    - ``gpu_memory_bytes``: peak values, compared directly.

    NODATA when an arm the rule needs has no samples; ERROR (never raised) on malformed input. After a
    global FAIL, the gate's segments are re-tested at its segment budget spread over the segments present, so
    a rollback names where the candidate is worse (see `_localize`).

    Args:
        gates: the policy's gates.
        evidence: the window and counters.
        alpha: the false-rollback budget over all gates, segments and looks.
        labels: segment labels to judge (None: every label in the window). Pass the configured labels for
            a budget that is fixed from the first look.
        max_values_per_label: values per label budgeted for; beyond it the busiest are judged.

    Returns:
        The `Judgement`.

    Raises:
        ValueError: ``alpha`` outside (0, 1) or ``max_values_per_label`` < 1 (a caller's bug).

    Example:
        >>> w = Window()
        >>> w.arms[("stable", ALL)] = ArmStats(requests=20_000, ok=19_800, errors=200)  # 1% errors
        >>> w.arms[("candidate", ALL)] = ArmStats(requests=5_000, ok=4_850, errors=150)  # 3% errors
        >>> gate = GateSpec("error_rate", "error_rate", "maximum", 0.01)
        >>> j = judge([gate], Evidence(w, live=True, oom_events={}, restarts={}, gpu_memory_bytes={}))
        >>> str(j.results[0].verdict), j.rollback, j.promotable
        ('FAIL', True, False)
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if max_values_per_label < 1:
        raise ValueError(f"max_values_per_label must be >= 1, got {max_values_per_label!r}")
    ctx = Context(evidence)
    segments, skipped, n_labels = _select_segments(evidence.window, labels, max_values_per_label)
    per_gate = alpha / max(1, len(gates))
    per_segment = per_gate / 2 / (max(1, n_labels) * max_values_per_label)
    names = {segment: f"{segment[0]}={segment[1]}" for segment in segments}
    names[ALL] = "all"
    results: list[GateResult] = []
    hypotheses: list[tuple[str, float]] = []
    for gate in gates:
        why = _skip_reason(gate, evidence)
        if why is not None:
            skipped.append((gate.name, why))
            continue
        targets = [(ALL, per_gate)]
        if gate.metric not in _GLOBAL_ONLY:
            targets = [(ALL, per_gate / 2), *((segment, per_segment) for segment in segments)]
        rule, outcomes = evaluate(gate, targets, ctx)
        threshold = _finite(gate.threshold)
        for (segment, level), out in zip(targets, outcomes, strict=True):
            name = names[segment]
            evidence_ = {
                "rule": rule,
                "threshold": threshold,
                "stable": out.stable,
                "candidate": out.candidate,
                "alpha": level,
                "reason": out.reason,
            }
            if out.extra:
                evidence_.update(out.extra)
            if ctx.matched and is_relative(gate):
                evidence_["baseline"] = "matched"
            results.append(GateResult(gate.name, name, out.verdict, evidence_))
            if segment != ALL:
                hypotheses.append((name, out.e_value))
    results = _localize(gates, results, segments, names, per_gate, ctx)
    worse = {r.segment for r in results if r.verdict is Verdict.FAIL and r.segment != "all"}
    worse.update(hypotheses[i][0] for i in seq.e_bh([e for _, e in hypotheses], alpha))
    return Judgement(tuple(results), tuple(skipped), tuple(sorted(worse)))


def _localize(
    gates: Sequence[GateSpec],
    results: list[GateResult],
    segments: list[Segment],
    names: dict[Segment, str],
    per_gate: float,
    ctx: Context,
) -> list[GateResult]:
    """Says where a global FAIL comes from. A regression confined to one segment usually fails the global test
    first (it gets half the gate's budget; each segment only its share of the budgeted maximum of values).
    Once the global hypothesis is rejected, the gate's segment half is re-spent over the segments actually
    present (a gatekeeping step: the rollback is already decided, this only names segments), and those that
    fail at that level are marked FAIL with the reason saying so."""
    failed = {r.gate for r in results if r.segment == "all" and r.verdict is Verdict.FAIL}
    if not failed or not segments:
        return results
    upgraded: dict[tuple[str, str], GateResult] = {}
    # Each label's values partition the traffic, so the drill-down spends the gate's segment half per label
    # and, within a label, over the values present.
    per_label: dict[str, int] = {}
    for label, _ in segments:
        per_label[label] = per_label.get(label, 0) + 1
    levels = {seg: per_gate / 2 / len(per_label) / per_label[seg[0]] for seg in segments}
    for gate in gates:
        if gate.name not in failed or gate.metric in _GLOBAL_ONLY:
            continue
        _, outcomes = evaluate(gate, [(segment, levels[segment]) for segment in segments], ctx)
        for segment, out in zip(segments, outcomes, strict=True):
            if out.verdict is Verdict.FAIL:
                upgraded[(gate.name, names[segment])] = GateResult(
                    gate.name,
                    names[segment],
                    Verdict.FAIL,
                    {
                        "rule": "after the global FAIL, the segments re-tested at the gate's segment budget "
                        "over the segments present",
                        "threshold": _finite(gate.threshold),
                        "stable": out.stable,
                        "candidate": out.candidate,
                        "alpha": levels[segment],
                        "reason": f"localized: {out.reason}",
                        **(out.extra or {}),
                    },
                )
    return [upgraded.get((r.gate, r.segment), r) if r.verdict is not Verdict.FAIL else r for r in results]


class Context:
    """What one `judge` call looks at, with its caches: each arm is validated once, each histogram sorted
    once."""

    def __init__(self, evidence: Evidence) -> None:
        self.evidence = evidence
        self.window = evidence.window
        self.candidate = "candidate" if evidence.live else "shadow"
        self.matched = evidence.matched and evidence.live
        self._checked: set[int] = set()
        self._hist: dict[int, Histogram] = {}

    def pooled(self) -> Context:
        """This context with the candidate's live and mirrored answers as one arm (see `_pooled_rates`)."""
        other = Context(self.evidence)
        other.candidate, other._checked, other._hist = POOLED, self._checked, self._hist
        return other

    def pair(self, relative: bool) -> tuple[str, str]:
        """The arms a rule compares, ``(stable, candidate)``: the time-matched ones for a comparative rule
        when the evidence asks for them."""
        if relative and self.matched:
            return MATCHED_STABLE, MATCHED_CANDIDATE
        return "stable", self.candidate

    def arm(self, name: str, segment: Segment) -> ArmStats | None:
        if name == POOLED:
            parts = [
                p for p in (self.arm("candidate", segment), self.arm("shadow", segment)) if p is not None
            ]
            if not parts:
                return None
            merged = ArmStats()
            for part in parts:  # counters only: the rate rules read no latency from it
                for counter in ("requests", "ok", "errors", "timeouts", "overloaded", "contract_failures"):
                    setattr(merged, counter, getattr(merged, counter) + getattr(part, counter))
            return merged
        stats = self.window.arms.get((name, segment))
        if stats is not None and id(stats) not in self._checked:
            _check_arm(stats)
            self._checked.add(id(stats))
        return stats

    def hist(self, sketch: LatencySketch) -> Histogram:
        key = id(sketch)
        if key not in self._hist:
            if sketch.bins and min(sketch.bins.values()) < 0:
                raise MalformedEvidence("latency bucket counts must be non-negative")
            index = sorted(sketch.bins)  # empty buckets only make plateaus in the cumulative counts
            cumulative = list(itertools.accumulate(map(sketch.bins.__getitem__, index)))
            if (cumulative[-1] if cumulative else 0) != sketch.count:
                raise MalformedEvidence("latency bucket counts do not add up to the sketch's count")
            self._hist[key] = Histogram(index, _Edges(index), cumulative)
        return self._hist[key]


@dataclass(frozen=True)
class Histogram:
    """A latency sketch's buckets in order: indices, upper edges and cumulative counts."""

    index: list[int]
    edges: _Edges
    cumulative: list[int]

    @property
    def n(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0

    def exceeding(self, t: float) -> int:
        """How many values are surely above ``t``: those in buckets whose lower edge is at or above it."""
        if not math.isfinite(t) or t <= 0:
            return 0
        j = math.ceil(math.log(t) / _LOG_GAMMA)  # bucket j's upper edge >= t; buckets above j lie above t
        pos = bisect.bisect_right(self.index, j)
        return self.n - (self.cumulative[pos - 1] if pos else 0)


_LOG_GAMMA = math.log(bucket_upper(1))  # bucket i holds (gamma^(i-1), gamma^i]


class _Edges(Sequence[float]):
    """The upper edges of a histogram's buckets, computed only where a bound lands."""

    def __init__(self, index: list[int]) -> None:
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    @overload
    def __getitem__(self, i: int) -> float: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[float]: ...
    def __getitem__(self, i: int | slice) -> float | Sequence[float]:
        if isinstance(i, slice):
            return [bucket_upper(j) for j in self._index[i]]
        return bucket_upper(self._index[i])


def _check_arm(stats: ArmStats) -> None:
    n = stats.requests
    counters = (n, stats.ok, stats.errors, stats.timeouts, stats.overloaded, stats.contract_failures)
    for value in (*counters, stats.fallbacks):
        if type(value) is not int or not 0 <= value <= n:
            raise MalformedEvidence(f"counters must be integers in [0, requests={n!r}], got {value!r}")
    for kind, table in (("field", stats.fields), ("feedback", stats.feedback)):
        for key, stat in table.items():
            if not (math.isfinite(stat.total) and math.isfinite(stat.total_sq)) or stat.count < 0:
                raise MalformedEvidence(f"{kind} {key!r}: total={stat.total}, count={stat.count}")


def _select_segments(
    window: Window, labels: Collection[str] | None, cap: int
) -> tuple[list[Segment], list[tuple[str, str]], int]:
    volume: dict[str, dict[str, int]] = {}
    for (_, segment), stats in window.arms.items():
        if segment != ALL:
            values = volume.setdefault(segment[0], {})
            n = stats.requests if isinstance(stats.requests, int) and stats.requests > 0 else 0
            values[segment[1]] = values.get(segment[1], 0) + n
    for segment in window.shadow:
        if segment != ALL:
            volume.setdefault(segment[0], {}).setdefault(segment[1], 0)
    wanted = set(labels) if labels is not None else set(volume)
    chosen: list[Segment] = []
    skipped: list[tuple[str, str]] = []
    for label in sorted(wanted & volume.keys()):
        values = volume[label]
        ranked = sorted(values, key=lambda v: (-values[v], v))
        if len(ranked) > cap:  # beyond the budgeted values only the busiest keep the error guarantee
            why = f"label {label!r} has {len(ranked)} values; judged the {cap} busiest"
            skipped.append(("(segments)", why))
        chosen.extend((label, v) for v in sorted(ranked[:cap]))
    return chosen, skipped, len(wanted)


def _skip_reason(gate: GateSpec, evidence: Evidence) -> str | None:
    if not evidence.live and gate.metric in _SHADOW_SKIPS:
        return _SHADOW_SKIPS[gate.metric]
    if gate.metric == "shadow_agreement" and evidence.live:
        pairs = evidence.window.shadow.get(ALL)
        if pairs is None or not pairs.compared:
            return "no shadow pairs at a live stage"
    if gate.metric == "gpu_memory_bytes" and not evidence.gpu_memory_bytes:
        return "no GPU memory reported (no GPU)"
    return None


def _finite(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None
