"""The python runtime: user `PythonModel` subclasses loaded by import path, driven in process."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from predictors.python_model import Context
from predictors.runtime import RuntimeRequest, Signature
from predictors.runtimes import infer_format, runtime_class
from predictors.runtimes.python import PythonRuntime
from predictors.spec import ModelSpec, TrustPolicy
from serving.errors import InvalidInput, ModelFailure
from serving.protocol.types import TensorSpec

MODELS = "tests.python_models"

Loader = Callable[..., Any]


@pytest.fixture
async def runtimes() -> AsyncIterator[list[PythonRuntime]]:
    made: list[PythonRuntime] = []
    yield made
    for rt in made:
        await rt.unload()


@pytest.fixture
def make(runtimes: list[PythonRuntime]) -> Loader:
    """make(uri, **spec fields) -> an unloaded runtime, unloaded again at the end of the test."""

    def make(uri: str, **fields: Any) -> PythonRuntime:
        rt = PythonRuntime(ModelSpec(name="m", uri=uri, format="python", **fields), None)
        runtimes.append(rt)
        return rt

    return make


def x(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array(values, dtype=np.float32)}


def test_registered_as_the_python_format() -> None:
    assert runtime_class("python") is PythonRuntime
    assert infer_format(f"{MODELS}:Doubler") == "python"
    assert PythonRuntime.platform == "python"
    assert PythonRuntime.needs_artifact is False


async def test_sync_model_with_declared_signature_runs_in_a_worker_thread(make: Loader) -> None:
    rt = make(f"{MODELS}:Doubler", options={"factor": 3})
    signature = await rt.load()
    assert signature == Signature(
        inputs=(TensorSpec("x", "FP32", (-1,)),), outputs=(TensorSpec("y", "FP32", (-1,)),)
    )
    assert signature.batchable
    assert rt.model.loaded and rt.model.name == "m"

    out = await rt.infer(RuntimeRequest(inputs=x(1, 2)))

    np.testing.assert_array_equal(out["y"], np.array([3, 6], dtype=np.float32))
    assert rt.model.threads and rt.model.threads[0] != threading.get_ident()


async def test_async_model_runs_on_the_event_loop(make: Loader) -> None:
    rt = make(f"{MODELS}:AsyncDoubler")
    signature = await rt.load()
    assert signature == Signature(inputs=(), outputs=())
    assert rt.model.loaded

    out = await rt.infer(RuntimeRequest(inputs=x(1.5)))

    np.testing.assert_array_equal(out["y"], np.array([3.0], dtype=np.float32))
    assert rt.model.threads == [threading.get_ident()]


async def test_sync_predicts_run_in_parallel_up_to_instances(make: Loader) -> None:
    # Each predict blocks until two are running at once: one worker thread would time out.
    rt = make(f"{MODELS}:Rendezvous", instances=2, options={"parties": 2})
    await rt.load()
    outs = await asyncio.gather(rt.infer(RuntimeRequest(inputs=x(1))), rt.infer(RuntimeRequest(inputs=x(2))))
    assert [out["output-0"].tolist() for out in outs] == [[1.0], [2.0]]


async def test_preprocess_and_postprocess_and_str_outputs(make: Loader) -> None:
    rt = make(f"{MODELS}:Tokenizer")
    await rt.load()
    text = np.array([b"ab", "héllo".encode()], dtype=object)

    out = await rt.infer(RuntimeRequest(inputs={"text": text}))

    assert out["length"].dtype == np.int64
    assert out["length"].tolist() == [2, 5]
    assert out["upper"].dtype == object
    assert out["upper"].tolist() == [b"AB", "HÉLLO".encode()]


async def test_requested_outputs_are_filtered_and_unknown_ones_rejected(make: Loader) -> None:
    rt = make(f"{MODELS}:Tokenizer")
    await rt.load()
    text = {"text": np.array([b"ab"], dtype=object)}

    out = await rt.infer(RuntimeRequest(inputs=text, outputs=["upper"]))
    assert list(out) == ["upper"]

    with pytest.raises(InvalidInput, match="'nope'"):
        await rt.infer(RuntimeRequest(inputs=text, outputs=["upper", "nope"]))


async def test_context_carries_parameters_headers_and_requested_outputs(make: Loader) -> None:
    rt = make(f"{MODELS}:Recorder")
    await rt.load()

    await rt.infer(RuntimeRequest(inputs=x(1), parameters={"temperature": 0.5}, headers={"x-user": "ann"}))
    await rt.infer(RuntimeRequest(inputs=x(1), outputs=["out"]))

    assert rt.model.contexts == [
        Context(parameters={"temperature": 0.5}, headers={"x-user": "ann"}, outputs=None),
        Context(parameters={}, headers={}, outputs=("out",)),
    ]


@pytest.mark.parametrize(
    ("model", "value", "expected"),
    [
        ("Returns", np.arange(3), {"output-0": [0, 1, 2]}),
        ("Returns", [[1, 2]], {"output-0": [[1, 2]]}),
        ("Returns", "hi", {"output-0": b"hi"}),
        ("Returns", {"a": [1.5], "b": [b"x", "y"]}, {"a": [1.5], "b": [b"x", b"y"]}),
        ("ReturnsNamed", np.array([7]), {"total": [7]}),
        ("ReturnsPair", {"a": [1], "b": [2]}, {"a": [1], "b": [2]}),
    ],
)
async def test_results_are_normalised_to_named_arrays(
    make: Loader, model: str, value: Any, expected: dict[str, Any]
) -> None:
    rt = make(f"{MODELS}:{model}")
    await rt.load()

    out = await rt.infer(RuntimeRequest(inputs={}, parameters={"value": value}))

    assert {name: array.tolist() for name, array in out.items()} == expected
    assert all(isinstance(array, np.ndarray) for array in out.values())


@pytest.mark.parametrize(
    ("model", "value", "message"),
    [
        ("Returns", None, "returned None"),
        ("Returns", [[1, 2], [3]], "is not an array"),
        ("Returns", {1: [1]}, "not a str"),
        ("Returns", [object()], "BYTES outputs must hold str or bytes"),
        ("ReturnsPair", np.array([1]), "declares 2 outputs"),
    ],
)
async def test_bad_results_are_model_failures(make: Loader, model: str, value: Any, message: str) -> None:
    rt = make(f"{MODELS}:{model}")
    await rt.load()
    with pytest.raises(ModelFailure, match=message):
        await rt.infer(RuntimeRequest(inputs={}, parameters={"value": value}))


async def test_a_failing_predict_is_a_model_failure_naming_the_exception(make: Loader) -> None:
    rt = make(f"{MODELS}:FailingPredict")
    await rt.load()
    with pytest.raises(ModelFailure, match="predict of model 'm' failed: ValueError: boom"):
        await rt.infer(RuntimeRequest(inputs=x(1)))
    # A model may reject a request itself; that stays a client error.
    with pytest.raises(InvalidInput, match="x must be positive"):
        await rt.infer(RuntimeRequest(inputs=x(1), parameters={"invalid": True}))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"{MODELS}:FailingLoad", "load of model 'm' failed: RuntimeError: weights missing"),
        (f"{MODELS}:FailingInit", r"could not construct .*KeyError.*threshold"),
        (f"{MODELS}:NotAModel", "must subclass predictors.python_model.PythonModel"),
        (f"{MODELS}:not_a_class", "must subclass predictors.python_model.PythonModel"),
        (f"{MODELS}:NoPredict", "must override predict"),
        (f"{MODELS}:Missing", "AttributeError"),
        ("tests.no_such_module:Model", "ModuleNotFoundError"),
        ("no/such/file.py:Model", "does not exist"),
        ("tests.python_models", "must be 'package.module:ClassName'"),
        ("tests.python_models:1abc", "must be 'package.module:ClassName'"),
    ],
)
async def test_load_failures_are_model_failures(make: Loader, uri: str, message: str) -> None:
    with pytest.raises(ModelFailure, match=message):
        # Every source trusted: these failures come after the trust check (see test_trust.py).
        await make(uri, trust=TrustPolicy(trust_all=True)).load()


async def test_unload_calls_the_models_unload_and_stops_the_threads(make: Loader) -> None:
    rt = make(f"{MODELS}:Doubler")
    await rt.load()
    model = rt.model

    await rt.unload()

    assert model.unloaded
    assert rt.model is None
    with pytest.raises(ModelFailure):
        await rt.infer(RuntimeRequest(inputs=x(1)))


_MODEL_FILE = """
from predictors.python_model import PythonModel


