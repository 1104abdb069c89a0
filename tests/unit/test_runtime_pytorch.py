"""TorchRuntime on TorchScript and torch.export archives made here, checked against the modules."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch

from predictors.runtime import RuntimeRequest, Signature
from predictors.runtimes.pytorch import TorchRuntime
from predictors.spec import ModelSpec, TrustPolicy
from serving.errors import InvalidInput, ModelFailure
from serving.protocol.types import TensorSpec

# TorchScript is deprecated in torch 2.x but still what many model zoos ship.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit:DeprecationWarning")

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [
        {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "probs", "datatype": "FP32", "shape": [-1, 3]},
    ],
}


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.linear(x)
        return logits, torch.softmax(logits, dim=-1)


class DictNet(torch.nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"masked": x * mask, "any": mask.any(dim=-1)}


class Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@pytest.fixture(scope="module")
def net() -> Net:
    return Net().eval()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory, net: Net) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("torch")
    example = torch.randn(2, 4)
    batch = torch.export.Dim("batch")
    paths = {
        "script": root / "script.pt",
        "traced": root / "traced.ts",
        "embedded": root / "embedded.pt",
        "export": root / "net.pt2",
        "dict": root / "dict.pt2",
        "bf16": root / "bf16.pt2",
        "bf16_script": root / "bf16.pt",
    }
    torch.jit.save(torch.jit.script(net), paths["script"])
    torch.jit.save(torch.jit.trace(net, example), paths["traced"])
    torch.jit.save(
        torch.jit.script(net), paths["embedded"], _extra_files={"servegate.json": json.dumps(SIGNATURE)}
    )
    torch.export.save(torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}}), paths["export"])
    mask = torch.ones(2, 4, dtype=torch.bool)
    program = torch.export.export(
        DictNet(), (example, mask), dynamic_shapes={"x": {0: batch}, "mask": {0: batch}}
    )
    torch.export.save(program, paths["dict"])
    bf16 = torch.ones(2, 3, dtype=torch.bfloat16)
    torch.export.save(torch.export.export(Double(), (bf16,), dynamic_shapes={"x": {0: batch}}), paths["bf16"])
    bf16_signature = {
        "inputs": [{"name": "x", "datatype": "BF16", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "BF16", "shape": [-1, 3]}],
    }
    torch.jit.save(
        torch.jit.script(Double()),
        paths["bf16_script"],
        _extra_files={"servegate.json": json.dumps(bf16_signature)},
    )
    return paths


def _spec(path: Path, **fields: object) -> ModelSpec:
    """The artifact's own path trusted, unless the test says otherwise: torch.export archives need it
    (test_trust.py checks the refusal)."""
    fields.setdefault("trust", TrustPolicy((str(path),)))
    return ModelSpec(name="net", uri=str(path), format="pytorch", **fields)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def loaded(path: Path, **spec: object) -> AsyncIterator[tuple[TorchRuntime, Signature]]:
    runtime = TorchRuntime(_spec(path, **spec), path)
    signature = await runtime.load()
    try:
        yield runtime, signature
    finally:
        await runtime.unload()


async def load_fails(path: Path, **spec: object) -> str:
    runtime = TorchRuntime(_spec(path, **spec), path)
    try:
        with pytest.raises(ModelFailure) as info:
            await runtime.load()
    finally:
        await runtime.unload()
    return info.value.message


def expected(net: Net, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits, probs = net(torch.from_numpy(x))
    return logits.numpy(), probs.numpy()


def rows(n: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)


@pytest.mark.parametrize("kind", ["script", "traced"])
async def test_torchscript_without_signature_declares_any_shape(
    artifacts: dict[str, Path], net: Net, kind: str
) -> None:
    async with loaded(artifacts[kind]) as (runtime, signature):
        assert signature.inputs == (TensorSpec("x", "FP32", ()),)
        assert signature.outputs == (
            TensorSpec("output__0", "FP32", ()),
            TensorSpec("output__1", "FP32", ()),
        )
        assert not signature.batchable
        x = rows(5)
        result = await runtime.infer(RuntimeRequest(inputs={"x": x}))
    logits, probs = expected(net, x)
    assert set(result) == {"output__0", "output__1"}
    np.testing.assert_allclose(result["output__0"], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["output__1"], probs, rtol=1e-5, atol=1e-6)


async def test_torchscript_embedded_signature(artifacts: dict[str, Path], net: Net) -> None:
    async with loaded(artifacts["embedded"]) as (runtime, signature):
        assert signature.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
        assert [spec.name for spec in signature.outputs] == ["logits", "probs"]
        assert signature.batchable
        x = rows(3)
        result = await runtime.infer(RuntimeRequest(inputs={"x": x}, outputs=["probs"]))
    assert list(result) == ["probs"]
    np.testing.assert_allclose(result["probs"], expected(net, x)[1], rtol=1e-5, atol=1e-6)


async def test_signature_option_overrides_the_embedded_one(artifacts: dict[str, Path]) -> None:
    option = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4]}],
        "outputs": [{"name": "a", "datatype": "FP32"}, {"name": "b", "datatype": "FP32"}],
    }
    async with loaded(artifacts["embedded"], options={"signature": option}) as (_, signature):
        assert signature.inputs == (TensorSpec("x", "FP32", (2, 4)),)
        assert signature.outputs == (TensorSpec("a", "FP32", ()), TensorSpec("b", "FP32", ()))


@pytest.mark.parametrize(
    ("option", "complaint"),
    [
        ({"inputs": [{"name": "y", "datatype": "FP32"}]}, "does not take"),
        ({"outputs": [{"name": "only", "datatype": "FP32"}]}, "returns 2"),
        ({"inputs": [{"name": "x", "datatype": "BYTES"}]}, "torch cannot take"),
        ({"inputs": [{"name": "x", "shape": "any"}]}, "shape"),
        (["x"], "must be an object"),
    ],
)
async def test_bad_signature_option_fails_the_load(
    artifacts: dict[str, Path], option: object, complaint: str
) -> None:
    assert complaint in await load_fails(artifacts["script"], options={"signature": option})


async def test_export_signature_comes_from_the_program(artifacts: dict[str, Path], net: Net) -> None:
    async with loaded(artifacts["export"], threads=2) as (runtime, signature):
        assert signature.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
        assert signature.outputs == (
            TensorSpec("output__0", "FP32", (-1, 3)),
            TensorSpec("output__1", "FP32", (-1, 3)),
        )
        assert signature.batchable
        assert runtime.platform == "pytorch_libtorch"
        # Read-only, as arrays decoded from the wire are.
        x = np.frombuffer(rows(7).tobytes(), dtype=np.float32).reshape(7, 4)
        result = await runtime.infer(RuntimeRequest(inputs={"x": x}))
        subset = await runtime.infer(RuntimeRequest(inputs={"x": x}, outputs=["output__1"]))
    logits, probs = expected(net, x.copy())
    np.testing.assert_allclose(result["output__0"], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["output__1"], probs, rtol=1e-5, atol=1e-6)
    assert list(subset) == ["output__1"]


async def test_export_dict_outputs_keep_their_keys(artifacts: dict[str, Path]) -> None:
    async with loaded(artifacts["dict"]) as (runtime, signature):
        assert signature.inputs == (
            TensorSpec("x", "FP32", (-1, 4)),
            TensorSpec("mask", "BOOL", (-1, 4)),
        )
        assert signature.outputs == (
            TensorSpec("masked", "FP32", (-1, 4)),
            TensorSpec("any", "BOOL", (-1,)),
        )
        x = rows(3)
        mask = np.array([[True] * 4, [False] * 4, [True, False, False, False]])
        result = await runtime.infer(RuntimeRequest(inputs={"x": x, "mask": mask}))
    np.testing.assert_array_equal(result["masked"], x * mask)
    np.testing.assert_array_equal(result["any"], [True, False, True])
    assert result["any"].dtype == np.bool_


@pytest.mark.parametrize("kind", ["bf16", "bf16_script"])
async def test_bf16_round_trip(artifacts: dict[str, Path], kind: str) -> None:
    async with loaded(artifacts[kind]) as (runtime, signature):
        assert signature.inputs[0].datatype == "BF16"
        assert signature.outputs[0].datatype == "BF16"
        x = np.array([[1.5, -2.25, 3.0], [0.0078125, 256.0, -1.0]], dtype=ml_dtypes.bfloat16)
        result = await runtime.infer(RuntimeRequest(inputs={"x": x}))
    (output,) = result.values()
    assert output.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(output.astype(np.float32), x.astype(np.float32) * 2)


async def test_bytes_input_is_invalid(artifacts: dict[str, Path]) -> None:
    async with loaded(artifacts["script"]) as (runtime, _):
        with pytest.raises(InvalidInput, match="BYTES"):
            await runtime.infer(RuntimeRequest(inputs={"x": np.array([b"a", b"b"], dtype=object)}))


async def test_unknown_requested_output_is_invalid(artifacts: dict[str, Path]) -> None:
    async with loaded(artifacts["export"]) as (runtime, _):
        with pytest.raises(InvalidInput, match="unknown output"):
            await runtime.infer(RuntimeRequest(inputs={"x": rows(1)}, outputs=["nope"]))


async def test_export_archive_is_recognised_by_its_layout(artifacts: dict[str, Path], tmp_path: Path) -> None:
    renamed = tmp_path / "model.pt"
    shutil.copy(artifacts["export"], renamed)
    async with loaded(tmp_path) as (_, signature):  # a directory: model_file() finds model.pt
        assert signature.inputs == (TensorSpec("x", "FP32", (-1, 4)),)


@pytest.mark.parametrize("name", ["model.pt", "model.pt2"])
async def test_corrupt_file_fails_the_load(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"definitely not a zip archive")
    message = await load_fails(path)
    assert name in message


async def test_truncated_archive_fails_the_load(artifacts: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(artifacts["script"].read_bytes()[:2000])
    assert "model.pt" in await load_fails(path)


async def test_torch_save_pickle_is_refused(tmp_path: Path, net: Net) -> None:
    path = tmp_path / "model.pth"
    torch.save(net.state_dict(), path)
    assert "torch.save() pickle" in await load_fails(path)


async def test_cuda_without_cuda_fails_the_load(artifacts: dict[str, Path]) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "no CUDA" in await load_fails(artifacts["export"], options={"device": "cuda"})


async def test_unknown_device_fails_the_load(artifacts: dict[str, Path]) -> None:
    assert "unknown device" in await load_fails(artifacts["export"], options={"device": "tpu"})
