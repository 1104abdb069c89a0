"""The model registry: numbered model versions in a content-addressed artifact store, aliases that
deployments follow, promotion gates and an audit log (see `registry.py`).

`Registry` and `RegistryConfig` are imported on first use: a replica that parses a registry URI
should not pay for SQLAlchemy unless it serves a registry model.
"""

from typing import TYPE_CHECKING, Any

from serving.registry.types import (
    AuditEntry,
    Gate,
    GateFailed,
    InvalidArtifact,
    ModelVersion,
    RegisteredModel,
    RegistryConflict,
    RegistryError,
    RegistryNotFound,
    RegistryUnavailable,
)
from serving.registry.uris import RegistryUri, is_registry_uri, parse_uri

if TYPE_CHECKING:
    from serving.registry.registry import Registry, RegistryConfig


def __getattr__(name: str) -> Any:
    if name in ("Registry", "RegistryConfig"):
        from serving.registry import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'serving.registry' has no attribute {name!r}")


__all__ = [
    "AuditEntry",
    "Gate",
    "GateFailed",
    "InvalidArtifact",
    "ModelVersion",
    "RegisteredModel",
    "Registry",
    "RegistryConfig",
    "RegistryConflict",
    "RegistryError",
    "RegistryNotFound",
    "RegistryUnavailable",
    "RegistryUri",
    "is_registry_uri",
    "parse_uri",
]
