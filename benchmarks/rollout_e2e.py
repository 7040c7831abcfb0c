"""End-to-end rollback time and routing-table propagation on a real local stack.

Rollback: open-loop traffic at ``--rate`` req/s (default 100) with the candidate at weight 5 in an automatic
rollout; then the candidate is made to fail every request (a fault redeployed into its user_config). Measured
on the client's send times: from the first request the candidate failed to the last request routed to the
candidate (its answer or its fallback). Goal: ≤ 5 s. Repeated ``--rounds`` times, each a new rollout.

Propagation: ``--tables`` operator weight changes through the admin API; every Ingress replica times how long
each pushed table took from the controller's publish to being applied (GET /rollout ``propagation_ms``).
Goal: p99 ≤ 100 ms.

    python -m benchmarks.rollout_e2e [--rate 100] [--rounds 3] [--tables 300]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.harness import demo_config, deploy, edit, local_serve, write_results

TOKEN = "benchmark-admin-token"


@dataclass
class Sent:
    at: float
    arm: str | None
    fallback: str | None
    status: int


def rollout_config(port: int, store: str, rollout_id: str) -> dict[str, Any]:
    config = demo_config(port)
    for app in config["applications"]:
        for dep in app["deployments"]:
            dep["ray_actor_options"] = {"num_cpus": 0}
    return edit(
        config,
        "Ingress",
        rollout={
            "mode": "auto",
            "rollout_id": rollout_id,
            "candidate_weight": None,
            "owner": "benchmarks",
            "rollback_condition": "errors above 1%",
            "stages": [
                {"weight": 5, "min_duration_s": 86400, "min_requests": 10**9},
                {"weight": 100, "min_duration_s": 86400, "min_requests": 10**9},
            ],
            "promotion_gates": {"error_rate": {"maximum": 0.01}},
            "store": {"path": store},
        },
    )


class OpenLoop:
    """Requests at a fixed rate from a thread pool, each stamped with its send time (loopback only)."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate, self.sent, self.stop = url, rate, [], threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def one(self, client: httpx.Client, i: int) -> None:
        at = time.time()
        try:
            r = client.post("/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"user-{i}"})
            sent = Sent(at, r.headers.get("x-canary-arm"), r.headers.get("x-canary-fallback"), r.status_code)
        except httpx.HTTPError:
            sent = Sent(at, None, None, 0)
        with self.lock:
            self.sent.append(sent)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client, ThreadPoolExecutor(32) as pool:
            start, i = time.monotonic(), 0
            while not self.stop.is_set():
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(self.one, client, i)
                i += 1

    def end(self) -> list[Sent]:
        self.stop.set()
        self.thread.join(timeout=60)
        with self.lock:
            return list(self.sent)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(what)


def rollback_round(url: str, port: int, store: str, rate: float, index: int) -> dict[str, Any]:
    http = httpx.Client(base_url=url, timeout=30)
    config = rollout_config(port, store, f"e2e-{index}-{int(time.time())}")
    deploy(config)
    wait_for(lambda: http.get("/rollout").json().get("candidate_weight") == 5, 60, "weight 5")
    load = OpenLoop(url, rate)
    time.sleep(15)  # steady state at weight 5
    broken = copy.deepcopy(config)
    broken = edit(broken, "candidate", faults={"error_rate": 1.0})
    deploy(broken)
    state = wait_for(
        lambda: (s := http.get("/rollout").json())["stage"] == "rolled_back" and s, 60, "rollback"
    )
    time.sleep(5)  # answers still in flight land
    sent = load.end()
    failed = [s.at for s in sent if s.fallback is not None or (s.arm == "candidate" and s.status != 200)]
    to_candidate = [s.at for s in sent if s.arm == "candidate" or s.fallback is not None]
    onset = min(failed)
    last = max(to_candidate)
    rollback = next(e for e in state["events"] if e["kind"] == "rolled_back")
    return {
        "requests": len(sent),
        "non_2xx": sum(s.status != 200 for s in sent),
        "achieved_rate": len(sent) / (max(s.at for s in sent) - min(s.at for s in sent)),
        "candidate_failures_seen": len(failed),
        "onset_to_last_candidate_request_s": last - onset,
        "onset_to_rollback_decision_s": rollback["ts"] - onset,
        "rollback_reason": rollback["reason"],
    }


def propagation(url: str, tables: int) -> dict[str, Any]:
    http = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
    before = http.get("/rollout").json()["propagation_ms"]["count"]
    for i in range(tables):
        r = http.post("/admin/set-weight", json={"reason": "propagation benchmark", "weight": 1 + i % 10})
        r.raise_for_status()
        time.sleep(0.05)
    time.sleep(3)
    p = http.get("/rollout").json()["propagation_ms"]
    return {"tables": tables, "measured": p["count"] - before, "p50_ms": p["p50"], "p99_ms": p["p99"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tables", type=int, default=300)
    args = parser.parse_args()
    os.environ["CANARY_ADMIN_TOKEN"] = TOKEN
    with tempfile.TemporaryDirectory() as tmp, local_serve(num_cpus=2) as port:
        url = f"http://127.0.0.1:{port}"
        store = f"{tmp}/rollout.db"
        rounds = [rollback_round(url, port, store, args.rate, i) for i in range(args.rounds)]
        deploy(rollout_config(port, store, "propagation"))
        wait_for(lambda: httpx.get(f"{url}/rollout").json().get("candidate_weight") == 5, 60, "weight 5")
        prop = propagation(url, args.tables)
    times = [r["onset_to_last_candidate_request_s"] for r in rounds]
    payload = {
        "rate": args.rate,
        "rounds": rounds,
        "rollback_s": {"median": statistics.median(times), "max": max(times), "goal": 5.0},
        "propagation": {**prop, "goal_p99_ms": 100.0},
    }
    table = (
        "| measure | value | goal |\n|---|---|---|\n"
        f"| candidate failing → last request routed to it (median of {len(times)}) | "
        f"{statistics.median(times):.2f} s (max {max(times):.2f} s) | ≤ 5 s |\n"
        f"| offered load | {args.rate:.0f} req/s at weight 5 "
        f"(achieved {statistics.median(r['achieved_rate'] for r in rounds):.0f}) | |\n"
        f"| non-2xx answers during rollbacks | {sum(r['non_2xx'] for r in rounds)} | 0 |\n"
        f"| routing-table propagation p50 / p99 ({prop['measured']} tables) | "
        f"{prop['p50_ms']} / {prop['p99_ms']} ms | p99 ≤ 100 ms |\n"
    )
    json_path, md_path = write_results("rollout-e2e", payload, table)
    print(table)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
