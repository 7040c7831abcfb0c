"""Telemetry on the real stack: merged across Ingress replicas, /metrics, OOMs and restarts counted."""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from conftest import ADMIN_TOKEN, deployment, wait_until
from prometheus_client.parser import text_string_to_metric_families

from rollout.state import STALE_AFTER_S


def fire(canary, n, **headers):
    with ThreadPoolExecutor(8) as pool:
        return [r.status_code for r in pool.map(lambda i: canary.predict(f"m{i}", **headers), range(n))]


def served(canary):
    arms = canary.rollout()["arms"]
    return arms["stable"]["stats"]["requests"] + arms["candidate"]["stats"]["requests"]


def test_counts_merged_over_two_ingress_replicas_equal_what_was_sent(canary):
    config = canary.edited(candidate_weight=30)
    deployment(config, "Ingress")["num_replicas"] = 2
    canary.deploy(config)
    wait_until(lambda: canary.rollout()["candidate_weight"] == 30, 60)
    before = served(canary)
    assert fire(canary, 200) == [200] * 200
    # each replica flushes about once a second; the merged total converges to exactly what was sent
    wait_until(lambda: served(canary) - before == 200, 30, what="merged count == 200")


def metrics_requests(canary) -> float:
    text = canary.http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return sum(
        s.value
        for s in families["canary_requests"].samples
        if s.name.endswith("_total") and s.labels["segment"] == "all" and s.labels["arm"] != "shadow"
    )


def test_a_new_rollout_shows_its_own_numbers_while_metrics_stay_cumulative(canary):
    assert fire(canary, 30) == [200] * 30
    wait_until(lambda: served(canary) >= 30, 30, what="the first rollout's requests counted")
    counted_before = metrics_requests(canary)
    canary.deploy(canary.edited(rollout_id=f"fresh-{uuid.uuid4().hex[:8]}"))
    # a new identity (id + both versions): GET /rollout starts over, as the dashboard's columns should
    wait_until(lambda: served(canary) == 0, 30, what="the new rollout's numbers start at 0")
    assert fire(canary, 40) == [200] * 40
    wait_until(lambda: served(canary) == 40, 30, what="exactly the new rollout's requests")
    # Prometheus counters never go back: /metrics counts both rollouts
    assert metrics_requests(canary) >= counted_before + 40 >= 70


def test_traffic_during_a_redeploy_is_counted_for_the_rollout_that_served_it(canary):
    """Under steady traffic, rollout A sends everything to the candidate and B nothing; what the Ingress
    served under A's config (flushed at its reconfigure, tagged with A) never shows in B's candidate
    column."""
    canary.deploy(canary.edited(candidate_weight=100, rollout_id=f"a-{uuid.uuid4().hex[:8]}"))
    wait_until(lambda: canary.rollout()["candidate_weight"] == 100, 30)
    stop = threading.Event()

    def client(worker: int) -> None:
        i = 0
        while not stop.is_set():
            canary.predict(f"t{worker}-{i}")
            i += 1

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client, w) for w in range(4)]
        wait_until(lambda: canary.rollout()["arms"]["candidate"]["stats"]["requests"] >= 40, 60)
        canary.deploy(canary.edited(candidate_weight=0, rollout_id=f"b-{uuid.uuid4().hex[:8]}"))
        wait_until(lambda: canary.rollout()["candidate_weight"] == 0, 30)
        wait_until(lambda: canary.rollout()["arms"]["stable"]["stats"]["requests"] >= 40, 60)
        stop.set()
        for c in clients:
            c.result(timeout=60)
    # at most the few requests in flight while the replica switched (4 clients) were routed under A's table
    assert canary.rollout()["arms"]["candidate"]["stats"]["requests"] <= 4


