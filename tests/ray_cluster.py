"""One real multi-node Ray cluster on this machine, shared by every Ray test of the session.

A head (CPUs only, for drivers and pipeline tasks) and two worker nodes, each with one logical GPU,
two CPUs and a label of its own (`servegate.io/node: a` / `b`), all on 127.0.0.1. Tests that add or
remove nodes use `extra_node` / `replace_node`, which put the cluster back as they found it, so
the next test sees two workers again.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

# Every node on loopback: no traffic leaves the machine (set before Ray is imported anywhere).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

__all__ = ["NODE_LABEL", "RayTestCluster", "start_cluster"]

#: the label every worker node carries (values "a", "b", then "c"... for nodes tests add).
NODE_LABEL = "servegate.io/node"
_NODE_ARGS: dict[str, Any] = {
    "node_ip_address": "127.0.0.1",
    "num_cpus": 2,
    "object_store_memory": 100 * 1024 * 1024,
}


@dataclass
class RayTestCluster:
    """The running cluster: `address` for `ray.init` / `--ray-address`, and its worker nodes by label."""

    cluster: Any  # ray.cluster_utils.Cluster
    workers: dict[str, Any] = field(default_factory=dict)  # label value -> ray._private.node.Node

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self, label: str, gpus: int = 1) -> Any:
        node = self.cluster.add_node(
            **_NODE_ARGS,
            num_gpus=gpus,
            labels={NODE_LABEL: label},
            resources={f"node-{label}": 1},
        )
        self.cluster.wait_for_nodes()
        self.workers[label] = node
        return node

    def remove_worker(self, label: str) -> None:
        """Take the node away as a failed machine would (its processes killed, no drain)."""
        node = self.workers.pop(label)
        self.cluster.remove_node(node, allow_graceful=False)

    def node_id(self, label: str) -> str:
        return self.workers[label].node_id

    @contextlib.contextmanager
    def extra_node(self, label: str, gpus: int = 1) -> Iterator[Any]:
        """A worker node that joins for the block and leaves after it."""
        node = self.add_worker(label, gpus)
        try:
            yield node
        finally:
            if label in self.workers:
                self.remove_worker(label)

    @contextlib.contextmanager
    def replace_node(self, label: str) -> Iterator[None]:
        """The block may remove worker `label`; afterwards a fresh node with the same label is back."""
        try:
            yield
        finally:
            if label in self.workers:
                self.remove_worker(label)
            self.add_worker(label)


def start_cluster() -> RayTestCluster:
    from ray.cluster_utils import Cluster

    head = {**_NODE_ARGS, "include_dashboard": False}
    started = time.monotonic()
    cluster = RayTestCluster(Cluster(initialize_head=True, connect=False, head_node_args=head))
    for label in ("a", "b"):
        cluster.add_worker(label)
    if time.monotonic() - started > 120:  # pragma: no cover - a sign the machine is overloaded
        print(f"the Ray test cluster took {time.monotonic() - started:.0f}s to start")
    return cluster
