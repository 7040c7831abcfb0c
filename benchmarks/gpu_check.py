"""The GPU check of the telemetry issue, for a machine with an NVIDIA GPU (a few minutes).

With ``configs/gpu.yaml`` (both arms on one GPU): NVML's per-process memory of each replica is compared with
what torch reserves in that process plus what CUDA itself holds beyond the allocator (the context, kernel
modules and cuBLAS, measured in this process after running the same model at the replica's batch sizes);
then an OOM induced in the candidate must be counted, answered 503 (fallback off), leave the candidate
replica alive, and leave stable unaffected. Findings go to ``benchmarks/results/gpu-check-<machine>-<date>``.

    python -m benchmarks.gpu_check
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import yaml

from benchmarks.harness import ROOT, deploy, edit, local_serve, write_results
from models.gpu import GpuMonitor


def process_overhead_bytes(artifact: str, batch_sizes: tuple[int, ...], nvml: Any = None) -> int:
    """NVML's count for this process beyond what torch's allocator reserves, after running ``artifact`` on the
    GPU at ``batch_sizes`` as a replica warms up: the CUDA context plus the kernel modules and library handles
    (cuBLAS) the model's forward loads, none of which the allocator counts.

    The first GPU run (one H200) measured the bare context, after ``torch.cuda.init()`` alone: 518 MiB, while
    each replica held 676 MiB beyond torch's 34 MiB reserve (710 MiB in all by NVML), so every replica read
    1.29× its "expected" memory although NVML's number was the replica's own. A process that has run the
    model is the fair reference.
    """
    import torch

    from models.artifact import load_artifact
    from models.predictor import Predictor

    device = torch.device("cuda", 0)
    predictor = Predictor(load_artifact(artifact), device)
    for size in batch_sizes:
        predictor.predict_batch(predictor.example_inputs(size))
    torch.cuda.synchronize(device)
    monitor = GpuMonitor(nvml, pid=os.getpid(), visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    samples = [s for s in monitor.sample() if s.process_memory_bytes]
    if not samples:
        return 0
    return int(samples[0].process_memory_bytes) - int(torch.cuda.memory_reserved(device))


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU check needs an NVIDIA GPU")
        return 2
    config = yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())
    stable = next(d for d in config["applications"][0]["deployments"] if d["name"] == "stable")
    overhead = process_overhead_bytes(
        str(ROOT / config["applications"][0]["args"]["stable"]["artifact"]),
        (1, int(stable["user_config"]["batching"]["max_batch_size"]), 1),
    )
    findings: dict[str, Any] = {"process_overhead_bytes": overhead}
    with local_serve() as port:
        url = f"http://127.0.0.1:{port}"
        config["http_options"] = {"host": "127.0.0.1", "port": port}
        deploy(config)
        http = httpx.Client(base_url=url, timeout=30)
        for i in range(300):
            assert (
                http.post(
                    "/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"g{i}"}
                ).status_code
                == 200
            )
        time.sleep(3)
        state = http.get("/rollout").json()
        memory = []
        for rep in state["replicas"]:
            gpu = (rep.get("gpus") or [{}])[0]
            nvml_bytes = gpu.get("process_memory_bytes")
            expected = (rep.get("torch_reserved_bytes") or 0) + overhead
            ratio = nvml_bytes / expected if nvml_bytes and expected else None
            memory.append(
                {
                    "arm": rep["arm"],
                    "replica": rep["replica_id"],
                    "nvml_process_bytes": nvml_bytes,
                    "torch_reserved_bytes": rep.get("torch_reserved_bytes"),
                    "expected_bytes": expected,
                    "ratio": ratio,
                    "within_10_percent": ratio is not None and abs(ratio - 1) <= 0.10,
                }
            )
        findings["memory"] = memory

        pids = {rep["arm"]: rep["pid"] for rep in state["replicas"]}
        oom_before = state["oom_events"].get("candidate", 0)
        bad = edit(config, "Ingress", rollout={"candidate_weight": 100, "fallback": False})
        bad = edit(bad, "candidate", faults={"oom_rate": 1.0}, max_consecutive_ooms=1000)
        deploy(bad)
        time.sleep(3)
        candidate = [
            http.post("/predict", json={"features": [0.2] * 30}, headers={"X-Routing-Key": f"o{i}"})
            for i in range(20)
        ]
        deploy(edit(bad, "Ingress", rollout={"candidate_weight": 0}))
        time.sleep(3)
        stable = [
            http.post("/predict", json={"features": [0.2] * 30}, headers={"X-Routing-Key": f"s{i}"})
            for i in range(20)
        ]
        time.sleep(3)
        after = http.get("/rollout").json()
        findings["oom"] = {
            "candidate_statuses": sorted({r.status_code for r in candidate}),
            "candidate_errors": sorted({r.json().get("error") for r in candidate if r.status_code != 200}),
            "oom_events_counted": after["oom_events"].get("candidate", 0) - oom_before,
            "candidate_replica_survived": any(
                r["arm"] == "candidate" and r["pid"] == pids.get("candidate") for r in after["replicas"]
            ),
            "stable_statuses": sorted({r.status_code for r in stable}),
        }
    oom = findings["oom"]
    passed = (
        all(m["within_10_percent"] for m in memory)
        and oom["candidate_statuses"] == [503]
        and oom["oom_events_counted"] >= 20
        and oom["candidate_replica_survived"]
        and oom["stable_statuses"] == [200]
    )
    findings["passed"] = passed
    rows = [
        "| arm | NVML process MiB | torch reserved + CUDA overhead MiB | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for m in memory:
        nvml_mib, expected_mib = (m["nvml_process_bytes"] or 0) / 2**20, m["expected_bytes"] / 2**20
        rows.append(
            f"| {m['arm']} | {nvml_mib:.0f} | {expected_mib:.0f} | {m['ratio'] or float('nan'):.3f} |"
        )
    table = "\n".join(rows) + f"\n\nOOM: {oom}\n\nGPU check {'passed' if passed else 'FAILED'}."
    print(table)
    write_results("gpu-check", findings, table)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
