"""The engine interface: where a revision's replicas run (local processes, a Ray cluster; Kubernetes next).

The controller tells an engine how many replicas each revision should have (`scale`) and what they
serve (`ReplicaSpec`); the engine starts, health-checks, restarts and drains them, and reports every
change to the listeners registered with `watch`. The router only ever sees `ReplicaInfo` endpoints,
so neither it nor the autoscaler knows which engine runs the replicas.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.spec.common import Problem
    from serving.spec.manifests import Resource

__all__ = ["Engine", "PoolStatus", "ReplicaInfo", "ReplicaSpec", "ReplicaState", "ServedModelRef"]


@dataclass(frozen=True, slots=True)
class ServedModelRef:
    """One model a replica loads at start: the name clients use, its storage URI, its format (None: infer)."""

    name: str
    uri: str
    format: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """What every replica of one revision runs. Two specs with the same revision name are the same pool.

    revision: unique name of the revision (e.g. `iris-predictor-00002`).
    models: models loaded at start (may be empty: a multi-model pool loads TrainedModels on demand).
    max_batch_size / max_latency_ms: the replica's dynamic batcher (1: batching off).
    gpus: whole GPUs each replica needs (`nvidia.com/gpu` limit); 0 runs on CPU.
    cpus: CPU limit (cores, may be fractional): what the replica's thread pools are sized from when
    given (else its engine's share of the machine).
    memory_bytes: memory limit, for placement and reporting (None: unlimited).
    env: extra environment variables for the replica process.
    args: extra `servegate model serve` arguments.
    """

    revision: str
    models: tuple[ServedModelRef, ...] = ()
    max_batch_size: int = 1
    max_latency_ms: float = 5.0
    gpus: int = 0
    cpus: float | None = None
    memory_bytes: int | None = None
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    #: a custom container image (KServe's `containers`) instead of models; engines that cannot
    #: run images report the pool as not schedulable.
    image: str | None = None
    #: (label, value) pairs the node of each replica must carry (`nodeSelector`): Ray node labels
    #: on the ray engine; the process engine, with one machine, ignores them.
    node_selector: tuple[tuple[str, str], ...] = ()
    #: intra-op threads of its runtimes (the `serving.servegate.io/threads` annotation); None sizes
    #: them from the CPUs the replica may use.
    threads: int | None = None
    #: the InferenceService and component ("predictor", "transformer") the revision belongs to.
    service: str = ""
    component: str = ""
    #: what only a Kubernetes pod uses (Component.pod, canonical JSON); other engines ignore it.
    pod: str | None = None


class ReplicaState(enum.Enum):
    PENDING = "Pending"  # waiting for somewhere to run (a Ray node with the resources it needs)
    STARTING = "Starting"  # process started, not yet ready
    READY = "Ready"  # passes its readiness check: may take traffic
    UNHEALTHY = "Unhealthy"  # failed readiness checks after being ready; no traffic, about to restart
    DRAINING = "Draining"  # being removed: no new traffic, finishing what it has
    FAILED = "Failed"  # exited or could not start; waiting out its restart backoff


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """One replica as the router and the status see it."""

    id: str
    revision: str
    state: ReplicaState
    #: base URL of its REST server (`http://127.0.0.1:PORT`); None until it listens.
    http_url: str | None = None
    #: `host:port` of its gRPC server; None until it listens.
    grpc_target: str | None = None
    restarts: int = 0
    gpu_ids: tuple[int, ...] = ()
    #: why it is not ready (last exit, failed check), empty when ready.
    reason: str = ""
    #: where it runs, for people: this machine's host name, a Ray node's address and id; "" unknown.
    node: str = ""

    @property
    def ready(self) -> bool:
        return self.state is ReplicaState.READY


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A revision's pool as a whole: desired vs ready, and whether it can be placed at all."""

    revision: str
    desired: int
    ready: int
    replicas: tuple[ReplicaInfo, ...] = ()
    #: False when the engine cannot place the replicas (e.g. GPUs asked for that the machine lacks).
    schedulable: bool = True
    reason: str = ""
    events: tuple[str, ...] = field(default=())


class Engine(ABC):
    """Runs replica pools. Every method is called from the controller's event loop."""

    @abstractmethod
    async def start(self) -> None:
        """Prepare the engine (discover GPUs, start background health checks)."""

    @abstractmethod
    async def scale(self, spec: ReplicaSpec, replicas: int) -> None:
        """Make `spec.revision` have `replicas` replicas, creating the pool on first use.

        Returns at once; replicas start (and become ready) in the background. Scaling down drains
        the removed replicas: they leave the pool's endpoints first, then finish their in-flight work.
        """

    @abstractmethod
    async def remove(self, revision: str) -> None:
        """Drain and stop every replica of `revision` and forget the pool."""

    @abstractmethod
    def status(self, revision: str) -> PoolStatus | None:
        """The pool of `revision`, or None if the engine has none."""

    @abstractmethod
    def watch(self, listener: Callable[[str], None]) -> None:
        """Call `listener(revision)` whenever a replica of `revision` changes state or endpoint."""

    @abstractmethod
    async def close(self) -> None:
        """Stop managing replicas (used when `servegate up` stops): engines whose replicas die with
        the gateway drain and stop them; engines whose replicas outlive it (Ray) leave them running."""

    async def replica_log(self, revision: str, replica_id: str, lines: int) -> list[str] | None:
        """The last `lines` lines replica `replica_id` of `revision` logged, oldest first; None when
        the engine runs no such replica."""
        return None

    def gateway_host(self, listen_host: str) -> str:
        """The address replicas reach a gateway listening on `listen_host` at: loopback for a
        wildcard (replicas run on this machine); engines with replicas elsewhere say otherwise."""
        return "127.0.0.1" if listen_host in ("0.0.0.0", "::") else listen_host

    #: whether replicas outlive a gateway and another gateway can route to them: only then may
    #: several gateways share one state (one leads, the others follow).
    shares_replicas: bool = False

    def lead(self, leading: bool) -> None:  # noqa: B027 - engines that share replicas override it
        """Start (True) or stop changing replicas. A follower's `scale` and `remove` only tell the
        engine what the leader runs, so that it reports (and the router routes to) those replicas."""

    async def current_replicas(self, revision: str) -> int | None:
        """How many replicas `revision` is set to have now (a new leader takes that over), if known."""
        return None

    def manifest_problems(self, resources: list[Resource]) -> list[Problem]:
        """What this engine could not run in `resources`, by field path, found at apply before
        anything is stored (e.g. names a cluster would refuse); none by default."""
        return []

    async def release_unclaimed(self) -> None:  # noqa: B027 - only engines that re-attach need it
        """Called once the controller has restored every stored resource: replicas an earlier gateway
        left running that no pool re-attached to are stopped."""
