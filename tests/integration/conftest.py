"""One local Ray cluster and one Serve instance for the whole integration session.

The cluster is started here with ``address="local"`` (never attached to another Ray on the machine), Serve's
proxy listens on a free loopback port, and the session shuts down only what it started.
"""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[2]
APP = "canary"
ADMIN_TOKEN = "integration-admin-token"
STORE: dict[str, str] = {}  # the session's own SQLite store path, so tests never touch a developer's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 60, every: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # the system is converging; remember why, retry
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


@pytest.fixture(scope="session")
def serve_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = _free_port()
    STORE["path"] = str(tmp_path_factory.mktemp("store") / "rollout.db")
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "CANARY_ADMIN_TOKEN": ADMIN_TOKEN}},
    )
    for attempt in range(3):
        # On a loaded 2-core machine Serve may give up on a proxy that is slow to start (it kills and
        # replaces it); starting again is what an operator would do, so the session does the same.
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            break
        except ray.exceptions.RayError:
            if attempt == 2:
                raise
            serve.shutdown()
            time.sleep(5)
    yield port
    serve.shutdown()
    ray.shutdown()


def base_config(port: int) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    for app in config["applications"]:
        for dep in app["deployments"]:
            dep["ray_actor_options"] = {"num_cpus": 0}
    deployment(config, "Ingress")["user_config"]["rollout"]["store"] = {"path": STORE["path"]}
    return config


def deployment(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


class Canary:
    """The deployed demo app under test, with helpers to redeploy edited configs and call it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.config = base_config(port)

    def deploy(self, config: dict[str, Any]) -> None:
        serve.context._get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
        self.config = copy.deepcopy(config)

    def edited(self, **rollout: Any) -> dict[str, Any]:
        config = copy.deepcopy(self.config)
        deployment(config, "Ingress")["user_config"]["rollout"].update(rollout)
        return config

    def set_model_config(self, arm: str, user_config: dict[str, Any]) -> None:
        config = copy.deepcopy(self.config)
        deployment(config, arm)["user_config"] = user_config
        self.deploy(config)

    def rollout(self) -> dict[str, Any]:
        return self.http.get("/rollout").json()

    def predict(
        self, key: str | None = None, features: list[float] | None = None, **headers: str
    ) -> httpx.Response:
        h = {"X-Routing-Key": key} if key else {}
        h.update({k.replace("_", "-"): v for k, v in headers.items()})
        return self.http.post("/predict", json={"features": features or [0.1] * 30}, headers=h)

    def replica_info(self, arm: str) -> dict[str, Any]:
        return serve.get_deployment_handle(arm, APP).info.remote().result(timeout_s=30)

    def wait_healthy(self) -> None:
        wait_until(lambda: serve.status().applications[APP].status == "RUNNING", 240, what="app RUNNING")
        wait_until(lambda: self.http.get("/healthz").status_code == 200, 60, what="/healthz 200")


@pytest.fixture(scope="session")
def canary_app(serve_port: int) -> Canary:
    app = Canary(serve_port)
    app.deploy(app.config)
    app.wait_healthy()
    return app


@pytest.fixture
def canary(canary_app: Canary) -> Iterator[Canary]:
    """The app, put back to the demo config after each test (cleaned between tests)."""
    yield canary_app
    canary_app.deploy(base_config(canary_app.port))
    wait_until(
        lambda: canary_app.rollout()["candidate_weight"] == 5 and not canary_app.rollout()["config_error"],
        60,
        what="demo config back",
    )
    for arm in ("stable", "candidate"):
        wait_until(lambda arm=arm: not canary_app.replica_info(arm)["faults_active"], 60, what="faults off")
