"""The throughput suite: canary-serve side by side with the raw model and with plain Ray Serve, in one run.

For each model (the fraud classifier, overhead-bound; the text transformer, compute-bound), on whatever is
local (the GPUs if any, else the CPU):

- (a) raw: the model's own batched throughput on the device at its best batch size (`benchmarks.raw`);
- (b) the peers: plain Ray Serve serving the same model with ``@serve.batch``, proxy → model ("direct"),
  and a plain two-hop composition, ingress → handle → model ("two-hop") (`benchmarks.peers`);
- (c) ours: canary-serve with stable 95 % / candidate 5 % (both arms the same model) and shadow 10 %, or at
  the stage ``--canary-weight`` and ``--canary-shadow`` give (its results then go to a file of their own).

The three serving sides are deployed together and measured interleaved at each concurrency of a closed-loop
sweep (1, 8, 32, 128 by default); the sweep is repeated (``--rounds``, 3 by default) and each point's ratios
are the median of the rounds' own ratios, so a drift of the host between rounds does not decide a goal. Then
each side runs once in an open loop at a fixed arrival rate (latency from the scheduled send). Each run
records requests/s, p50/p95/p99, the batch-size distribution, GPU utilisation and memory from NVML (absent
without a GPU) and CPU time per request per process. Results go to
``benchmarks/results/bench-<machine>-<date>.{json,md,png}`` (``bench-quick-...`` for ``--quick``).

    python -m benchmarks.bench            # the full suite (about 12 minutes on 2 CPU cores)
    python -m benchmarks.bench --quick    # every path once, briefly (about 2 minutes)
    canary bench --models text --concurrency 1,32
    canary bench --models fraud --canary-weight 0 --canary-shadow 0   # canary-serve's cost with no candidate
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from benchmarks import bench_report
from benchmarks.harness import ROOT, write_results
from benchmarks.loadgen import LoadResult, closed_loop, open_loop
from benchmarks.sampling import GpuSampler, cpu_ms_by_process, cpu_per_request
from benchmarks.sides import (
    CANDIDATE_WEIGHT,
    SHADOW_PERCENT,
    SIDES,
    BenchError,
    Side,
    applications,
    canary_counts,
    canary_label,
    deploy_sides,
    remove_sides,
    take_batch_sizes,
)

# The fraud MLP (fraud-v2; overhead-bound, it shows the serving path's cost) and the text transformer
# (compute-bound, it shows batching). fraud-v1, a logistic regression, is lighter still.
MODELS = {"fraud": "models/artifacts/fraud-v2", "text": "models/artifacts/text-v1"}


@dataclass(frozen=True)
class Settings:
    """How much to run. `FULL` and `QUICK` are the presets; the CLI's flags replace single fields."""

    models: tuple[str, ...] = tuple(MODELS.values())
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    rounds: int = 3  # closed-loop sweeps, interleaved; a point's ratios are the median over the rounds
    seconds: float = 5.0
    warmup_s: float = 2.0
    open_seconds: float = 8.0
    open_load: float = 0.7  # the open loop's rate, as a share of the slowest side's best closed-loop req/s
    raw_batch_sizes: tuple[int, ...] = (1, 8, 32, 128, 512)
    raw_seconds: float = 1.5
    config: str | None = None  # None: configs/gpu.yaml with a GPU, configs/demo.yaml without
    max_requests: int = 200_000
    quick: bool = False
    candidate_weight: float = CANDIDATE_WEIGHT  # canary-serve's stage: the candidate's share of live traffic
    shadow_percent: float = SHADOW_PERCENT  # and the share of stable's traffic mirrored to it


FULL = Settings()
QUICK = Settings(
    concurrency=(1, 8),
    rounds=1,
    seconds=1.5,
    warmup_s=0.5,
    open_seconds=1.5,
    raw_batch_sizes=(1, 32),
    raw_seconds=0.2,
    max_requests=20_000,
    quick=True,
)


class Progress:
    """What the suite reports as it goes; the CLI draws it as a progress bar, tests ignore it."""

    def step(self, description: str) -> None:
        """One step done; ``description`` says which."""


def steps(settings: Settings) -> int:
    """How many `Progress.step` calls a run of ``settings`` makes."""
    closed = settings.rounds * len(settings.concurrency)
    per_model = len(settings.raw_batch_sizes) + 1 + len(SIDES) * (1 + closed + 1)
    return per_model * len(settings.models)