def test_metrics_are_prometheus_text_with_arms_side_by_side(canary):
    canary.deploy(canary.edited(candidate_weight=50, shadow_percent=20))
    wait_until(lambda: canary.rollout()["shadow_percent"] == 20, 30)
    assert set(fire(canary, 120, X_Tenant="acme")) == {200}
    response = canary.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    buckets = [s for s in families["canary_request_latency_seconds"].samples if s.name.endswith("_bucket")]
    assert {"stable", "candidate", "shadow"} <= {s.labels["arm"] for s in buckets}
    ok = [
        s
        for s in families["canary_requests"].samples
        if s.labels.get("outcome") == "ok" and s.labels["segment"] == "tenant" and s.labels["value"] == "acme"
    ]
    assert {s.labels["arm"] for s in ok} >= {"stable", "candidate"}
    endpoint = {
        s.labels["value"] for s in families["canary_requests"].samples if s.labels["segment"] == "endpoint"
    }
    assert endpoint == {"/predict"}  # the request path, read from the ASGI scope on the hot route
    assert families["canary_shadow_percent"].samples[0].value == 20
    assert any(s.labels["result"] == "mirrored" and s.value > 0 for s in families["canary_shadow"].samples)
    # no GPU here: the GPU gauges are absent, not zero
    assert not families["canary_gpu_memory_used_bytes"].samples


def test_candidate_oom_is_counted_answered_by_stable_and_the_replica_survives(canary):
    config = canary.edited(candidate_weight=100)
    deployment(config, "candidate")["user_config"]["faults"] = {"oom_rate": 1.0}
    deployment(config, "candidate")["user_config"]["max_consecutive_ooms"] = 1000
    pid = canary.replica_info("candidate")["pid"]
    before = canary.rollout()["oom_events"].get("candidate", 0)
    canary.deploy(config)
    wait_until(lambda: canary.replica_info("candidate")["faults_active"], 30)
    wait_until(lambda: canary.rollout()["candidate_weight"] == 100, 30)
    assert fire(canary, 40) == [200] * 40
    wait_until(
        lambda: canary.rollout()["oom_events"].get("candidate", 0) - before >= 1, 30, what="OOM counted"
    )
    assert canary.replica_info("candidate")["pid"] == pid
    text = canary.http.get("/metrics").text
    oom = [
        s
        for f in text_string_to_metric_families(text)
        if f.name == "canary_gpu_oom_events"
        for s in f.samples
        if s.name.endswith("_total")
    ]
    assert {s.labels["arm"]: s.value for s in oom}["candidate"] >= 1
    # Leave the replica healthy: one good batch ends its run of OOMs, which the demo config's
    # max_consecutive_ooms (3) would otherwise fail at its next health check, in another test's time.
    deployment(config, "candidate")["user_config"]["faults"] = None
    canary.deploy(config)
    wait_until(lambda: not canary.replica_info("candidate")["faults_active"], 30)
    probe = {"X_Canary_Force_Arm": "candidate", "Authorization": f"Bearer {ADMIN_TOKEN}"}
    wait_until(lambda: canary.predict("k", **probe).status_code == 200, 30, what="a good candidate batch")


def test_a_model_replica_replaced_by_a_redeploy_is_no_restart(canary):
    """Serve stops the old replica on purpose; its last report says so, so it is gone at once, uncounted."""
    old = canary.replica_info("candidate")["pid"]
    before = canary.rollout()["restarts"].get("candidate", 0)
    config = copy.deepcopy(canary.config)
    deployment(config, "candidate")["ray_actor_options"] = {"num_cpus": 0.01}  # restarts its replicas
    canary.deploy(config)
    wait_until(lambda: canary.replica_info("candidate")["pid"] != old, 120, what="a new candidate replica")

    def candidate_pids():
        return {r.get("pid") for r in canary.rollout()["replicas"] if r["arm"] == "candidate"}

    # Serve stops the old replica after its drain loop (2 s); its last report removes it from the list
    wait_until(lambda: old not in candidate_pids(), 15, what="the stopped replica forgotten")
    time.sleep(STALE_AFTER_S + 2)  # past the time a silent replica is taken for lost, then replaced
    assert old not in candidate_pids()
    assert canary.rollout()["restarts"].get("candidate", 0) == before
    assert canary.predict("k").status_code == 200


def test_a_killed_model_replica_is_counted_as_a_restart(canary):
    pid = canary.replica_info("candidate")["pid"]
    before = canary.rollout()["restarts"].get("candidate", 0)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: canary.replica_info("candidate")["pid"] != pid, 120, what="a new candidate replica")
    wait_until(
        lambda: canary.rollout()["restarts"].get("candidate", 0) == before + 1, 60, what="restart counted"
    )
    assert canary.predict("k").status_code == 200
