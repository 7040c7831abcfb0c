"""A tiny run of the throughput suite on the session's Ray: raw, both plain Serve peers and canary-serve,
closed and open loop, the results files; and the shadow-cost benchmark's off/on case. Behaviour only (counts
add up, files hold the right keys), never speed."""

from __future__ import annotations

import copy
import json

from conftest import deployment, wait_until
from ray import serve

from benchmarks import bench, shadow
from benchmarks.bench import Settings, run_suite
from benchmarks.sides import CANARY, SIDES

TINY = Settings(
    models=("models/artifacts/fraud-v1",),
    concurrency=(1, 4),
    rounds=2,
    seconds=0.5,
    warmup_s=0.2,
    open_seconds=0.5,
    raw_batch_sizes=(1, 4),
    raw_seconds=0.05,
    max_requests=5_000,
    quick=True,
)


def _requests_in_batches(run: dict) -> int:
    return sum(size * count for sizes in run["batch_sizes"].values() for size, count in sizes.items())


def test_bench_tiny_run_measures_every_side_and_writes_the_results(serve_port, tmp_path):
    payload = run_suite(TINY, serve_port)

    model = payload["models"]["fraud-v1"]
    assert [p["batch_size"] for p in model["raw"]["points"]] == [1, 4]
    assert model["raw"]["best"]["items_per_s"] > 0
    for side in SIDES:
        runs = model["sides"][side.key]["closed"]
        assert [r["concurrency"] for r in runs] == [1, 4]
        assert all(
            len(r["rounds"]) == 2 and r["throughput"] in {x["throughput"] for x in r["rounds"]} for r in runs
        )
        for run in [*runs, model["sides"][side.key]["open"]]:
            assert run["requests"] > 0 and run["ok"] == run["requests"], run["statuses"]
            assert run["sent"] >= run["requests"]
            assert run["gpu"] == {"available": False, "reason": run["gpu"]["reason"]}  # no GPU: no numbers
            assert set(run["batch_sizes"]) == set(side.model_deployments)
            batched = _requests_in_batches(run)
            if side is CANARY:  # shadow copies go through the candidate's batches too
                assert batched >= run["sent"]
            else:  # every request of the run went through exactly one batch of the model
                assert batched == run["sent"]
            assert any(name.startswith(f"{side.app}/") for name in run["cpu_ms_per_request"])
        assert model["sides"][side.key]["open"]["mode"] == "open"
        assert model["sides"][side.key]["open"]["rate"] == model["open_rate"]

    counts = model["canary_counts"]
    assert counts["candidate_weight"] == 5 and counts["shadow_percent"] == 10
    assert counts["requests"]["stable"] > counts["requests"]["candidate"] > 0
    assert counts["shadow"]["mirrored"] > 0
    assert [r["concurrency"] for r in model["ratios"]] == [1, 4]
    assert all(r["throughput_vs_two_hop"] is not None for r in model["ratios"])
    assert all(r["rounds"] == 2 and len(r["throughput_vs_two_hop_range"]) == 2 for r in model["ratios"])
    assert model["goals"]["best_vs_raw_on_gpu"]["met"] is None  # not judged: CPU, overhead-bound model
    assert payload["gpu_run"] == "none on this machine: these are CPU numbers"

    # The sides are gone again; whatever else ran in this Serve is untouched.
    assert not {side.app for side in SIDES} & set(serve.status().applications)

    json_path, md_path, png = bench.write(payload, tmp_path)
    saved = json.loads(json_path.read_text())
    assert json_path.name.startswith("bench-quick-") and png.stat().st_size > 0
    assert {"benchmark", "machine", "date", "settings", "models", "gpu_run"} <= set(saved)
    assert set(saved["models"]["fraud-v1"]) >= {"raw", "sides", "ratios", "goals", "open_rate"}
    text = md_path.read_text()
    assert "canary ÷ two-hop" in text and png.name in text


def test_shadow_benchmark_tiny_run_counts_every_mirror_and_profiles_the_cpu(canary):
    slowed = copy.deepcopy(canary.config)
    deployment(slowed, "candidate")["user_config"] = {"faults": {"latency_ms": 20}}
    case = shadow.run_case(canary.url, slowed, shadow._features, rounds=1, seconds=1.0, concurrency=2)

    for side in ("off", "on"):
        assert case[side]["requests"] > 0 and case[side]["non_2xx"] == 0
        cpu = case["cpu_ms_per_request"][side]
        assert set(cpu) == set(shadow.PROCESSES)
        assert cpu["ServeReplica:canary:Ingress"] > 0 and cpu["ProxyActor"] > 0
    counts = case["shadow"]
    assert counts["mirrored"] >= case["on"]["requests"] > 0  # every stable answer of the on-run mirrored
    wait_until(
        lambda: (
            (s := canary.rollout()["shadow"])["mirrored"]
            == s["completed"] + s["dropped"] + s["timed_out"] + s["failed"]
        ),
        30,
        what="every mirror accounted for",
    )
    assert case["throughput_ratio"] > 0 and case["p99_ratio"] > 0
