"""What every benchmark needs: its own local Ray and Serve on a free loopback port, a closed-loop load
generator bounded in count and time, and a results writer (JSON + Markdown) that names the machine."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import platform
import random
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks import loadgen

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """What the numbers ran on."""
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "python": platform.python_version(),
    }


def machine_slug() -> str:
    m = machine()
    device = "cpu" if m["gpu"] == "none" else m["gpu"].split("x ", 1)[-1].replace(" ", "-").lower()
    return f"{m['cores']}core-{device}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_serve(num_cpus: int | None = None) -> Iterator[int]:
    """A Ray started here (never attached to another) with Serve on a free port; stopped on exit."""
    import ray
    from ray import serve

    port = free_port()
    ray.init(
        address="local",
        num_cpus=num_cpus or os.cpu_count(),
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(config: dict[str, Any], app: str = "canary", timeout_s: float = 300) -> None:
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    serve.context._get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(status.message)
        time.sleep(0.5)
    raise TimeoutError(f"application {app!r} not RUNNING after {timeout_s}s")


def demo_config(port: int) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    return config


def edit(config: dict[str, Any], deployment: str, **user_config: Any) -> dict[str, Any]:
    """A copy of ``config`` whose deployment's user_config has the given top-level sections merged in."""
    config = copy.deepcopy(config)
    for app in config["applications"]:
        for dep in app["deployments"]:
            if dep["name"] == deployment:
                uc = dep.setdefault("user_config", {})
                for key, value in user_config.items():
                    if isinstance(value, dict) and isinstance(uc.get(key), dict):
                        uc[key] = {**uc[key], **value}
                    else:
                        uc[key] = value
    return config


@dataclass
class LoadResult:
    requests: int
    non_2xx: int
    seconds: float
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))] if ordered else float("nan")


def closed_loop(
    url: str,
    body: Callable[[random.Random], dict[str, Any]],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int = 200_000,
    warmup_s: float = 2.0,
    path: str = "/predict",
) -> LoadResult:
    """``concurrency`` clients each send one request at a time for ``duration_s`` (after a warm-up);
    loopback only, bounded by ``max_requests``. `benchmarks.loadgen.closed_loop` runs it; failures
    (non-2xx, transport errors, unanswered at the end) are counted together in ``non_2xx``."""
    r = loadgen.closed_loop(
        url,
        body,
        concurrency=concurrency,
        duration_s=duration_s,
        max_requests=max_requests,
        warmup_s=warmup_s,
        path=path,
        timeout_s=60,
    )
    return LoadResult(
        requests=r.requests,
        non_2xx=r.non_2xx + r.errors + r.incomplete,
        seconds=r.seconds,
        throughput=r.throughput,
        p50_ms=r.p50_ms,
        p95_ms=r.p95_ms,
        p99_ms=r.p99_ms,
    )


def median_result(results: list[LoadResult]) -> dict[str, float]:
    """The per-metric median over repeated runs (interleaved runs cancel slow drift of the machine)."""
    fields = ("throughput", "p50_ms", "p95_ms", "p99_ms")
    out = {f: statistics.median(getattr(r, f) for r in results) for f in fields}
    out["requests"] = sum(r.requests for r in results)
    out["non_2xx"] = sum(r.non_2xx for r in results)
    return out


def write_results(
    name: str, payload: dict[str, Any], table: str, directory: Path | None = None
) -> tuple[Path, Path]:
    """Writes ``<directory>/<name>-<machine>-<date>.{json,md}`` (``benchmarks/results`` by default); returns
    both paths."""
    directory = directory or RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{machine_slug()}-{dt.date.today().isoformat()}"
    meta = {
        "benchmark": name,
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    json_path = directory / f"{stem}.json"
    json_path.write_text(json.dumps({**meta, **payload}, indent=2, default=_plain) + "\n")
    m = meta["machine"]
    md_path = directory / f"{stem}.md"
    md_path.write_text(
        f"# {name}\n\nMachine: {m['cores']} cores ({m['cpu']}), GPU: {m['gpu']}, Python {m['python']}; "
        f"{meta['date']}.\n\n{table}\n"
    )
    return json_path, md_path


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
