"""A fake `pynvml` at our seam: the functions GpuMonitor calls, with the error codes NVML really raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15

_MESSAGES = {
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
}


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(_MESSAGES.get(value, f"Unknown Error {value}"))

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, f"Unknown Error {self.value}")


@dataclass
class FakeDevice:
    name: str = "NVIDIA H100 80GB HBM3"
    used: int = 10 * 2**30
    total: int = 80 * 2**30
    utilization: int = 37
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> used bytes
    # function name -> NVML error code, or an exception raised as it is (pynvml raises some that are no
    # NVMLError, e.g. NVMLLibraryMismatchError on a driver older than the binding)
    fail: dict[str, int | Exception] = field(default_factory=dict)
    uuid: str = "GPU-0000"


class FakeNVML:
    """Behaves like the `pynvml` module for the calls we make; configure devices and failures per test."""

    NVMLError = NVMLError

    def __init__(self, devices: list[FakeDevice] | None = None, init_error: int | None = None) -> None:
        self.devices = devices or []
        self.init_error = init_error

    def _check(self, device: FakeDevice, call: str) -> None:
        if call in device.fail:
            error = device.fail[call]
            raise error if isinstance(error, Exception) else NVMLError(error)

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self.devices[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeDevice:
        return next(d for d in self.devices if d.uuid == uuid)

    def nvmlDeviceGetIndex(self, handle: FakeDevice) -> int:
        return self.devices.index(handle)

    def nvmlDeviceGetName(self, handle: FakeDevice) -> str:
        return handle.name

    def nvmlDeviceGetMemoryInfo(self, handle: FakeDevice) -> SimpleNamespace:
        self._check(handle, "memory")
        return SimpleNamespace(used=handle.used, total=handle.total, free=handle.total - handle.used)

    def nvmlDeviceGetUtilizationRates(self, handle: FakeDevice) -> SimpleNamespace:
        self._check(handle, "utilization")
        return SimpleNamespace(gpu=handle.utilization, memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeDevice) -> list[SimpleNamespace]:
        self._check(handle, "processes")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in handle.processes.items()]
