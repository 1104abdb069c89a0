"""Python models for probing the server (loaded by import path, e.g. `tests.probe_models:Echo`)."""

from __future__ import annotations

import numpy as np

from predictors.python_model import Context, PythonModel
from serving.protocol.types import TensorSpec


class BatchProbe(PythonModel):
    """Echoes `x` as `y` and reports, per row, how many rows the model call held (`rows`)."""

    inputs = (TensorSpec("x", "FP32", (-1, -1)),)
    outputs = (TensorSpec("y", "FP32", (-1, -1)), TensorSpec("rows", "INT64", (-1,)))

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        x = data["x"]
        return {"y": x, "rows": np.full(x.shape[0], x.shape[0], dtype=np.int64)}


class Flaky(PythonModel):
    """Fails the whole call when any row of the batch holds a negative number."""

    inputs = (TensorSpec("x", "FP32", (-1, -1)),)
    outputs = (TensorSpec("y", "FP32", (-1, -1)),)

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        if (data["x"] < 0).any():
            raise ValueError("negative input in the batch")
        return {"y": data["x"] * 2}


class Echo(PythonModel):
    """Returns every input unchanged, under the same name: any datatype, any bytes."""

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        return dict(data)
