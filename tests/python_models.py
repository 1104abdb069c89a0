"""Example user models for the python runtime, loaded by import path (`tests.python_models:Doubler`)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from predictors.python_model import Context, PythonModel
from serving.errors import InvalidInput
from serving.protocol.types import TensorSpec


class Doubler(PythonModel):
    """Sync, with a declared signature; `factor` comes from the options."""

    inputs = (TensorSpec("x", "FP32", (-1,)),)
    outputs = (TensorSpec("y", "FP32", (-1,)),)

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.factor = options.get("factor", 2)
        self.threads: list[int] = []
        self.loaded = self.unloaded = False

    def load(self) -> None:
        self.loaded = True

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        return {"y": data["x"] * self.factor}

    def unload(self) -> None:
        self.unloaded = True


class AsyncDoubler(PythonModel):
    """Async load and predict, no declared signature."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.threads: list[int] = []
        self.loaded = False

    async def load(self) -> None:
        await asyncio.sleep(0)
        self.loaded = True

    async def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        await asyncio.sleep(0)
        return {"y": data["x"] * 2}


class Tokenizer(PythonModel):
    """A sync preprocess, a sync predict and an async postprocess; returns lists and str."""

    inputs = (TensorSpec("text", "BYTES", (-1,)),)
    outputs = (TensorSpec("length", "INT64", (-1,)), TensorSpec("upper", "BYTES", (-1,)))

    def preprocess(self, inputs: dict[str, np.ndarray], context: Context) -> list[str]:
        return [item.decode() for item in inputs["text"]]

    def predict(self, data: list[str], context: Context) -> list[tuple[int, str]]:
        return [(len(text), text.upper()) for text in data]

    async def postprocess(self, result: list[tuple[int, str]], context: Context) -> dict[str, Any]:
        return {"length": [n for n, _ in result], "upper": [text for _, text in result]}


class Returns(PythonModel):
    """Returns whatever the request's `value` parameter holds, to exercise result normalisation."""

    def predict(self, data: Any, context: Context) -> Any:
        return context.parameters["value"]


class ReturnsNamed(Returns):
    outputs = (TensorSpec("total", "INT64", (-1,)),)


class ReturnsPair(Returns):
    outputs = (TensorSpec("a", "INT64", (-1,)), TensorSpec("b", "INT64", (-1,)))


class Recorder(PythonModel):
    """Records the context of every request."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.contexts: list[Context] = []

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        self.contexts.append(context)
        return {"out": np.array([1]), "other": np.array([2])}


class Rendezvous(PythonModel):
    """Every predict waits until `parties` predicts are running at once."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.barrier = threading.Barrier(options["parties"], timeout=5)

    def predict(self, data: dict[str, np.ndarray], context: Context) -> np.ndarray:
        self.barrier.wait()
        return data["x"]


class FailingPredict(PythonModel):
    def predict(self, data: Any, context: Context) -> Any:
        if context.parameters.get("invalid"):
            raise InvalidInput("x must be positive")
        raise ValueError("boom")


class FailingLoad(PythonModel):
    def load(self) -> None:
        raise RuntimeError("weights missing")

    def predict(self, data: Any, context: Context) -> Any:
        return data


class FailingInit(PythonModel):
    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        raise KeyError("threshold")

    def predict(self, data: Any, context: Context) -> Any:
        return data


class NoPredict(PythonModel):
    pass


class NotAModel:
    def predict(self, data: Any, context: Context) -> Any:
        return data


not_a_class = 42


class Slow(PythonModel):
    """A predict that takes `SECONDS` (or the request's `seconds` parameter), to keep requests in
    flight (graceful shutdown tests)."""

    SECONDS = 1.5
    inputs = (TensorSpec("x", "FP32", (-1,)),)
    outputs = (TensorSpec("y", "FP32", (-1,)),)

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        time.sleep(float(context.parameters.get("seconds", self.SECONDS)))
        return {"y": data["x"] * 2}


class SlowLoad(Slow):
    """A load that takes `LOAD_SECONDS`, to watch readiness during start-up; predict is quick."""

    LOAD_SECONDS = 2.0

    def load(self) -> None:
        time.sleep(self.LOAD_SECONDS)

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        return {"y": data["x"] * 2}
