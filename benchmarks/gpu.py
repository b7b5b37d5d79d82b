"""GPU utilisation and memory while a phase runs, sampled through NVML (pynvml).

Optional: pynvml is imported only when a monitor starts, and where it or a GPU is missing
the monitor says why and reports nothing, so the suite runs the same on a CPU machine.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

SAMPLE_S = 0.1


@dataclass
class GpuMonitor:
    """Samples every GPU's utilisation (%) and used memory (MiB) in a thread."""

    interval_s: float = SAMPLE_S
    unavailable: str | None = None  # why nothing is sampled
    names: list[str] = field(default_factory=list)
    _samples: list[tuple[float, float]] = field(default_factory=list)  # (util %, MiB), per GPU
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _nvml: Any = None
    _handles: list[Any] = field(default_factory=list)

    def __enter__(self) -> GpuMonitor:
        try:
            import pynvml  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            self.unavailable = "pynvml is not installed"
            return self
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.names = [str(pynvml.nvmlDeviceGetName(h)) for h in self._handles]
        except pynvml.NVMLError as exc:
            self.unavailable = f"NVML: {exc}"
            return self
        if not self._handles:
            self.unavailable = "NVML found no GPU"
            pynvml.nvmlShutdown()
            return self
        self._nvml = pynvml
        self._thread = threading.Thread(target=self._sample, name="gpu-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._nvml.nvmlShutdown()

    def _sample(self) -> None:
        nvml = self._nvml
        while not self._stop.wait(self.interval_s):
            for handle in self._handles:
                util = nvml.nvmlDeviceGetUtilizationRates(handle).gpu
                memory = nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                self._samples.append((float(util), float(memory)))

    def summary(self) -> dict[str, Any] | None:
        """Mean and peak utilisation, peak memory over all GPUs; None where nothing was
        sampled (no pynvml, no GPU, or a phase shorter than one interval)."""
        if not self._samples:
            return None
        utilisation = [u for u, _ in self._samples]
        return {
            "gpus": self.names,
            "samples": len(self._samples),
            "utilisation_percent_mean": round(sum(utilisation) / len(utilisation), 1),
            "utilisation_percent_max": round(max(utilisation), 1),
            "memory_used_mib_max": round(max(m for _, m in self._samples), 1),
        }
