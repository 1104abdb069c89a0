"""inspect_artifact on models made here: format checks, inference, signatures, and refusals."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import joblib
import pytest
import skops.io
import torch
from onnx import TensorProto, helper
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from predictors.examples import make_identity_onnx, make_mlp_onnx
from predictors.runtime import Signature
from predictors.runtimes.onnx import OnnxRuntime
from predictors.runtimes.pytorch import _TORCH_TYPES, TorchRuntime
from predictors.spec import ModelSpec, TrustPolicy
from serving.registry.inspect import _EXPORT_TYPES, Inspection, inspect_artifact
from serving.registry.types import InvalidArtifact

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit:DeprecationWarning")

MLP_SIGNATURE = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
}
EMBEDDED = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
}
PYTHON_MODEL = """
from predictors.python_model import PythonModel

class Helper:
    pass

class Echo(PythonModel):
    def predict(self, data, context):
        return data
"""


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class DictNet(torch.nn.Module):
    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scaled": x * 2, "count": (ids > 0).sum(dim=-1)}


class PairNet(torch.nn.Module):
    def forward(self, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return x * n, x.sum()


class Marker:
    """A pickle that makes a directory when it is loaded: inspection must never load it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.path),)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    paths = {"onnx": make_mlp_onnx(root / "model.onnx", (8, 16, 4))}
    paths["identity"] = make_identity_onnx(root / "identity.onnx")

    torch.manual_seed(0)
    net = Net().eval()
    example, batch = torch.randn(2, 4), torch.export.Dim("batch")
    paths["script"] = root / "script.pt"
    torch.jit.save(torch.jit.script(net), paths["script"])
    paths["traced"] = root / "traced.ts"
    torch.jit.save(torch.jit.trace(net, example), paths["traced"])
    paths["embedded"] = root / "embedded.pt"
    torch.jit.save(
        torch.jit.script(net), paths["embedded"], _extra_files={"servegate.json": json.dumps(EMBEDDED)}
    )
    paths["export"] = root / "net.pt2"
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}}), paths["export"])
    paths["dict"] = root / "dict.pt2"
    ids = torch.ones(2, 5, dtype=torch.int64)
    shapes = {"x": {0: batch}, "ids": {0: batch}}
    torch.export.save(torch.export.export(DictNet(), (example, ids), dynamic_shapes=shapes), paths["dict"])
    paths["constant"] = root / "constant.pt2"
    torch.export.save(torch.export.export(PairNet(), (example, 3)), paths["constant"])
    paths["state_dict"] = root / "weights.pt"
    torch.save(net.state_dict(), paths["state_dict"])

    x, y = load_iris(return_X_y=True)
    estimator = LogisticRegression(max_iter=500).fit(x, y)
    paths["joblib"] = root / "model.joblib"
    joblib.dump(estimator, paths["joblib"])
    for codec in ("zlib", "gzip", "bz2", "xz", "lzma"):
        paths[f"joblib_{codec}"] = root / f"{codec}.joblib"
        joblib.dump(estimator, paths[f"joblib_{codec}"], compress=(codec, 3))
    paths["pkl"] = root / "model.pkl"
    paths["pkl"].write_bytes(pickle.dumps(estimator))
    paths["skops"] = root / "model.skops"
    skops.io.dump(estimator, paths["skops"])

    paths["python"] = root / "model.py"
    paths["python"].write_text(PYTHON_MODEL)
    return paths


def copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def refused(path: Path, fmt: str | None = None, entry: str | None = None) -> str:
    with pytest.raises(InvalidArtifact) as info:
        inspect_artifact(path, fmt, entry)
    return str(info.value)


def runtime_signature(runtime_class: type, path: Path, fmt: str) -> dict[str, Any]:
    # The archives here are the test's own: trust their folder (a torch.export archive runs code).
    spec = ModelSpec(name="m", uri=str(path), format=fmt, trust=TrustPolicy(sources=(str(path.parent),)))
    signature: Signature = runtime_class(spec, path).load_blocking()
    return {
        "inputs": [spec.as_dict() for spec in signature.inputs],
        "outputs": [spec.as_dict() for spec in signature.outputs],
    }


# -- happy paths --------------------------------------------------------------------------------------


def test_onnx_signature(models: dict[str, Path]) -> None:
    assert inspect_artifact(models["onnx"], "onnx") == Inspection("onnx", MLP_SIGNATURE)


