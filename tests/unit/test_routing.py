"""Sticky weighted routing: share, stickiness, monotonicity, resolution."""

import random

import pytest

from serving.routing import BUCKETS, Arm, RoutingTable, bucket_of, candidate_buckets


@pytest.mark.parametrize("weight", [1, 5, 25, 50])
def test_candidate_share_is_within_0_3_points_of_the_weight(weight):
    rng = random.Random(weight)
    table = RoutingTable(candidate_weight=weight)
    keys = [f"user-{rng.getrandbits(64):x}" for _ in range(100_000)]
    share = 100 * sum(table.choose(k, rng) is Arm.CANDIDATE for k in keys) / len(keys)
    assert abs(share - weight) <= 0.3, share


def test_keyless_requests_are_split_at_random_by_the_weight():
    rng = random.Random(3)
    table = RoutingTable(candidate_weight=25)
    share = 100 * sum(table.choose(None, rng) is Arm.CANDIDATE for _ in range(100_000)) / 100_000
    assert abs(share - 25) <= 0.5


def test_same_key_gets_the_same_arm_every_time_and_in_every_process():
    table = RoutingTable(candidate_weight=50)
    rng = random.Random()
    for key in ("alice", "bob", "tenant-7/user-19"):
        assert len({table.choose(key, rng) for _ in range(100)}) == 1
    # blake2b, not Python's salted hash(): the bucket is a fixed function of the key
    assert bucket_of("alice") == bucket_of("alice") and 0 <= bucket_of("alice") < BUCKETS
    assert bucket_of("user-1") == 3768


def test_raising_the_weight_only_moves_keys_from_stable_to_candidate():
    keys = [f"k{i}" for i in range(20_000)]
    previous = {k: Arm.STABLE for k in keys}
    for weight in (0, 0.01, 1, 5, 25, 50, 99.99, 100):
        table = RoutingTable(candidate_weight=weight)
        current = {k: table.choose(k, random.Random()) for k in keys}
        assert not [k for k in keys if previous[k] is Arm.CANDIDATE and current[k] is Arm.STABLE]
        previous = current
    assert all(arm is Arm.CANDIDATE for arm in previous.values())


def test_a_key_returns_to_stable_only_when_the_weight_drops_below_its_bucket():
    key = "user-1"  # bucket 3768
    assert RoutingTable(37.69).choose(key, random.Random()) is Arm.CANDIDATE
    assert RoutingTable(37.68).choose(key, random.Random()) is Arm.STABLE


def test_weight_resolution_is_one_hundredth_of_a_percent():
    assert candidate_buckets(0.01) == 1
    assert candidate_buckets(5) == 500
    assert candidate_buckets(100) == BUCKETS
    with pytest.raises(ValueError, match="0–100"):
        candidate_buckets(100.5)
