"""The whole loop on sklearn's bundled digits (8x8 images, 10 classes): prepare the data, tune an MLP,
train the best configuration data-parallel, evaluate the exported model, register it with its
metrics, and deploy it to a running `servegate up` as a canary of the current production version.

    servegate pipeline run examples/digits_pipeline.py --param gateway=http://127.0.0.1:8080

Preprocessing is defined once: the standardizer fitted on the training data is a torch module that
training applies and the exported ONNX model contains, so the served model takes raw pixels and
transforms them exactly as training did (`evaluate` checks this on raw test data).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from serving.pipelines import Condition, Dataset, Input, Metrics, Model, Output, component, pipeline


def _save(path, x: np.ndarray, y: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz" to a bare path
        np.savez(f, x=x, y=y)


def _load(path) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    with np.load(path) as data:
        return data["x"], data["y"]


@component
def load_digits(test_fraction: float, seed: int, train: Output[Dataset], test: Output[Dataset]) -> int:
    """Split sklearn's bundled digits into train and test sets (raw pixels, 0-16)."""
    from sklearn.datasets import load_digits as digits
    from sklearn.model_selection import train_test_split

    x, y = digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32), y.astype(np.int64), test_size=test_fraction, random_state=seed, stratify=y
    )
    _save(train.path, x_train, y_train)
    _save(test.path, x_test, y_test)
    train.metadata.update(rows=len(x_train), features=x.shape[1], classes=10)
    test.metadata.update(rows=len(x_test))
    return len(x_train)


class Tuned(NamedTuple):
    lr: float
    hidden: int
    val_accuracy: float


def _fit(x: np.ndarray, y: np.ndarray, lr: float, hidden: int, epochs: int, workers: int, val, on_epoch=None):  # type: ignore[no-untyped-def]
    from serving.pipelines.preprocess import Standardizer
    from serving.pipelines.training import TrainConfig, mlp, train_classifier

    scaler = Standardizer.fit(x)
    config = TrainConfig(epochs=epochs, batch_size=64, lr=lr, workers=workers, seed=0)
    standardize = scaler.transform
    result = train_classifier(
        functools.partial(mlp, x.shape[1], (hidden,), 10),
        standardize(x),
        y,
        config,
        val=(standardize(val[0]), val[1]) if val is not None else None,
        on_epoch=on_epoch,
    )
    return scaler, result


@component
def tune_mlp(
    train: Input[Dataset], trials: int, parallel: int, epochs: int, report: Output[Metrics]
) -> Tuned:
    """Katib's job: TPE over the learning rate and hidden width, pruning poor trials early."""
    import torch
    from sklearn.model_selection import train_test_split

    from serving.pipelines.tuning import Choice, Float, tune

    torch.set_num_threads(1)
    x, y = _load(train.path)
    x_fit, x_val, y_fit, y_val = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)

    def objective(params: dict, reporter) -> float:  # type: ignore[no-untyped-def]
        def on_epoch(m) -> None:  # type: ignore[no-untyped-def]
            reporter.report(m.epoch, m.val_accuracy)

        _, result = _fit(x_fit, y_fit, params["lr"], params["hidden"], epochs, 1, (x_val, y_val), on_epoch)
        return result.final.val_accuracy

    space = {"lr": Float(1e-4, 3e-2, log=True), "hidden": Choice((16, 32, 64, 128))}
    result = tune(
        objective, space, method="tpe", trials=trials, parallel=parallel, early_stopping=True, seed=0
    )
    for trial in result.trials:
        print(f"trial {trial.number}: {trial.params} -> {trial.value} ({trial.state})")
    report.log_metric("best_val_accuracy", result.best_value)
    report.log_metric("trials", len(result.trials))
    report.log_metric("pruned", sum(t.state == "PRUNED" for t in result.trials))
    report.metadata["trial_log"] = result.as_dict()["trials"]
    return Tuned(float(result.best_params["lr"]), int(result.best_params["hidden"]), float(result.best_value))


