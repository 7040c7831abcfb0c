"""The throughput suite's ratios, goals, Markdown table and plot, computed from its results payload alone.

Pure: no Ray, no HTTP, no clock. `analyse` adds ``ratios`` and ``goals`` to each model of a payload that
`benchmarks.bench.run_suite` measured; `markdown` and `plot` render it (`benchmarks.bench.write` puts the
JSON, the Markdown and the PNG next to each other).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

GOAL_THROUGHPUT_VS_TWO_HOP = 0.95  # canary req/s ÷ two-hop peer's, at every concurrency
GOAL_P50_VS_TWO_HOP = 1.05  # canary p50 ÷ two-hop peer's, at every concurrency
GOAL_VS_RAW_GPU = 0.80  # canary's best req/s ÷ raw best, the compute-bound model on a GPU
COMPUTE_BOUND = "text_transformer"
SIDE_KEYS = ("direct", "two-hop", "canary")


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _paired(ours: dict[str, Any], peer: dict[str, Any], key: str) -> tuple[float | None, list[float] | None]:
    """canary ÷ peer in ``key`` at one point: over several rounds, the median of each round's own ratio
    (the sides ran next to each other within a round) and the range of those ratios; else the one ratio."""
    mine, theirs = ours.get("rounds") or [], peer.get("rounds") or []
    if len(mine) < 2 or len(mine) != len(theirs):
        return _ratio(ours[key], peer[key]), None
    values = [_ratio(a[key], b[key]) for a, b in zip(mine, theirs, strict=True)]
    if any(v is None for v in values):
        return None, None
    found = [v for v in values if v is not None]
    return statistics.median(found), [min(found), max(found)]


def ratios(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Per concurrency: canary's req/s and latency over each peer's (paired by round, the median over the
    rounds, with their range where there were several), and its req/s over the raw limit."""
    sides = model["sides"]
    raw_best = model["raw"]["best"]["items_per_s"]
    out = []
    for direct, two_hop, ours in zip(*(sides[k]["closed"] for k in SIDE_KEYS), strict=True):
        row: dict[str, Any] = {"concurrency": ours["concurrency"], "rounds": len(ours.get("rounds") or [0])}
        for name, peer, key in (
            ("throughput_vs_direct", direct, "throughput"),
            ("throughput_vs_two_hop", two_hop, "throughput"),
            ("p50_vs_direct", direct, "p50_ms"),
            ("p50_vs_two_hop", two_hop, "p50_ms"),
            ("p99_vs_two_hop", two_hop, "p99_ms"),
        ):
            row[name], row[f"{name}_range"] = _paired(ours, peer, key)
        row["vs_raw"] = _ratio(ours["throughput"], raw_best)
        row["two_hop_vs_raw"] = _ratio(two_hop["throughput"], raw_best)
        out.append(row)
    return out


def _goal(value: float | None, goal: float, at_least: bool) -> dict[str, Any]:
    met = None if value is None else (value >= goal if at_least else value <= goal)
    return {"goal": goal, "value": value, "met": met}


def goals(model: dict[str, Any], rows: list[dict[str, Any]], gpu: bool) -> dict[str, Any]:
    """The issue's goals for one model; a goal that cannot be judged here says why instead of passing."""
    throughput = [r["throughput_vs_two_hop"] for r in rows]
    p50 = [r["p50_vs_two_hop"] for r in rows]
    worst_throughput = None if None in throughput or not throughput else min(throughput)
    worst_p50 = None if None in p50 or not p50 else max(p50)
    out: dict[str, Any] = {
        "throughput_vs_two_hop_every_concurrency": _goal(worst_throughput, GOAL_THROUGHPUT_VS_TWO_HOP, True),
        "p50_vs_two_hop_every_concurrency": _goal(worst_p50, GOAL_P50_VS_TWO_HOP, False),
    }
    best_vs_raw = max((r["vs_raw"] for r in rows if r["vs_raw"] is not None), default=None)
    raw_goal = _goal(best_vs_raw, GOAL_VS_RAW_GPU, True)
    if model["architecture"] != COMPUTE_BOUND:
        raw_goal.update(met=None, note="set for the compute-bound model only")
    elif not gpu:
        raw_goal.update(met=None, note="set for a GPU; this run had none")
    out["best_vs_raw_on_gpu"] = raw_goal
    return out


def analyse(payload: dict[str, Any], gpu: bool) -> dict[str, Any]:
    """Adds ``ratios`` and ``goals`` to every model of ``payload`` (in place) and returns it."""
    for model in payload["models"].values():
        model["ratios"] = ratios(model)
        model["goals"] = goals(model, model["ratios"], gpu)
    return payload


def _x(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}×" if value >= 0.01 else f"{value:.2g}×"  # the serving sides ÷ a fast raw model


def _xr(row: dict[str, Any], name: str) -> str:
    """A ratio of `ratios`' row with the range over the rounds, e.g. ``0.93× (0.88–0.97)``."""
    span = row.get(f"{name}_range")
    text = _x(row[name])
    return f"{text} ({span[0]:.2f}–{span[1]:.2f})" if span else text


