"""Training in one process on sklearn's digits: convergence, determinism, checkpoints, exports, and
the preprocessing that travels with the exported model."""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from predictors.runtime import RuntimeRequest
from predictors.runtimes.pytorch import TorchRuntime
from predictors.spec import ModelSpec
from serving.pipelines.preprocess import Standardizer, serving_model
from serving.pipelines.training import (
    EpochMetrics,
    TrainConfig,
    evaluate,
    export_onnx,
    export_torchscript,
    mlp,
    train_classifier,
)
from serving.protocol.types import TensorSpec

# TorchScript is deprecated in torch 2.x but is one of the formats the serving side loads.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit:DeprecationWarning")

FAST = TrainConfig(epochs=5, lr=1e-2)


class Digits:
    """Raw digits split 75/25 (stratified), and the standardizer fitted on the training part."""

    def __init__(self) -> None:
        x, y = load_digits(return_X_y=True)
        self.x_train, self.x_val, self.y_train, self.y_val = train_test_split(
            x.astype(np.float32), y.astype(np.int64), test_size=0.25, random_state=0, stratify=y
        )
        self.pre = Standardizer.fit(self.x_train)
        self.train = (self.pre.transform(self.x_train), self.y_train)
        self.val = (self.pre.transform(self.x_val), self.y_val)


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits()


#: the 64-32-10 MLP, as a picklable model_fn.
MLP = functools.partial(mlp, 64, (32,), 10)


def trained(state: dict[str, torch.Tensor]) -> nn.Module:
    model = MLP()
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def model(digits: Digits) -> nn.Module:
    return trained(train_classifier(MLP, *digits.train, FAST, val=digits.val).state_dict)


def logits(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# -- preprocessing --------------------------------------------------------------------------------


def test_standardizer_centres_and_scales(digits: Digits) -> None:
    z = digits.train[0]
    varying = digits.x_train.std(axis=0) > 0
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0)[varying], 1, rtol=1e-4)
    assert set(digits.pre.state_dict()) == {"mean", "std"}
    assert not list(digits.pre.parameters())  # statistics, not weights an optimizer would move


def test_constant_feature_keeps_its_scale() -> None:
    pre = Standardizer.fit(np.array([[0.0, 1.0], [0.0, 3.0]]))
    # The first feature never varied: a request where it does is shifted, not blown up by 1/eps.
    np.testing.assert_allclose(pre.transform(np.array([[5.0, 2.0]])), [[5.0, 0.0]])


def test_standardizer_needs_rows() -> None:
    with pytest.raises(ValueError, match="non-empty 2-D"):
        Standardizer.fit(np.zeros((0, 3)))


# -- training -------------------------------------------------------------------------------------


def test_mlp_layers() -> None:
    net = mlp(64, (32, 16), 10)
    assert [m.out_features for m in net if isinstance(m, nn.Linear)] == [32, 16, 10]
    assert net(torch.zeros(3, 64)).shape == (3, 10)
    assert len(mlp(64, (), 10)) == 1  # no hidden layer: multinomial logistic regression


def test_mlp_learns_digits(digits: Digits) -> None:
    seen: list[EpochMetrics] = []
    result = train_classifier(MLP, *digits.train, FAST, val=digits.val, on_epoch=seen.append)
    assert [m.epoch for m in result.history] == [1, 2, 3, 4, 5]
    assert seen == result.history
    assert result.final.val_accuracy > 0.9
    assert result.history[0].train_loss > result.final.train_loss
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    # The reported metrics are the returned weights' metrics.
    metrics = evaluate(trained(result.state_dict), *digits.val)
    assert metrics["accuracy"] == pytest.approx(result.final.val_accuracy)
    assert metrics["loss"] == pytest.approx(result.final.val_loss, rel=1e-5)


def test_without_validation_data_only_training_loss(digits: Digits) -> None:
    result = train_classifier(MLP, *digits.train, TrainConfig(epochs=1, optimizer="sgd"))
    assert result.final.val_loss is None and result.final.val_accuracy is None
    assert np.isfinite(result.final.train_loss)


def test_same_seed_same_weights(digits: Digits) -> None:
    config = TrainConfig(epochs=2, seed=7)
    first = train_classifier(MLP, *digits.train, config).state_dict
    again = train_classifier(MLP, *digits.train, config).state_dict
    other = train_classifier(MLP, *digits.train, TrainConfig(epochs=2, seed=8)).state_dict
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_resume_runs_only_the_missing_epochs(digits: Digits, tmp_path: Path) -> None:
    first = train_classifier(
        MLP, *digits.train, TrainConfig(epochs=3, checkpoint_dir=tmp_path), val=digits.val
    )
    seen: list[int] = []
    resumed = train_classifier(
        MLP,
        *digits.train,
        TrainConfig(epochs=5, checkpoint_dir=tmp_path),
        val=digits.val,
        on_epoch=lambda m: seen.append(m.epoch),
    )
    assert seen == [4, 5]
    assert [m.epoch for m in resumed.history] == [1, 2, 3, 4, 5]
    assert resumed.history[:3] == first.history
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"epoch-{n:04d}.pt" for n in range(1, 6)]
    # Model, optimizer and every epoch's randomness are restored: the same weights as one long run.
    straight = train_classifier(MLP, *digits.train, TrainConfig(epochs=5)).state_dict
    assert all(torch.equal(straight[k], resumed.state_dict[k]) for k in straight)
    # Nothing left to train: the checkpoint's weights and history come back, no epoch is reported.
    done = train_classifier(
        MLP, *digits.train, TrainConfig(epochs=5, checkpoint_dir=tmp_path), on_epoch=seen.append
    )
    assert seen == [4, 5] and done.history == resumed.history
    assert all(torch.equal(done.state_dict[k], resumed.state_dict[k]) for k in straight)


