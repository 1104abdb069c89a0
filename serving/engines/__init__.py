"""Engines run revisions' replica pools; `base` is the interface, `process` runs them as local processes."""

from serving.engines.base import Engine, PoolStatus, ReplicaInfo, ReplicaSpec, ReplicaState, ServedModelRef
from serving.engines.process import ProcessEngine

__all__ = [
    "Engine",
    "PoolStatus",
    "ProcessEngine",
    "ReplicaInfo",
    "ReplicaSpec",
    "ReplicaState",
    "ServedModelRef",
]