def _ms(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.1f}"


def _mean_batch(sizes: dict[Any, int]) -> float | None:
    batches = sum(sizes.values())
    return sum(int(k) * v for k, v in sizes.items()) / batches if batches else None


def _batches(run: dict[str, Any]) -> str:
    parts = []
    for deployment, sizes in run["batch_sizes"].items():
        mean = _mean_batch(sizes)
        parts.append(f"{deployment} {mean:.1f}" if mean is not None else f"{deployment} –")
    return ", ".join(parts)


def _gpu(run: dict[str, Any]) -> tuple[str, str]:
    gpu = run.get("gpu") or {}
    if not gpu.get("available"):
        return "–", "–"
    devices = gpu.get("devices") or []
    util = [d["utilization_mean"] for d in devices if d.get("utilization_mean") is not None]
    mem = [d["memory_used_max_bytes"] for d in devices if d.get("memory_used_max_bytes") is not None]
    return (
        f"{100 * max(util):.0f} %" if util else "–",
        f"{max(mem) / 2**30:.1f} GiB" if mem else "–",
    )


def _verdict(goal: dict[str, Any]) -> str:
    if goal.get("note"):
        return f"not judged ({goal['note']})"
    if goal["met"] is None:
        return "not judged (no value)"
    return "met" if goal["met"] else "NOT met"


_HOP_ORDER = ("Forwarder", "Ingress", "Model", "stable", "candidate")


def _cpu_lines(sides: dict[str, Any]) -> list[str]:
    """CPU ms per request at the highest concurrency, per process, one column per side. A side's own
    deployments are named; the other sides' (idle while it runs) are summed in one row."""
    top = {key: sides[key]["closed"][-1] for key in SIDE_KEYS}
    profiles = {key: run.get("cpu_ms_per_request") or {} for key, run in top.items()}
    if not any(profiles.values()):
        return []
    own: dict[str, dict[str, float]] = {}
    idle: dict[str, float] = {}
    for key, profile in profiles.items():
        prefix = f"{sides[key].get('app', key)}/"
        own[key] = {n.removeprefix(prefix): v for n, v in profile.items() if n.startswith(prefix)}
        idle[key] = sum(v for n, v in profile.items() if n.startswith("bench-") and not n.startswith(prefix))
    named = {h for o in own.values() for h in o}
    hops = [h for h in _HOP_ORDER if h in named] + sorted(named - set(_HOP_ORDER))
    others = sorted({n for p in profiles.values() for n in p if not n.startswith("bench-")})
    lines = [
        "",
        f"Where the CPU goes at {top['canary']['concurrency']} clients (ms of CPU per request, warm-up "
        "included; `loadgen` is the load generator with this process's Ray worker):",
        "",
        "| process | " + " | ".join(SIDE_KEYS) + " |",
        "| --- | " + " | ".join("---" for _ in SIDE_KEYS) + " |",
    ]
    for hop in hops:
        lines.append(f"| {hop} | " + " | ".join(_ms(own[k].get(hop)) for k in SIDE_KEYS) + " |")
    lines.append("| the other sides (idle) | " + " | ".join(_ms(idle[k]) for k in SIDE_KEYS) + " |")
    for name in others:
        lines.append(f"| {name} | " + " | ".join(_ms(profiles[k].get(name)) for k in SIDE_KEYS) + " |")
    totals = [_ms(sum(profiles[k].values()) or None) for k in SIDE_KEYS]
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return lines


