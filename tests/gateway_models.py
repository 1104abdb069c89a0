"""Python models for the gateway tests, served by import path (`tests.gateway_models:Sleeper`).

Each reads its knobs from environment variables, which a manifest sets with `model.env`: changing
one makes a new revision of the same service, which is how the rollout tests tell revisions apart.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from predictors.python_model import Context, PythonModel
from predictors.transformer import Transformer
from serving.protocol.types import TensorSpec

__all__ = ["AlwaysFails", "Sleeper", "SlowStart"]

_X = (TensorSpec("x", "FP32", (-1,)),)
_Y = (TensorSpec("y", "FP32", (-1,)),)


def _seconds(variable: str, default: float) -> float:
    return float(os.environ.get(variable, default))


class Sleeper(PythonModel):
    """Sleeps `SLEEP_SECONDS` (default 0.5) in every predict, then doubles `x` into `y`."""

    inputs = _X
    outputs = _Y

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.seconds = _seconds("SLEEP_SECONDS", 0.5)

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        return {"y": data["x"] * 2}


class SlowStart(PythonModel):
    """Takes `LOAD_SECONDS` (default 0) to load, so a revision stays not-ready for a while; a quick
    predict doubles `x` into `y`."""

    inputs = _X
    outputs = _Y

    def load(self) -> None:
        time.sleep(_seconds("LOAD_SECONDS", 0.0))

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        return {"y": data["x"] * 2}


class AlwaysFails(PythonModel):
    """Loads fine and fails every request (a 500 from its replica): a broken shadow. It declares no
    signature, so whatever the primary is sent reaches `predict` (and fails there)."""

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        raise RuntimeError("this model always fails")


# -- graph, transformer and logger models ----------------------------------------------------------

__all__ += ["AddOne", "ScaleAndLabel", "TimesTen"]


class AddOne(PythonModel):
    """Adds one to `x` into `y`: easy to recognise at the end of a graph."""

    inputs = _X
    outputs = _Y

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        return {"y": data["x"] + 1}


class TimesTen(PythonModel):
    """Multiplies `x` by ten into `y`."""

    inputs = _X
    outputs = _Y

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        return {"y": data["x"] * 10}


class ScaleAndLabel(Transformer):
    """The MLP behind a transformer: clients send 0-255 values, the predictor gets them over 255;
    the answer keeps the predictor's `output` and adds its argmax as `label`."""

    def preprocess(self, inputs: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        return {"input": inputs["input"].astype(np.float32) / 255.0}

    def postprocess(self, result: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        return {"output": result["output"], "label": result["output"].argmax(axis=1)}


# -- rollout models --------------------------------------------------------------------------------

__all__ += ["Scorer"]


class Scorer(PythonModel):
    """A three-class classifier of `x` (each element a row): one-hot scores of `int(x) % 3`.

    Knobs for the rollout tests: `SHUFFLE=1` answers the next class (a retrained model whose labels
    were shuffled: it never agrees), `FAIL_SHARE` fails that share of requests at random (a 500),
    `SLEEP_MS` sleeps that long (with `JITTER_MS` more at random) in every request.
    """

    inputs = _X
    outputs = (TensorSpec("scores", "FP32", (-1, 3)),)

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.shift = int(os.environ.get("SHUFFLE", "0"))
        self.fail_share = _seconds("FAIL_SHARE", 0.0)
        self.sleep_s = _seconds("SLEEP_MS", 0.0) / 1000
        self.jitter_s = _seconds("JITTER_MS", 0.0) / 1000
        self.rng = np.random.default_rng()

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        if self.sleep_s or self.jitter_s:
            time.sleep(self.sleep_s + self.jitter_s * self.rng.random())
        if self.rng.random() < self.fail_share:
            raise RuntimeError("a failure the rollout test asked for")
        classes = (data["x"].astype(np.int64) + self.shift) % 3
        return {"scores": np.eye(3, dtype=np.float32)[classes]}
