"""The Ingress's request log (which arm answered each request id, for POST /feedback): bounded in count,
age and memory, and the newest answer wins when a client reuses its id."""

from __future__ import annotations

import tracemalloc

import pytest

from serving.operators import RequestLog

GOLD = [("tenant", "acme"), ("tier", "gold")]
SILVER = [("tenant", "acme"), ("tier", "silver")]


def test_an_answered_request_is_found_with_its_arm_time_and_segments() -> None:
    log = RequestLog(max_entries=10, max_age_s=60)
    log.add("req-1", "candidate", 100.0, GOLD)
    log.add("req-2", "stable", 101.0, SILVER)

    served = log.find("req-1", now=110.0)

    assert served is not None
    assert (served.arm, served.ts, served.segments) == ("candidate", 100.0, tuple(GOLD))
    assert log.find("req-3", now=110.0) is None


def test_a_reused_request_id_is_joined_to_its_newest_answer() -> None:
    log = RequestLog(max_entries=4, max_age_s=60)
    log.add("same", "stable", 1.0, GOLD)
    log.add("other", "stable", 2.0, GOLD)
    log.add("same", "candidate", 3.0, SILVER)

    served = log.find("same", now=4.0)

    assert served is not None and (served.arm, served.ts) == ("candidate", 3.0)


def test_the_newest_answer_wins_across_the_rings_wrap() -> None:
    log = RequestLog(max_entries=3, max_age_s=60)
    log.add("same", "stable", 1.0, [])
    log.add("x", "stable", 2.0, [])
    log.add("y", "stable", 3.0, [])
    log.add("same", "candidate", 4.0, [])  # overwrites slot 0, the old "same"
    log.add("z", "stable", 5.0, [])
    log.add("same", "stable", 6.0, [])  # slot 2; slot 0 still holds the candidate answer

    served = log.find("same", now=7.0)

    assert served is not None and (served.arm, served.ts) == ("stable", 6.0)


def test_the_log_keeps_only_the_newest_max_entries() -> None:
    log = RequestLog(max_entries=100, max_age_s=3600)
    for i in range(250):
        log.add(f"req-{i}", "stable", float(i), [])

    assert len(log) == 100
    assert [i for i in range(250) if log.find(f"req-{i}", now=300.0) is not None] == list(range(150, 250))


def test_an_answer_older_than_max_age_is_not_joined() -> None:
    log = RequestLog(max_entries=10, max_age_s=60)
    log.add("old", "candidate", 0.0, GOLD)
    log.add("new", "candidate", 50.0, GOLD)

    assert log.find("old", now=61.0) is None
    assert log.find("new", now=61.0) is not None


def test_equal_segment_lists_are_stored_once() -> None:
    log = RequestLog(max_entries=10, max_age_s=60)
    log.add("a", "stable", 1.0, list(GOLD))
    log.add("b", "candidate", 2.0, list(GOLD))

    a, b = log.find("a", now=3.0), log.find("b", now=3.0)

    assert a is not None and b is not None and a.segments is b.segments


def test_memory_is_a_few_dozen_bytes_a_request_and_stops_growing_when_full() -> None:
    segments = [("endpoint", "/predict"), ("tenant", "acme"), ("tier", "gold"), ("region", "eu")]
    ids = [f"{i:032x}" for i in range(150_000)]  # made before tracing: the ids belong to the caller
    tracemalloc.start()
    try:
        log = RequestLog(max_entries=50_000, max_age_s=3600)
        for i, request_id in enumerate(ids[:50_000]):
            log.add(request_id, "stable", float(i), list(segments))
        full, _ = tracemalloc.get_traced_memory()
        for i, request_id in enumerate(ids[50_000:], start=50_000):
            log.add(request_id, "stable", float(i), list(segments))
        later, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert full / 50_000 < 40  # bytes per logged request (a dict of records took ~170 here)
    assert later - full < 64 * 1024


def test_a_log_needs_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="max_entries must be at least 1, got 0"):
        RequestLog(max_entries=0)


def test_feedback_given_to_an_answer_is_remembered_until_its_slot_is_reused() -> None:
    log = RequestLog(max_entries=2, max_age_s=60)
    log.add("req-1", "candidate", 1.0, GOLD)
    served = log.find("req-1", now=2.0)
    assert served is not None and log.given(served, "human_review_score") is None
    log.give(served, "human_review_score", 0.25)
    again = log.find("req-1", now=3.0)
    assert again is not None and log.given(again, "human_review_score") == 0.25
    assert log.given(again, "clicked") is None  # per metric
    log.add("req-2", "stable", 4.0, [])
    log.add("req-3", "stable", 5.0, [])  # takes req-1's slot: what was given there goes with it
    newest = log.find("req-3", now=6.0)
    assert newest is not None and newest.slot == served.slot
    assert log.given(newest, "human_review_score") is None
