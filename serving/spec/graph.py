"""InferenceGraph (`serving.kserve.io/v1alpha1`): routing nodes chained over InferenceServices.

The fields are KServe's (`pkg/apis/serving/v1alpha1/inference_graph.go`). `check()` has KServe's
webhook checks (`inference_graph_validation.go`: a `root` node, one target per step, unique step
names, Splitter weights summing to 100) and the ones KServe leaves to request time, where they
fail every request: nodeName references, cycles, `data` values, condition syntax, and a condition
on the first step of a Sequence (KServe tests it against a previous response that does not exist).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from router.policies import gjson
from serving.spec.common import KModel, ObjectMeta, Problem
from serving.spec.isvc import ResourceRequirements, field_warnings

__all__ = [
    "GRAPH_API_VERSION",
    "ROOT_NODE",
    "InferenceGraph",
    "InferenceGraphSpec",
    "InferenceRouter",
    "InferenceStep",
    "RouterType",
    "StepDependency",
]

GRAPH_API_VERSION = "serving.kserve.io/v1alpha1"
#: Every request enters the graph at the node of this name.
ROOT_NODE = "root"

RouterType = Literal["Sequence", "Switch", "Ensemble", "Splitter"]
StepDependency = Literal["Soft", "Hard"]

#: What a Sequence step sends: the node's input (`$request`, the default) or the previous step's reply.
DATA_VALUES = ("$request", "$response")


class InferenceStep(KModel):
    """One destination of a node: an InferenceService, a URL, or another node of the graph."""

    #: Unique within the node; names the step's entry in an Ensemble's combined reply.
    name: str | None = None
    service_name: str | None = None
    service_url: str | None = None
    node_name: str | None = None
    #: Sequence only: `$request` (the node's input) or `$response` (the previous step's reply).
    data: str | None = None
    #: A GJSON path; the step is taken when it exists (Switch: in the input; Sequence: in the previous reply).
    condition: str | None = None
    #: `Hard`: a non-2xx reply ends the whole graph with that status. Unset means `Soft`.
    dependency: StepDependency | None = None
    #: Splitter only: percent of requests (all of a node's weights sum to 100).
    weight: int | None = Field(None, ge=0, le=100)

    @property
    def targets(self) -> dict[str, str]:
        """The targets set, by manifest field name (valid steps have exactly one)."""
        found = {"serviceName": self.service_name, "serviceUrl": self.service_url, "nodeName": self.node_name}
        return {field: value for field, value in found.items() if value}


class InferenceRouter(KModel):
    """A node: how its steps are run (in order, first match, all at once, or one by weight)."""

    router_type: RouterType
    steps: list[InferenceStep] = Field(default_factory=list)


class InferenceGraphSpec(KModel):
    nodes: dict[str, InferenceRouter]
    #: The router pod's resources.
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    affinity: dict[str, Any] | None = None
    #: Seconds a request through the graph may take.
    timeout: int | None = Field(None, ge=1)
    #: Router replicas; 0 allows scale to zero.
    min_replicas: int | None = Field(None, ge=0)
    #: Most router replicas; 0 means no limit.
    max_replicas: int | None = Field(None, ge=0)


class InferenceGraph(KModel):
    api_version: Literal["serving.kserve.io/v1alpha1"]
    kind: Literal["InferenceGraph"]
    metadata: ObjectMeta
    spec: InferenceGraphSpec

    def check(self) -> list[Problem]:
        """Cross-field problems, each with its path from the document root; empty when valid."""
        nodes = self.spec.nodes
        problems: list[Problem] = []
        if ROOT_NODE not in nodes:
            problems.append(Problem("spec.nodes", f"no node named '{ROOT_NODE}': every request enters there"))
        for name, node in nodes.items():
            problems.extend(_check_node(f"spec.nodes.{name}", node, nodes))
        problems.extend(_cycles(nodes))
        problems.extend(_check_scaling(self.spec))
        return problems

    def warnings(self) -> list[str]:
        """Fields kept but unused, and settings that do nothing where they are."""
        found = field_warnings(self)
        reachable = _reachable(self.spec.nodes)
        for name, node in self.spec.nodes.items():
            path = f"spec.nodes.{name}"
            if ROOT_NODE in self.spec.nodes and name not in reachable:
                found.append(f"{path}: not reachable from '{ROOT_NODE}', so it never runs")
            for i, step in enumerate(node.steps):
                at = f"{path}.steps[{i}]"
                if node.router_type == "Switch" and not step.condition:
                    found.append(f"{at}: a Switch step without a condition never matches")
                if node.router_type in ("Ensemble", "Splitter") and step.condition:
                    found.append(f"{at}.condition: ignored by {node.router_type} nodes")
                if node.router_type != "Sequence" and step.data:
                    found.append(f"{at}.data: ignored outside Sequence nodes")
        return found

    def services(self) -> set[str]:
        """Every InferenceService the graph calls by name."""
        return {
            step.service_name for node in self.spec.nodes.values() for step in node.steps if step.service_name
        }


def _check_node(path: str, node: InferenceRouter, nodes: dict[str, InferenceRouter]) -> list[Problem]:
    problems: list[Problem] = []
    if not node.steps:
        problems.append(Problem(f"{path}.steps", "a node needs at least one step"))
    names: dict[str, int] = {}
    for i, step in enumerate(node.steps):
        at = f"{path}.steps[{i}]"
        targets = step.targets
        if not targets:
            problems.append(Problem(at, "no target: set one of serviceName, serviceUrl, nodeName"))
        elif len(targets) > 1:
            problems.append(Problem(at, f"sets {' and '.join(targets)}: a step has exactly one target"))
        if step.node_name and step.node_name not in nodes:
            problems.append(Problem(f"{at}.nodeName", f"no node named '{step.node_name}' in spec.nodes"))
        if step.service_url and not step.service_url.startswith(("http://", "https://")):
            problems.append(Problem(f"{at}.serviceUrl", f"'{step.service_url}' is not an http(s) URL"))
        if step.data and step.data not in DATA_VALUES:
            problems.append(Problem(f"{at}.data", f"'{step.data}' is not one of {', '.join(DATA_VALUES)}"))
        if step.condition:
            try:
                gjson.parse(step.condition)
            except ValueError as exc:
                problems.append(Problem(f"{at}.condition", f"not a GJSON path: {exc}"))
            if node.router_type == "Sequence" and i == 0:
                problems.append(
                    Problem(
                        f"{at}.condition",
                        "a Sequence tests a step's condition on the previous step's response, and the "
                        "first step has none; route on the request with a Switch node",
                    )
                )
        if node.router_type == "Splitter":
            if step.weight is None:
                problems.append(Problem(f"{at}.weight", "a Splitter step needs a weight"))
        elif step.weight is not None:
            problems.append(
                Problem(f"{at}.weight", f"only Splitter steps take a weight, not {node.router_type}")
            )
        if step.name:
            if step.name in names:
                problems.append(
                    Problem(f"{at}.name", f"'{step.name}' is already the name of steps[{names[step.name]}]")
                )
            names.setdefault(step.name, i)
    weights = [step.weight for step in node.steps]
    if node.router_type == "Splitter" and node.steps and None not in weights:
        total = sum(w for w in weights if w is not None)
        if total != 100:
            problems.append(Problem(f"{path}.steps", f"Splitter weights sum to {total}, not 100"))
    return problems


def _cycles(nodes: dict[str, InferenceRouter]) -> list[Problem]:
    """One problem per cycle of nodeName references found by a depth-first walk from root."""
    problems: list[Problem] = []
    seen: set[tuple[str, ...]] = set()
    done: set[str] = set()
    stack: list[str] = []

    def visit(name: str) -> None:
        stack.append(name)
        for i, step in enumerate(nodes[name].steps):
            target = step.node_name
            if not target or target not in nodes or target in done:
                continue
            if target in stack:
                cycle = [*stack[stack.index(target) :], target]
                ring = cycle[:-1]
                first = ring.index(min(ring))
                key = tuple(ring[first:] + ring[:first])
                if key not in seen:
                    seen.add(key)
                    problems.append(
                        Problem(f"spec.nodes.{name}.steps[{i}].nodeName", "cycle: " + " -> ".join(cycle))
                    )
            else:
                visit(target)
        stack.pop()
        done.add(name)

    for name in sorted(nodes, key=lambda n: (n != ROOT_NODE, n)):
        if name not in done:
            visit(name)
    return problems


def _reachable(nodes: dict[str, InferenceRouter]) -> set[str]:
    found: set[str] = set()
    pending = [ROOT_NODE] if ROOT_NODE in nodes else []
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        pending.extend(s.node_name for s in nodes[name].steps if s.node_name and s.node_name in nodes)
    return found


def _check_scaling(spec: InferenceGraphSpec) -> list[Problem]:
    problems = spec.resources.problems("spec.resources")
    low, high = spec.min_replicas, spec.max_replicas
    if low is not None and high and low > high:
        problems.append(Problem("spec.maxReplicas", f"{high} is below minReplicas ({low})"))
    return problems
