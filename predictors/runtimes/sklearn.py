"""scikit-learn estimators, from skops files (safe) or joblib/pickle files (only from trusted sources).

A skops file loads when every type in it is one skops trusts by default; other types are listed in
the error and are loaded only from a source the trust policy names. A pickle runs code from its
author as it loads, so it is refused unless its source is trusted.

Signature (KServe's names): one input `input-0`, FP64 (what sklearn computes in) with shape
(-1, n_features_in_), or (-1, -1) when the estimator does not record its width. Outputs: `predict`,
shape (-1,) or (-1, n_outputs), typed from `classes_` for classifiers (BYTES for text labels, INT64
for integers, BOOL, FP64 for floats) and FP64 otherwise; and `predict_proba`, FP64 (-1, n_classes),
when the estimator has it.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import skops.io

from predictors.runtime import BlockingRuntime, RuntimeRequest, Signature
from predictors.runtimes import model_file
from predictors.trust import require_trust, why_code_runs
from serving.errors import InvalidInput, ModelFailure
from serving.protocol.datatypes import DATATYPES
from serving.protocol.types import TensorSpec

__all__ = ["SklearnRuntime"]

INPUT = "input-0"
_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


class SklearnRuntime(BlockingRuntime):
    platform = "sklearn"

    _estimator: Any = None  # a default, so that unload() is safe after a failed load

    def load_blocking(self) -> Signature:
        artifact = model_file(self.path) if self.path else None
        if artifact is None or artifact.suffix.lower() not in (".skops", *_PICKLE_SUFFIXES):
            raise ModelFailure(f"no .skops, .joblib or .pkl file found at {self.path}")
        if artifact.suffix.lower() == ".skops":
            estimator = self._load_skops(artifact)
        else:
            estimator = self._load_pickle(artifact)
        if not callable(getattr(estimator, "predict", None)):
            raise ModelFailure(f"{artifact.name} holds a {type(estimator).__name__}, which has no predict()")
        self._estimator = estimator

        width = getattr(estimator, "n_features_in_", None)
        inputs = (TensorSpec(INPUT, "FP64", (-1, width if isinstance(width, int) else -1)),)
        outputs = [_predict_spec(estimator, width)]
        classes = getattr(estimator, "classes_", None)
        if hasattr(estimator, "predict_proba") and isinstance(classes, np.ndarray) and classes.ndim == 1:
            outputs.append(TensorSpec("predict_proba", "FP64", (-1, len(classes))))
        self._dtypes = {spec.name: DATATYPES[spec.datatype] for spec in outputs}
        return Signature(inputs=inputs, outputs=tuple(outputs))

    def _load_skops(self, artifact: Path) -> Any:
        try:
            untrusted = skops.io.get_untrusted_types(file=artifact)
            if untrusted:
                require_trust(
                    self.spec,
                    f"load {artifact.name}",
                    f"it holds types skops does not trust by default: {', '.join(untrusted)}",
                )
            return skops.io.load(artifact, trusted=untrusted or None)
        except ModelFailure:
            raise
        except Exception as exc:  # skops raises whatever its readers hit on a bad file
            raise ModelFailure(f"skops could not load {artifact.name}: {type(exc).__name__}: {exc}") from None

    def _load_pickle(self, artifact: Path) -> Any:
        require_trust(
            self.spec,
            f"unpickle {artifact.name}",
            why_code_runs("sklearn"),
            instead="serve a .skops file instead",
        )
        try:
            return joblib.load(artifact)  # reads plain pickles too
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ModelFailure(f"{artifact.name} is not a valid joblib/pickle file: {exc}") from None
        except Exception as exc:  # unpickling runs arbitrary code, so anything can come out
            raise ModelFailure(f"could not unpickle {artifact.name}: {type(exc).__name__}: {exc}") from None

    def predict(self, request: RuntimeRequest) -> dict[str, np.ndarray]:
        features = request.inputs[INPUT]
        names = list(self._dtypes) if request.outputs is None else request.outputs
        results = {}
        for name in names:
            if name not in self._dtypes:
                raise InvalidInput(f"unknown output '{name}'; the model has {', '.join(self._dtypes)}")
            method = getattr(self._estimator, name)
            results[name] = _as_dtype(np.asarray(method(features)), self._dtypes[name])
        return results

    def unload_blocking(self) -> None:
        self._estimator = None


def _predict_spec(estimator: Any, width: int | None) -> TensorSpec:
    classes = getattr(estimator, "classes_", None)
    if isinstance(classes, np.ndarray):
        return TensorSpec("predict", _label_datatype(classes), (-1,))
    if isinstance(classes, list) and classes:  # multi-output classifier: one array of labels per output
        kinds = {_label_datatype(c) for c in classes}
        datatype = kinds.pop() if len(kinds) == 1 else "BYTES"
        return TensorSpec("predict", datatype, (-1, len(classes)))
    n_outputs = getattr(estimator, "n_outputs_", None)
    if not isinstance(n_outputs, int) and isinstance(width, int):
        n_outputs = _probe_outputs(estimator, width)
    shape = (-1, n_outputs) if isinstance(n_outputs, int) and n_outputs > 1 else (-1,)
    return TensorSpec("predict", "FP64", shape)


def _label_datatype(classes: np.ndarray) -> str:
    kind = np.asarray(classes).dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"  # text labels (str or object arrays), sent as UTF-8


def _probe_outputs(estimator: Any, width: int) -> int | None:
    """How many outputs a regressor predicts, from one all-zero row; None when it will not say."""
    try:
        with np.errstate(all="ignore"):
            prediction = np.asarray(estimator.predict(np.zeros((1, width))))
    except Exception:
        return None
    return prediction.shape[1] if prediction.ndim == 2 else 1


def _as_dtype(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype != DATATYPES["BYTES"]:
        return array.astype(dtype, copy=False)
    out = np.empty(array.shape, dtype=object)
    out.flat[:] = [x if isinstance(x, bytes) else str(x).encode() for x in array.flat]
    return out
