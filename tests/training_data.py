"""The digits split the training tests share: standardized train and validation sets."""

from __future__ import annotations

import numpy as np

from serving.pipelines.preprocess import Standardizer

__all__ = ["digits_split"]


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val) of sklearn's bundled digits, 75/25, standardized on train."""
    # Imported here: training workers import the test modules that call this, and need no sklearn.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x.astype(np.float32), y.astype(np.int64), test_size=0.25, random_state=0, stratify=y
    )
    pre = Standardizer.fit(x_train)
    return pre.transform(x_train), y_train, pre.transform(x_val), y_val
