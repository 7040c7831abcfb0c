"""The controller's bookkeeping without Ray or a clock: merging, OOM accumulation, restarts, /metrics."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from rollout.metrics import SnapshotCollector
from rollout.state import STALE_AFTER_S, TelemetryState
from serving.segments import ALL
from serving.telemetry import Window

STATUSES = ["ok", "error", "timeout", "overloaded", "contract"]
requests = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from(["stable", "candidate", "shadow"]),
        st.sampled_from(STATUSES),
        st.sampled_from(["a", "b", "other"]),
        st.floats(1e-5, 30, allow_nan=False),
    ),
    max_size=200,
)


@settings(max_examples=60, deadline=None)
@given(requests)
def test_merged_counts_equal_the_sum_of_the_replicas(reqs):
    replicas = [Window() for _ in range(4)]
    whole = Window()
    for replica, arm, status, tenant, latency in reqs:
        for w in (replicas[replica], whole):
            w.arm(arm).record(status, latency)
            w.arm(arm, ("tenant", tenant)).record(status, latency)
    state = TelemetryState()
    for i, w in enumerate(replicas):
        state.ingest(f"ingress-{i}", Window.from_dict(w.to_dict()), 0, now=1.0)
    assert set(state.total.arms) == set(whole.arms)
    for key, stats in whole.arms.items():
        merged = state.total.arms[key]
        assert merged.requests == stats.requests and merged.errors == stats.errors
        assert merged.latency.bins == stats.latency.bins


def test_oom_events_accumulate_across_reports_and_replicas():
    state = TelemetryState()
    state.report_replica("candidate", "r1", {"oom_events": 2}, now=0)
    state.report_replica("candidate", "r1", {"oom_events": 5}, now=1)
    state.report_replica("candidate", "r2", {"oom_events": 1}, now=1)
    assert state.oom_events == {"candidate": 6}


def test_a_replaced_replica_counts_as_one_restart_and_a_quiet_one_does_not_double_count():
    state = TelemetryState()
    state.report_replica("candidate", "old", {}, now=0)
    state.report_replica("stable", "s1", {}, now=0)
    state.report_replica("candidate", "new", {}, now=3)  # Serve started a replacement
    state.report_replica("stable", "s1", {}, now=3)
    state.report_replica("stable", "s1", {}, now=3 + STALE_AFTER_S)
    state.report_replica("candidate", "new", {}, now=3 + STALE_AFTER_S)
    assert state.restarts == {"candidate": 1}
    # a replica that goes quiet first and is replaced later also counts once
    state.report_replica("stable", "s1", {}, now=20)
    state.expire(now=40)
    state.report_replica("stable", "s2", {}, now=45)
    assert state.restarts == {"candidate": 1, "stable": 1}


def test_metrics_text_parses_and_has_arms_histogram_and_counters():
    state = TelemetryState()
    w = Window()
    for i in range(50):
        w.arm("stable").record("ok", 0.01 + i / 1000)
        w.arm("candidate", ("tenant", "acme")).record("error", 0.02)
    w.shadow_in().mirrored = 3
    state.ingest("i1", w, 0, now=0)
    for value in (0.5, 1.0):  # what the controller counts once the store has it
        state.total.arm("candidate", ("tenant", "acme")).record_feedback("human_review_score", value)
    state.report_replica(
        "candidate",
        "r1",
        {
            "oom_events": 2,
            "gpus": [
                {
                    "index": 0,
                    "name": "X",
                    "memory_used_bytes": 5,
                    "memory_total_bytes": 10,
                    "utilization_ratio": 0.5,
                    "process_memory_bytes": 3,
                }
            ],
        },
        now=0,
    )
    text = (
        SnapshotCollector(
            "canary",
            state.total,
            {"candidate_weight": 5, "shadow_percent": 10, "stage": "manual", "mode": "manual"},
            state.replica_reports(),
            state.per_arm(),
            [
                {"gate": "latency_p95_ms", "segment": "all", "verdict": "FAIL"},
                {"gate": "latency_p95_ms", "segment": "tier=gold", "verdict": "FAIL"},
            ],
        )
        .render()
        .decode()
    )
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["canary_request_latency_seconds"].type == "histogram"
    buckets = [s for s in families["canary_request_latency_seconds"].samples if s.name.endswith("_bucket")]
    assert {s.labels["arm"] for s in buckets} == {"stable"}
    assert buckets[-1].value == 50  # +Inf holds every observation
    oom = [s for s in families["canary_gpu_oom_events"].samples if s.name.endswith("_total")]
    assert {s.labels["arm"]: s.value for s in oom} == {"stable": 0, "candidate": 2}
    assert families["canary_candidate_weight_percent"].samples[0].value == 5
    assert families["canary_gpu_process_memory_bytes"].samples[0].value == 3
    errors = [
        s
        for s in families["canary_requests"].samples
        if s.labels.get("outcome") == "error" and s.labels["arm"] == "candidate"
    ]
    assert errors and errors[0].value == 50 and errors[0].labels["value"] == "acme"
    verdicts = {(v.labels["segment"], v.labels["verdict"]) for v in families["canary_gate_verdict"].samples}
    assert verdicts == {("all", "FAIL"), ("tier=gold", "FAIL")}
    scored = [s for s in families["canary_feedback"].samples if s.name == "canary_feedback_total"]
    assert [(s.labels["arm"], s.labels["value"], s.labels["metric"], s.value) for s in scored] == [
        ("candidate", "acme", "human_review_score", 2)
    ]
    assert families["canary_feedback"].type == "counter"
    assert [s.value for s in families["canary_feedback_mean"].samples] == [0.75]


def test_a_replica_stopped_on_purpose_is_no_restart_and_its_last_ooms_count():
    """Serve stops replicas on purpose at a redeploy or a scale-down; their last report says so."""
    state = TelemetryState()
    state.report_replica("candidate", "old", {"oom_events": 0}, now=0)
    state.report_replica("candidate", "new", {"oom_events": 0}, now=2)  # the redeploy's replacement
    state.report_replica("candidate", "old", {"oom_events": 2, "stopping": "shutdown"}, now=3)
    state.report_replica("candidate", "new", {"oom_events": 0}, now=3 + STALE_AFTER_S + 1)
    state.expire(now=3 + STALE_AFTER_S + 1)
    assert state.restarts == {} and state.oom_events == {"candidate": 2}
    assert [r.replica_id for r in state.replicas.values()] == ["new"]
    # one replaced for failing its health check (repeated OOMs) is a restart, said or not
    state.report_replica("candidate", "new", {"oom_events": 3, "stopping": "unhealthy"}, now=20)
    for now in (21, 26, 31):  # its replacement, reporting
        state.report_replica("candidate", "newer", {"oom_events": 0}, now=now)
    state.expire(now=21 + STALE_AFTER_S + 1)
    assert state.restarts == {"candidate": 1} and state.oom_events == {"candidate": 5}


def test_a_quiet_replica_that_comes_back_leaves_no_loss_for_a_later_replica_to_claim():
    state = TelemetryState()
    state.report_replica("stable", "s1", {}, now=0)
    state.expire(now=STALE_AFTER_S + 1)  # quiet for a while: presumed lost
    state.report_replica("stable", "s1", {}, now=STALE_AFTER_S + 2)  # it was only quiet
    state.report_replica("stable", "s2", {}, now=STALE_AFTER_S + 3)  # scaled up: a new replica, no restart
    assert state.restarts == {}


def test_a_controller_that_stalled_counts_no_restart_when_its_replicas_report_again():
    """Every replica silent at once means the controller heard nothing (a long pause of its own), not that
    they died: an older replica beside a newer, equally silent one is no restart."""
    state = TelemetryState()
    state.report_replica("stable", "s1", {}, now=0)
    state.report_replica("stable", "s2", {}, now=5)  # a scale-up, reporting since
    state.report_replica("stable", "s1", {}, now=6)
    state.report_replica("stable", "s2", {}, now=6)
    stalled_until = 6 + STALE_AFTER_S + 5
    state.report_replica("stable", "s2", {}, now=stalled_until)  # the queued reports arrive
    state.report_replica("stable", "s1", {}, now=stalled_until)
    state.expire(now=stalled_until + 1)
    assert state.restarts == {}
    assert sorted(r.replica_id for r in state.replicas.values()) == ["s1", "s2"]
    # a replica that truly dies beside live ones still counts, once its replacement reports
    state.report_replica("stable", "s2", {}, now=stalled_until + 6)
    state.report_replica("stable", "s3", {}, now=stalled_until + 7)
    state.report_replica("stable", "s2", {}, now=stalled_until + 12)
    state.report_replica("stable", "s3", {}, now=stalled_until + 12)
    state.expire(now=stalled_until + 12)
    assert state.restarts == {"stable": 1}


def test_a_report_that_arrives_after_its_replicas_last_one_is_ignored():
    state = TelemetryState()
    state.report_replica("candidate", "old", {"oom_events": 1}, now=0)
    state.report_replica("candidate", "new", {"oom_events": 0}, now=1)
    state.report_replica("candidate", "old", {"oom_events": 1, "stopping": "shutdown"}, now=2)
    state.report_replica("candidate", "old", {"oom_events": 1}, now=2.5)  # sent before, arrived after
    assert [r.replica_id for r in state.replicas.values()] == ["new"]
    state.report_replica("candidate", "new", {"oom_events": 0}, now=3 + 2 * STALE_AFTER_S)
    state.expire(now=3 + 2 * STALE_AFTER_S)
    assert state.restarts == {} and state.oom_events == {"candidate": 1}


def test_metrics_counters_span_the_controllers_life_and_gauges_the_current_rollout():
    """A previous, slow candidate must not colour the current one's p95 gauge; the counters only grow."""
    earlier, current = Window(), Window()
    for _ in range(100):
        earlier.arm("candidate", ALL).record("ok", 0.100)
        current.arm("candidate", ALL).record("ok", 0.010)
    total = Window()
    total.merge(earlier)
    total.merge(current)
    text = SnapshotCollector("canary", total, {}, [], {}, current=current).render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [p95] = [
        s.value for s in families["canary_latency_p95_seconds"].samples if s.labels["arm"] == "candidate"
    ]
    assert p95 == pytest.approx(0.010, rel=0.02)
    ok = [s.value for s in families["canary_requests"].samples if s.labels["outcome"] == "ok"]
    assert ok == [200]


def test_the_totals_keep_a_bounded_number_of_values_per_label_and_count_the_rest_as_other():
    state = TelemetryState()
    for i in range(6):  # six tenants over the controller's life (rollouts naming values of their own)
        w = Window()
        for segment in (ALL, ("tenant", f"t{i}"), ("tier", "gold")):
            w.arm("stable", segment).record("ok", 0.01)
        w.shadow_in(("tenant", f"t{i}")).mirrored += 1
        state.ingest("ingress-0", w, 0, now=1.0, max_values=4)
    again = Window()
    again.arm("stable", ("tenant", "t1")).record("error", 0.01)
    state.ingest("ingress-0", again, 0, now=2.0, max_values=4)
    tenants = {seg[1]: st.requests for (arm, seg), st in state.total.arms.items() if seg[0] == "tenant"}
    assert tenants == {"t0": 1, "t1": 2, "t2": 1, "t3": 1, "other": 2}  # t4 and t5 beyond the four
    assert state.total.arm("stable", ("tier", "gold")).requests == state.total.arm("stable").requests == 6
    assert state.total.shadow_in(("tenant", "other")).mirrored == 2
    assert state.metric_segment(("tenant", "unset"), 4) == ("tenant", "unset")
