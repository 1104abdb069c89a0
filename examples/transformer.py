"""An example transformer: scales raw pixel-like inputs before the predictor and adds the argmax.

Used by examples/mlp-transformer.yaml (`storageUri: examples/transformer.py:Scale`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from predictors.python_model import Context
from predictors.transformer import Transformer


class Scale(Transformer):
    def preprocess(self, inputs: dict[str, np.ndarray], context: Context) -> dict[str, np.ndarray]:
        return {"input": inputs["input"].astype(np.float32) / 255.0}

    def postprocess(self, result: Any, context: Context) -> dict[str, np.ndarray]:
        return {"output": result["output"], "label": result["output"].argmax(axis=1)}
