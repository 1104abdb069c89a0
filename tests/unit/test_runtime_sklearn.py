"""SklearnRuntime on skops and joblib files made here, checked against the estimators."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import joblib
import numpy as np
import pytest
import skops.io
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.tree import DecisionTreeClassifier

from predictors.runtime import RuntimeRequest, Signature
from predictors.runtimes.sklearn import SklearnRuntime
from predictors.spec import ModelSpec, TrustPolicy
from serving.errors import InvalidInput, ModelFailure
from serving.protocol.types import TensorSpec

X, Y = load_iris(return_X_y=True)
SPECIES = np.array(["setosa", "versicolor", "virginica"])[Y]


def halve(x: np.ndarray) -> np.ndarray:
    """A user function, which skops does not trust by default."""
    return x / 2


@pytest.fixture(scope="module")
def classifier() -> LogisticRegression:
    return LogisticRegression(max_iter=1000).fit(X, Y)


@pytest.fixture(scope="module")
def regressor() -> LinearRegression:
    return LinearRegression().fit(X[:, :3], X[:, 3])


@pytest.fixture(scope="module")
def labeller() -> DecisionTreeClassifier:
    return DecisionTreeClassifier(random_state=0).fit(X, SPECIES)


async def load(path: Path, trust: TrustPolicy | None = None) -> tuple[SklearnRuntime, Signature]:
    spec = ModelSpec(name="iris", uri=str(path), format="sklearn", trust=trust or TrustPolicy())
    runtime = SklearnRuntime(spec, path)
    try:
        return runtime, await runtime.load()
    except BaseException:
        await runtime.unload()
        raise


@contextlib.asynccontextmanager
async def loaded(
    path: Path, trust: TrustPolicy | None = None
) -> AsyncIterator[tuple[SklearnRuntime, Signature]]:
    runtime, signature = await load(path, trust)
    try:
        yield runtime, signature
    finally:
        await runtime.unload()


def trusting(path: Path) -> TrustPolicy:
    return TrustPolicy(sources=(str(path.parent) + "/",))


async def test_skops_classifier_loads_without_trust(tmp_path: Path, classifier: LogisticRegression) -> None:
    path = tmp_path / "model.skops"
    skops.io.dump(classifier, path)
    async with loaded(path) as (runtime, signature):
        assert runtime.platform == "sklearn"
        assert signature.inputs == (TensorSpec("input-0", "FP64", (-1, 4)),)
        assert signature.outputs == (
            TensorSpec("predict", "INT64", (-1,)),
            TensorSpec("predict_proba", "FP64", (-1, 3)),
        )
        assert signature.batchable
        result = await runtime.infer(RuntimeRequest(inputs={"input-0": X}))
    assert result["predict"].dtype == np.int64
    np.testing.assert_array_equal(result["predict"], classifier.predict(X))
    np.testing.assert_allclose(result["predict_proba"], classifier.predict_proba(X))


async def test_requested_outputs_only(tmp_path: Path, classifier: LogisticRegression) -> None:
    path = tmp_path / "model.skops"
    skops.io.dump(classifier, path)
    async with loaded(path) as (runtime, _):
        proba = await runtime.infer(RuntimeRequest(inputs={"input-0": X[:5]}, outputs=["predict_proba"]))
        with pytest.raises(InvalidInput, match="unknown output"):
            await runtime.infer(RuntimeRequest(inputs={"input-0": X[:5]}, outputs=["decision_function"]))
    assert list(proba) == ["predict_proba"]
    np.testing.assert_allclose(proba["predict_proba"], classifier.predict_proba(X[:5]))


async def test_regressor(tmp_path: Path, regressor: LinearRegression) -> None:
    path = tmp_path / "model.skops"
    skops.io.dump(regressor, path)
    async with loaded(path) as (runtime, signature):
        assert signature.inputs == (TensorSpec("input-0", "FP64", (-1, 3)),)
        assert signature.outputs == (TensorSpec("predict", "FP64", (-1,)),)
        result = await runtime.infer(RuntimeRequest(inputs={"input-0": X[:, :3]}))
    np.testing.assert_allclose(result["predict"], regressor.predict(X[:, :3]))


async def test_multi_output_regressor(tmp_path: Path) -> None:
    model = LinearRegression().fit(X[:, :2], X[:, 2:])
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    async with loaded(path) as (runtime, signature):
        assert signature.outputs == (TensorSpec("predict", "FP64", (-1, 2)),)
        result = await runtime.infer(RuntimeRequest(inputs={"input-0": X[:, :2]}))
    np.testing.assert_allclose(result["predict"], model.predict(X[:, :2]))


async def test_string_labels_are_bytes(tmp_path: Path, labeller: DecisionTreeClassifier) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(labeller, path)
    async with loaded(path, trusting(path)) as (runtime, signature):
        assert signature.outputs[0] == TensorSpec("predict", "BYTES", (-1,))
        result = await runtime.infer(RuntimeRequest(inputs={"input-0": X}, outputs=["predict"]))
    labels = result["predict"]
    assert labels.dtype == object
    assert labels.tolist() == [label.encode() for label in labeller.predict(X)]


async def test_pickle_is_refused_without_trust(tmp_path: Path, classifier: LogisticRegression) -> None:
    path = tmp_path / "model.pkl"
    joblib.dump(classifier, path)
    with pytest.raises(ModelFailure) as info:
        await load(path)
    message = info.value.message
    assert "refusing to unpickle model.pkl" in message
    assert ".skops" in message
    assert "--trust-source" in message
    assert "SERVEGATE_TRUSTED_SOURCES" in message


async def test_pickle_from_trusted_source(tmp_path: Path, classifier: LogisticRegression) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(classifier, path)
    async with loaded(path, trusting(path)) as (runtime, signature):
        assert [spec.name for spec in signature.outputs] == ["predict", "predict_proba"]
        result = await runtime.infer(RuntimeRequest(inputs={"input-0": X}))
    np.testing.assert_array_equal(result["predict"], classifier.predict(X))


async def test_pickle_from_another_source_is_refused(tmp_path: Path, classifier: LogisticRegression) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump(classifier, path)
    with pytest.raises(ModelFailure, match="refusing to unpickle"):
        await load(path, TrustPolicy(sources=("s3://elsewhere/",)))


async def test_skops_with_untrusted_types_needs_trust(tmp_path: Path) -> None:
    model = make_pipeline(FunctionTransformer(halve), LogisticRegression(max_iter=1000)).fit(X, Y)
    path = tmp_path / "model.skops"
    skops.io.dump(model, path)
    with pytest.raises(ModelFailure) as info:
        await load(path)
    assert "halve" in info.value.message
    assert "--trust-source" in info.value.message
    async with loaded(path, trusting(path)) as (runtime, _):
        result = await runtime.infer(RuntimeRequest(inputs={"input-0": X}))
    np.testing.assert_array_equal(result["predict"], model.predict(X))


@pytest.mark.parametrize("name", ["model.skops", "model.joblib", "model.pkl"])
async def test_corrupt_file_fails_the_load(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x80\x04 definitely not a model")
    with pytest.raises(ModelFailure, match=name.replace(".", r"\.")):
        await load(path, trusting(path))


async def test_not_an_estimator_fails_the_load(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    joblib.dump({"weights": [1, 2, 3]}, path)
    with pytest.raises(ModelFailure, match="no predict"):
        await load(path, trusting(path))


async def test_model_directory(tmp_path: Path, classifier: LogisticRegression) -> None:
    skops.io.dump(classifier, tmp_path / "model.skops")
    async with loaded(tmp_path) as (_, signature):
        assert signature.inputs == (TensorSpec("input-0", "FP64", (-1, 4)),)