def test_onnx_signature_matches_the_runtime_for_every_datatype(models: dict[str, Path]) -> None:
    signature = inspect_artifact(models["identity"], "onnx").signature
    assert signature == runtime_signature(OnnxRuntime, models["identity"], "onnx")
    assert {spec["datatype"] for spec in signature["inputs"]} >= {"BYTES", "BF16", "FP16", "UINT64", "BOOL"}


def test_onnx_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "w")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        initializer=[weight],
    )
    path = tmp_path / "old.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert inspect_artifact(path).signature == {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
    }


def test_onnx_with_a_datatype_v2_lacks_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.COMPLEX64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.COMPLEX64, [2])],
    )
    path = tmp_path / "complex.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert "complex.onnx cannot be served: input 'x' has type COMPLEX64" in refused(path, "onnx")


@pytest.mark.parametrize("kind", ["script", "traced"])
def test_torchscript_has_no_signature(models: dict[str, Path], kind: str) -> None:
    assert inspect_artifact(models[kind], "pytorch") == Inspection("pytorch", None)


def test_torchscript_embedded_signature(models: dict[str, Path]) -> None:
    assert inspect_artifact(models["embedded"], "pytorch").signature == EMBEDDED
    assert runtime_signature(TorchRuntime, models["embedded"], "pytorch") == EMBEDDED


@pytest.mark.parametrize(
    ("embedded", "expected"),
    [
        (
            {"inputs": EMBEDDED["inputs"]},
            None,
        ),  # the runtime completes it from forward(), which takes loading
        ("{not json", "embedded.pt cannot be served: its servegate.json is not valid JSON"),
        (
            {"inputs": [{"name": "x", "datatype": "TEXT"}], "outputs": []},
            "embedded.pt cannot be served: servegate.json: inputs: 'x' has datatype 'TEXT'",
        ),
    ],
)
def test_torchscript_partial_or_bad_embedded_signature(
    tmp_path: Path, embedded: object, expected: str | None
) -> None:
    path = tmp_path / "embedded.pt"
    text = embedded if isinstance(embedded, str) else json.dumps(embedded)
    torch.jit.save(torch.jit.script(Net()), path, _extra_files={"servegate.json": text})
    if expected is None:
        assert inspect_artifact(path) == Inspection("pytorch", None)
    else:
        assert refused(path).startswith(expected)


@pytest.mark.parametrize(
    ("kind", "signature"),
    [
        (
            "export",
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}],
            },
        ),
        (
            "dict",
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "ids", "datatype": "INT64", "shape": [-1, 5]},
                ],
                "outputs": [
                    {"name": "scaled", "datatype": "FP32", "shape": [-1, 4]},
                    {"name": "count", "datatype": "INT64", "shape": [-1]},
                ],
            },
        ),
    ],
)
def test_torch_export_signature_matches_the_runtime(
    models: dict[str, Path], kind: str, signature: dict[str, Any]
) -> None:
    assert inspect_artifact(models[kind], "pytorch") == Inspection("pytorch", signature)
    assert runtime_signature(TorchRuntime, models[kind], "pytorch") == signature


def test_torch_export_dtype_table_agrees_with_the_runtime() -> None:
    from torch._export.serde.serialize import _TORCH_TO_SERIALIZE_DTYPE

    assert {
        _TORCH_TO_SERIALIZE_DTYPE[dtype].value: name for dtype, name in _TORCH_TYPES.items()
    } == _EXPORT_TYPES


def test_torch_export_with_a_constant_input_is_refused(models: dict[str, Path]) -> None:
    assert "input 'n' was exported as a constant" in refused(models["constant"], "pytorch")


@pytest.mark.parametrize(
    "kind", ["joblib", "pkl", "skops", *(f"joblib_{c}" for c in ("zlib", "gzip", "bz2", "xz", "lzma"))]
)
def test_sklearn_is_recognized_without_a_signature(models: dict[str, Path], kind: str) -> None:
    assert inspect_artifact(models[kind], "sklearn") == Inspection("sklearn", None)


def test_lz4_joblib_is_recognized_by_its_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(b"\x04\x22\x4d\x18" + os.urandom(64))
    assert inspect_artifact(path).format == "sklearn"


def test_old_pickle_protocols_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=0))
    assert "it starts like neither a pickle (protocol 2+) nor a joblib-compressed stream" in refused(path)


