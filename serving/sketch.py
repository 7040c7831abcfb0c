"""Mergeable log-bucketed latency histograms with a bounded relative error. Pure: no Ray, no clock.

A value ``x`` falls in bucket ``ceil(log_gamma(x))`` with ``gamma = (1 + a) / (1 - a)``; reporting each bucket
by ``2 gamma^i / (gamma + 1)`` keeps every quantile within relative error ``a`` (the DDSketch construction,
Masson et al., VLDB 2019). Buckets are sparse and bounded: 1 µs to 1 hour at 1 % is at most ~1,100 of them.
Merging adds bucket counts, so merged sketches equal the sketch of the union exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RELATIVE_ACCURACY = 0.01
_GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
MIN_VALUE = 1e-6  # seconds; smaller values count in the lowest bucket
MAX_VALUE = 3600.0


def _index(value: float) -> int:
    return math.ceil(math.log(min(max(value, MIN_VALUE), MAX_VALUE)) / _LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The representative value of bucket ``index`` (within `RELATIVE_ACCURACY` of anything in it)."""
    return 2 * _GAMMA**index / (_GAMMA + 1)


def bucket_upper(index: int) -> float:
    """The upper bound of bucket ``index``: every value in it is ``<=`` this."""
    return float(_GAMMA**index)


@dataclass
class LatencySketch:
    """Counts of values (seconds) per log bucket, plus their exact count and sum.

    Example:
        >>> s = LatencySketch()
        >>> for ms in range(1, 101):
        ...     s.add(ms / 1000)
        >>> abs(s.quantile(0.95) - 0.095) / 0.095 <= 0.01
        True
    """

    bins: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0

    def add(self, value: float, n: int = 1) -> None:
        index = _index(value)
        self.bins[index] = self.bins.get(index, 0) + n
        self.count += n
        self.total += value * n

    def merge(self, other: LatencySketch) -> None:
        for index, n in other.bins.items():
            self.bins[index] = self.bins.get(index, 0) + n
        self.count += other.count
        self.total += other.total

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 ≤ q ≤ 1), or None when empty."""
        if not self.count:
            return None
        rank = q * (self.count - 1)
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen > rank:
                return bucket_value(index)
        return bucket_value(max(self.bins))

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        return {"bins": {str(k): v for k, v in self.bins.items()}, "count": self.count, "total": self.total}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencySketch:
        return cls(
            {int(k): int(v) for k, v in data["bins"].items()}, int(data["count"]), float(data["total"])
        )
