"""GPU figures of a replica's own GPUs, read through NVML at scrape time: utilization and memory.

The engine tells a replica its GPUs in SERVEGATE_GPU_IDS (the machine's indices, the same ones NVML
numbers). Without GPUs, or without NVML (the `nvidia-ml-py` package and the driver's library), no
collector is registered and `/metrics` simply has no GPU series.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["GpuCollector", "gpu_collector"]

log = logging.getLogger(__name__)


class GpuCollector(Collector):
    def __init__(self, nvml: Any, indices: list[int]) -> None:
        self._nvml = nvml
        self._handles = [(index, nvml.nvmlDeviceGetHandleByIndex(index)) for index in indices]

    def collect(self) -> Iterable[Metric]:
        utilization = GaugeMetricFamily(
            "servegate_gpu_utilization_percent",
            "Share of the last sample period a kernel ran on the GPU, in percent (NVML).",
            labels=["gpu"],
        )
        used = GaugeMetricFamily(
            "servegate_gpu_memory_used_bytes", "GPU memory in use, in bytes.", labels=["gpu"]
        )
        total = GaugeMetricFamily("servegate_gpu_memory_total_bytes", "GPU memory, in bytes.", labels=["gpu"])
        for index, handle in self._handles:
            try:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:  # a GPU fallen off the bus must not break the rest of /metrics
                log.warning("NVML cannot read GPU %s: %s", index, exc)
                continue
            utilization.add_metric([str(index)], float(rates.gpu))
            used.add_metric([str(index)], float(memory.used))
            total.add_metric([str(index)], float(memory.total))
        return [utilization, used, total]


def gpu_collector(environ: dict[str, str] | None = None) -> GpuCollector | None:
    """A collector for the GPUs in SERVEGATE_GPU_IDS, or None (no GPUs, or NVML unavailable)."""
    raw = (environ if environ is not None else os.environ).get("SERVEGATE_GPU_IDS", "")
    indices = [int(part) for part in raw.split(",") if part.strip().isdigit()]
    if not indices:
        return None
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return GpuCollector(pynvml, indices)
    except Exception as exc:  # ImportError, or the NVML library / driver missing
        log.warning("GPU metrics off: NVML is not available (%s)", exc)
        return None