def test_pickles_are_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    for name in ("evil.pkl", "evil.joblib"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(Marker(marker)))
        assert inspect_artifact(path, "sklearn").format == "sklearn"
    assert not marker.exists()


def test_python_model(models: dict[str, Path]) -> None:
    assert inspect_artifact(models["python"], "python", "Echo") == Inspection("python", None, "Echo")
    assert inspect_artifact(models["python"], entry="Echo") == Inspection("python", None, "Echo")


@pytest.mark.parametrize(
    ("name", "kind", "fmt", "entry"),
    [
        ("ONNX", "onnx", "onnx", None),
        ("torch", "export", "pytorch", None),
        ("torchscript", "script", "pytorch", None),
        ("scikit-learn", "skops", "sklearn", None),
        ("custom", "python", "python", "Echo"),
    ],
)
def test_format_aliases(models: dict[str, Path], name: str, kind: str, fmt: str, entry: str | None) -> None:
    assert inspect_artifact(models[kind], name, entry) == inspect_artifact(models[kind], fmt, entry)
    assert inspect_artifact(models[kind], name, entry).format == fmt


# -- inference ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [
        ("onnx", "onnx"),
        ("script", "pytorch"),
        ("traced", "pytorch"),
        ("export", "pytorch"),
        ("joblib", "sklearn"),
        ("pkl", "sklearn"),
        ("skops", "sklearn"),
    ],
)
def test_format_inferred_from_the_name(models: dict[str, Path], kind: str, fmt: str) -> None:
    assert inspect_artifact(models[kind]) == inspect_artifact(models[kind], fmt)


@pytest.mark.parametrize(("kind", "fmt"), [("onnx", "onnx"), ("script", "pytorch"), ("export", "pytorch")])
def test_format_sniffed_when_the_name_does_not_say(
    models: dict[str, Path], tmp_path: Path, kind: str, fmt: str
) -> None:
    inspection = inspect_artifact(copy(models[kind], tmp_path / "model.bin"))
    assert inspection == inspect_artifact(models[kind], fmt)


def test_unknown_content_under_an_unknown_name(models: dict[str, Path], tmp_path: Path) -> None:
    message = refused(copy(models["joblib"], tmp_path / "model.bin"))
    assert "cannot tell the model format of model.bin" in message
    assert "pass --format (one of onnx, pytorch, sklearn, python)" in message


def test_directory_holding_a_model(models: dict[str, Path], tmp_path: Path) -> None:
    copy(models["onnx"], tmp_path / "flat" / "model.onnx")
    (tmp_path / "flat" / "README.md").write_text("notes")
    assert inspect_artifact(tmp_path / "flat") == Inspection("onnx", MLP_SIGNATURE)
    copy(models["export"], tmp_path / "versioned" / "1" / "model.pt2")
    assert inspect_artifact(tmp_path / "versioned", "pytorch").format == "pytorch"


# -- refusals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "name", "fmt", "expected"),
    [
        ("joblib", "model.joblib", "onnx", "model.joblib is not an ONNX model (--format onnx): "),
        ("export", "net.pt2", "onnx", "net.pt2 is not an ONNX model (--format onnx): "),
        ("skops", "model.skops", "onnx", "model.skops is not an ONNX model (--format onnx): "),
        (
            "onnx",
            "model.onnx",
            "pytorch",
            "not a TorchScript or torch.export model (--format pytorch): it is not a zip",
        ),
        ("joblib", "model.joblib", "pytorch", "it is not a zip archive"),
        (
            "skops",
            "model.skops",
            "pytorch",
            "a zip archive, but has neither torch.export's archive_format nor",
        ),
        ("state_dict", "weights.pt", "pytorch", "it is a torch.save() pickle"),
        ("onnx", "model.onnx", "sklearn", "reads only .skops, .joblib, .pkl and .pickle files"),
        ("onnx", "model.joblib", "sklearn", "(--format sklearn): it starts like neither a pickle"),
        ("script", "model.pkl", "sklearn", "it starts like neither a pickle"),
        ("script", "model.skops", "sklearn", "not a skops archive"),
        ("joblib", "model.skops", "sklearn", "not a skops archive"),
        ("onnx", "model.py", "python", "name the model class in model.py"),
    ],
)
def test_format_mismatch(
    models: dict[str, Path], tmp_path: Path, kind: str, name: str, fmt: str, expected: str
) -> None:
    assert expected in refused(copy(models[kind], tmp_path / name), fmt)


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("joblib", "model.onnx", "model.onnx is not an ONNX model (format inferred from its name): "),
        (
            "onnx",
            "model.pt",
            "model.pt is not a TorchScript or torch.export model (format inferred from its name)",
        ),
        ("onnx", "model.pkl", "model.pkl is not a scikit-learn model"),
    ],
)
def test_content_contradicts_the_name(
    models: dict[str, Path], tmp_path: Path, kind: str, name: str, expected: str
) -> None:
    assert expected in refused(copy(models[kind], tmp_path / name))


