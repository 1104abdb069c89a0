"""Data-parallel training with real worker processes (gloo on CPU): convergence against one process,
`on_epoch` in the parent, early stopping and resume, and failing workers that must not hang."""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from serving.pipelines.training import EpochMetrics, TrainConfig, WorkerFailed, mlp, train_classifier
from tests.training_data import digits_split

pytestmark = pytest.mark.integration

#: 8 epochs at lr 1e-2: two workers take half the steps per epoch (the batch is per worker).
CONFIG = TrainConfig(epochs=8, lr=1e-2, workers=2)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return digits_split()


@pytest.fixture(autouse=True)
def no_children_left() -> Iterator[None]:
    yield
    assert multiprocessing.active_children() == []


#: the 64-32-10 MLP; the workers unpickle it without importing this module.
MLP = functools.partial(mlp, 64, (32,), 10)


def fails_on_rank_1() -> nn.Module:
    if os.environ["RANK"] == "1":
        raise ValueError("rank 1 cannot build its model")
    return MLP()


def killed_on_rank_1() -> nn.Module:
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    return MLP()


class StopTraining(Exception):
    pass


def test_two_workers_converge_like_one(digits: tuple[np.ndarray, ...]) -> None:
    x, y, x_val, y_val = digits
    single = train_classifier(MLP, x, y, TrainConfig(epochs=8, lr=1e-2), val=(x_val, y_val))

    calls: list[tuple[int, int]] = []
    parallel = train_classifier(
        MLP, x, y, CONFIG, val=(x_val, y_val), on_epoch=lambda m: calls.append((m.epoch, os.getpid()))
    )
    assert calls == [(epoch, os.getpid()) for epoch in range(1, 9)]  # each epoch once, in this process
    assert [m.epoch for m in parallel.history] == list(range(1, 9))
    assert single.final.val_accuracy > 0.9 and parallel.final.val_accuracy > 0.9
    assert abs(single.final.val_accuracy - parallel.final.val_accuracy) < 0.03
    assert set(parallel.state_dict) == set(single.state_dict)


def test_on_epoch_stops_every_worker_and_training_resumes(
    digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    x, y, x_val, y_val = digits
    config = TrainConfig(epochs=4, lr=1e-2, workers=2, checkpoint_dir=tmp_path)

    def stop_at_2(metrics: EpochMetrics) -> None:
        if metrics.epoch == 2:
            raise StopTraining("val accuracy is good enough")

    with pytest.raises(StopTraining, match="good enough"):
        train_classifier(MLP, x, y, config, val=(x_val, y_val), on_epoch=stop_at_2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]

    seen: list[int] = []
    resumed = train_classifier(MLP, x, y, config, val=(x_val, y_val), on_epoch=lambda m: seen.append(m.epoch))
    assert seen == [3, 4]
    assert [m.epoch for m in resumed.history] == [1, 2, 3, 4]


def test_a_failing_worker_fails_the_call(digits: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = digits
    started = time.monotonic()
    with pytest.raises(ValueError, match="rank 1 cannot build its model") as info:
        train_classifier(fails_on_rank_1, x, y, CONFIG)
    assert time.monotonic() - started < 30
    assert "(raised in training worker rank 1)" in info.value.__notes__
    assert "fails_on_rank_1" in str(info.value.__cause__)  # the worker's traceback


def test_a_killed_worker_fails_the_call(digits: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = digits
    started = time.monotonic()
    with pytest.raises(Exception) as info:  # which rank notices first varies
        train_classifier(killed_on_rank_1, x, y, CONFIG)
    assert time.monotonic() - started < 30
    assert isinstance(info.value, WorkerFailed) or any(
        "train-rank-1 was killed by signal 9" in note for note in getattr(info.value, "__notes__", [])
    )
