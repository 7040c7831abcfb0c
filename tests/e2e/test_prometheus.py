"""A real Prometheus scrapes the running demo; PromQL's p95 per arm agrees with GET /rollout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
CANARY = str(Path(sys.executable).parent / "canary")


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed; .ci/run installs Debian's package `prometheus`")
        pytest.skip("prometheus is not installed (apt-get install prometheus); CI installs it")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: canary\n"
        "    static_configs: [{targets: ['127.0.0.1:8000']}]\n"
    )
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prom: str, promql: str) -> list[dict]:
    return httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=10).json()["data"]["result"]


def test_promql_p95_by_arm_matches_rollout_within_the_histograms_error(demo, prometheus, tmp_path):
    # the demo config as a rollout of its own, so GET /rollout counts only what this test sends (Prometheus
    # is new too): the shared demo may have served other tests
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    ingress["user_config"]["rollout"]["rollout_id"] = f"prometheus-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    subprocess.run([CANARY, "deploy", str(path)], cwd=ROOT, check=True, capture_output=True, timeout=120)
    body = {"features": [0.1] * 30}
    with httpx.Client(base_url=demo, timeout=30) as http:
        # candidate weight 5 in the demo: send keys until both arms have plenty of samples
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(
                    lambda i: (
                        http.post("/predict", json=body, headers={"X-Routing-Key": f"p{i}"}).status_code
                    ),
                    range(1200),
                )
            )
        assert set(statuses) == {200}
        time.sleep(5)  # a few scrapes after the last request
        state = http.get("/rollout").json()
    assert query(prometheus, "up")[0]["value"][1] == "1"
    result = query(
        prometheus,
        "histogram_quantile(0.95, sum by (le, arm) (increase(canary_request_latency_seconds_bucket[5m])))",
    )
    promql = {r["metric"]["arm"]: float(r["value"][1]) for r in result}
    assert {"stable", "candidate"} <= set(promql)
    for arm in ("stable", "candidate"):
        rollout_p95 = state["arms"][arm]["stats"]["latency_ms"]["p95"] / 1000
        # buckets grow by 25%, and PromQL interpolates linearly inside one
        assert 0.75 * rollout_p95 <= promql[arm] <= 1.3 * rollout_p95, (arm, promql[arm], rollout_p95)