@pytest.mark.parametrize("name", ["model.onnx", "model.pt2", "model.joblib", "model.skops", "model.bin"])
@pytest.mark.parametrize("fmt", [None, "onnx", "pytorch", "sklearn"])
def test_garbage_is_refused(tmp_path: Path, name: str, fmt: str | None) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x13\x37 not a model at all " + bytes(range(256)))
    assert name in refused(path, fmt)


@pytest.mark.parametrize(("magic", "codec"), [(b"x", "zlib"), (b"\x1f\x8b", "gzip"), (b"BZ", "bz2")])
def test_garbage_behind_a_compression_magic_number(tmp_path: Path, magic: bytes, codec: str) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(magic + b"ZZZZ not compressed at all" * 4)
    assert f"it starts like a {codec} stream, but does not decompress" in refused(path)


def test_compressed_but_not_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(gzip.compress(b"hello, not a pickle"))
    assert "it is gzip-compressed, but what it holds is not a pickle" in refused(path)


@pytest.mark.parametrize("name", ["model.onnx", "model.pt", "model.joblib", "model.bin"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).touch()
    assert refused(tmp_path / name) == f"{tmp_path / name} is empty"


@pytest.mark.parametrize(
    ("name", "fmt", "entry"),
    [
        ("nope.onnx", None, None),
        ("nope.onnx", "onnx", None),
        ("nope.py", None, "Echo"),
        ("nope.py", "python", "Echo"),
    ],
)
def test_missing_path(tmp_path: Path, name: str, fmt: str | None, entry: str | None) -> None:
    assert refused(tmp_path / name, fmt, entry) == f"{tmp_path / name} does not exist"


def test_directory_without_a_model(tmp_path: Path) -> None:
    assert refused(tmp_path) == f"directory {tmp_path} is empty"
    (tmp_path / "notes.txt").write_text("hello")
    message = refused(tmp_path)
    assert message.startswith(f"no model file in {tmp_path}: expected a file named *.onnx, *.pt")


@pytest.mark.parametrize(
    ("source", "entry", "expected"),
    [
        (PYTHON_MODEL, None, "name the model class in model.py: a python model is one .py file"),
        (PYTHON_MODEL, "Missing", "model.py defines no top-level class 'Missing'; it defines Helper, Echo"),
        (
            "def make():\n    class Inner: pass\n",
            "Inner",
            "defines no top-level class 'Inner'; it defines none",
        ),
        ("class Echo(:\n", "Echo", "model.py is not valid Python: "),
        ("x = 1\x00\n", "Echo", "model.py is not valid Python: "),
    ],
)
def test_python_refusals(tmp_path: Path, source: str, entry: str | None, expected: str) -> None:
    path = tmp_path / "model.py"
    path.write_text(source)
    assert expected in refused(path, "python", entry)


def test_python_needs_a_py_file(models: dict[str, Path], tmp_path: Path) -> None:
    assert "is not a .py file" in refused(models["onnx"], "python", "Echo")
    assert "is not a .py file" in refused(tmp_path, "python", "Echo")


def test_entry_only_goes_with_python(models: dict[str, Path]) -> None:
    assert "goes only with python models" in refused(models["onnx"], "onnx", "Echo")


@pytest.mark.parametrize("fmt", ["tensorflow", "pmml", ""])
def test_unknown_format_name(models: dict[str, Path], fmt: str) -> None:
    message = refused(models["onnx"], fmt)
    assert message == f"unknown model format '{fmt}'; supported: onnx, pytorch, sklearn, python"


def test_triton_is_not_an_artifact_format(models: dict[str, Path]) -> None:
    assert refused(models["onnx"], "triton") == (
        "triton models are served by a Triton server; register the model files (onnx, pytorch, ...) instead"
    )
