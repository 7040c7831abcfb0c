"""GpuMonitor against a fake NVML: per-process memory by PID, visible devices, and every way NVML fails."""

import logging

import pynvml
from fake_nvml import (
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_GPU_IS_LOST,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    FakeDevice,
    FakeNVML,
)

from models.gpu import GpuMonitor, use_pci_bus_order


def test_samples_device_memory_utilisation_and_this_process_memory():
    nvml = FakeNVML([FakeDevice(), FakeDevice(name="B", used=5, processes={4242: 3 * 2**30, 99: 1})])
    (sample,) = GpuMonitor(nvml, pid=4242, visible_devices="1", device_order="PCI_BUS_ID").sample()
    assert (sample.index, sample.name, sample.memory_used_bytes) == (1, "B", 5)
    assert sample.process_memory_bytes == 3 * 2**30 and sample.utilization_ratio == 0.37


def test_all_devices_when_cuda_visible_devices_is_unset_and_uuids_resolve():
    nvml = FakeNVML([FakeDevice(uuid="GPU-a"), FakeDevice(uuid="GPU-b")])
    assert [s.index for s in GpuMonitor(nvml, pid=1, visible_devices=None).sample()] == [0, 1]
    assert [s.index for s in GpuMonitor(nvml, pid=1, visible_devices="GPU-b").sample()] == [1]


def test_on_a_node_of_mixed_gpus_cuda_numbers_are_read_as_nvmls_only_in_pci_bus_order():
    nvml = FakeNVML([FakeDevice(name="NVIDIA A10G"), FakeDevice(name="NVIDIA H100 80GB HBM3")])
    fastest_first = GpuMonitor(nvml, pid=1, visible_devices="1", device_order="FASTEST_FIRST")
    assert not fastest_first.available and fastest_first.sample() == []
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in (fastest_first.reason or "")
    by_bus = GpuMonitor(nvml, pid=1, visible_devices="1", device_order="PCI_BUS_ID")
    assert [s.name for s in by_bus.sample()] == ["NVIDIA H100 80GB HBM3"]
    by_uuid = GpuMonitor(nvml, pid=1, visible_devices="GPU-0000", device_order="FASTEST_FIRST")
    assert by_uuid.available  # a UUID names one device whatever the order
    same = FakeNVML([FakeDevice(), FakeDevice()])  # one model: fastest first ties break by PCI bus
    assert GpuMonitor(same, pid=1, visible_devices="1", device_order="FASTEST_FIRST").available


def test_model_servers_ask_cuda_for_pci_bus_order_unless_told_otherwise():
    env: dict[str, str] = {}
    assert use_pci_bus_order(env) == "PCI_BUS_ID" and env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert use_pci_bus_order({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}) == "FASTEST_FIRST"


def test_no_gpu_says_so_once_and_reports_nothing(caplog):
    caplog.set_level(logging.INFO, logger="ray.serve")
    for code in (NVML_ERROR_LIBRARY_NOT_FOUND, NVML_ERROR_DRIVER_NOT_LOADED):
        caplog.clear()
        monitor = GpuMonitor(FakeNVML(init_error=code), pid=1)
        assert not monitor.available and monitor.sample() == []
        assert "no NVIDIA GPU" in monitor.reason
        assert len([r for r in caplog.records if "GPU metrics are off" in r.message]) == 1
    assert GpuMonitor(FakeNVML([FakeDevice()]), pid=1, visible_devices="").reason.startswith(
        "no GPU assigned"
    )


def test_failing_calls_leave_numbers_absent_not_zero_and_warn_once(caplog):
    device = FakeDevice(fail={"utilization": NVML_ERROR_NOT_SUPPORTED, "processes": NVML_ERROR_NOT_SUPPORTED})
    monitor = GpuMonitor(FakeNVML([device]), pid=1, visible_devices="0")
    for _ in range(5):
        (sample,) = monitor.sample()
        assert sample.utilization_ratio is None and sample.process_memory_bytes is None
    assert len([r for r in caplog.records if "unavailable" in r.message]) == 2
    device.fail["memory"] = NVML_ERROR_GPU_IS_LOST
    assert monitor.sample() == []


def test_process_memory_absent_when_nvml_cannot_attribute_it():
    nvml = FakeNVML([FakeDevice(processes={7: None})])
    assert GpuMonitor(nvml, pid=7, visible_devices="0").sample()[0].process_memory_bytes is None


def test_an_error_pynvml_raises_outside_nvmlerror_leaves_only_that_number_absent(caplog):
    """nvidia-ml-py raises NVMLLibraryMismatchError (a plain Exception) when the driver's NVML lacks the
    versioned function it calls: the replica must still report memory, and OOMs through `report()`."""
    mismatch = pynvml.NVMLLibraryMismatchError("Unversioned function called and the pyNVML version ...")
    assert not isinstance(mismatch, pynvml.NVMLError)
    device = FakeDevice(fail={"processes": mismatch})
    monitor = GpuMonitor(FakeNVML([device]), pid=1, visible_devices="0")
    for _ in range(3):
        (sample,) = monitor.sample()
        assert sample.memory_used_bytes == device.used and sample.process_memory_bytes is None
    assert len([r for r in caplog.records if "per-process memory" in r.message]) == 1
    device.fail["memory"] = RuntimeError("driver gone")
    assert monitor.sample() == []
