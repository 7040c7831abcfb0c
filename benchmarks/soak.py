"""Soak: a fixed arrival rate for ten minutes while the candidate's weight changes every 5 s (a config
redeploy each time) and 10 % of stable's traffic is mirrored. Counts every answer by status, and samples
the resident memory of every Ingress replica and of the rollout controller, so a leak shows as growth
between the first and the last samples. Writes ``benchmarks/results/soak-<machine>-<date>.{json,md}``.

    python -m benchmarks.soak                 # 600 s at 30 req/s, weight every 5 s
    python -m benchmarks.soak --seconds 60    # a short pass
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.loadgen import open_loop

WEIGHTS = (0, 5, 25, 50, 25, 5)
WATCHED = {"Ingress": "ServeReplica:canary:Ingress", "controller": "RolloutController"}


def watched_processes() -> dict[str, list[int]]:
    """Pids of the live Ingress replicas and of the controller, by the process titles Ray gives its workers
    (read from /proc: Linux, like the rest of the soak's setting)."""
    found: dict[str, list[int]] = {name: [] for name in WATCHED}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for name, marker in WATCHED.items():
            if marker in title:
                found[name].append(int(entry.name))
    return found


def rss_mib(processes: dict[str, list[int]]) -> dict[str, float]:
    """Resident memory per watched group (VmRSS from /proc; a process that has gone counts 0)."""
    out = {}
    for name, pids in processes.items():
        total_kib = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            total_kib += next(
                (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0
            )
        out[name] = round(total_kib / 1024, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long the load runs (default 600)")
    parser.add_argument(
        "--rate", type=float, default=30.0, help="requests per second, open loop (default 30)"
    )
    parser.add_argument("--weight-every", type=float, default=5.0, help="seconds between weight changes")
    parser.add_argument("--shadow", type=float, default=10.0, help="shadow percent (default 10)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0 or args.weight_every <= 0 or not 0 <= args.shadow <= 100:
        parser.error("--seconds, --rate and --weight-every must be > 0 and --shadow in [0, 100]")

    with harness.local_serve(num_cpus=2) as port:
        base = harness.demo_config(port)
        for dep in base["applications"][0]["deployments"]:
            dep["ray_actor_options"] = {"num_cpus": 0}

        def config(weight: float) -> dict[str, Any]:
            return harness.edit(
                base,
                "Ingress",
                rollout={"mode": "manual", "candidate_weight": weight, "shadow_percent": args.shadow},
            )

        harness.deploy(config(WEIGHTS[0]))
        url = f"http://127.0.0.1:{port}"
        processes = watched_processes()
        time.sleep(10)  # warm: first requests, first flushes
        samples: list[tuple[float, dict[str, float]]] = [(0.0, rss_mib(processes))]
        result: dict[str, Any] = {}
        done = threading.Event()

        def load() -> None:
            result["load"] = open_loop(
                url,
                lambda rng: {"features": [rng.random() for _ in range(30)]},
                rate=args.rate,
                duration_s=args.seconds,
                warmup_s=0.0,
                max_requests=int(args.rate * args.seconds * 1.1) + 10,
            )
            done.set()

        thread = threading.Thread(target=load, daemon=True)
        started = time.monotonic()
        thread.start()
        changes, next_sample = 0, 30.0
        for weight in itertools.cycle(WEIGHTS[1:] + WEIGHTS[:1]):
            if done.wait(args.weight_every):
                break
            harness.deploy(config(weight))
            changes += 1
            elapsed = time.monotonic() - started
            if elapsed >= next_sample:
                samples.append((round(elapsed), rss_mib(processes)))
                next_sample += 30.0
        thread.join()
        samples.append((round(time.monotonic() - started), rss_mib(processes)))

    run = result["load"].summary()
    fives = sum(n for status, n in run["statuses"].items() if str(status).startswith("5"))
    growth = {
        name: {
            "start_mib": samples[0][1][name],
            "end_mib": samples[-1][1][name],
            # the median of the last third against the first third: one GC-timed sample does not decide it
            "growth_percent": round(
                100
                * (
                    statistics.median(s[name] for _, s in samples[-max(1, len(samples) // 3) :])
                    / max(statistics.median(s[name] for _, s in samples[: max(1, len(samples) // 3)]), 1e-9)
                    - 1
                ),
                1,
            ),
        }
        for name in WATCHED
    }
    payload = {
        "settings": vars(args),
        "weight_changes": changes,
        "load": run,
        "responses_5xx": fives,
        "rss": growth,
        "rss_samples": samples,
    }
    table = "\n".join(
        [
            "| requests | ok | 5xx | errors/lost | p50 ms | p99 ms | weight changes |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {run['requests']} | {run['ok']} | {fives} | {run['errors'] + run['incomplete']} | "
            f"{run['p50_ms']:.1f} | {run['p99_ms']:.1f} | {changes} |",
            "",
            "| process | RSS start (MiB) | RSS end (MiB) | growth (median last third vs first third) |",
            "| --- | --- | --- | --- |",
            *(
                f"| {name} | {g['start_mib']} | {g['end_mib']} | {g['growth_percent']:+.1f} % |"
                for name, g in growth.items()
            ),
        ]
    )
    json_path, md_path = harness.write_results("soak", payload, table)
    print(table)
    print(f"results: {json_path} {md_path}")
    return 0 if fives == 0 and run["errors"] + run["incomplete"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
