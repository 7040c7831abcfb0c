"""The GPU check of the telemetry issue, for a machine with an NVIDIA GPU (a few minutes).

With ``configs/gpu.yaml`` (both arms on one GPU): NVML's per-process memory of each replica is compared with
what torch reserves in that process plus the CUDA context (measured in this process before any allocation);
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


def cuda_context_bytes() -> int:
    """NVML's count for this process after CUDA initialises and before any tensor: the context's size."""
    import torch

    torch.cuda.init()
    torch.cuda.synchronize()
    monitor = GpuMonitor(pid=os.getpid(), visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    samples = [s for s in monitor.sample() if s.process_memory_bytes]
    return int(samples[0].process_memory_bytes) if samples else 0


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU check needs an NVIDIA GPU")
        return 2
    context = cuda_context_bytes()
    findings: dict[str, Any] = {"cuda_context_bytes": context}
    with local_serve() as port:
        url = f"http://127.0.0.1:{port}"
        config = yaml.safe_load((ROOT / "configs" / "gpu.yaml").read_text())
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
            expected = (rep.get("torch_reserved_bytes") or 0) + context
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
    rows = ["| arm | NVML process MiB | torch reserved + context MiB | ratio |", "| --- | --- | --- | --- |"]
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
