"""KServe manifests (serving.kserve.io): typed models, validation by field path, normalized components.

`InferenceGraph` (and `Resource`, which names it) are imported on first use, not with the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.spec.common import ManifestError, Problem
from serving.spec.isvc import Component, ExperimentSpec, InferenceService, ShadowSpec, Variant
from serving.spec.manifests import load_manifests, parse_documents, parse_resource, read_manifest_paths
from serving.spec.trained_model import TrainedModel

if TYPE_CHECKING:
    from serving.spec.graph import InferenceGraph
    from serving.spec.manifests import Resource

__all__ = [
    "Component",
    "ExperimentSpec",
    "InferenceGraph",
    "InferenceService",
    "ManifestError",
    "Problem",
    "Resource",
    "ShadowSpec",
    "TrainedModel",
    "Variant",
    "load_manifests",
    "parse_documents",
    "parse_resource",
    "read_manifest_paths",
]


def __getattr__(name: str) -> Any:
    if name == "InferenceGraph":
        from serving.spec.graph import InferenceGraph

        return InferenceGraph
    if name == "Resource":
        from serving.spec import manifests

        return manifests.Resource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
