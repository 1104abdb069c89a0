"""Preprocessing defined once, used by training and by serving.

A preprocessing step is a `torch.nn.Module` whose fitted statistics are registered buffers. The
trainer trains the model on `preprocess(x)`; for serving, `serving_model(preprocess, model)` chains
the two into one module, and that module is what gets exported (ONNX, TorchScript). The served
artifact therefore carries the exact statistics training used, and a client sends raw features:
there is no second implementation of the transformation in the server to drift from the first.

    pre = Standardizer.fit(x_train)
    result = train_classifier(partial(mlp, 64, (32,), 10), pre.transform(x_train), y_train, config)
    model = mlp(64, (32,), 10)
    model.load_state_dict(result.state_dict)
    export_onnx(serving_model(pre, model), n_features=64, path=...)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["Standardizer", "serving_model"]


class Standardizer(nn.Module):
    """Per-feature standardization, `(x - mean) / std`.

    `mean` and `std` are buffers: they travel in the state dict and in exported graphs, and an
    optimizer never touches them. A feature whose spread is below `eps` (constant in the data it
    was fitted on) gets `std = 1`, as scikit-learn's `StandardScaler` does.
    """

    # No class-level `mean: torch.Tensor` annotations: under `from __future__ import annotations`
    # they are strings, which torch.jit.script cannot resolve.

    def __init__(self, mean: np.ndarray | torch.Tensor, std: np.ndarray | torch.Tensor, eps: float = 1e-6):
        super().__init__()
        std = torch.as_tensor(std, dtype=torch.float32)
        # Not a floor at eps: a pixel that is always 0 in training but 1 in a request would become
        # 1/eps, an input the model has never seen. Dividing by 1 keeps it at the scale of the data.
        std = torch.where(std < eps, torch.ones_like(std), std)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, x: np.ndarray, eps: float = 1e-6) -> Standardizer:
        """The standardizer for `x` (rows are samples, columns features)."""
        x = np.asarray(x, dtype=np.float64)  # float64: sums over many rows lose little
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"fit needs a non-empty 2-D array (samples, features), got shape {x.shape}")
        return cls(x.mean(axis=0), x.std(axis=0), eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def transform(self, x: np.ndarray) -> np.ndarray:
        """`forward` for numpy arrays: float32 in, float32 out (the trainer's input)."""
        return self(torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.mean.device)).cpu().numpy()


def serving_model(preprocess: nn.Module, model: nn.Module) -> nn.Module:
    """One module that takes raw features: `model(preprocess(x))`, for export and serving.

    An `nn.Sequential`, so its `forward` argument is named `input` (TorchScript serving reads input
    names from `forward`) and the state dict keys are `0.*` (preprocess) and `1.*` (model).
    """
    return nn.Sequential(preprocess, model)
