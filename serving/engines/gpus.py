"""The machine's GPUs (NVML, else `nvidia-smi`) and how replicas get whole GPUs from the free ones."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Set
from dataclasses import dataclass

__all__ = ["GpuInfo", "allocate", "detect_gpus", "parse_nvidia_smi"]

log = logging.getLogger(__name__)

_NVIDIA_SMI = ("nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits")


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """index: the device index in PCI bus order (what `CUDA_VISIBLE_DEVICES` takes with
    `CUDA_DEVICE_ORDER=PCI_BUS_ID`). memory_total_bytes: the device's memory, in bytes."""

    index: int
    name: str
    memory_total_bytes: int


def detect_gpus() -> list[GpuInfo]:
    """The NVIDIA GPUs of this machine; [] when there are none or neither NVML nor nvidia-smi works."""
    gpus = _from_nvml()
    return gpus if gpus is not None else _from_nvidia_smi()


def allocate(free: Set[int], count: int) -> tuple[int, ...] | None:
    """`count` distinct GPU ids from `free` (the lowest ones, so placement is predictable), or None
    when fewer than `count` are free."""
    if count > len(free):
        return None
    return tuple(sorted(free)[:count])


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """Rows of `nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits`
    (memory in MiB); rows that do not parse are skipped."""
    gpus = []
    for line in text.splitlines():
        index, _, rest = line.partition(",")
        name, _, memory = rest.rpartition(",")
        try:
            gpus.append(GpuInfo(int(index), name.strip(), int(float(memory)) * 1024 * 1024))
        except ValueError:
            continue
    return gpus


def _from_nvml() -> list[GpuInfo] | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver: NVMLError_LibraryNotFound and friends
        log.debug("NVML unavailable: %s", exc)
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(GpuInfo(index, name.decode() if isinstance(name, bytes) else name, int(memory)))
        return gpus
    except Exception as exc:
        log.warning("NVML failed to list GPUs: %s", exc)
        return None
    finally:
        pynvml.nvmlShutdown()


def _from_nvidia_smi() -> list[GpuInfo]:
    try:
        result = subprocess.run(_NVIDIA_SMI, capture_output=True, text=True, timeout=30, check=True)
    except FileNotFoundError:
        return []
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed, assuming no GPUs: %s", exc)
        return []
    return parse_nvidia_smi(result.stdout)
