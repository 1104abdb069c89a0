"""Python models for the benchmarks, served by import path (`loadtests.bench_models:FixedLatency`).

A replica imports them from its working directory, so the gateway must run from the repository root
(or with it on PYTHONPATH).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from predictors.python_model import Context, PythonModel
from serving.protocol.types import TensorSpec

__all__ = ["FixedLatency"]


class FixedLatency(PythonModel):
    """Sleeps `BENCH_SLEEP_SECONDS` (default 0.05) per request, then doubles `x` into `y`.

    A plain `predict` runs on the model's single worker thread, so a replica answers one request at a
    time: its capacity is 1 / BENCH_SLEEP_SECONDS requests/s while it costs almost no CPU, which lets
    a small machine host many replicas.
    """

    inputs = (TensorSpec("x", "FP32", (-1,)),)
    outputs = (TensorSpec("y", "FP32", (-1,)),)

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        super().__init__(name, options)
        self.seconds = float(os.environ.get("BENCH_SLEEP_SECONDS", "0.05"))

    def predict(self, data: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        return {"y": data["x"] * 2}
