"""Data-parallel training with its workers on the shared multi-node Ray cluster (gloo on CPU): ranks
on different nodes, results like local workers, `on_epoch` and checkpoints on the driver, resume,
and failing or dying workers that fail the run with the rank and node named, leaving nothing behind."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch import nn

from serving.pipelines import _ray_distributed
from serving.pipelines.training import EpochMetrics, TrainConfig, WorkerFailed, mlp, train_classifier
from serving.raycluster import RayUnavailable
from tests.ray_cluster import RayTestCluster
from tests.training_data import digits_split

pytestmark = pytest.mark.integration

#: as the local DDP tests train, on Ray (CPU workers: the cluster's GPUs are logical ones).
CONFIG = TrainConfig(epochs=8, lr=1e-2, workers=2, placement="ray", device="cpu")
#: for runs that fail at the first epoch or before.
SHORT = dataclasses.replace(CONFIG, epochs=2)


#: the 64-32-10 MLP; the workers unpickle it without importing this module.
MLP = functools.partial(mlp, 64, (32,), 10)


def fails_on_rank_1() -> nn.Module:
    if os.environ["RANK"] == "1":
        raise ValueError("rank 1 cannot build its model")
    return MLP()


class StopTraining(Exception):
    pass


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return digits_split()


@pytest.fixture(autouse=True)
def nothing_left(ray_driver: RayTestCluster) -> Iterator[None]:
    """No training actor and no placement group outlives a call, however it ended."""
    yield
    import ray

    actors = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    assert [name for name in actors if name.startswith("servegate-train")] == []
    groups = ray.util.placement_group_table().values()
    assert [
        g["state"] for g in groups if g["name"].startswith("servegate-train") and g["state"] != "REMOVED"
    ] == []


def rank_actor(rank: int) -> Any:  # a Ray actor handle
    """The live actor of `rank` of the (one) run in progress."""
    import ray

    (found,) = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("servegate-train-") and a["name"].endswith(f"-rank-{rank}")
    ]
    return ray.get_actor(found["name"], namespace=found["namespace"])


def wait_until_gone(actor: Any) -> None:
    import ray

    for _ in range(600):
        try:
            ray.get(actor.ping.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.1)
    raise AssertionError(f"{actor} is still there")


def test_two_workers_on_two_nodes_train_stop_and_resume_like_local_workers(
    ray_driver: RayTestCluster, digits: tuple[np.ndarray, ...], tmp_path: Path
) -> None:
    import ray

    x, y, x_val, y_val = digits
    local = train_classifier(MLP, x, y, dataclasses.replace(CONFIG, placement="local"), val=(x_val, y_val))
    config = dataclasses.replace(CONFIG, checkpoint_dir=tmp_path)

    seen: list[tuple[int, int, list[str]]] = []

    def stop_at_4(metrics: EpochMetrics) -> None:  # runs here, with the epoch's checkpoint already here
        seen.append((metrics.epoch, os.getpid(), sorted(p.name for p in tmp_path.iterdir())))
        if metrics.epoch == 4:
            raise StopTraining("enough for now")

    with pytest.raises(StopTraining, match="enough for now"):
        train_classifier(MLP, x, y, config, val=(x_val, y_val), on_epoch=stop_at_4)
    assert seen == [
        (epoch, os.getpid(), [f"epoch-{e:04d}.pt" for e in range(1, epoch + 1)]) for epoch in range(1, 5)
    ]

    # The workers have no copy of tmp_path: they resume from the checkpoint the driver sends them.
    seen.clear()
    result = train_classifier(MLP, x, y, config, val=(x_val, y_val), on_epoch=lambda m: seen.append(m.epoch))
    assert seen == [5, 6, 7, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"epoch-{e:04d}.pt" for e in range(1, 9)]

    alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(result.nodes) == 2 and len(set(result.nodes)) == 2 and set(result.nodes) <= alive
    assert local.nodes == []
    assert [m.epoch for m in result.history] == [m.epoch for m in local.history] == list(range(1, 9))
    assert result.final.val_accuracy > 0.9
    assert abs(result.final.val_accuracy - local.final.val_accuracy) < 0.03
    assert set(result.state_dict) == set(local.state_dict)


def test_a_failing_worker_fails_the_call(ray_driver: RayTestCluster, digits: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = digits
    with pytest.raises(ValueError, match="rank 1 cannot build its model") as info:
        train_classifier(fails_on_rank_1, x, y, SHORT)
    assert any(note.startswith("(raised in training worker rank 1 on node ") for note in info.value.__notes__)
    assert "fails_on_rank_1" in str(info.value.__cause__)  # the worker's traceback


def test_a_killed_worker_fails_the_call(ray_driver: RayTestCluster, digits: tuple[np.ndarray, ...]) -> None:
    import ray

    x, y, _, _ = digits

    def kill_rank_1(metrics: EpochMetrics) -> None:
        ray.kill(rank_actor(1))  # the workers wait for this to return: rank 0 then finds rank 1 gone

    with pytest.raises(WorkerFailed, match=r"^training worker 1 on node [0-9a-f]+ died: .*ray\.kill"):
        train_classifier(MLP, x, y, SHORT, on_epoch=kill_rank_1)


def test_a_worker_whose_node_leaves_fails_the_call(
    ray_driver: RayTestCluster, digits: tuple[np.ndarray, ...]
) -> None:
    import ray

    x, y, _, _ = digits
    labels = {ray_driver.node_id(label): label for label in ray_driver.workers}
    removed: list[tuple[int, str]] = []

    with contextlib.ExitStack() as stack:

        def remove_a_node(metrics: EpochMetrics) -> None:
            if removed:
                return
            # Two ranks on two of the three nodes: at least one is on a worker node (not the head).
            nodes = {rank: ray.get(rank_actor(rank).where.remote())[0] for rank in (1, 0)}
            rank, node = next((rank, node) for rank, node in nodes.items() if node in labels)
            actor = rank_actor(rank)
            stack.enter_context(ray_driver.replace_node(labels[node]))  # put back after the test
            ray_driver.remove_worker(labels[node])
            removed.append((rank, node))
            # The node's worker processes exit when they notice that their raylet is gone; a machine
            # that fails takes them with it. Hold the epoch until then, so the next one finds it so.
            wait_until_gone(actor)

        with pytest.raises(WorkerFailed) as info:
            train_classifier(MLP, x, y, CONFIG, on_epoch=remove_a_node)
    ((rank, node),) = removed
    assert str(info.value).startswith(f"training worker {rank} on node {node} ")


def test_a_cluster_without_room_fails_the_call(
    ray_driver: RayTestCluster, digits: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ray_distributed, "PLACEMENT_TIMEOUT_S", 1.0)
    x, y, _, _ = digits
    gpu_workers = dataclasses.replace(CONFIG, workers=3, device="cuda")  # the cluster has two GPUs
    with pytest.raises(TimeoutError, match=r"no room for 3 training workers \({'GPU': 1, 'CPU': 1} each\)"):
        train_classifier(MLP, x, y, gpu_workers)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"placement": "kubernetes"}, "unknown placement 'kubernetes'"),
        ({"ray_address": "10.0.0.1:6379"}, "ray_address '10.0.0.1:6379' is for placement 'ray'"),
    ],
)
def test_bad_placement_settings_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


def test_a_ray_device_is_a_kind_not_an_index(
    ray_driver: RayTestCluster, digits: tuple[np.ndarray, ...]
) -> None:
    x, y, _, _ = digits
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        train_classifier(MLP, x, y, dataclasses.replace(CONFIG, device="cuda:1"))


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-port"])
def test_a_bad_ray_address_fails_at_once(address: str, digits: tuple[np.ndarray, ...]) -> None:
    x, y, _, _ = digits
    with pytest.raises(RayUnavailable, match=address):
        train_classifier(MLP, x, y, dataclasses.replace(CONFIG, ray_address=address))
