"""Shadow traffic on the real stack: the client's answer is untouched whatever the candidate does."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import deployment, wait_until
from ray import serve

_VOLATILE = {"date", "x-request-id", "content-length"}


def inputs(n: int, seed: int = 11) -> list[list[float]]:
    rng = random.Random(seed)
    return [[round(rng.gauss(0, 1), 4) for _ in range(30)] for _ in range(n)]


def answers(canary, batch):
    def one(i):
        r = canary.predict(f"user-{i}", features=batch[i], X_Tenant="acme" if i % 2 else "globex")
        headers = {k: v for k, v in r.headers.items() if k not in _VOLATILE}
        return r.status_code, r.content, headers

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(len(batch))))


def shadow_config(canary, percent, faults=None, **rollout):
    config = canary.edited(candidate_weight=0, shadow_percent=percent, **rollout)
    if faults:
        deployment(config, "candidate")["user_config"]["faults"] = faults
    canary.deploy(config)
    # both: after the demo config the shadow rate is already 0, but the weight is still 5 until this applies
    wait_until(
        lambda: (canary.rollout()["candidate_weight"], canary.rollout()["shadow_percent"]) == (0, percent), 30
    )
    if faults:
        wait_until(lambda: canary.replica_info("candidate")["faults_active"], 30)
    return config


def shadow_counts(canary):
    return canary.rollout()["shadow"]


def settled(canary):
    """Waits until no mirror is in flight, then returns the counters."""
    return wait_until(lambda: (s := shadow_counts(canary))["in_flight"] == 0 and s, 30)


@pytest.mark.parametrize(
    ("faults", "extra", "counter"),
    [
        ({"latency_ms": 60}, {}, "completed"),  # 3x slower than stable here
        ({"error_rate": 1.0}, {}, "failed"),
        ({"schema_break": "confidence_out_of_range"}, {}, "completed"),
        ({"latency_ms": 60_000}, {"shadow_timeout_s": 0.5}, "timed_out"),  # never answers in time
    ],
)
def test_primary_answers_are_byte_identical_with_shadow_on(canary, faults, extra, counter):
    batch = inputs(60)
    shadow_config(canary, 0)
    off = answers(canary, batch)
    before = settled(canary)
    shadow_config(canary, 100, faults, **extra)
    on = answers(canary, batch)
    assert [s for s, _, _ in on] == [200] * len(batch)
    assert on == off
    after = settled(canary)
    delta = {k: after[k] - before[k] for k in ("mirrored", "completed", "dropped", "timed_out", "failed")}
    assert delta["mirrored"] == len(batch)
    assert delta["mirrored"] == delta["completed"] + delta["dropped"] + delta["timed_out"] + delta["failed"]
    assert delta[counter] + delta["dropped"] == len(batch)


def test_comparison_reports_agreement_and_per_segment_shadow_stats(canary):
    shadow_config(canary, 100)
    answers(canary, inputs(80, seed=3))
    state = settled(canary)
    assert state["compared"] >= 80 and 0.5 <= state["agreement_rate"] <= 1.0
    assert state["confidence_diff_p95"] is not None and state["confidence_psi"] is not None
    segments = {(s["label"], s["value"]): s for s in canary.rollout()["segments"]}
    assert segments[("tenant", "acme")]["shadow"]["mirrored"] >= 40
    assert segments[("tenant", "acme")]["stable"]["requests"] >= 40


def test_in_flight_cap_holds_and_the_excess_is_dropped(canary):
    shadow_config(canary, 100, {"latency_ms": 1500}, shadow_max_in_flight=2)
    before = settled(canary)
    peaks = []
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(canary.predict, f"k{i}") for i in range(40)]
        while not all(f.done() for f in futures):
            peaks.append(shadow_counts(canary)["in_flight"])
        assert all(f.result().status_code == 200 for f in futures)
    after = settled(canary)
    assert max(peaks) <= 2
    assert after["dropped"] - before["dropped"] >= 30
    assert after["mirrored"] - before["mirrored"] == 40


def test_a_live_candidate_breaking_the_contract_never_reaches_the_client(canary):
    config = canary.edited(candidate_weight=100)
    deployment(config, "candidate")["user_config"]["faults"] = {"schema_break": True}
    canary.deploy(config)
    wait_until(lambda: canary.replica_info("candidate")["faults_active"], 30)
    wait_until(lambda: canary.rollout()["candidate_weight"] == 100, 30)
    results = answers(canary, inputs(30))
    assert all(status == 200 for status, _, _ in results)
    assert all(h["x-canary-arm"] == "stable" and h["x-canary-fallback"] == "contract" for _, _, h in results)
    stats = canary.rollout()["arms"]["candidate"]["stats"]
    assert stats["contract_failures"] >= 30 and stats["fallbacks"] >= 30


def _ingress_replicas(canary) -> dict[str, int]:
    states = serve.status().applications["canary"].deployments["Ingress"].replica_states
    return {str(getattr(state, "value", state)): n for state, n in states.items() if n}


def test_scaling_the_ingress_down_under_traffic_loses_no_answer_and_no_count(canary):
    """The replica that stops finishes its requests, waits for its mirrors and flushes its last counts.

    Serve waits at least its 2 s drain loop before stopping a replica, so mirrors that take 2.5 s (plus the
    batch wait) are still on their way when the Ingress's shutdown hook runs."""
    config = canary.edited(candidate_weight=0, shadow_percent=100, shadow_timeout_s=8)
    deployment(config, "candidate")["user_config"]["faults"] = {"latency_ms": 2500}
    deployment(config, "Ingress")["num_replicas"] = 2
    canary.deploy(config)
    wait_until(lambda: _ingress_replicas(canary) == {"RUNNING": 2}, 120, what="two Ingress replicas")
    wait_until(lambda: canary.replica_info("candidate")["faults_active"], 30)
    wait_until(
        lambda: (canary.rollout()["candidate_weight"], canary.rollout()["shadow_percent"]) == (0, 100), 30
    )
    before = settled(canary)
    served_before = canary.rollout()["arms"]["stable"]["stats"]["requests"]

    stop = threading.Event()
    statuses: list[int] = []

    def client(worker: int) -> None:
        i = 0
        while not stop.is_set():
            statuses.append(canary.predict(f"w{worker}-{i}").status_code)
            i += 1

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(client, w) for w in range(4)]
        wait_until(lambda: len(statuses) >= 40, 60, what="traffic on both replicas")
        deployment(config, "Ingress")["num_replicas"] = 1
        canary.deploy(config)
        wait_until(lambda: _ingress_replicas(canary) == {"RUNNING": 1}, 120, what="one Ingress replica left")
        answered = len(statuses)
        wait_until(lambda: len(statuses) >= answered + 20, 60, what="traffic after the scale-down")
        stop.set()
        for c in clients:
            c.result(timeout=60)

    assert statuses and set(statuses) == {200}
    n = len(statuses)

    def counted():
        after = settled(canary)
        delta = {k: after[k] - before[k] for k in ("mirrored", "completed", "dropped", "timed_out", "failed")}
        served = canary.rollout()["arms"]["stable"]["stats"]["requests"] - served_before
        return (served, delta["mirrored"]) == (n, n) and delta

    delta = wait_until(counted, 30, what=f"{n} answers served, mirrored and counted")
    assert delta["mirrored"] == delta["completed"] + delta["dropped"] + delta["timed_out"] + delta["failed"]
