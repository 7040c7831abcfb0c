"""The raw side of the throughput suite (both example models, tiny) and what it samples: NVML through a fake,
CPU time per Ray process from a fake /proc."""

from __future__ import annotations

import os

import pytest
import torch
from fake_nvml import FakeDevice, FakeNVML

from benchmarks import bench, raw, sampling
from benchmarks.sampling import GpuSampler, cpu_ms_by_process, cpu_per_request, role
from models.gpu import GpuMonitor


@pytest.mark.parametrize(
    ("artifact", "kind"), [(bench.MODELS["fraud"], "features"), (bench.MODELS["text"], "text")]
)
def test_bench_raw_measures_each_batch_size_with_the_projects_predictor(artifact, kind):
    steps = []
    result = raw.measure(
        artifact,
        bench.request_bodies(kind, n=8),
        batch_sizes=(1, 3),
        seconds=0.01,
        device=torch.device("cpu"),
        on_step=steps.append,
    )
    assert [p["batch_size"] for p in result["points"]] == [1, 3] and len(steps) == 2
    for point in result["points"]:
        assert point["items_per_s"] > 0 and point["forward_items_per_s"] > 0 and point["batches"] >= 3
        assert point["gpu"]["available"] is False or point["gpu"]["devices"]
    assert result["best"]["items_per_s"] == max(p["items_per_s"] for p in result["points"])
    assert result["device"] == "cpu" and result["model_version"] in artifact


def test_gpu_sampler_summarises_utilisation_and_memory_per_device(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device = FakeDevice(utilization=40, used=2 * 2**30)
    nvml = FakeNVML([device, FakeDevice(name="B", utilization=10)])
    sampler = GpuSampler(interval_s=60, monitor=GpuMonitor(nvml, pid=1))
    with sampler:
        device.utilization, device.used = 80, 6 * 2**30  # the second sample (at exit) sees the load
    summary = sampler.summary()
    assert summary["available"] is True and summary["samples"] == 2
    first = summary["devices"][0]
    assert first["utilization_mean"] == pytest.approx(0.6) and first["utilization_max"] == pytest.approx(0.8)
    assert first["memory_used_max_bytes"] == 6 * 2**30
    assert [d["name"] for d in summary["devices"]] == ["NVIDIA H100 80GB HBM3", "B"]


def test_without_a_gpu_the_sampler_says_why_and_gives_no_numbers():
    sampler = GpuSampler(monitor=GpuMonitor(FakeNVML(init_error=12), pid=1))
    with sampler:
        pass
    assert sampler.summary() == {"available": False, "reason": sampler.reason}
    assert "no NVIDIA GPU" in sampler.reason


def _proc(tmp_path, pid, cmdline, utime, stime):
    d = tmp_path / str(pid)
    d.mkdir()
    (d / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode())
    fields = ["S", *["0"] * 10, str(utime), str(stime), *["0"] * 10]
    (d / "stat").write_text(f"{pid} (python) " + " ".join(fields))


def test_cpu_time_is_grouped_by_ray_role_and_split_per_request(tmp_path):
    tick = os.sysconf("SC_CLK_TCK")
    _proc(tmp_path, 10, "ray::ServeReplica:bench-canary:Ingress", tick, 0)
    _proc(tmp_path, 11, "ray::ProxyActor", tick // 2, tick // 2)
    _proc(tmp_path, 12, "ray::ServeReplica:bench-canary:stable", 0, tick)
    _proc(tmp_path, 13, "/usr/bin/something else", tick, tick)
    _proc(tmp_path, 14, "python -m benchmarks.bench", tick, 0)
    (tmp_path / "self").mkdir()
    before = {"bench-canary/Ingress": 500.0}
    after = cpu_ms_by_process(str(tmp_path), own_pid=14)
    assert after == {
        "bench-canary/Ingress": 1000.0,
        "proxy": 1000.0,
        "bench-canary/stable": 1000.0,
        "loadgen": 1000.0,
    }
    per = cpu_per_request(before, after, requests=100)
    assert per == {"bench-canary/Ingress": 5.0, "bench-canary/stable": 10.0, "loadgen": 10.0, "proxy": 10.0}
    assert cpu_per_request(None, after, 100) is None and cpu_per_request(before, after, 0) is None
    assert cpu_ms_by_process(str(tmp_path / "nope")) is None


def test_roles_of_ray_processes():
    assert role("ray::ServeReplica:bench-twohop:Forwarder") == "bench-twohop/Forwarder"
    assert role("ray::RolloutController.__init__") == "rollout-controller"
    assert role("/venv/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp") == "gcs"
    assert role("bash") is None


def test_samplers_share_one_nvml_monitor_so_a_missing_gpu_is_said_once(monkeypatch, caplog):
    made = []

    def monitor() -> GpuMonitor:
        made.append(1)
        return GpuMonitor(FakeNVML(init_error=12), pid=1)

    monkeypatch.setattr(sampling, "GpuMonitor", monitor)
    sampling.process_monitor.cache_clear()
    try:
        for _ in range(3):
            with GpuSampler() as gpu:
                pass
            assert gpu.summary()["available"] is False
    finally:
        sampling.process_monitor.cache_clear()
    assert made == [1]
