"""benchmarks/gpu_check.py's reference for a replica's GPU memory, against a fake NVML and a fake predictor
(the check itself needs a GPU)."""

import os

import torch
from fake_nvml import FakeDevice, FakeNVML

import models.artifact
import models.predictor
from benchmarks import gpu_check


def test_the_reference_overhead_is_measured_after_the_model_ran_at_the_replicas_batch_sizes(monkeypatch):
    nvml = FakeNVML([FakeDevice(processes={os.getpid(): 518 * 2**20})])
    ran = []

    class Predictor:
        def __init__(self, loaded, device):
            assert device == torch.device("cuda", 0)

        def example_inputs(self, n):
            return [{}] * n

        def predict_batch(self, inputs):  # kernels and cuBLAS load: CUDA holds more outside the allocator
            ran.append(len(inputs))
            nvml.devices[0].processes[os.getpid()] = 744 * 2**20

    monkeypatch.setattr(models.predictor, "Predictor", Predictor)
    monkeypatch.setattr(models.artifact, "load_artifact", lambda path: path)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 34 * 2**20)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    overhead = gpu_check.process_overhead_bytes("models/artifacts/fraud-v1", (1, 128, 1), nvml=nvml)

    assert ran == [1, 128, 1]
    assert overhead == (744 - 34) * 2**20  # the replica's NVML bytes less its reserve: the same reference
