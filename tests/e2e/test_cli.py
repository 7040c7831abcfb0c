"""The `canary` CLI as a user types it: validation before deploy, and the up → redeploy → down lifecycle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CANARY = str(Path(sys.executable).parent / "canary")


def canary(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CANARY, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def demo_with(tmp_path: Path, **rollout) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    ingress["user_config"]["rollout"].update(rollout)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_validate_names_the_bad_key_and_the_range_and_exits_2(tmp_path):
    result = canary("validate", str(demo_with(tmp_path, candidate_weight=120, bogus=1)))
    assert result.returncode == 2
    assert "applications[0].deployments[Ingress].user_config.rollout.candidate_weight" in result.stderr
    assert "0–100" in result.stderr and "120" in result.stderr
    assert "rollout.bogus" in result.stderr and "unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_deploy_refuses_a_missing_artifact_before_contacting_any_cluster(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["applications"][0]["args"]["candidate"]["artifact"] = "models/artifacts/nope"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = canary("deploy", str(path), "--address", "http://127.0.0.1:9")  # nothing listens on port 9
    assert result.returncode == 2
    assert "applications[0].args.candidate.artifact" in result.stderr


def test_the_shipped_configs_are_valid():
    for name in ("demo.yaml", "gpu.yaml", "gpu-dedicated.yaml"):
        result = canary("validate", f"configs/{name}")
        assert result.returncode == 0, result.stderr


def test_up_redeploy_with_a_new_weight_then_down(tmp_path):
    if port_taken(8000) or port_taken(8265):
        pytest.skip("a Ray or Serve already listens on 127.0.0.1:8000/8265 (a running `make up`?)")
    up = canary("up")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        http = httpx.Client(base_url="http://127.0.0.1:8000", timeout=30)
        assert http.get("/healthz").status_code == 200
        assert http.get("/rollout").json()["candidate_weight"] == 5
        deploy = canary("deploy", str(demo_with(tmp_path, candidate_weight=50)))
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        deadline = time.monotonic() + 10
        while http.get("/rollout").json()["candidate_weight"] != 50 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert http.get("/rollout").json()["candidate_weight"] == 50
        pid = int((ROOT / ".canary" / "ray-head.pid").read_text().split()[0])  # "<pid> <start time>"
    finally:
        down = canary("down")
    assert down.returncode == 0 and "stopped" in down.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not port_taken(8000)
