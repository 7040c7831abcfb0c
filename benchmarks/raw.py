"""The limit: a model's own batched throughput on the device, with no serving stack around it.

The model is loaded and run by the project's own code (`models.artifact.load_artifact`, `models.predictor.
Predictor`), on the very request bodies the load generator sends, parsed as the Ingress parses them
(`models.inputs.parse_request`). Two numbers per batch size:

- ``items_per_s``: `Predictor.predict_batch` (encode + forward + softmax + labels), which is the work a
  serving replica does per batch: the limit the serving sides are compared with;
- ``forward_items_per_s``: the module's forward alone on an encoded batch (device-synchronised), for
  reference: how much of the limit is the model and how much is its input and output handling.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from benchmarks.sampling import GpuSampler
from models.artifact import load_artifact
from models.inputs import parse_request
from models.predictor import Predictor


def default_device() -> torch.device:
    """The first GPU if there is one, else the CPU (as a serving replica given a GPU would place it)."""
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def _forward(module: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        module(x)


def _rate(
    step: Callable[[], object], items: int, seconds: float, sync: Callable[[], None]
) -> tuple[float, int]:
    for _ in range(2):  # warm-up: lazy initialisation, allocator growth, kernel selection
        step()
    sync()
    calls, started = 0, time.perf_counter()
    while True:
        step()
        calls += 1
        if calls >= 3 and time.perf_counter() - started >= seconds:
            break
    sync()
    return items * calls / (time.perf_counter() - started), calls


def measure(
    artifact: str,
    bodies: Sequence[dict[str, Any]],
    *,
    batch_sizes: Sequence[int],
    seconds: float,
    device: torch.device | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Throughput of ``artifact`` at each batch size, and the best of them.

    Args:
        artifact: the artifact directory.
        bodies: request bodies (cycled through to fill each batch).
        batch_sizes: the sizes to try.
        seconds: how long to run each size (at least 3 batches).
        device: where to run; the first GPU if any by default.
        on_step: called after each size with a short description (a progress bar's advance).
    """
    device = device or default_device()
    predictor = Predictor(load_artifact(artifact), device)
    schema = predictor.metadata.input_schema
    inputs = [parse_request(schema, body) for body in bodies]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    points: list[dict[str, Any]] = []
    for size in batch_sizes:
        batch = [inputs[i % len(inputs)] for i in range(size)]
        encoded = predictor.encode(batch)
        with GpuSampler() as gpu:
            rate, calls = _rate(partial(predictor.predict_batch, batch), size, seconds, sync)
        forward_rate, _ = _rate(partial(_forward, predictor.module, encoded), size, seconds / 2, sync)
        points.append(
            {
                "batch_size": size,
                "items_per_s": rate,
                "batch_ms": 1000 * size / rate,
                "batches": calls,
                "forward_items_per_s": forward_rate,
                "gpu": gpu.summary(),
            }
        )
        if on_step is not None:
            on_step(f"raw {predictor.version} batch {size}: {rate:,.0f}/s")
    best = max(points, key=lambda p: p["items_per_s"])
    best_forward = max(points, key=lambda p: p["forward_items_per_s"])
    result = {
        "model_version": predictor.version,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "points": points,
        "best": {"batch_size": best["batch_size"], "items_per_s": best["items_per_s"]},
        "forward_best": {
            "batch_size": best_forward["batch_size"],
            "items_per_s": best_forward["forward_items_per_s"],
        },
    }
    del predictor
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the serving replicas come next on the same device
    return result
