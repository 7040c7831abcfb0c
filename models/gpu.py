"""GPU numbers from NVML for one replica: device memory and utilisation, and this process's own memory.

The NVML module is passed in (``pynvml`` from nvidia-ml-py by default), so tests run on machines without a
GPU against a fake at this seam. With no NVIDIA GPU or driver, `GpuMonitor` says so once and reports nothing:
the numbers are absent, never zero.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class GpuSample:
    """One device as this replica sees it; ``process_memory_bytes`` is None when NVML cannot attribute it."""

    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_ratio: float | None
    process_memory_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load_pynvml() -> ModuleType | None:
    try:
        import pynvml

        return pynvml
    except ImportError:
        return None


def use_pci_bus_order(environ: MutableMapping[str, str] = os.environ) -> str:
    """Makes CUDA number the devices by PCI bus, as NVML does, unless ``CUDA_DEVICE_ORDER`` is set already;
    returns the order in effect. Call it before CUDA initialises (CUDA reads it once).

    With CUDA's default order, fastest first, a node with mixed GPU models gives ``CUDA_VISIBLE_DEVICES=1``
    (what Ray sets) to another device than NVML's index 1, and a replica would report another GPU's memory.

    Example:
        >>> use_pci_bus_order({}), use_pci_bus_order({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
        ('PCI_BUS_ID', 'FASTEST_FIRST')
    """
    return environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


class GpuMonitor:
    """Samples the GPUs visible to this process (``CUDA_VISIBLE_DEVICES``, as Ray sets it per replica).

    Args:
        nvml: the NVML binding (``pynvml``); None loads it.
        pid: the process whose memory to attribute (this one by default).
        visible_devices: the ``CUDA_VISIBLE_DEVICES`` value (the environment's by default).
        device_order: the ``CUDA_DEVICE_ORDER`` value (the environment's by default). Unless it is
            ``PCI_BUS_ID`` on a node with more than one GPU model, CUDA's device numbers are not NVML's and
            the monitor reports nothing rather than another device's numbers.
    """

    def __init__(
        self,
        nvml: ModuleType | None = None,
        pid: int | None = None,
        visible_devices: str | None = None,
        device_order: str | None = None,
    ) -> None:
        self._nvml = nvml if nvml is not None else _load_pynvml()
        self._pid = pid if pid is not None else os.getpid()
        visible = visible_devices if visible_devices is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
        order = (
            device_order if device_order is not None else os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
        )
        self._handles: list[tuple[int, Any]] = []
        self._warned: set[str] = set()
        self.reason: str | None = None
        if self._nvml is None:
            self.reason = "nvidia-ml-py is not installed"
        else:
            try:
                self._nvml.nvmlInit()
                self.reason = self._order_problem(order, visible)
                if self.reason is None:
                    self._handles = self._visible_handles(visible)
            except Exception as exc:  # NVMLError, or the library itself missing or too old
                self.reason = f"NVML unavailable ({exc}): no NVIDIA GPU or driver on this machine"
        if not self._handles and self.reason is None:
            self.reason = "no GPU assigned to this replica (CUDA_VISIBLE_DEVICES is empty)"
        if self.reason:
            logger.info("GPU metrics are off for this replica: %s", self.reason)

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def _order_problem(self, order: str, visible: str | None) -> str | None:
        """Why CUDA's device numbers cannot be read as NVML's here, or None when they can."""
        nvml = self._nvml
        assert nvml is not None
        if order == "PCI_BUS_ID" or not visible or not any(e.strip().isdigit() for e in visible.split(",")):
            return None  # the same numbering, all devices, or devices named by UUID
        names = {
            str(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(nvml.nvmlDeviceGetCount())
        }
        if len(names) <= 1:
            return None  # one GPU model: fastest first ties break by PCI bus, NVML's order
        return (
            f"CUDA_DEVICE_ORDER={order} on a node with {len(names)} GPU models: CUDA's device numbers in "
            "CUDA_VISIBLE_DEVICES are not NVML's, so the numbers could be another GPU's; set "
            "CUDA_DEVICE_ORDER=PCI_BUS_ID (canary-serve's model servers do unless it is set)"
        )

    def _visible_handles(self, visible: str | None) -> list[tuple[int, Any]]:
        nvml = self._nvml
        assert nvml is not None
        if visible is None:
            return [(i, nvml.nvmlDeviceGetHandleByIndex(i)) for i in range(nvml.nvmlDeviceGetCount())]
        handles = []
        for entry in (e.strip() for e in visible.split(",") if e.strip()):
            if entry.isdigit():
                handles.append((int(entry), nvml.nvmlDeviceGetHandleByIndex(int(entry))))
            else:  # a GPU UUID
                handle = nvml.nvmlDeviceGetHandleByUUID(entry)
                handles.append((int(nvml.nvmlDeviceGetIndex(handle)), handle))
        return handles

    def _once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def sample(self) -> list[GpuSample]:
        """One sample per visible device; a device NVML fails on is skipped (said once), not zeroed."""
        nvml = self._nvml
        samples: list[GpuSample] = []
        if nvml is None:
            return samples
        for index, handle in self._handles:
            try:
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                name = nvml.nvmlDeviceGetName(handle)
            except Exception as exc:  # NVMLError, or what pynvml raises besides (a driver too old)
                self._once(f"mem{index}", f"NVML cannot read GPU {index} ({exc}); its numbers are absent")
                continue
            utilization = None
            try:
                utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            except Exception as exc:  # NVMLError, or what pynvml raises besides (a driver too old)
                self._once(f"util{index}", f"NVML utilisation of GPU {index} unavailable ({exc})")
            process_memory = None
            try:
                for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == self._pid and proc.usedGpuMemory is not None:
                        process_memory = int(proc.usedGpuMemory)
            except Exception as exc:  # NVMLError, or what pynvml raises besides (a driver too old)
                self._once(f"proc{index}", f"NVML per-process memory of GPU {index} unavailable ({exc})")
            samples.append(
                GpuSample(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_used_bytes=int(memory.used),
                    memory_total_bytes=int(memory.total),
                    utilization_ratio=utilization,
                    process_memory_bytes=process_memory,
                )
            )
        return samples
