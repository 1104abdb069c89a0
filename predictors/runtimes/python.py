"""User Python models: a `PythonModel` subclass named by an import path.

The URI is `package.module:ClassName` (imported with importlib) or `path/to/file.py:ClassName`
(loaded from the file under a module name of its own; relative paths are relative to the working
directory). Importing a file runs its code, so a file loads only from a trusted source (see
predictors.trust); a module is code already installed where the server runs, by its operator.

Each hook of the model is wrapped once, at load: coroutine functions are awaited on the event
loop, plain functions run in this runtime's thread pool of `spec.instances` threads.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from predictors.python_model import Context, PythonModel
from predictors.runtime import Runtime, RuntimeRequest, Signature
from predictors.spec import ModelSpec
from predictors.trust import is_python_file, require_trust, why_code_runs
from serving.errors import InvalidInput, ModelFailure, ServingError
from serving.modules import exec_file
from serving.protocol.datatypes import DATATYPES, datatype_of
from serving.protocol.types import TensorSpec

__all__ = ["PythonRuntime"]

#: the name of a bare array returned by a model that declares no outputs.
DEFAULT_OUTPUT = "output-0"

_Hook = Callable[..., Awaitable[Any]]


class PythonRuntime(Runtime):
    platform = "python"
    needs_artifact = False

    def __init__(self, spec: ModelSpec, path: Path | None) -> None:
        super().__init__(spec, path)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, spec.instances), thread_name_prefix=f"model-{spec.name}"
        )
        #: the user's model instance, once loaded.
        self.model: PythonModel | None = None
        self._module_name: str | None = None  # set when the model came from a file
        self._output_names: tuple[str, ...] = ()

    async def load(self) -> Signature:
        # Importing and constructing may be slow (heavy imports, weights read in __init__).
        model = await self._in_thread(self._construct)
        self._unload = self._wrap("unload", model.unload)
        self._preprocess = self._wrap_optional("preprocess", model)
        self._predict = self._wrap("predict", model.predict)
        self._postprocess = self._wrap_optional("postprocess", model)
        await self._wrap("load", model.load)()
        signature = Signature(
            inputs=_declared(model.inputs, "inputs", self.spec.uri),
            outputs=_declared(model.outputs, "outputs", self.spec.uri),
        )
        self._output_names = tuple(spec.name for spec in signature.outputs)
        self.model = model
        return signature

    async def infer(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        context = Context(
            parameters=request.parameters,
            headers=request.headers,
            outputs=tuple(request.outputs) if request.outputs is not None else None,
        )
        data = await self._preprocess(dict(request.inputs), context)
        result = await self._postprocess(await self._predict(data, context), context)
        outputs = self._as_outputs(result)
        if request.outputs is None:
            return outputs
        missing = [name for name in request.outputs if name not in outputs]
        if missing:
            raise InvalidInput(
                f"model '{self.spec.name}' has no output {', '.join(repr(name) for name in missing)}; "
                f"it produces {', '.join(repr(name) for name in outputs) or 'nothing'}"
            )
        return {name: outputs[name] for name in request.outputs}

    async def unload(self) -> None:
        try:
            if self.model is not None:
                await self._unload()
        finally:
            self.model = None
            self._executor.shutdown(wait=False)
            if self._module_name is not None:
                sys.modules.pop(self._module_name, None)

    # -- loading ---------------------------------------------------------------------------------

    def _construct(self) -> PythonModel:
        uri = self.spec.uri
        cls = self._import_class(uri)
        if not (isinstance(cls, type) and issubclass(cls, PythonModel)):
            raise ModelFailure(f"'{uri}' is {cls!r}; it must subclass predictors.python_model.PythonModel")
        if cls.predict is PythonModel.predict:
            raise ModelFailure(f"'{uri}' must override predict")
        try:
            return cls(self.spec.name, dict(self.spec.options))
        except Exception as exc:
            raise ModelFailure(f"could not construct '{uri}': {type(exc).__name__}: {exc}") from exc

    def _import_class(self, uri: str) -> object:
        target, _, class_name = uri.rpartition(":")
        if not target or not class_name.isidentifier():
            raise ModelFailure(
                f"python model URI '{uri}' must be 'package.module:ClassName' or 'path/to/file.py:ClassName'"
            )
        try:
            if is_python_file(target):
                module = self._import_file(Path(target))
            else:
                module = importlib.import_module(target)
            return getattr(module, class_name)
        except ServingError:
            raise
        except Exception as exc:  # ImportError, SyntaxError, AttributeError, or whatever the module raises
            raise ModelFailure(f"could not import '{uri}': {type(exc).__name__}: {exc}") from exc

    def _import_file(self, path: Path) -> Any:
        # Resolved once: the file checked for trust is the file imported.
        path = path.resolve()
        require_trust(self.spec, f"import {path}", why_code_runs("python"), source=str(path))
        if not path.is_file():
            raise ModelFailure(f"python model file {path} does not exist")
        # A name of its own, so two models loaded from files called model.py never share a module.
        name = f"servegate_model_{path.stem}_{uuid.uuid4().hex}"
        module = exec_file(name, path)
        self._module_name = name
        return module

    # -- hooks -----------------------------------------------------------------------------------

    def _wrap(self, stage: str, method: Callable[..., Any]) -> _Hook:
        """An awaitable form of one model hook, decided once: async runs on the loop, sync in a thread."""
        call: _Hook = (
            method if inspect.iscoroutinefunction(method) else functools.partial(self._in_thread, method)
        )
        name = self.spec.name

        async def hook(*args: Any) -> Any:
            try:
                return await call(*args)
            except ServingError:  # a model may raise InvalidInput for a bad request
                raise
            except Exception as exc:
                raise ModelFailure(f"{stage} of model '{name}' failed: {type(exc).__name__}: {exc}") from exc

        return hook

    def _wrap_optional(self, stage: str, model: PythonModel) -> _Hook:
        # A hook the subclass did not override passes its argument on without a trip to a thread.
        if getattr(type(model), stage) is getattr(PythonModel, stage):
            return _passthrough
        return self._wrap(stage, getattr(model, stage))

    async def _in_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    # -- results ---------------------------------------------------------------------------------

    def _as_outputs(self, result: Any) -> dict[str, np.ndarray]:
        if isinstance(result, Mapping):
            outputs = {}
            for name, value in result.items():
                if not isinstance(name, str):
                    raise ModelFailure(
                        f"model '{self.spec.name}' returned an output named {name!r}, not a str"
                    )
                outputs[name] = self._as_array(name, value)
            return outputs
        if len(self._output_names) > 1:
            raise ModelFailure(
                f"model '{self.spec.name}' returned a single {type(result).__name__} but declares "
                f"{len(self._output_names)} outputs; return a dict of output name -> array"
            )
        name = self._output_names[0] if self._output_names else DEFAULT_OUTPUT
        return {name: self._as_array(name, result)}

    def _as_array(self, name: str, value: Any) -> np.ndarray:
        if value is None:
            raise ModelFailure(f"model '{self.spec.name}' returned None for output '{name}'")
        try:
            array = value if isinstance(value, np.ndarray) else np.asarray(value)
        except Exception as exc:  # ragged lists and other things numpy cannot shape
            raise ModelFailure(
                f"model '{self.spec.name}' output '{name}' is not an array: {type(exc).__name__}: {exc}"
            ) from exc
        if array.dtype.kind in ("U", "S", "O"):
            return _bytes_array(self.spec.name, name, array)
        try:
            datatype_of(array)
        except InvalidInput:
            raise ModelFailure(
                f"model '{self.spec.name}' output '{name}' has numpy dtype {array.dtype}, "
                "which no V2 datatype carries"
            ) from None
        return array


async def _passthrough(value: Any, context: Context) -> Any:
    return value


def _declared(specs: Any, what: str, uri: str) -> tuple[TensorSpec, ...]:
    if specs is None:
        return ()  # undeclared: the replica accepts any names and datatypes
    declared = tuple(specs)
    for spec in declared:
        if not isinstance(spec, TensorSpec):
            raise ModelFailure(f"'{uri}' {what} must be TensorSpecs, got {spec!r}")
        if spec.datatype not in DATATYPES:
            raise ModelFailure(f"'{uri}' {what} '{spec.name}' has unknown datatype '{spec.datatype}'")
    return declared


def _bytes_array(model: str, name: str, array: np.ndarray) -> np.ndarray:
    """A BYTES tensor: an object array of bytes, with str elements encoded as UTF-8."""
    out = np.empty(array.shape, dtype=object)
    for index, item in np.ndenumerate(array):
        if isinstance(item, str):
            out[index] = item.encode()
        elif isinstance(item, bytes):
            out[index] = bytes(item)
        else:
            raise ModelFailure(
                f"model '{model}' output '{name}' holds a {type(item).__name__}; "
                "BYTES outputs must hold str or bytes"
            )
    return out