def test_on_epoch_raising_stops_training(digits: Digits, tmp_path: Path) -> None:
    def stop_at_2(metrics: EpochMetrics) -> None:
        if metrics.epoch == 2:
            raise StopIteration("enough")

    with pytest.raises(StopIteration, match="enough"):
        train_classifier(
            MLP, *digits.train, TrainConfig(epochs=5, checkpoint_dir=tmp_path), on_epoch=stop_at_2
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]


# -- export ---------------------------------------------------------------------------------------


def test_onnx_export_carries_the_preprocessing(digits: Digits, model: nn.Module, tmp_path: Path) -> None:
    path = export_onnx(serving_model(digits.pre, model), n_features=64, path=tmp_path / "digits.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("input", "output")
    assert isinstance(inp.shape[0], str) and inp.shape[1] == 64  # any batch size

    # Raw pixels in; the training-time pipeline (standardize, then the model) as the reference.
    (served,) = session.run(None, {"input": digits.x_val})
    expected = logits(model, digits.val[0])
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-4)
    assert (served.argmax(1) == expected.argmax(1)).all()
    assert (served.argmax(1) == digits.y_val).mean() > 0.9


async def test_torchscript_round_trip_through_the_serving_runtime(
    digits: Digits, model: nn.Module, tmp_path: Path
) -> None:
    pipeline = serving_model(digits.pre, model)
    path = export_torchscript(pipeline, tmp_path / "digits.pt", n_features=64)
    expected = logits(pipeline, digits.x_val)
    np.testing.assert_allclose(
        logits(torch.jit.load(str(path)), digits.x_val), expected, rtol=1e-5, atol=1e-6
    )

    runtime = TorchRuntime(ModelSpec(name="digits", uri=str(path), format="pytorch"), path)
    signature = await runtime.load()
    try:
        assert signature.inputs == (TensorSpec("input", "FP32", (-1, 64)),)
        assert signature.outputs == (TensorSpec("output", "FP32", (-1, 10)),)
        assert signature.batchable
        result = await runtime.infer(RuntimeRequest(inputs={"input": digits.x_val[:7]}))
    finally:
        await runtime.unload()
    np.testing.assert_allclose(result["output"], expected[:7], rtol=1e-5, atol=1e-6)


def test_torchscript_without_n_features_embeds_no_signature(model: nn.Module, tmp_path: Path) -> None:
    path = export_torchscript(model, tmp_path / "bare.pt")
    with zipfile.ZipFile(path) as archive:
        assert not [name for name in archive.namelist() if name.endswith("servegate.json")]
    assert torch.jit.load(str(path))(torch.zeros(2, 64)).shape == (2, 10)


def test_exports_leave_the_model_alone(model: nn.Module, tmp_path: Path) -> None:
    model.train()
    try:
        export_onnx(model, 64, tmp_path / "m.onnx")
        export_torchscript(model, tmp_path / "m.pt", n_features=64)
        assert model.training
    finally:
        model.eval()
    extra = {"servegate.json": ""}
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["servegate.json"])["inputs"][0]["name"] == "input"


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"backend": "mpi"}, "unknown backend 'mpi'"),
        ({"device": "tpu"}, "invalid device 'tpu'"),
    ],
)
def test_bad_config(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


def _never_called() -> nn.Module:
    raise AssertionError("model_fn ran: the input should have been refused first")


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((4, 64), np.float32), np.zeros(3, np.int64), "x has 4 rows but y has 3 labels"),
        (np.zeros((0, 64), np.float32), np.zeros(0, np.int64), "no data"),
        (np.zeros(64, np.float32), np.zeros(1, np.int64), "x must be 2-D"),
        (np.zeros((4, 64), np.float32), np.zeros(4, np.float32), "class indices"),
        (np.zeros((4, 64), np.float32), -np.ones(4, np.int64), "class indices"),
    ],
)
def test_bad_data(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        train_classifier(_never_called, x, y, TrainConfig())


def test_bad_validation_data() -> None:
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="validation data has 8 features, training data 64"):
        train_classifier(_never_called, x, y, TrainConfig(), val=(np.zeros((2, 8), np.float32), y[:2]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("config", [TrainConfig(workers=2, backend="nccl"), TrainConfig(device="cuda")])
def test_cuda_asked_for_without_cuda(config: TrainConfig) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        train_classifier(_never_called, np.zeros((4, 64), np.float32), np.zeros(4, np.int64), config)


def test_workers_need_a_picklable_model_fn() -> None:
    with pytest.raises(ValueError, match="model_fn must be picklable"):
        train_classifier(
            lambda: MLP(), np.zeros((4, 64), np.float32), np.zeros(4, np.int64), TrainConfig(workers=2)
        )
    # A partial of a module-level function is fine (it is refused here for its data, not for pickling).
    with pytest.raises(ValueError, match="no data"):
        train_classifier(MLP, np.zeros((0, 64)), np.zeros(0, np.int64), TrainConfig(workers=2))
