"""canary-serve on a multi-node Ray cluster (several raylets on this machine, `ray.cluster_utils.Cluster`):
Ingress replicas on two nodes and the arms on different nodes; every Ingress replica routes by the same
table within the propagation bound; the merged telemetry is the sum of the replicas'; and when the node
running the rollout controller is removed, the controller comes back on another node and resumes from its
PostgreSQL store. The scenario and its checks are in `multinode_driver.py` (a driver process of its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import PostgresServer, postgres_server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    yield from postgres_server()


@pytest.mark.timeout(660)
def test_multinode_cluster_routes_merges_and_survives_losing_the_controllers_node(postgres: PostgresServer):
    env = {**os.environ, "CANARY_MULTINODE_STORE_URL": postgres.create_database()}
    env.pop("PYTHONPATH", None)  # the raylets' workers inherit it; canary-serve is installed in the venv
    try:
        result = subprocess.run(
            [sys.executable, str(HERE / "multinode_driver.py")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the multi-node scenario ran past 600 s:\n{exc.stdout}\n{exc.stderr}")
    print(result.stdout)
    assert result.returncode == 0 and "PASS" in result.stdout, result.stdout + result.stderr[-6000:]
