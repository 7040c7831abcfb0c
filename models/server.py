"""`ModelServer`: the Ray Serve deployment that hosts one model arm (``stable`` or ``candidate``).

One class serves both arms: ``ModelServer.options(name="stable").bind(...)`` and ``name="candidate"``. Each
replica loads a checksummed artifact, places it on the GPU Ray assigned (or the CPU, said once in the log),
warms up before it takes traffic, and answers through ``@serve.batch`` whose size and wait come from the
deployment's ``user_config`` and change at run time without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Mapping
from typing import Any

import torch
from ray import serve

from models.artifact import load_artifact
from models.errors import InjectedFaultError, ModelError
from models.faults import FaultInjector
from models.gpu import GpuMonitor, use_pci_bus_order
from models.predictor import Predictor
from rollout.controller import find_controller
from serving.config import MODEL_MAX_ONGOING_REQUESTS, ModelServerConfig, validate_section
from serving.errors import InvalidConfigError

logger = logging.getLogger("ray.serve")


class ModelOverloadedError(ModelError):
    """The model could not answer this batch for lack of device memory; the request may be retried.

    Attributes:
        arm: which deployment raised it.
        detail: what ran out.
    """

    def __init__(self, arm: str, detail: str) -> None:
        self.arm = arm
        self.detail = detail
        super().__init__(f"{arm} model is out of device memory for this batch ({detail}); retry shortly")

    def __reduce__(self) -> tuple[Any, ...]:
        return (ModelOverloadedError, (self.arm, self.detail))


def choose_device(preference: str) -> torch.device:
    """The device to place the model on: the GPU Ray assigned this replica when asked ('auto'/'cuda')."""
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES, so the assigned GPU is always index 0
    if preference == "cuda":
        raise ModelError(
            "device 'cuda' was requested but this replica sees no GPU: give the deployment "
            "ray_actor_options.num_gpus > 0, or set device: auto"
        )
    return torch.device("cpu")


_OOM_SENTINEL = object()
SHUTDOWN_REPORT_S = 2.0  # the last report at graceful shutdown (within graceful_shutdown_timeout_s)


def _batch_warning(max_batch_size: int) -> str | None:
    """Why ``max_batch_size`` cannot be reached in this replica, if it cannot: Serve hands a replica at most
    its deployment's ``max_ongoing_requests``. `canary deploy` refuses such a config; ``serve run`` takes it,
    so the replica says so (in its log, `info` and ``GET /rollout``'s replicas)."""
    try:
        holds = serve.get_replica_context()._deployment_config.max_ongoing_requests
    except Exception:  # no replica context (a unit test), or Ray moved the private field: say nothing
        return None
    if not isinstance(holds, int) or not 0 < holds < max_batch_size:
        return None
    return (
        f"user_config.batching.max_batch_size ({max_batch_size}) is larger than this deployment's "
        f"max_ongoing_requests ({holds}): no batch will hold more than {holds} requests; raise "
        f"max_ongoing_requests to at least {max_batch_size} or lower max_batch_size"
    )


@serve.deployment(
    max_ongoing_requests=MODEL_MAX_ONGOING_REQUESTS,
    health_check_period_s=5,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=10,
)
class ModelServer:
    """Serves one versioned model artifact with dynamic batching and optional fault injection.

    Args:
        artifact: path of the artifact directory (``model.json`` + weights), checked against its sha256.
        arm: ``"stable"`` or ``"candidate"``; used in logs and in errors.
        device: ``"auto"`` (the assigned GPU if any, else CPU), ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, artifact: str, arm: str, device: str = "auto") -> None:
        self._arm = arm
        use_pci_bus_order()  # before CUDA starts: its device numbers then match NVML's (and so Ray's)
        loaded = load_artifact(artifact)
        self._device = choose_device(device)
        self._predictor = Predictor(loaded, self._device)
        self._metadata = loaded.metadata
        where = (
            f"GPU {torch.cuda.get_device_name(self._device)} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')})"
            if self._device.type == "cuda"
            else "CPU (no GPU assigned to this replica)"
        )
        logger.info("%s: serving %s on %s", arm, self._metadata.version, where)
        self._config = ModelServerConfig()
        self._config_error: str | None = None
        self._config_warning: str | None = None
        self._configured = False
        self._faults = FaultInjector(None, random.Random())
        self._consecutive_ooms = 0
        self._oom_events = 0
        self._gpu = GpuMonitor()
        context = serve.get_replica_context()
        self._replica_id = context.replica_id.unique_id
        self._app = context.app_name
        self._controller: Any = None  # looked up when reporting: the Ingress creates it with its store
        self._reporter: asyncio.Task[None] | None = None
        self._stopping = False
        self._health_failed = False  # the last health check failed: Serve replaces the replica for it
        self._warm_up()

    def _warm_up(self) -> None:
        # Run the largest batch we may see once, so the first real request does not pay for lazy init.
        for size in (1, self._config.batching.max_batch_size):
            self._predictor.predict_batch(self._predictor.example_inputs(size))
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Applies batching and fault settings from the deployment's ``user_config``.

        An invalid config on the first call fails the replica's start (the error shows in ``serve status``).
        On a running replica it is refused and the running config is kept: raising here would make Serve
        replace every replica with ones that cannot start.
        """
        try:
            config = validate_section(
                ModelServerConfig, user_config, source=f"{self._arm} deployment user_config"
            )
        except InvalidConfigError as exc:
            if not self._configured:
                raise
            self._config_error = str(exc)
            logger.error("%s; keeping the running config", exc)
            return
        self._config = config
        self._config_error = None
        self._config_warning = _batch_warning(config.batching.max_batch_size)
        if self._config_warning:
            logger.warning("%s: %s", self._arm, self._config_warning)
        self._configured = True
        self._batched.set_max_batch_size(config.batching.max_batch_size)
        self._batched.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)
        self._faults = FaultInjector(config.faults, random.Random())

    async def predict(
        self, inputs: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Answers one request with the output contract ``{prediction, confidence, model_version}``.

        Args:
            inputs: the validated model input, ``{"features": [...]}`` or ``{"text": "..."}``.
            headers: request headers the Ingress forwards (used only to scope injected faults).
        """
        self._ensure_reporter()
        headers = headers or {}
        faults = self._faults
        inject = faults.active and faults.applies_to(headers)
        simulate_oom = False
        if inject:
            if faults.should_crash(headers):
                logger.error("%s: fault injection 'crash' is on; exiting the replica process", self._arm)
                os._exit(1)
            delay = faults.delay_s(headers)
            if delay > 0:
                await asyncio.sleep(delay)
            if faults.should_error(headers):
                raise InjectedFaultError(f"{self._arm}: injected error")
            simulate_oom = faults.should_oom(headers)
        answer = await self._batched((inputs, simulate_oom))
        if answer is _OOM_SENTINEL:
            raise ModelOverloadedError(self._arm, "CUDA out of memory")
        output = {**answer, "model_version": self._metadata.version}
        return faults.break_output(output, headers) if inject else output

    async def predict_many(
        self, inputs: list[dict[str, Any]], headers: list[Mapping[str, str]]
    ) -> list[dict[str, Any]]:
        """Answers several requests sent in one call (the Ingress coalesces shadow traffic this way).

        Each goes through the same batching and fault path as `predict`; a failed one comes back as
        ``{"__error__": "overloaded" | "error"}`` instead of failing the others.
        """
        results = await asyncio.gather(
            *(self.predict(i, h) for i, h in zip(inputs, headers, strict=True)), return_exceptions=True
        )
        return [
            r
            if not isinstance(r, BaseException)
            else {"__error__": "overloaded" if isinstance(r, ModelOverloadedError) else "error"}
            for r in results
        ]

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batched(self, items: list[tuple[dict[str, Any], bool]]) -> list[Any]:
        try:
            if any(oom for _, oom in items):
                raise torch.cuda.OutOfMemoryError("injected OOM (fault injection oom_rate)")
            answers = self._predictor.predict_batch([inputs for inputs, _ in items])
        except torch.cuda.OutOfMemoryError:
            self._oom_events += 1
            self._consecutive_ooms += 1
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.warning(
                "%s: CUDA out of memory on a batch of %d (%d in a row); answering 503 for it",
                self._arm,
                len(items),
                self._consecutive_ooms,
            )
            return [_OOM_SENTINEL] * len(items)
        self._consecutive_ooms = 0
        return answers

    def _ensure_reporter(self) -> None:
        if not self._stopping and (self._reporter is None or self._reporter.done()):
            self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    def report(self) -> dict[str, Any]:
        """What this replica tells the controller: GPU samples (absent without a GPU), OOMs, identity."""
        return {
            "pid": os.getpid(),
            "model_version": self._metadata.version,
            "device": str(self._device),
            "oom_events": self._oom_events,
            "gpus": [g.to_dict() for g in self._gpu.sample()] if self._gpu.available else None,
            "torch_reserved_bytes": (
                int(torch.cuda.memory_reserved(self._device)) if self._device.type == "cuda" else None
            ),
            "batching": self._config.batching.model_dump(),
            "config_warning": self._config_warning,
        }

    async def __del__(self) -> None:
        """Serve awaits this once, at graceful shutdown: a last report, with the OOMs since the previous one,
        that tells the controller why the replica stops. ``shutdown`` (a redeploy, a scale-down) is no
        restart; ``unhealthy`` (its last health check failed, after `max_consecutive_ooms` OOM batches in a
        row) is one."""
        self._stopping = True  # no report loop starts again (a late health check or request)
        if self._reporter is not None:
            self._reporter.cancel()
        why = "unhealthy" if self._health_failed else "shutdown"
        report = {**self.report(), "stopping": why}
        try:
            async with asyncio.timeout(SHUTDOWN_REPORT_S):
                if self._controller is None:
                    self._controller = await asyncio.to_thread(find_controller, self._app)
                if self._controller is not None:
                    await self._controller.report_replica.remote(self._arm, self._replica_id, report)
                    logger.info("%s: stopping (%s); last report sent", self._arm, why)
        except Exception as exc:  # the controller is away: it will count this replica as lost, then replaced
            logger.warning("%s: the last report to the rollout controller failed: %r", self._arm, exc)

    async def _report_loop(self) -> None:
        failures = 0
        while True:
            try:
                if self._controller is None:
                    self._controller = await asyncio.to_thread(find_controller, self._app)
                if self._controller is not None:
                    await asyncio.wait_for(
                        self._controller.report_replica.remote(self._arm, self._replica_id, self.report()), 10
                    )
                    failures = 0
            except Exception as exc:  # the controller restarts: report again next time, say so rarely
                self._controller, failures = None, failures + 1  # looked up again: it may have been replaced
                if failures in (1, 10, 100):
                    logger.warning(
                        "%s: report to the rollout controller failed %d time(s): %r", self._arm, failures, exc
                    )
            await asyncio.sleep(self._config.report_interval_s)

    async def check_health(self) -> None:
        """Fails after repeated OOMs, so Serve replaces the replica; also keeps the reporter running."""
        self._ensure_reporter()
        limit = self._config.max_consecutive_ooms
        self._health_failed = self._consecutive_ooms >= limit
        if self._health_failed:
            raise ModelError(f"{self._arm}: {self._consecutive_ooms} consecutive OOM batches (limit {limit})")

    def info(self) -> dict[str, Any]:
        """What this replica serves and how: version, device, batching, PID, the last refused config."""
        context = serve.get_replica_context()
        return {
            "arm": self._arm,
            "model_version": self._metadata.version,
            "architecture": self._metadata.architecture,
            "input_schema": self._metadata.input_schema.model_dump(),
            "labels": list(self._metadata.labels),
            "device": str(self._device),
            "pid": os.getpid(),
            "replica_id": context.replica_id.unique_id,
            "batching": self._config.batching.model_dump(),
            "faults_active": self._faults.active,
            "oom_events": self._oom_events,
            "config_error": self._config_error,
            "config_warning": self._config_warning,
        }
