"""Registry artifacts for the process that serves them: one Registry per process, opened from the
environment the gateway hands its replicas (`RegistryConfig.env()`), and a verified local copy of
a `registry://` URI with what the runtime needs to load it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from serving.registry.registry import Registry, RegistryConfig
from serving.registry.types import ModelVersion

__all__ = ["Materialized", "materialize"]

_registries: dict[tuple[RegistryConfig, Path], Registry] = {}
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Materialized:
    version: ModelVersion
    #: the verified local file or folder.
    path: Path

    @property
    def import_path(self) -> str:
        """For the python format: `FILE.py:Class`."""
        return f"{self.path}:{self.version.entry}"


def _registry(cache_dir: Path) -> Registry:
    key = (RegistryConfig.from_env(), cache_dir)
    with _lock:
        if key not in _registries:
            _registries[key] = Registry(key[0], cache_dir=cache_dir)
        return _registries[key]


def materialize(uri: str, cache_dir: Path) -> Materialized:
    """Resolve `uri` and copy its artifact under `cache_dir`, checking every byte against its sha256.
    Raises RegistryError (InvalidArtifact when the stored artifact is corrupted)."""
    registry = _registry(cache_dir)
    version = registry.resolve(uri)
    return Materialized(version, registry.fetch_version(version))