@component
def train_mlp(
    train: Input[Dataset],
    lr: float,
    hidden: int,
    epochs: int,
    workers: int,
    model: Output[Model],
    metrics: Output[Metrics],
) -> float:
    """Train the tuned MLP data-parallel (gloo on CPU, nccl on GPUs) and export standardizer + MLP to ONNX."""
    import torch

    from serving.pipelines.preprocess import serving_model
    from serving.pipelines.training import export_onnx, mlp

    x, y = _load(train.path)
    scaler, result = _fit(x, y, lr, hidden, epochs, workers, val=None)
    net = mlp(x.shape[1], (hidden,), 10)
    net.load_state_dict(result.state_dict)
    model.path.mkdir(parents=True)
    export_onnx(serving_model(scaler, net).eval(), x.shape[1], model.path / "model.onnx")
    torch.save(result.state_dict, model.path / "weights.pt")
    for m in result.history:
        print(f"epoch {m.epoch}: train loss {m.train_loss:.4f}")
    metrics.log_metric("train_loss", result.final.train_loss)
    model.metadata.update(framework="onnx", lr=lr, hidden=hidden, epochs=epochs, workers=workers)
    return result.final.train_loss


@component
def evaluate(model: Input[Model], test: Input[Dataset], metrics: Output[Metrics]) -> float:
    """Accuracy of the exported ONNX model on raw test pixels: what the gateway will serve."""
    import onnxruntime as ort

    x, y = _load(test.path)
    session = ort.InferenceSession(str(model.path / "model.onnx"))
    predicted = session.run(["output"], {"input": x})[0].argmax(axis=1)
    accuracy = float((predicted == y).mean())
    metrics.log_metric("accuracy", accuracy)
    return accuracy


@component
def register(
    model: Input[Model],
    train: Input[Dataset],
    accuracy: float,
    lr: float,
    hidden: int,
    name: str,
    registry: str,
) -> str:
    """The model and its metrics into the registry, with this run and the training data's sha256."""
    from serving.pipelines.registration import register_model

    version = register_model(
        model,
        name,
        registry=registry,
        format="onnx",
        metrics={"accuracy": accuracy},
        params={"lr": lr, "hidden": hidden},
        dataset=train,
        description="MLP on sklearn digits, tuned and trained by examples/digits_pipeline.py",
    )
    print(f"registered {version.uri} (sha256 {version.sha256})")
    return version.uri


@component
def deploy(version: str, gateway: str, service: str, canary_percent: int) -> str:
    """Serve the version through the gateway: a canary of production (or production, the first time)."""
    from serving.pipelines.registration import deploy_canary

    if not gateway:
        return f"{version} registered; no gateway given, nothing deployed"
    done = deploy_canary(version, gateway, service, canary_percent=canary_percent)
    print(done)
    return done


@pipeline
def digits(
    gateway: str = "",
    model_name: str = "digits",
    service: str = "digits",
    trials: int = 8,
    parallel: int = 2,
    tune_epochs: int = 8,
    epochs: int = 20,
    workers: int = 2,
    min_accuracy: float = 0.9,
    canary_percent: int = 20,
):
    """Tune, train, evaluate, register and deploy an MLP on sklearn's digits."""
    data = load_digits(test_fraction=0.2, seed=0)
    tuned = tune_mlp(train=data.outputs["train"], trials=trials, parallel=parallel, epochs=tune_epochs)
    trained = train_mlp(
        train=data.outputs["train"],
        lr=tuned.outputs["lr"],
        hidden=tuned.outputs["hidden"],
        epochs=epochs,
        workers=workers,
    )
    scored = evaluate(model=trained.outputs["model"], test=data.outputs["test"])
    with Condition(scored.output >= min_accuracy):
        registered = register(
            model=trained.outputs["model"],
            train=data.outputs["train"],
            accuracy=scored.output,
            lr=tuned.outputs["lr"],
            hidden=tuned.outputs["hidden"],
            name=model_name,
            registry=gateway,
        )
        deploy(version=registered.output, gateway=gateway, service=service, canary_percent=canary_percent)
