"""Drift simulation: the judge with a baseline of all of stable's answers (``baseline: all``) against a
time-matched one (``baseline: matched``, `rollout.matching`), on staged rollouts whose shared latency drifts.

A rollout of three live stages (5 %, 25 %, 50 %), `STAGE_S` seconds each at `RATE` requests/s. A request's
latency is lognormal (median 50 ms, sigma 0.5) times a load factor both arms share, which moves linearly
over the rollout by the scenario's drift (+0.4: 40 % slower at the end than at the start), times the
candidate's own regression. Each second is one telemetry delta, merged into the rollout's window as the
controller merges it, and thinned by the controller's `Matcher` into the matched arms. Every `JUDGE_EVERY`
seconds the judge looks at the same window twice, once with each baseline; the gate is the p95 latency
regression of at most 10 %, alpha 0.05.

Reported per scenario and baseline: how often it rolled back (a false rollback where the candidate is within
the tolerance), the median seconds and candidate requests to the first FAIL, and how often the gate PASSed
by the end.

    python -m benchmarks.drift_sim [--replicates 100] [--workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.harness import write_results
from rollout.judge import Evidence, GateSpec, judge
from rollout.matching import Matcher
from serving.sketch import bucket_upper
from serving.telemetry import ArmStats, Window

RATE, STAGE_S, JUDGE_EVERY = 100, 300, 10  # requests/s, seconds per stage, seconds between looks
STAGES = (5.0, 25.0, 50.0)  # candidate weight, percent
MEDIAN_S, SIGMA = 0.05, 0.5
GATE = GateSpec("latency_p95_ms", "latency", "maximum_regression_percent", 10.0, quantile=0.95)
TOLERANCE = 1.10
BASELINES = ("all", "matched")
_LOG_GAMMA = math.log(bucket_upper(1))


@dataclass(frozen=True)
class Scenario:
    name: str
    drift: float = 0.0  # the shared load factor's change from start to end of the rollout
    regression: float = 1.0  # the candidate's latency factor

    @property
    def within_tolerance(self) -> bool:
        return self.regression <= TOLERANCE


SCENARIOS = (
    Scenario("A/A, steady load"),
    Scenario("A/A, latency +40% over the rollout", drift=0.4),
    Scenario("A/A, latency +80% over the rollout", drift=0.8),
    Scenario("+5% (tolerated), latency +40% over the rollout", drift=0.4, regression=1.05),
    Scenario("+20%, steady load", regression=1.2),
    Scenario("+20%, latency -30% over the rollout", drift=-0.3, regression=1.2),
)


def _delta(rng: np.random.Generator, t: int, sc: Scenario, rate: int, stage_s: int) -> Window:
    """One second of traffic at second ``t``, as an Ingress would flush it."""
    horizon = stage_s * len(STAGES)
    weight = STAGES[min(t // stage_s, len(STAGES) - 1)] / 100.0
    load = 1.0 + sc.drift * t / horizon
    n = int(rng.poisson(rate))
    c = int(rng.binomial(n, weight))
    window = Window(start=float(t), end=float(t + 1))
    for arm, count, factor in (("stable", n - c, load), ("candidate", c, load * sc.regression)):
        if not count:
            continue
        latency = rng.lognormal(math.log(MEDIAN_S), SIGMA, count) * factor
        index, kept = np.unique(np.ceil(np.log(latency) / _LOG_GAMMA).astype(np.int64), return_counts=True)
        stats = window.arms[(arm, ("all", "all"))] = ArmStats(requests=count, ok=count)
        stats.latency.bins = dict(zip(index.tolist(), kept.tolist(), strict=True))
        stats.latency.count, stats.latency.total = count, float(latency.sum())
    return window


def run(sc: Scenario, seed: int, rate: int = RATE, stage_s: int = STAGE_S) -> dict[str, dict[str, Any]]:
    """One rollout of ``sc``: per baseline, the first FAIL (seconds, candidate requests) and whether the gate
    PASSed at the last look."""
    rng = np.random.default_rng(seed)
    matcher = Matcher(np.random.default_rng(seed + 1))
    window = Window()
    out = {b: {"fail_s": None, "fail_requests": None, "passed": False} for b in BASELINES}
    for t in range(stage_s * len(STAGES)):
        delta = _delta(rng, t, sc, rate, stage_s)
        window.merge(delta)
        matcher.add(delta, (window,))
        if (t + 1) % JUDGE_EVERY:
            continue
        for baseline in BASELINES:
            record = out[baseline]
            if record["fail_s"] is not None:
                continue
            evidence = Evidence(window, True, {}, {}, {}, matched=baseline == "matched")
            j = judge([GATE], evidence, labels=())
            if j.rollback:
                record["fail_s"], record["fail_requests"] = t + 1, window.arm("candidate").requests
            record["passed"] = j.promotable
    return out


def _task(args: tuple[int, int, int, int]) -> dict[str, dict[str, Any]]:
    scenario, seed, rate, stage_s = args
    return run(SCENARIOS[scenario], seed, rate, stage_s)


def summarise(records: list[dict[str, dict[str, Any]]], sc: Scenario) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for baseline in BASELINES:
        fails = [r[baseline] for r in records if r[baseline]["fail_s"] is not None]
        out[baseline] = {
            "rollbacks": len(fails),
            "replicates": len(records),
            "rollback_rate": len(fails) / len(records),
            "false": sc.within_tolerance,
            "median_fail_s": statistics.median(f["fail_s"] for f in fails) if fails else None,
            "median_fail_requests": statistics.median(f["fail_requests"] for f in fails) if fails else None,
            "passed_at_end": sum(r[baseline]["passed"] for r in records) / len(records),
        }
    return out


def table(results: dict[str, dict[str, Any]], replicates: int) -> str:
    lines = [
        f"{replicates} rollouts per scenario: stages {', '.join(f'{w:g}%' for w in STAGES)} of {STAGE_S} s "
        f"each at {RATE} req/s, the p95 latency gate (+10 % tolerated), judged every {JUDGE_EVERY} s.",
        "",
        "| scenario | baseline | rolled back | median s to FAIL | candidate requests to FAIL | PASS at end |",
        "|---|---|---|---|---|---|",
    ]
    for name, per in results.items():
        for baseline in BASELINES:
            r = per[baseline]
            kind = " (false)" if r["false"] else ""
            fail_s = f"{r['median_fail_s']:g}" if r["median_fail_s"] is not None else "-"
            fail_n = f"{r['median_fail_requests']:,.0f}" if r["median_fail_requests"] is not None else "-"
            lines.append(
                f"| {name} | {baseline} | {100 * r['rollback_rate']:.0f}%{kind} | {fail_s} | {fail_n} | "
                f"{100 * r['passed_at_end']:.0f}% |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="10 replicates, 60 s stages (a smoke run)")
    args = parser.parse_args()
    replicates, stage_s = (10, 60) if args.quick else (args.replicates, STAGE_S)
    started = time.perf_counter()
    tasks = [(i, 1000 * i + r, RATE, stage_s) for i in range(len(SCENARIOS)) for r in range(replicates)]
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        records = pool.map(_task, tasks, chunksize=4)
    results = {
        sc.name: summarise(records[i * replicates : (i + 1) * replicates], sc)
        for i, sc in enumerate(SCENARIOS)
    }
    payload = {
        "replicates": replicates,
        "stage_s": stage_s,
        "rate": RATE,
        "stages": STAGES,
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    text = table(results, replicates)
    paths = write_results("drift-sim" + ("-quick" if args.quick else ""), payload, text)
    print(text)
    print("wrote", *paths)


if __name__ == "__main__":
    main()
