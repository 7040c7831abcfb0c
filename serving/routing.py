"""Sticky weighted routing between the stable and the candidate arm. Pure: no Ray, no HTTP, no clock.

A routing key is hashed into one of `BUCKETS` (10,000) buckets with a hash that is the same in every process
and on every machine; the candidate receives the buckets below ``weight × 100``. So the weight resolves to
0.01 %, raising it only moves keys from stable to candidate, and a key returns to stable only when the weight
drops below its bucket. Requests without a key draw a bucket at random.
"""

from __future__ import annotations

import enum
import hashlib
import random
from dataclasses import dataclass

BUCKETS = 10_000


class Arm(enum.StrEnum):
    """Which model answered, or was meant to answer, a request."""

    STABLE = "stable"
    CANDIDATE = "candidate"


def bucket_of(key: str) -> int:
    """The key's bucket in ``[0, BUCKETS)``; stable across processes, machines and Python versions.

    >>> bucket_of("user-42") == bucket_of("user-42")
    True
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def candidate_buckets(weight_percent: float) -> int:
    """How many of the `BUCKETS` go to the candidate at ``weight_percent`` (0–100, resolution 0.01)."""
    if not 0.0 <= weight_percent <= 100.0:
        raise ValueError(f"weight_percent must be within 0–100, got {weight_percent!r}")
    return round(weight_percent * BUCKETS / 100.0)


@dataclass(frozen=True)
class RoutingTable:
    """The routing decision data one Ingress replica holds; replaced whole, never mutated.

    Attributes:
        candidate_weight: percent of traffic (0–100) the candidate serves.
        version: increases with every change, so a replica can tell a newer table from an older one.
    """

    candidate_weight: float = 0.0
    version: int = 0

    @property
    def threshold(self) -> int:
        return candidate_buckets(self.candidate_weight)

    def arm_for_bucket(self, bucket: int) -> Arm:
        return Arm.CANDIDATE if bucket < self.threshold else Arm.STABLE

    def choose(self, key: str | None, rng: random.Random) -> Arm:
        """The arm for a request: by the key's bucket when there is a key, else by a random bucket."""
        bucket = bucket_of(key) if key else rng.randrange(BUCKETS)
        return self.arm_for_bucket(bucket)
