"""What to serve: one model's configuration, as the CLI, a model repository or the control plane gives it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from predictors.trust import RegistryOrigin, TrustPolicy

# TrustPolicy is defined beside the rest of code trust (predictors.trust) and kept importable here.
__all__ = ["DEFAULT_MAX_LATENCY_MS", "ModelSpec", "RegistryOrigin", "TrustPolicy"]

DEFAULT_MAX_LATENCY_MS = 5.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model to serve.

    name: the name clients use. uri: storage URI (path, file://, http(s)://, s3://), an import path
    for the python format, or the server address for triton. format: onnx, pytorch, sklearn, python
    or triton; None infers it from the artifact. version: reported in metadata and checked against
    versioned URLs. max_batch_size: rows merged into one model call (1 turns batching off).
    max_latency_ms: how long the first request of a batch waits for others, in milliseconds.
    threads: intra-op threads for ONNX Runtime / torch (None: the library's default); `servegate
    model serve` always sets it, from its thread plan (predictors.threads). spinning: whether ONNX
    Runtime's idle intra-op threads busy-wait for work (only where the replica has CPUs to spare).
    instances: model calls that may run at once on this replica (threads in its executor).
    trust: the sources whose models may run code as they load (python files, pickles, torch.export).
    origin: set for a model materialized from the registry: the version it came from, whose record
    (not `trust`'s prefixes) says whether it may run code.
    """

    name: str
    uri: str
    format: str | None = None
    version: str = "1"
    max_batch_size: int = 1
    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS
    threads: int | None = None
    spinning: bool = False
    instances: int = 1
    trust: TrustPolicy = field(default_factory=TrustPolicy)
    #: runtime-specific settings (e.g. an explicit input/output signature for TorchScript).
    options: dict[str, Any] = field(default_factory=dict)
    origin: RegistryOrigin | None = None

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 1
