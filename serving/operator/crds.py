"""KServe's CustomResourceDefinitions, vendored unchanged in `crds/` (see crds/VERSIONS.md).

The InferenceService CRD embeds Kubernetes' pod schemas (about 1.9 MB of YAML), so it is stored
gzip-compressed; the others are plain YAML.
"""

from __future__ import annotations

import copy
import gzip
from functools import cache
from importlib import resources
from typing import Any

import yaml

__all__ = ["CRD_FILES", "crd_schema", "load_crds"]

#: the vendored files, in the order they are applied.
CRD_FILES = (
    "serving.kserve.io_inferenceservices.yaml.gz",
    "serving.kserve.io_trainedmodels.yaml",
    "serving.kserve.io_inferencegraphs.yaml",
)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _load(name: str) -> dict[str, Any]:
    # Parsing the InferenceService CRD takes most of a second: once per process.
    data = resources.files(__package__).joinpath("crds", name).read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return yaml.load(data, Loader=_Loader)


def load_crds() -> list[dict[str, Any]]:
    """The three CRDs (InferenceService, TrainedModel, InferenceGraph) as dicts, the caller's to change."""
    return [copy.deepcopy(_load(name)) for name in CRD_FILES]


def crd_schema(group: str, version: str, kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of `kind` in `group`/`version` (a copy); KeyError when no CRD serves it."""
    for name in CRD_FILES:
        spec = _load(name)["spec"]
        if spec["group"] != group or spec["names"]["kind"] != kind:
            continue
        for served in spec["versions"]:
            if served["name"] == version:
                return copy.deepcopy(served["schema"]["openAPIV3Schema"])
    raise KeyError(f"no vendored CRD serves {kind} in {group}/{version}")
