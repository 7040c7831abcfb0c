"""The `RolloutController`: one detached Ray actor per application that every Ingress and model replica
reports to. Today it merges telemetry and serves the numbers (`GET /rollout`, `GET /metrics`); it is the home
the stage machine, the judge and the store grow in.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from rollout.metrics import SnapshotCollector
from rollout.state import TelemetryState
from serving.telemetry import Window

NAMESPACE = "canary"


def controller_name(app: str) -> str:
    return f"canary-controller-{app}"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class RolloutController:
    """Merges the windows every Ingress replica sends about once a second, and model replicas' reports."""

    def __init__(self, app: str) -> None:
        self._app = app
        self._state = TelemetryState()

    def ingest(self, replica_id: str, window: dict[str, Any], in_flight: int) -> None:
        self._state.ingest(replica_id, Window.from_dict(window), in_flight, time.time())

    def report_replica(self, arm: str, replica_id: str, report: dict[str, Any]) -> None:
        self._state.report_replica(arm, replica_id, report, time.time())

    def snapshot(self) -> dict[str, Any]:
        self._state.expire(time.time())
        return {**self._state.summary(), "shadow_in_flight": self._state.shadow_in_flight()}

    def metrics(self, rollout: dict[str, Any]) -> bytes:
        self._state.expire(time.time())
        s = self._state
        return SnapshotCollector(self._app, s.total, rollout, s.replica_reports(), s.per_arm()).render()


def get_or_create_controller(app: str) -> Any:
    """The application's controller, created on first use (detached: it outlives any one replica)."""
    return RolloutController.options(  # type: ignore[attr-defined]
        name=controller_name(app),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(app)
