"""Where the CPU goes per request, per Ray process, with shadow 0% vs 100% (a process-level profile).

On a machine whose cores are saturated, throughput falls by the share of CPU that mirroring adds; this
shows that share and which process pays it. Reads utime + stime from /proc (Linux).

    python -m benchmarks.cpu_profile [--requests 1500] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from typing import Any

from benchmarks.harness import closed_loop, demo_config, deploy, edit, local_serve, write_results

PROCESSES = (
    "ServeReplica:canary:Ingress",
    "ServeReplica:canary:stable",
    "ServeReplica:canary:candidate",
    "ProxyActor",
    "ServeController",
    "RolloutController",
    "raylet",
    "gcs_server",
)


def cpu_ms_by_process() -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        name = next((p for p in PROCESSES if p in cmd), None)
        if name:
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * 1000 / tick
    return out


def _features(rng: random.Random) -> dict[str, Any]:
    return {"features": [round(rng.gauss(0, 1), 4) for _ in range(30)]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--candidate-latency-ms", type=float, default=80.0)
    args = p.parse_args(argv)
    per: dict[str, list[dict[str, float]]] = {"0": [], "100": []}
    with local_serve() as port:
        url = f"http://127.0.0.1:{port}"
        base = edit(demo_config(port), "candidate", faults={"latency_ms": args.candidate_latency_ms})
        for _ in range(args.rounds):
            for percent in (0, 100):
                deploy(edit(base, "Ingress", rollout={"candidate_weight": 0, "shadow_percent": percent}))
                time.sleep(3)
                before = cpu_ms_by_process()
                result = closed_loop(
                    url, _features, concurrency=args.concurrency, duration_s=args.seconds, warmup_s=0
                )
                time.sleep(2)  # let mirrors and flushes finish inside the measured span
                after = cpu_ms_by_process()
                n = max(1, result.requests)
                per[str(percent)].append({k: (after.get(k, 0) - before.get(k, 0)) / n for k in after})
    summary = {
        side: {k: statistics.median(run[k] for run in runs) for k in runs[0]} for side, runs in per.items()
    }
    totals = {side: sum(v.values()) for side, v in summary.items()}
    rows = ["| process | CPU ms / request, shadow 0 % | shadow 100 % | added |", "| --- | --- | --- | --- |"]
    for name in PROCESSES:
        a, b = summary["0"].get(name, 0.0), summary["100"].get(name, 0.0)
        rows.append(f"| {name} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    rows.append(
        f"| **total** | {totals['0']:.2f} | {totals['100']:.2f} | {totals['100'] - totals['0']:+.2f} "
        f"({100 * (totals['100'] / totals['0'] - 1):+.1f} %) |"
    )
    table = "\n".join(rows) + (
        f"\n\nCandidate slowed by {args.candidate_latency_ms:.0f} ms; medians of "
        f"{args.rounds} runs of {args.seconds:.0f} s per side; the load generator's own "
        "CPU is not counted."
    )
    write_results("cpu-profile", {"settings": vars(args), "per_request_ms": summary, "runs": per}, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
