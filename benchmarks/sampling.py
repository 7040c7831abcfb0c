"""What the machine did during a load run: GPU utilisation and memory from NVML, CPU time per process.

`GpuSampler` polls `models.gpu.GpuMonitor` (NVML) in a thread; on a machine without an NVIDIA GPU it reports
``{"available": False, "reason": ...}`` and no numbers, never zeros. `cpu_ms_by_process` reads utime + stime
from /proc (Linux) and groups Ray's processes by role (Serve proxy, each application's deployment, the
controllers, this load generator), so a run's CPU can be split per request and per hop.
"""

from __future__ import annotations

import functools
import os
import re
import statistics
import threading
from types import TracebackType
from typing import Any

from models.gpu import GpuMonitor

_REPLICA = re.compile(r"ServeReplica:([^:\s]+):([^\s]+)")
_ROLES = (
    ("ProxyActor", "proxy"),
    ("ServeController", "serve-controller"),
    ("RolloutController", "rollout-controller"),
    ("raylet", "raylet"),
    ("gcs_server", "gcs"),
)


@functools.cache
def process_monitor() -> GpuMonitor:
    """This process's NVML monitor, made once: NVML is initialised, and a missing GPU said, once per run
    rather than at every load point."""
    return GpuMonitor()


class GpuSampler:
    """Samples every visible GPU every ``interval_s`` while used as a context manager.

    Args:
        interval_s: seconds between samples.
        monitor: the NVML monitor to sample (this process's, over its visible GPUs, by default; tests pass
            one over a fake NVML).
    """

    def __init__(self, interval_s: float = 0.25, monitor: GpuMonitor | None = None) -> None:
        self._monitor = monitor if monitor is not None else process_monitor()
        self._interval = interval_s
        self._samples: list[list[dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._monitor.available

    @property
    def reason(self) -> str | None:
        return self._monitor.reason

    def __enter__(self) -> GpuSampler:
        self._samples.clear()
        self._stop.clear()
        if self.available:
            self.sample()  # at least one at the start and one at the end, however short the run
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            self.sample()

    def sample(self) -> None:
        """Takes one sample now."""
        self._samples.append([s.to_dict() for s in self._monitor.sample()])

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def summary(self) -> dict[str, Any]:
        """Mean and peak utilisation and peak device memory per GPU over the samples taken."""
        if not self.available:
            return {"available": False, "reason": self.reason}
        devices: dict[int, dict[str, Any]] = {}
        for sample in self._samples:
            for gpu in sample:
                d = devices.setdefault(gpu["index"], {"name": gpu["name"], "util": [], "mem": []})
                if gpu["utilization_ratio"] is not None:
                    d["util"].append(gpu["utilization_ratio"])
                d["mem"].append(gpu["memory_used_bytes"])
        return {
            "available": True,
            "samples": len(self._samples),
            "devices": [
                {
                    "index": index,
                    "name": d["name"],
                    "utilization_mean": statistics.fmean(d["util"]) if d["util"] else None,
                    "utilization_max": max(d["util"]) if d["util"] else None,
                    "memory_used_max_bytes": max(d["mem"]) if d["mem"] else None,
                }
                for index, d in sorted(devices.items())
            ],
        }


def role(cmdline: str) -> str | None:
    """The role of a Ray process from its command line, e.g. ``bench-canary/Ingress`` or ``proxy``.

    Example:
        >>> role("ray::ServeReplica:bench-canary:Ingress")
        'bench-canary/Ingress'
        >>> (role("ray::ProxyActor"), role("python something.py"))
        ('proxy', None)
    """
    match = _REPLICA.search(cmdline)
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    return next((name for marker, name in _ROLES if marker in cmdline), None)


def cpu_ms_by_process(proc: str = "/proc", own_pid: int | None = None) -> dict[str, float] | None:
    """CPU milliseconds (user + system) used so far by each Ray role and by this process (``loadgen``).

    Returns None where there is no /proc to read (not Linux).
    """
    if not os.path.isdir(proc):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    own = str(own_pid if own_pid is not None else os.getpid())
    out: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir(proc)):
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"{proc}/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        name = "loadgen" if pid == own else role(cmd)
        if name:
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * 1000 / tick
    return out


def cpu_per_request(
    before: dict[str, float] | None, after: dict[str, float] | None, requests: int
) -> dict[str, float] | None:
    """CPU ms per request per role between two `cpu_ms_by_process` readings (idle roles left out)."""
    if before is None or after is None or requests <= 0:
        return None
    out = {k: (v - before.get(k, 0.0)) / requests for k, v in after.items()}
    return {k: round(v, 3) for k, v in sorted(out.items()) if v > 0}
