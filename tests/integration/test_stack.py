"""The stack end to end on one shared local Ray: contract and headers, weight changes in place, fallback,
bad input and bad config."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import deployment, wait_until
from ray import serve

CONTRACT = {"prediction", "confidence", "model_version"}


def arms_of(canary, keys):
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda k: canary.predict(k), keys))
    assert all(r.status_code == 200 for r in responses), {r.status_code for r in responses}
    return [r.headers["x-canary-arm"] for r in responses]


def test_predict_answers_the_contract_with_headers_on_both_arms(canary):
    canary.deploy(canary.edited(candidate_weight=50))
    wait_until(lambda: canary.rollout()["candidate_weight"] == 50, 30)
    seen = {}
    for i in range(60):
        response = canary.predict(f"user-{i}")
        assert response.status_code == 200
        body = response.json()
        assert set(body) >= CONTRACT and 0.0 <= body["confidence"] <= 1.0
        assert body["prediction"] in ("legit", "fraud")
        assert response.headers["x-request-id"]
        assert response.headers["x-model-version"] == body["model_version"]
        seen[response.headers["x-canary-arm"]] = body["model_version"]
    assert seen == {"stable": "fraud-v1", "candidate": "fraud-v2"}
    state = canary.rollout()
    assert state["mode"] == "manual" and state["candidate_weight"] == 50 and state["shadow_percent"] == 0
    assert state["arms"]["candidate"]["model_version"] == "fraud-v2"


def test_request_id_is_serves_own_and_appears_once(canary):
    response = canary.http.post(
        "/predict", json={"features": [0.0] * 30}, headers={"X-Request-Id": "abc-123"}
    )
    assert response.status_code == 200
    assert response.headers.get_list("x-request-id") == ["abc-123"]


def test_config_update_changes_the_share_without_restarting_model_replicas(canary):
    pids = {arm: canary.replica_info(arm)["pid"] for arm in ("stable", "candidate")}
    keys = [f"key-{i}" for i in range(400)]
    canary.deploy(canary.edited(candidate_weight=0))
    wait_until(lambda: canary.rollout()["candidate_weight"] == 0, 30)
    assert set(arms_of(canary, keys)) == {"stable"}
    canary.deploy(canary.edited(candidate_weight=100))
    wait_until(lambda: canary.rollout()["candidate_weight"] == 100, 30)
    assert set(arms_of(canary, keys)) == {"candidate"}
    canary.deploy(canary.edited(candidate_weight=25))
    wait_until(lambda: canary.rollout()["candidate_weight"] == 25, 30)
    share = arms_of(canary, keys).count("candidate") / len(keys)
    assert 0.15 < share < 0.35
    assert {arm: canary.replica_info(arm)["pid"] for arm in ("stable", "candidate")} == pids


def test_batching_changes_at_runtime_in_place(canary):
    pid = canary.replica_info("stable")["pid"]
    canary.set_model_config("stable", {"batching": {"max_batch_size": 4, "batch_wait_timeout_s": 0.02}})
    wait_until(lambda: canary.replica_info("stable")["batching"]["max_batch_size"] == 4, 30)
    assert canary.replica_info("stable")["pid"] == pid
    assert canary.predict("x").status_code == 200


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        ({"error_rate": 1.0}, "error"),
        ({"latency_ms": 3000}, "timeout"),
        ({"schema_break": "confidence_out_of_range"}, "contract"),
        ({"schema_break": "missing_field"}, "contract"),
        ({"oom_rate": 1.0}, "overloaded"),
    ],
)
def test_candidate_failures_fall_back_to_stable_with_every_answer_2xx(canary, faults, reason):
    config = canary.edited(candidate_weight=100, timeouts_s={"stable": 5.0, "candidate": 0.5})
    deployment(config, "candidate")["user_config"]["faults"] = faults
    canary.deploy(config)
    wait_until(lambda: canary.replica_info("candidate")["faults_active"], 30)
    wait_until(lambda: canary.rollout()["candidate_weight"] == 100, 30)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: canary.predict(f"f-{i}"), range(24)))
    assert [r.status_code for r in responses] == [200] * 24
    for r in responses:
        assert r.headers["x-canary-arm"] == "stable" and r.headers["x-canary-fallback"] == reason
        assert r.json()["model_version"] == "fraud-v1" and 0 <= r.json()["confidence"] <= 1


def test_without_fallback_a_failing_candidate_is_a_clear_5xx_not_a_trace(canary):
    config = canary.edited(candidate_weight=100, fallback=False)
    deployment(config, "candidate")["user_config"]["faults"] = {"error_rate": 1.0}
    canary.deploy(config)
    wait_until(lambda: canary.replica_info("candidate")["faults_active"], 30)
    wait_until(lambda: not canary.rollout()["fallback"], 30)
    response = canary.predict("k")
    assert response.status_code == 503
    assert response.json()["error"] == "model_unavailable" and "Traceback" not in response.text


def test_stable_oom_is_503_and_the_replica_stays_up(canary):
    config = canary.edited(candidate_weight=0)
    deployment(config, "stable")["user_config"]["faults"] = {"oom_rate": 1.0}
    pid = canary.replica_info("stable")["pid"]
    canary.deploy(config)
    wait_until(lambda: canary.replica_info("stable")["faults_active"], 30)
    response = canary.predict("k")
    assert response.status_code == 503 and response.json()["error"] == "model_overloaded"
    info = canary.replica_info("stable")
    assert info["oom_events"] >= 1 and info["pid"] == pid


def test_faults_limited_to_a_segment_touch_only_that_segment(canary):
    config = canary.edited(candidate_weight=100)
    deployment(config, "candidate")["user_config"]["faults"] = {
        "error_rate": 1.0,
        "segment": {"X-Tenant-Tier": "gold"},
    }
    canary.deploy(config)
    wait_until(lambda: canary.replica_info("candidate")["faults_active"], 30)
    wait_until(lambda: canary.rollout()["candidate_weight"] == 100, 30)
    gold = canary.predict("a", X_Tenant_Tier="gold")
    silver = canary.predict("a", X_Tenant_Tier="silver")
    assert gold.status_code == silver.status_code == 200
    assert gold.headers["x-canary-fallback"] == "error"
    assert silver.headers["x-canary-arm"] == "candidate" and "x-canary-fallback" not in silver.headers


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b'{"features": [' + b"1.0," * 300_000 + b"1.0]}", 413, None),
        (b'{"features": [1.0, 2.0, 3.0]}', 422, "features"),
        (b'{"features": [' + b'"x",' * 29 + b'"x"]}', 422, "features.0"),
        (b'{"features": [' + b"1.0," * 29 + b"NaN]}", 422, "features.29"),
        (b'{"features": [' + b"1.0," * 29 + b"Infinity]}", 422, "features.29"),
        (b'{"wrong": 1}', 422, "features"),
        (b"[1, 2, 3]", 422, "body"),
    ],
)
def test_bad_input_gets_a_clear_4xx_naming_the_field(canary, body, status, field):
    response = canary.http.post("/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    payload = response.json()
    assert "Traceback" not in response.text and payload["error"]
    if field:
        assert field in [d["field"] for d in payload["detail"]], payload


def test_unknown_path_and_method(canary):
    assert canary.http.get("/no-such-path").status_code == 404
    assert canary.http.get("/predict").status_code == 405


def test_invalid_rollout_update_is_refused_and_routing_is_kept(canary):
    canary.deploy(canary.edited(candidate_weight=50))
    wait_until(lambda: canary.rollout()["candidate_weight"] == 50, 30)
    canary.deploy(canary.edited(candidate_weight=120))
    state = wait_until(lambda: (s := canary.rollout())["config_error"] and s, 30)
    assert state["candidate_weight"] == 50
    assert "rollout.candidate_weight" in state["config_error"] and "0–100" in state["config_error"]
    assert canary.http.get("/healthz").status_code == 200
    assert canary.predict("k").status_code == 200


def test_invalid_model_config_update_is_refused_and_the_replica_keeps_serving(canary):
    pid = canary.replica_info("candidate")["pid"]
    canary.set_model_config("candidate", {"batching": {"max_batch_size": 0}})
    info = wait_until(lambda: (i := canary.replica_info("candidate"))["config_error"] and i, 30)
    assert "batching.max_batch_size" in info["config_error"] and info["pid"] == pid
    assert info["batching"]["max_batch_size"] == 32


def test_a_batch_larger_than_the_replica_can_hold_is_taken_but_said_in_info_and_rollout(canary):
    # `serve run` does not go through canary deploy's check: the replica applies the config and says why its
    # batches stay smaller (the demo config's arms hold 64 requests at once)
    canary.set_model_config("candidate", {"batching": {"max_batch_size": 100}})
    info = wait_until(lambda: (i := canary.replica_info("candidate"))["config_warning"] and i, 30)
    assert info["batching"]["max_batch_size"] == 100 and not info["config_error"]
    assert "max_ongoing_requests (64)" in info["config_warning"] and "at least 100" in info["config_warning"]
    replicas = wait_until(
        lambda: [r for r in canary.rollout()["replicas"] if r["arm"] == "candidate" and r["config_warning"]],
        30,
    )
    assert replicas[0]["config_warning"] == info["config_warning"]
    assert not canary.replica_info("stable")["config_warning"]
    assert canary.predict("k").status_code == 200


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"candidate": {"artifact": "models/artifacts/does-not-exist"}}, "args.candidate.artifact"),
        ({"stable": {"artifact": "models/artifacts/fraud-v1", "gpus": 1}}, "args.stable.gpus"),
    ],
)
def test_bad_application_args_fail_the_deploy_and_the_running_app_keeps_serving(canary, args, key):
    config = canary.edited()
    config["applications"][0]["args"] = {**config["applications"][0]["args"], **args}
    canary.deploy(config)
    status = wait_until(
        lambda: (s := serve.status().applications["canary"]).status == "DEPLOY_FAILED" and s, 120
    )
    assert key in status.message
    assert canary.predict("k").status_code == 200
    assert canary.http.get("/healthz").status_code == 200


def test_confidence_is_finite_for_extreme_inputs(canary):
    response = canary.predict("k", features=[1e30] * 30)
    assert response.status_code == 200 and math.isfinite(response.json()["confidence"])
