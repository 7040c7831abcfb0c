"""Each arm's numbers over time, for the dashboard's charts: time buckets of the all-traffic `ArmStats`,
merged exactly (the latency sketches merge, so a coarser bucket's p95 is the p95 of its requests, never an
average of p95s). Bounded: past `max_points` buckets, adjacent pairs merge and the bucket width doubles,
so a long rollout keeps its whole history at a coarser grain. Pure: the caller passes the times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from serving.segments import ALL
from serving.telemetry import ArmStats, Window

ARMS = ("stable", "candidate", "shadow")


@dataclass
class _Bucket:
    start: float
    arms: dict[str, ArmStats] = field(default_factory=dict)

    def add(self, window: Window) -> None:
        for arm in ARMS:
            stats = window.arms.get((arm, ALL))
            if stats is not None and stats.requests:
                # counters and latency only: the charts plot neither fields nor feedback
                self.arms.setdefault(arm, ArmStats()).merge(replace(stats, fields={}, feedback={}))

    def merge(self, other: _Bucket) -> None:
        for arm, stats in other.arms.items():
            self.arms.setdefault(arm, ArmStats()).merge(stats)


class ArmSeries:
    """Time buckets of per-arm stats.

    Args:
        width_s: the starting bucket width.
        max_points: buckets kept at most; beyond it the width doubles.

    Example:
        >>> w = Window(start=0.0, end=1.0)
        >>> w.arm("stable").record("ok", 0.010)
        >>> s = ArmSeries(width_s=5)
        >>> s.add(w, now=1.0)
        >>> [p["arms"]["stable"]["requests"] for p in s.points()]
        [1]
    """

    def __init__(self, width_s: float = 5.0, max_points: int = 240) -> None:
        if width_s <= 0 or max_points < 2:
            raise ValueError(f"need width_s > 0 and max_points >= 2, got {width_s!r}, {max_points!r}")
        self.width_s, self.max_points = float(width_s), max_points
        self._buckets: list[_Bucket] = []

    def add(self, window: Window, now: float) -> None:
        """Adds a window's counts at time ``now`` (when they reached the controller)."""
        start = math.floor(now / self.width_s) * self.width_s
        if self._buckets and start < self._buckets[-1].start:
            start = self._buckets[-1].start  # a clock step back: into the newest bucket, never reordered
        if not self._buckets or self._buckets[-1].start != start:
            self._buckets.append(_Bucket(start))
        self._buckets[-1].add(window)
        while len(self._buckets) > self.max_points:
            self._coarsen()

    def _coarsen(self) -> None:
        self.width_s *= 2
        merged: list[_Bucket] = []
        for bucket in self._buckets:
            start = math.floor(bucket.start / self.width_s) * self.width_s
            if merged and merged[-1].start == start:
                merged[-1].merge(bucket)
            else:
                merged.append(_Bucket(start, {}))
                merged[-1].merge(bucket)
        self._buckets = merged

    def clear(self) -> None:
        self._buckets = []

    def points(self) -> list[dict[str, Any]]:
        """One point per bucket: its start, width, and per arm requests, p50/p95/p99 (ms), error and
        time-out rates (``None`` where the arm served nothing)."""
        out = []
        for bucket in self._buckets:
            arms = {}
            for arm, stats in bucket.arms.items():
                summary = stats.summary()
                arms[arm] = {
                    "requests": summary["requests"],
                    **summary["latency_ms"],
                    "error_rate": summary["error_rate"],
                    "timeout_rate": summary["timeout_rate"],
                }
            out.append({"t": bucket.start, "width_s": self.width_s, "arms": arms})
        return out
