"""Pure placement policy of the ray engine: a replica spec as Ray actor options, and why a pending
replica has no node, in words a user acts on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from serving.engines.base import ReplicaSpec
from serving.raycluster import NAMESPACE, demand, node_fits, resource_options

__all__ = ["actor_options", "demand_of", "placement_problem"]

#: CPUs a replica asks of Ray when its manifest sets no cpu limit (Ray Serve's default too).
DEFAULT_CPUS = 1.0


def demand_of(spec: ReplicaSpec) -> dict[str, float]:
    """Ray resources one replica of `spec` needs: `cpu` -> CPU, `nvidia.com/gpu` -> GPU, `memory` ->
    memory (bytes)."""
    return demand(spec.cpus or DEFAULT_CPUS, spec.gpus, spec.memory_bytes)


def actor_options(spec: ReplicaSpec, name: str) -> dict[str, Any]:
    """`ActorClass.options(...)` for one replica: named and detached (a restarted gateway finds it),
    never restarted by Ray (the engine restarts replicas, with backoff, wherever they fit),
    replicas of a revision spread over the nodes, `nodeSelector` as a Ray node label selector."""
    return {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "max_restarts": 0,
        "num_gpus": 0,  # else an actor asks Ray's default
        **resource_options(demand_of(spec), dict(spec.node_selector)),
        "scheduling_strategy": "SPREAD",
    }


def _needs(demand: Mapping[str, float], selector: Sequence[tuple[str, str]]) -> str:
    parts = [f"{_amount(name, amount)} {name}" for name, amount in demand.items()]
    parts += [f"label {key}={value}" for key, value in selector]
    return ", ".join(parts)


def _amount(name: str, amount: float) -> str:
    if name == "memory":
        return f"{amount / 2**30:.3g}Gi of"
    return f"{amount:g}"


def _describe(node: Mapping[str, Any]) -> str:
    resources = node.get("Resources") or {}
    held = [f"{resources[k]:g} {k}" for k in ("CPU", "GPU") if resources.get(k)]
    labels = [f"{k}={v}" for k, v in (node.get("Labels") or {}).items() if not k.startswith("ray.io/")]
    return f"{node.get('NodeManagerAddress', '?')}: " + ", ".join(held + labels)


def placement_problem(spec: ReplicaSpec, nodes: Sequence[Mapping[str, Any]]) -> str:
    """Why Ray has not placed a replica of `spec`, from `ray.nodes()`: no node could ever hold it
    (too few resources, or no node with its labels), or every node that could is busy."""
    asked, selector = demand_of(spec), spec.node_selector
    alive = [n for n in nodes if n.get("Alive")]
    needs = _needs(asked, selector)
    if not any(node_fits(n, asked, dict(selector)) for n in alive):
        shown = "; ".join(_describe(n) for n in alive[:5]) + ("; ..." if len(alive) > 5 else "")
        return (
            f"no node of the Ray cluster can hold a replica: it needs {needs}; "
            f"the cluster has {len(alive)} node{'s' if len(alive) != 1 else ''} ({shown}); "
            "it starts by itself when a node that fits joins"
        )
    return (
        f"waiting for a Ray node with free resources: each replica needs {needs}, "
        "and every node that has them is in use"
    )
