"""Where on a Ray cluster a pipeline step may run: its resources as Ray task options, a check that
some live node can hold it (Ray would wait for ever for a node that never joins), and an error that
names the node when the one running it died."""

from __future__ import annotations

import re
from typing import Any

from serving.raycluster import demand, has_labels, node_fits, resource_options

__all__ = ["node_died", "task_options", "unplaceable"]


def task_options(resources: dict[str, Any]) -> dict[str, Any]:
    """The Ray task options for a step's `Resources.as_dict()` (one CPU when it asks for none)."""
    return resource_options(_asked(resources), resources.get("node_selector", {}))


def _asked(resources: dict[str, Any]) -> dict[str, float]:
    return demand(resources.get("cpus", 1), resources.get("accelerators", 0), resources.get("memory_bytes"))


def unplaceable(resources: dict[str, Any]) -> str | None:
    """Why no live node of the cluster can run the step (None when one can)."""
    import ray

    selector: dict[str, str] = resources.get("node_selector", {})
    ask = _asked(resources)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    matching = [n for n in nodes if has_labels(n, selector)]
    if not nodes:
        return "the Ray cluster has no live node"
    if not matching:
        return f"no node of the Ray cluster has {_labels(selector)}"
    if any(node_fits(n, ask, selector) for n in matching):
        return None
    most = {key: max(n["Resources"].get(key, 0) for n in matching) for key in ask}
    where = f" with {_labels(selector)}" if selector else ""
    return f"no node of the Ray cluster{where} has {_amounts(ask)} (the most any has: {_amounts(most)})"


def _labels(selector: dict[str, str]) -> str:
    return f"label{'s' * (len(selector) > 1)} " + ", ".join(f"{k}={v}" for k, v in selector.items())


def _amounts(amounts: dict[str, float]) -> str:
    def one(key: str, n: float) -> str:
        return f"{n / 2**30:.1f} GiB of memory" if key == "memory" else f"{n:g} {key}{'s' * (n != 1)}"

    return ", ".join(one(k, n) for k, n in amounts.items())


def node_died(exc: Exception) -> str:
    """The error of a step whose node died, naming the node (its id, address and labels)."""
    import ray

    found = re.search(r"node ID: ([0-9a-f]+)", str(exc))
    ip = re.search(r"Node IP: ([^,\s]+)", str(exc))
    if found is None:
        return f"the Ray node running the step died: {exc}"
    node_id = found.group(1)
    labels = next((n.get("Labels") or {} for n in ray.nodes() if n.get("NodeID") == node_id), {})
    own = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if not k.startswith("ray.io/"))
    named = ", ".join(x for x in (ip.group(1) if ip else "", own) if x)
    return f"the Ray node running the step died: node {node_id}" + (f" ({named})" if named else "")
