"""Import a Python file by path under a chosen module name: the one mechanism behind python models
(`FILE.py:Class`) and pipeline files, which differ only in the name they choose."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["exec_file"]


def exec_file(name: str, path: Path) -> ModuleType:
    """Run `path` as module `name`. It is in sys.modules while it runs, as a normal import is
    (dataclasses and pickle look it up), and taken out again if running it fails."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
