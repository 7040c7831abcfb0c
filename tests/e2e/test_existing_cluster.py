"""canary-serve on a Ray cluster that is already running, as a user deploys to one: `ray start --head` on
loopback, then `canary deploy --address <dashboard>` (validated, then `serve deploy`), then an edited weight
deployed the same way changes routing in place, restarting no model replica.

Every port is a free one (not Ray's defaults), so a developer's `make up` on this machine is left alone; the
test stops exactly the head it started (by its PID), never with `ray stop`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from rollout.cluster import dashboard_headers, http_status, ray_cli_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def canary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "canary"), *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def existing_cluster(tmp_path: Path) -> Iterator[str]:
    """A head started the way the README says (`ray start --head`, loopback only); yields its dashboard."""
    dashboard = free_port()
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",  # so that this test can stop exactly this head, by its PID
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        "--num-cpus=2",
        "--disable-usage-stats",
    ]
    log = (tmp_path / "ray-head.log").open("wb")
    # stopped at the end without the 30 s node drain Ray 2.60 does on SIGTERM (nothing to move elsewhere)
    env = {**ray_cli_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}
    head = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        while http_status(f"{address}/api/version", headers=dashboard_headers()) != 200:
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Ray's dashboard did not answer within 180 s"
            time.sleep(1)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started, Serve included
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        log.close()


def demo_config(tmp_path: Path, port: int, **rollout: Any) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    ingress["user_config"]["rollout"].update(
        store={"url": f"sqlite:///{tmp_path}/store/rollout.db"}, **rollout
    )
    path = tmp_path / f"canary-{len(list(tmp_path.glob('canary-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def model_replicas(http: httpx.Client) -> set[str]:
    return {r["replica_id"] for r in http.get("/rollout").json()["replicas"]}


def test_canary_deploy_to_an_existing_cluster_and_change_the_weight_in_place(
    existing_cluster: str, tmp_path: Path
) -> None:
    port = free_port()
    deployed = canary("deploy", str(demo_config(tmp_path, port)), "--address", existing_cluster)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    deadline = time.monotonic() + 240
    while http_status(f"http://127.0.0.1:{port}/healthz") != 200:
        assert time.monotonic() < deadline, "/healthz did not answer 200 within 240 s"
        time.sleep(1)
    assert http.get("/rollout").json()["candidate_weight"] == 5
    answer = http.post("/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": "k1"})
    assert answer.status_code == 200 and answer.json()["model_version"]
    assert (tmp_path / "store" / "rollout.db").exists()  # the controller opened the store the URL names

    deadline = time.monotonic() + 60
    while len(before := model_replicas(http)) < 2:  # each model replica reports about once a second
        assert time.monotonic() < deadline, f"model replicas never reported: {before}"
        time.sleep(0.5)
    edited = canary(
        "deploy", str(demo_config(tmp_path, port, candidate_weight=30)), "--address", existing_cluster
    )
    assert edited.returncode == 0, edited.stdout + edited.stderr
    deadline = time.monotonic() + 30
    while http.get("/rollout").json()["candidate_weight"] != 30:
        assert time.monotonic() < deadline, "the new weight was not routed within 30 s"
        time.sleep(0.2)
    assert model_replicas(http) == before  # an in-place update: the same stable and candidate replicas
    statuses = {
        http.post("/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"k{i}"}).status_code
        for i in range(20)
    }
    assert statuses == {200}
