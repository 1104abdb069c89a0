"""Model runtimes by format, imported only when a model of that format is loaded.

Heavy libraries (torch, sklearn, tritonclient's aio stack) stay out of a replica that does not
serve them, which keeps start-up fast.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from predictors.runtime import Runtime
from serving.errors import InvalidInput

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "infer_format",
    "is_import_path",
    "model_file",
    "normalize_format",
    "runtime_class",
]

#: format -> "module:Class"
FORMATS: dict[str, str] = {
    "onnx": "predictors.runtimes.onnx:OnnxRuntime",
    "pytorch": "predictors.runtimes.pytorch:TorchRuntime",
    "sklearn": "predictors.runtimes.sklearn:SklearnRuntime",
    "python": "predictors.runtimes.python:PythonRuntime",
    "triton": "predictors.runtimes.triton:TritonRuntime",
}
#: other names for the same formats (KServe modelFormat names and common spellings).
_ALIASES = {"torch": "pytorch", "torchscript": "pytorch", "scikit-learn": "sklearn", "custom": "python"}

#: artifact file suffix -> format.
SUFFIXES = {
    ".onnx": "onnx",
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".ts": "pytorch",
    ".torchscript": "pytorch",
    ".pt2": "pytorch",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".skops": "sklearn",
}
# "package.module:Class" or "path/to/file.py:Class"
_IMPORT_PATH = re.compile(r"^[\w./-]+:[A-Za-z_]\w*$")


def normalize_format(name: str) -> str:
    fmt = _ALIASES.get(name.lower(), name.lower())
    if fmt not in FORMATS:
        raise InvalidInput(f"unsupported model format '{name}'; supported formats: {', '.join(FORMATS)}")
    return fmt


def runtime_class(fmt: str) -> type[Runtime]:
    module_name, _, class_name = FORMATS[normalize_format(fmt)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def model_file(path: Path) -> Path | None:
    """The artifact inside a model directory (or `path` itself when it is a file).

    A directory without an artifact of its own but with Triton-style version folders (`1/`, `2/`)
    gives the newest version's: a KServe storageUri names the model's folder, however it is laid out.
    """
    if path.is_file():
        return path
    if not path.is_dir():
        return None
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    preferred = [p for p in candidates if p.stem == "model"]
    if preferred or candidates:
        return (preferred or candidates)[0]
    versions = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    return model_file(max(versions, key=lambda p: int(p.name))) if versions else None


def is_import_path(uri: str) -> bool:
    """Whether `uri` names a Python class (the python format) rather than an artifact."""
    return "://" not in uri and bool(_IMPORT_PATH.match(uri))


def infer_format(uri: str, path: Path | None = None) -> str:
    """The format of a model from its artifact's file name; python and triton must be named."""
    if path is not None:
        artifact = model_file(path)
        if artifact is not None and artifact.suffix.lower() in SUFFIXES:
            return SUFFIXES[artifact.suffix.lower()]
    if is_import_path(uri):
        return "python"
    suffix = Path(uri.split("?", 1)[0]).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    raise InvalidInput(
        f"cannot tell the model format of '{uri}' from its file name; pass --model-format "
        f"(one of {', '.join(FORMATS)})"
    )