def has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def base_config(settings: Settings, gpu: bool) -> tuple[str, dict[str, Any]]:
    """The Serve config the canary side is sized from (its path, relative to the project, and content)."""
    path = settings.config or ("configs/gpu.yaml" if gpu else "configs/demo.yaml")
    full = Path(path) if Path(path).is_absolute() else ROOT / path
    return path, yaml.safe_load(full.read_text())


def request_bodies(kind: str, n: int = 512) -> list[dict[str, Any]]:
    """The request bodies every side gets (deterministic): the demo traffic's."""
    from models.data import demo_requests

    return demo_requests(n, seed=7, kind="text" if kind == "text" else "features")


def measured(
    result: LoadResult, side: Side, before: dict[str, float] | None, gpu: GpuSampler
) -> dict[str, Any]:
    """One load run as the results file keeps it."""
    return {
        **result.summary(),
        "batch_sizes": take_batch_sizes(side),
        "gpu": gpu.summary(),
        "cpu_ms_per_request": cpu_per_request(before, cpu_ms_by_process(), result.sent),
    }


def median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One point of the closed-loop sweep over its rounds: the round with the median req/s (the lower
    middle one for an even count), whole, so its latency, batch sizes and CPU belong together, with every
    round's req/s and latency under ``rounds`` (which `benchmarks.bench_report` pairs across sides)."""
    middle = sorted(runs, key=lambda r: r["throughput"])[(len(runs) - 1) // 2]
    keep = ("throughput", "p50_ms", "p95_ms", "p99_ms")
    return {**middle, "rounds": [{k: r[k] for k in keep} for r in runs]}


def run_side(
    url: str, side: Side, pool: list[dict[str, Any]], settings: Settings, **load: Any
) -> dict[str, Any]:
    """One closed-loop (``concurrency=``) or open-loop (``rate=``) run against ``side``."""

    def body(rng: random.Random) -> dict[str, Any]:
        return rng.choice(pool)

    take_batch_sizes(side)  # reset
    before = cpu_ms_by_process()
    with GpuSampler() as gpu:
        if "rate" in load:
            result = open_loop(
                url,
                body,
                path=side.path,
                duration_s=settings.open_seconds,
                warmup_s=settings.warmup_s,
                max_requests=settings.max_requests,
                **load,
            )
        else:
            result = closed_loop(
                url,
                body,
                path=side.path,
                duration_s=settings.seconds,
                warmup_s=settings.warmup_s,
                max_requests=settings.max_requests,
                **load,
            )
    return measured(result, side, before, gpu)


def run_model(
    artifact: str, settings: Settings, port: int, base: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """Raw, then the three serving sides, for one model."""
    import ray

    from benchmarks import raw
    from models.artifact import validate_artifact

    meta = validate_artifact(artifact)
    pool = request_bodies(meta.input_schema.kind)
    limit = raw.measure(
        artifact,
        pool,
        batch_sizes=settings.raw_batch_sizes,
        seconds=settings.raw_seconds,
        on_step=progress.step,
    )
    url = f"http://127.0.0.1:{port}"
    gpus = float(ray.cluster_resources().get("GPU", 0))
    with tempfile.TemporaryDirectory(prefix="canary-bench-") as store:
        deploy_sides(
            applications(
                base,
                artifact,
                f"{store}/rollout.db",
                gpus,
                settings.candidate_weight,
                settings.shadow_percent,
            )
        )
        progress.step(f"{meta.version}: deployed the three serving sides")
        try:
            sides: dict[str, dict[str, Any]] = {
                side.key: {"label": labels(settings)[side.key], "app": side.app} for side in SIDES
            }
            runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
            for side in SIDES:  # connections, lazy initialisation, the first batches
                closed_loop(
                    url,
                    lambda rng: rng.choice(pool),
                    path=side.path,
                    concurrency=8,
                    duration_s=max(1.0, settings.warmup_s),
                    warmup_s=0,
                )
                progress.step(f"{meta.version}: warmed up {side.key}")
            for round_ in range(settings.rounds):
                for i, concurrency in enumerate(settings.concurrency):
                    first = (i + round_) % len(SIDES)
                    for side in SIDES[first:] + SIDES[:first]:  # nobody always goes first
                        run = run_side(url, side, pool, settings, concurrency=concurrency)
                        runs.setdefault((side.key, concurrency), []).append(run)
                        progress.step(
                            f"{meta.version} round {round_ + 1}/{settings.rounds} {side.key} ×{concurrency}: "
                            f"{run['throughput']:,.0f} req/s, p50 {run['p50_ms']:.1f} ms"
                        )
            for side in SIDES:
                sides[side.key]["closed"] = [median_round(runs[side.key, c]) for c in settings.concurrency]
            slowest = min(max(r["throughput"] for r in s["closed"]) for s in sides.values())
            rate = max(1.0, settings.open_load * slowest)
            for side in SIDES:
                run = run_side(url, side, pool, settings, rate=rate)
                sides[side.key]["open"] = run
                progress.step(f"{meta.version} {side.key} open {rate:,.0f}/s: p99 {run['p99_ms']:.1f} ms")
            counts = canary_counts(url)
        finally:
            remove_sides()
    return {
        "artifact": artifact,
        "model_version": meta.version,
        "architecture": meta.architecture,
        "input_kind": meta.input_schema.kind,
        "raw": limit,
        "sides": sides,
        "open_rate": rate,
        "canary_counts": counts,
    }


def labels(settings: Settings) -> dict[str, str]:
    """Each serving side's description, canary-serve's with the stage this run measured."""
    return {
        side.key: canary_label(settings.candidate_weight, settings.shadow_percent)
        if side.key == "canary"
        else side.label
        for side in SIDES
    }


def run_suite(
    settings: Settings,
    port: int,
    progress: Progress | None = None,
    on_partial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Runs the suite against the Ray Serve running in this process (its HTTP proxy on ``port``).

    Returns the results payload (see `bench_report.analyse` for the ratios and goals it adds). After each
    model but the last, ``on_partial`` gets the payload of the models measured so far, marked ``partial``, so
    a run stopped later (a time limit on a leased GPU machine) still leaves what it measured.
    """
    progress = progress or Progress()
    gpu = has_gpu()
    config_path, base = base_config(settings, gpu)
    models: dict[str, Any] = {}
    for artifact in settings.models:
        result = run_model(artifact, settings, port, base, progress)
        models[result["model_version"]] = result
        if on_partial is not None and len(models) < len(settings.models):
            partial = suite_payload(settings, config_path, gpu, models)
            on_partial({**partial, "partial": f"{len(models)} of {len(settings.models)} models measured"})
    return suite_payload(settings, config_path, gpu, models)


def suite_payload(settings: Settings, config_path: str, gpu: bool, models: dict[str, Any]) -> dict[str, Any]:
    """The results of the models measured, with the ratios and goals (`bench_report.analyse`)."""
    payload = {
        "comparison": "(a) raw model on the device vs (b) plain Ray Serve peers vs (c) canary-serve",
        "sides": {
            "raw": "the model's batched predict on the device, best batch size",
            **labels(settings),
        },
        "settings": {**asdict(settings), "config": config_path},
        "gpu_run": None if gpu else "none on this machine: these are CPU numbers",
        "models": dict(models),
    }
    return bench_report.analyse(payload, gpu)


def write(payload: dict[str, Any], directory: Path | None = None) -> tuple[Path, Path, Path]:
    """Writes ``bench-<machine>-<date>.{json,md,png}`` (``bench-quick-...`` for a quick run) to ``directory``
    (``benchmarks/results`` by default); returns the three paths."""
    settings = payload["settings"]
    name = "bench-quick" if settings.get("quick") else "bench"
    stage = (
        settings.get("candidate_weight", CANDIDATE_WEIGHT),
        settings.get("shadow_percent", SHADOW_PERCENT),
    )
    if stage != (CANDIDATE_WEIGHT, SHADOW_PERCENT):  # another stage's run never replaces the default's file
        name += f"-canary{stage[0]:g}-shadow{stage[1]:g}"
    json_path, md_path = write_results(name, payload, bench_report.markdown(payload), directory=directory)
    png = bench_report.plot(payload, json_path.with_suffix(".png"))
    with md_path.open("a") as f:
        f.write(f"\n![requests/s and p50 by concurrency]({png.name})\n")
    return json_path, md_path, png


@contextmanager
def own_serve() -> Iterator[int]:
    """A Ray and Serve of the suite's own (`benchmarks.harness.local_serve`), started from the project
    root so that every replica can import ``benchmarks``."""
    import os

    from benchmarks.harness import local_serve

    here = os.getcwd()
    os.chdir(ROOT)
    try:
        with local_serve() as port:
            yield port
    finally:
        os.chdir(here)


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of positive integers, e.g. 1,8,32,128; got {text!r}"
        )
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, e.g. 3; got {text!r}")
    return value


def _number(low: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not (value >= low if inclusive else value > low):
            bound = f">= {low:g}" if inclusive else f"> {low:g}"
            raise argparse.ArgumentTypeError(f"expected a number {bound}; got {text!r}")
        return value

    return parse


def _percent(text: str) -> float:
    value = _number(0, inclusive=True)(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"expected a percent from 0 to 100; got {text!r}")
    return value


def _models(text: str) -> tuple[str, ...]:
    out = []
    for name in (v.strip() for v in text.split(",") if v.strip()):
        if name in MODELS:
            out.append(MODELS[name])
            continue
        path = Path(name)
        candidates = [path] if path.is_absolute() else [Path.cwd() / path, ROOT / path]
        found = next((c for c in candidates if (c / "model.json").is_file()), None)
        if found is None:
            raise argparse.ArgumentTypeError(
                f"unknown model {name!r}: expected {' or '.join(MODELS)}, or an artifact directory holding "
                "model.json"
            )
        out.append(str(found.resolve()))
    if not out:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of models, e.g. fraud,text; got {text!r}"
        )
    return tuple(out)


def _config(text: str) -> str:
    path = Path(text)
    found = next(
        (c for c in ([path] if path.is_absolute() else [Path.cwd() / path, ROOT / path]) if c.is_file()), None
    )
    if found is None:
        raise argparse.ArgumentTypeError(f"no such Serve config file: {text!r}")
    try:
        deployments = {d["name"] for d in yaml.safe_load(found.read_text())["applications"][0]["deployments"]}
    except (yaml.YAMLError, LookupError, TypeError):
        deployments = set()
    if not {"Ingress", "stable", "candidate"} <= deployments:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a canary-serve config: expected its first application to list the Ingress, "
            "stable and candidate deployments, as configs/demo.yaml does"
        )
    return str(found.resolve())


def _out(text: str) -> Path:
    path = Path(text).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return path


def parser(prog: str = "python -m benchmarks.bench") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="every path once, briefly (a smoke run, ~2 min)")
    p.add_argument("--models", type=_models, help="fraud, text or artifact directories (default: fraud,text)")
    p.add_argument("--concurrency", type=_positive_ints, help="closed-loop clients (default 1,8,32,128)")
    p.add_argument(
        "--rounds",
        type=_positive_int,
        help="closed-loop sweeps, interleaved; ratios are the median over them (default 3)",
    )
    p.add_argument("--seconds", type=_number(0, inclusive=False), help="measured seconds per run (default 5)")
    p.add_argument(
        "--warmup", type=_number(0, inclusive=True), help="unmeasured seconds before each run (default 2)"
    )
    p.add_argument(
        "--open-seconds", type=_number(0, inclusive=False), help="measured seconds of the open loop"
    )
    p.add_argument(
        "--open-load",
        type=_number(0, inclusive=False),
        help="open-loop rate as a share of the slowest side's best closed-loop req/s (default 0.7)",
    )
    p.add_argument("--raw-batch-sizes", type=_positive_ints, help="default 1,8,32,128,512")
    p.add_argument("--raw-seconds", type=_number(0, inclusive=False), help="seconds per raw batch size")
    p.add_argument(
        "--config",
        type=_config,
        help="Serve config to size the sides from (default: gpu.yaml with a GPU, else demo.yaml)",
    )
    p.add_argument(
        "--canary-weight",
        type=_percent,
        help=f"canary-serve's candidate share of live traffic, 0-100 (default {CANDIDATE_WEIGHT:g})",
    )
    p.add_argument(
        "--canary-shadow",
        type=_percent,
        help=f"canary-serve's shadow percent of stable's traffic, 0-100 (default {SHADOW_PERCENT:g})",
    )
    p.add_argument("--out", type=_out, default=None, help="results directory (default benchmarks/results)")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    preset = QUICK if args.quick else FULL
    given = {
        "models": args.models,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "open_seconds": args.open_seconds,
        "open_load": args.open_load,
        "raw_batch_sizes": args.raw_batch_sizes,
        "raw_seconds": args.raw_seconds,
        "config": args.config,
        "candidate_weight": args.canary_weight,
        "shadow_percent": args.canary_shadow,
    }
    return replace(preset, **{k: v for k, v in given.items() if v is not None})


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks.bench") -> int:
    """Runs the suite on a Ray of its own with a progress bar; writes and prints the results."""
    args = parser(prog).parse_args(argv)
    settings = settings_from(args)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Bar(*columns, console=console) as bar:
        task = bar.add_task("starting Ray and Serve", total=steps(settings))

        class Shown(Progress):
            def step(self, description: str) -> None:
                bar.update(task, advance=1, description=description)

        try:
            with own_serve() as port:
                results = run_suite(settings, port, Shown(), on_partial=lambda p: write(p, args.out))
        except BenchError as exc:
            bar.stop()
            console.print(f"error: {exc}", markup=False, highlight=False)
            return 1
    paths = write(results, args.out)
    print(bench_report.markdown(results))
    print("\nwrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
