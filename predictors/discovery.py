"""Model repository folders: what models a folder holds, as `ModelSpec`s (no loading, no I/O beyond reads).

Layouts understood, per entry of the folder:

    repo/iris.skops                 -> model "iris" (a single artifact file)
    repo/mlp/model.onnx             -> model "mlp", version "1"
    repo/mlp/3/model.onnx           -> model "mlp", version "3" (the highest numbered version wins)
    repo/mlp/config.pbtxt           -> optional Triton model configuration

What a Triton `config.pbtxt` may say is in `predictors.triton_config`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from predictors.runtimes import model_file
from predictors.spec import ModelSpec
from predictors.triton_config import apply_config
from serving.errors import InvalidInput

__all__ = ["discover", "discover_one"]


def discover(root: Path, template: ModelSpec) -> dict[str, ModelSpec]:
    """Every model in `root`, keyed by name; `template` gives the settings a model's config does not."""
    if not root.is_dir():
        raise InvalidInput(f"model repository {root} is not a directory")
    specs = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        spec = _spec_for(entry, template)
        if spec is not None:
            specs[spec.name] = spec
    return specs


def discover_one(root: Path, name: str, template: ModelSpec) -> ModelSpec | None:
    for entry in (root / name, *root.glob(f"{name}.*")):
        if entry.exists() and not entry.name.startswith("."):
            spec = _spec_for(entry, template)
            if spec is not None and spec.name == name:
                return spec
    return None


def _spec_for(entry: Path, template: ModelSpec) -> ModelSpec | None:
    if entry.is_file():
        if model_file(entry) is None or entry.suffix == ".pbtxt":
            return None
        return dataclasses.replace(template, name=entry.stem, uri=str(entry.resolve()))
    versions = sorted(
        (int(child.name), child)
        for child in entry.iterdir()
        if child.is_dir() and child.name.isdigit() and model_file(child) is not None
    )
    if versions:
        version, folder = str(versions[-1][0]), versions[-1][1]
    elif model_file(entry) is not None:
        version, folder = "1", entry
    else:
        return None
    spec = dataclasses.replace(template, name=entry.name, uri=str(folder.resolve()), version=version)
    config = entry / "config.pbtxt"
    return apply_config(spec, config) if config.is_file() else spec
