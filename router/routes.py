"""The routing table: what the controller tells the router, as immutable values swapped in whole.

A request names a model. The table maps it to a `ServiceRoute` (an InferenceService: its
component splits, experiment and shadow) or a `ModelRoute` (a TrainedModel placed on a service's
replicas). Routes hold `Pool`s by reference, so replicas coming and going never rebuild a route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.balancer import Pool
from router.payload_logger import LoggerSpec
from router.policies.placement import Budget
from router.policies.traffic import pick_weighted

__all__ = [
    "Backend",
    "Experiment",
    "ModelRoute",
    "RoutingTable",
    "ServiceRoute",
    "Shadow",
    "Split",
    "Variant",
]


@dataclass(frozen=True, slots=True)
class Backend:
    """One revision's pool, and the model name its replicas serve."""

    revision: str
    model: str
    pool: Pool
    #: set for a TrainedModel: it must be loaded onto a replica before a request can go there.
    placed: ModelRoute | None = None
    component: str = "predictor"


@dataclass(frozen=True, slots=True)
class Split:
    """Weighted revisions of one component; weights are effective ones (ready revisions only)."""

    backends: tuple[tuple[Backend, int], ...] = ()

    def pick(self, point: float) -> Backend | None:
        return pick_weighted(self.backends, point)


@dataclass(frozen=True, slots=True)
class Variant:
    """An A/B arm: `service` names another InferenceService, `split` is this one's own revisions."""

    name: str
    weight: int
    split: Split | None = None
    service: str | None = None


@dataclass(frozen=True, slots=True)
class Experiment:
    variants: tuple[Variant, ...]
    #: sticky assignment key: a request header, or a cookie (set on first visit when missing).
    header: str | None = None
    cookie: str | None = None


@dataclass(frozen=True, slots=True)
class Shadow:
    percent: int
    split: Split | None = None
    service: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceRoute:
    service: str
    protocol: str = "v2"
    timeout_s: float = 60.0
    predictor: Split = field(default_factory=Split)
    #: a transformer in front of the predictor gets client traffic; its calls back reach the predictor.
    transformer: Split | None = None
    experiment: Experiment | None = None
    shadow: Shadow | None = None
    #: KServe's payload logger per component ("predictor", "transformer").
    loggers: dict[str, LoggerSpec] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """A TrainedModel: served by replicas of `service`'s predictor, loaded on demand."""

    name: str
    service: str
    storage_uri: str
    format: str | None
    memory_bytes: int = 0
    #: what one replica of `service` may hold.
    budget: Budget = field(default_factory=Budget)


@dataclass(frozen=True, slots=True)
class RoutingTable:
    services: dict[str, ServiceRoute] = field(default_factory=dict)
    models: dict[str, ModelRoute] = field(default_factory=dict)
    #: InferenceGraph name -> its runner (`router.policies.graph.GraphRunner`).
    graphs: dict[str, Any] = field(default_factory=dict)