def model_markdown(model: dict[str, Any]) -> str:
    raw = model["raw"]
    best, forward = raw["best"], raw["forward_best"]
    sides = model["sides"]
    lines = [
        f"### {model['model_version']} ({model['architecture']})",
        "",
        f"(a) raw, the limit: {best['items_per_s']:,.0f} predictions/s at batch {best['batch_size']} on "
        f"{raw['device_name']} (torch threads {raw['torch_threads']}); the forward alone "
        f"{forward['items_per_s']:,.0f}/s at batch {forward['batch_size']}.",
        "",
        "| side | clients | req/s | p50 ms | p95 ms | p99 ms | mean batch | GPU util | GPU mem |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in SIDE_KEYS:
        for run in sides[key]["closed"]:
            util, mem = _gpu(run)
            lines.append(
                f"| {key} | {run['concurrency']} | {run['throughput']:,.1f} | {_ms(run['p50_ms'])} "
                f"| {_ms(run['p95_ms'])} | {_ms(run['p99_ms'])} | {_batches(run)} | {util} | {mem} |"
            )
    lines += [
        "",
        "| clients | canary ÷ direct | canary ÷ two-hop | p50 canary ÷ two-hop | p99 canary ÷ two-hop "
        "| canary ÷ raw | two-hop ÷ raw |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in model["ratios"]:
        lines.append(
            f"| {r['concurrency']} | {_xr(r, 'throughput_vs_direct')} | {_xr(r, 'throughput_vs_two_hop')} "
            f"| {_xr(r, 'p50_vs_two_hop')} | {_xr(r, 'p99_vs_two_hop')} | {_x(r['vs_raw'])} "
            f"| {_x(r['two_hop_vs_raw'])} |"
        )
    lines += [
        "",
        f"Open loop at {model['open_rate']:,.1f} req/s offered (latency from the scheduled send):",
        "",
        "| side | req/s answered | p50 ms | p99 ms | generator send lag p99 ms | failed |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key in SIDE_KEYS:
        run = sides[key]["open"]
        failed = run["non_2xx"] + run["errors"] + run["incomplete"]
        lines.append(
            f"| {key} | {run['throughput']:,.1f} | {_ms(run['p50_ms'])} | {_ms(run['p99_ms'])} "
            f"| {_ms(run.get('send_lag_p99_ms'))} | {failed} |"
        )
    lines += _cpu_lines(sides)
    counts = model.get("canary_counts")
    if counts:
        requests, shadow = counts["requests"], counts["shadow"]
        lines += [
            "",
            f"canary-serve counted {requests['stable']:,} stable and {requests['candidate']:,} candidate "
            f"requests and mirrored {shadow['mirrored']:,} ({shadow['dropped']:,} dropped).",
        ]
    g = model["goals"]
    lines += [
        "",
        f"Goals: canary ≥ {GOAL_THROUGHPUT_VS_TWO_HOP}× the two-hop peer's req/s at every concurrency "
        f"(worst {_x(g['throughput_vs_two_hop_every_concurrency']['value'])}): "
        f"{_verdict(g['throughput_vs_two_hop_every_concurrency'])}; p50 ≤ {GOAL_P50_VS_TWO_HOP}× "
        f"(worst {_x(g['p50_vs_two_hop_every_concurrency']['value'])}): "
        f"{_verdict(g['p50_vs_two_hop_every_concurrency'])}; ≥ {GOAL_VS_RAW_GPU}× raw on a GPU "
        f"(best {_x(g['best_vs_raw_on_gpu']['value'])}): {_verdict(g['best_vs_raw_on_gpu'])}.",
    ]
    return "\n".join(lines)


def markdown(payload: dict[str, Any]) -> str:
    """The whole run as Markdown: one section per model."""
    settings = payload["settings"]
    head = [
        "Side by side in one run, same model and inputs: (a) raw = the model's batched predict on the "
        "device; (b) direct = plain Ray Serve, proxy → model with @serve.batch; two-hop = plain Ray Serve, "
        f"ingress → handle → model; (c) canary = {payload['sides']['canary']}.",
        "",
        f"Closed loop, {settings['seconds']:g} s measured after {settings['warmup_s']:g} s warm-up per run, "
        f"sides interleaved; loopback, load generator on the same machine. Sized from `{settings['config']}`"
        + (" (quick run: indicative only)." if settings.get("quick") else "."),
    ]
    rounds = int(settings.get("rounds", 1))
    if rounds > 1:
        head += [
            "",
            f"The sweep ran {rounds} times, the sides interleaved within each round. A side's row is its "
            "round with the median req/s at that concurrency; a ratio is the median of the rounds' own "
            "ratios (each round's sides measured next to each other), with their range in brackets. The "
            "goals are judged on those medians.",
        ]
    if payload.get("partial"):
        head += ["", f"**Partial run:** {payload['partial']}; the run was stopped before the rest."]
    if payload.get("gpu_run"):
        head += [
            "",
            "GPU: none on this machine, so no NVML numbers (shown as –) and the raw goal is not judged.",
        ]
    return "\n".join(head + [""] + [model_markdown(m) + "\n" for m in payload["models"].values()])


def plot(payload: dict[str, Any], path: Path) -> Path:
    """Requests/s and p50 against concurrency, per side, one column per model; raw as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(payload["models"].values())
    fig, axes = plt.subplots(2, len(models), figsize=(5.5 * len(models), 7), squeeze=False)
    for col, model in enumerate(models):
        top, bottom = axes[0][col], axes[1][col]
        for key in SIDE_KEYS:
            runs = model["sides"][key]["closed"]
            xs = [r["concurrency"] for r in runs]
            top.plot(xs, [r["throughput"] for r in runs], marker="o", label=key)
            bottom.plot(xs, [r["p50_ms"] for r in runs], marker="o", label=key)
        top.axhline(
            model["raw"]["best"]["items_per_s"], linestyle="--", color="grey", label="raw (best batch)"
        )
        top.set_yscale("log")
        top.set_title(f"{model['model_version']}: requests/s")
        bottom.set_title(f"{model['model_version']}: p50 latency (ms)")
        concurrency = [r["concurrency"] for r in model["sides"]["canary"]["closed"]]
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_xticks(concurrency, [str(c) for c in concurrency])
            ax.minorticks_off()
            ax.set_xlabel("closed-loop clients")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
