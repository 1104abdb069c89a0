"""A replica's GPU metrics from NVML, with a fake NVML (no GPU on the test machines)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from predictors.gpu_metrics import GpuCollector, gpu_collector


class FakeNvml:
    def __init__(self, broken: set[int] | None = None) -> None:
        self.broken = broken or set()

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if handle in self.broken:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(gpu=40 + handle, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=1024 * (handle + 1), total=80 * 1024**3)


def scrape(collector: GpuCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_each_assigned_gpu_exports_utilization_and_memory() -> None:
    text = scrape(GpuCollector(FakeNvml(), [0, 3]))
    assert 'servegate_gpu_utilization_percent{gpu="0"} 40.0' in text
    assert 'servegate_gpu_utilization_percent{gpu="3"} 43.0' in text
    assert 'servegate_gpu_memory_used_bytes{gpu="3"} 4096.0' in text
    assert 'servegate_gpu_memory_total_bytes{gpu="0"} 8.589934592e+10' in text


def test_an_unreadable_gpu_is_left_out_not_fatal() -> None:
    text = scrape(GpuCollector(FakeNvml(broken={1}), [0, 1]))
    assert 'gpu="0"' in text and 'gpu="1"' not in text


def test_no_gpus_no_collector() -> None:
    assert gpu_collector({}) is None
    assert gpu_collector({"SERVEGATE_GPU_IDS": ""}) is None
