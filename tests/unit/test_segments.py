"""Segment labels: sources, size buckets, and cardinality capped at the top N by volume."""

import random
import tracemalloc

import pytest
from pydantic import ValidationError

from serving.segments import OTHER, HeavyHitters, LabelSource, SegmentExtractor, SegmentsSection, SizeBuckets


def test_labels_come_from_headers_body_fields_and_path():
    config = SegmentsSection(
        labels={
            "tenant": LabelSource(header="X-Tenant", body_field="tenant"),
            "endpoint": LabelSource(path=True),
        },
        size=SizeBuckets(by="bytes", edges=(100, 1000)),
    )
    x = SegmentExtractor(config)
    assert x.segments({"x-tenant": "acme"}, {}, "/predict", 50) == [
        ("tenant", "acme"),
        ("endpoint", "/predict"),
        ("size", "<100B"),
    ]
    assert x.segments({}, {"tenant": "globex"}, "/predict", 500)[0] == ("tenant", "globex")
    assert x.segments({}, {}, "/predict", 5000) == [
        ("tenant", "unset"),
        ("endpoint", "/predict"),
        ("size", ">=1000B"),
    ]


def test_size_by_tokens_counts_words_of_the_text():
    buckets = SizeBuckets(by="tokens", edges=(4, 16))
    x = SegmentExtractor(SegmentsSection(labels={}, size=buckets))
    assert x.segments({}, {"text": "one two three four five"}, "/", 10) == [("size", "4-16tok")]


def test_top_n_keep_their_names_and_the_rest_become_other_with_bounded_memory():
    x = SegmentExtractor(
        SegmentsSection(labels={"tenant": LabelSource(header="X-Tenant")}, size=None, top_n=10)
    )
    rng = random.Random(1)
    big = [f"big-{i}" for i in range(10)]
    tracemalloc.start()
    seen: dict[str, set[str]] = {"big": set(), "small": set()}
    for i in range(100_000):
        if rng.random() < 0.5:
            tenant, kind = rng.choice(big), "big"
        else:
            tenant, kind = f"tenant-{i}", "small"  # 50,000+ distinct one-off tenants
        seen[kind].add(x.segments({"x-tenant": tenant}, {}, "/", 1)[0][1])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert x.tracked_values() <= 64
    assert peak < 2_000_000
    assert set(big) <= seen["big"]  # the heavy tenants keep their names
    assert seen["small"] - {OTHER} <= set(big) | {f"tenant-{i}" for i in range(20)}  # one-offs are 'other'
    assert OTHER in seen["small"]


def test_heavy_hitters_find_the_top_values_in_a_skewed_stream():
    h = HeavyHitters(top_n=3)
    rng = random.Random(2)
    for _ in range(50_000):
        h.offer(rng.choice(["a", "a", "a", "b", "b", "c"]) if rng.random() < 0.6 else str(rng.random()))
    assert [v for v, _ in h.top()] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": {"edges": [10, 5]}}, "ascending"),
        ({"labels": {"all": {"header": "X"}}}, "reserved"),
        ({"labels": {"tenant": {}}}, "at least one source"),
        ({"top_n": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_segment_config_is_refused_with_a_reason(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        SegmentsSection.model_validate(kwargs)