class Model(PythonModel):
    def predict(self, data, context):
        return data["x"] + {increment}
"""


async def test_loads_a_class_from_a_file(make: Loader, tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(_MODEL_FILE.format(increment=1))
    rt = make(f"{tmp_path / 'm.py'}:Model", trust=TrustPolicy((str(tmp_path),)))
    assert await rt.load() == Signature(inputs=(), outputs=())

    out = await rt.infer(RuntimeRequest(inputs=x(1)))

    np.testing.assert_array_equal(out["output-0"], np.array([2], dtype=np.float32))
    module = type(rt.model).__module__
    assert module in sys.modules
    await rt.unload()
    assert module not in sys.modules


async def test_file_paths_are_relative_to_the_cwd_and_modules_are_not_shared(
    make: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for sub, increment in (("one", 1), ("two", 10)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "model.py").write_text(_MODEL_FILE.format(increment=increment))
    monkeypatch.chdir(tmp_path)
    trust = TrustPolicy(("one", "two/model.py"))  # relative, like the files: from the cwd
    one, two = make("one/model.py:Model", trust=trust), make("two/model.py:Model", trust=trust)
    await one.load()
    await two.load()

    assert (await one.infer(RuntimeRequest(inputs=x(0))))["output-0"].tolist() == [1]
    assert (await two.infer(RuntimeRequest(inputs=x(0))))["output-0"].tolist() == [10]
    assert type(one.model).__module__ != type(two.model).__module__


async def test_a_file_that_fails_to_import_is_a_model_failure(make: Loader, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import no_such_package_here\n")
    with pytest.raises(ModelFailure, match=r"could not import .*ModuleNotFoundError"):
        await make(f"{tmp_path / 'broken.py'}:Model", trust=TrustPolicy((str(tmp_path),))).load()
    assert not [name for name in sys.modules if name.startswith("servegate_model_broken")]
