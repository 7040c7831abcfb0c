"""The serving sides of the benchmark, as Serve application builders (``import_path: benchmarks.peers:...``).

- `direct`: plain Ray Serve, proxy → model. One deployment loads the artifact with the project's own
  loader and `Predictor` and answers HTTP itself through ``@serve.batch``.
- `two_hop`: plain Ray Serve composition, proxy → `Forwarder` → handle → the same model deployment; no
  routing, no telemetry, no canary logic. This is the bar canary-serve's own overhead is measured against.
- `canary`: canary-serve itself: `serving.ingress.Ingress` in front of two `models.server.ModelServer`
  arms, exactly as `serving.app.build` wires them. The only difference is that each ModelServer counts
  its batch sizes (as the peers' model does), so all three sides report the same distribution.

All three parse the body with `models.inputs.parse_request` and answer ``{prediction, confidence,
model_version}``, so the model work per request is the same on every side.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from models.artifact import InputSchema, load_artifact, resolve_artifact_path, validate_artifact
from models.errors import InvalidInputError
from models.inputs import parse_request
from models.predictor import Predictor
from models.server import ModelServer, choose_device
from serving.app import check_args
from serving.ingress import Ingress


class _CountingPredictor:
    """A `Predictor` that counts the size of every batch it runs."""

    def __init__(self, inner: Predictor, sizes: Counter[int]) -> None:
        self._inner = inner
        self._sizes = sizes

    def predict_batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self._sizes[len(inputs)] += 1
        return self._inner.predict_batch(inputs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _take(sizes: Counter[int], reset: bool) -> dict[int, int]:
    out = dict(sorted(sizes.items()))
    if reset:
        sizes.clear()
    return out


@serve.deployment(max_ongoing_requests=64, graceful_shutdown_timeout_s=5)
class BatchedModel:
    """A plain Serve model deployment: the artifact, ``@serve.batch``, nothing else.

    Args:
        artifact: the artifact directory.
        batching: ``{"max_batch_size": ..., "batch_wait_timeout_s": ...}`` (canary-serve's stable arm's).
        device: ``auto`` (the assigned GPU if any), ``cpu`` or ``cuda``.
    """

    def __init__(self, artifact: str, batching: dict[str, Any], device: str = "auto") -> None:
        predictor = Predictor(load_artifact(artifact), choose_device(device))
        self._schema = predictor.metadata.input_schema
        self._version = predictor.version
        self._sizes: Counter[int] = Counter()
        max_batch_size = int(batching.get("max_batch_size", 32))
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(float(batching.get("batch_wait_timeout_s", 0.005)))
        for size in (1, max_batch_size):  # warm up as ModelServer does
            predictor.predict_batch(predictor.example_inputs(size))
        self._predictor = _CountingPredictor(predictor, self._sizes)

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            inputs = parse_request(self._schema, await request.json())
        except InvalidInputError as exc:
            return JSONResponse({"error": "invalid_input", "detail": exc.errors}, status_code=422)
        except ValueError:
            return JSONResponse({"error": "malformed_json"}, status_code=400)
        return JSONResponse(await self._batched(inputs))

    async def predict(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """One parsed input's answer, batched with the others in flight."""
        answer: dict[str, Any] = await self._batched(inputs)
        return answer

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**answer, "model_version": self._version} for answer in self._predictor.predict_batch(items)]

    def batch_sizes(self, reset: bool = False) -> dict[int, int]:
        """How many batches of each size ran (since the last reset)."""
        return _take(self._sizes, reset)


@serve.deployment(max_ongoing_requests=200, graceful_shutdown_timeout_s=5)
class Forwarder:
    """A plain Serve ingress: parse the body, forward it through a handle, answer the model's output."""

    def __init__(self, model: DeploymentHandle, input_schema: dict[str, Any]) -> None:
        self._model = model
        self._schema = InputSchema.model_validate(input_schema)

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            inputs = parse_request(self._schema, await request.json())
        except InvalidInputError as exc:
            return JSONResponse({"error": "invalid_input", "detail": exc.errors}, status_code=422)
        except ValueError:
            return JSONResponse({"error": "malformed_json"}, status_code=400)
        return JSONResponse(await self._model.predict.remote(inputs))


class BatchCountingModelServer(ModelServer.func_or_class):  # the class under @serve.deployment
    """canary-serve's `ModelServer`, unchanged but for a batch-size count around its predictor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # warms up first, so warm-up batches are not counted
        self._sizes: Counter[int] = Counter()
        self._predictor = _CountingPredictor(self._predictor, self._sizes)

    def batch_sizes(self, reset: bool = False) -> dict[int, int]:
        """How many batches of each size ran (since the last reset)."""
        return _take(self._sizes, reset)


_CountingModelServer = ModelServer.options(func_or_class=BatchCountingModelServer)


def _model_args(args: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    artifact = str(resolve_artifact_path(args["artifact"]))
    return artifact, dict(args.get("batching") or {}), str(args.get("device", "auto"))


def direct(args: dict[str, Any]) -> Application:
    """proxy → model. ``args``: ``{artifact, batching: {max_batch_size, batch_wait_timeout_s}, device}``."""
    return BatchedModel.options(name="Model").bind(*_model_args(args))


def two_hop(args: dict[str, Any]) -> Application:
    """proxy → Forwarder → handle → model; ``args`` as for `direct`."""
    artifact, batching, device = _model_args(args)
    model = BatchedModel.options(name="Model").bind(artifact, batching, device)
    schema = validate_artifact(artifact).input_schema.model_dump()
    return Forwarder.options(name="Forwarder").bind(model, schema)


def canary(args: dict[str, Any]) -> Application:
    """canary-serve as `serving.app.build` builds it (same ``args``), with batch-counting model servers."""
    parsed, checked = check_args(args)
    (stable_path, stable_meta), (candidate_path, candidate_meta) = checked["stable"], checked["candidate"]
    stable = _CountingModelServer.options(name="stable").bind(stable_path, "stable", parsed.stable.device)
    candidate = _CountingModelServer.options(name="candidate").bind(
        candidate_path, "candidate", parsed.candidate.device
    )
    return Ingress.options(name="Ingress").bind(
        stable,
        candidate,
        stable_meta.input_schema.model_dump(),
        {"stable": stable_meta.version, "candidate": candidate_meta.version},
    )
