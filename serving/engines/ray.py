"""RayEngine: every replica is a Ray actor running `servegate model serve` on its node.

The gateway routes to each replica's own address; Ray only places, holds and watches the replicas
(`_ray_replica.ReplicaActor`). Actors are named `<owner>:<replica-id>:<run>` in the `servegate`
namespace and detached: stopping the gateway leaves them serving, and the next `servegate up
--engine ray` with the same state dir re-attaches to those of the revisions it still has (no
restart) and stops the rest (`release_unclaimed`). `<owner>` is made once per state dir, so two
gateways can share a cluster.

Resources map to Ray: `cpu` -> num_cpus (1 when unset), `nvidia.com/gpu` -> num_gpus (Ray sets
CUDA_VISIBLE_DEVICES), `memory` -> memory, `nodeSelector` -> a label selector on Ray node labels
(`ray start --labels`). Replicas of one revision are spread over the nodes. A replica no node can
hold waits in Ray's queue (PENDING, the pool not schedulable, with why) and starts by itself when a
node that fits joins; a Ray autoscaler or KubeRay sees that demand and can add one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.auth.files import write_secret
from serving.engines._pools import Endpoints, Pool, PoolEngine, Replica, ReplicaRun, exit_text
from serving.engines._ray_placement import actor_options, placement_problem
from serving.engines.base import ReplicaState
from serving.raycluster import NAMESPACE, connect

__all__ = ["RayEngine"]

log = logging.getLogger(__name__)

#: seconds a launched replica may wait for Ray to place it before the pool says it is not schedulable.
_PENDING_GRACE_S = 3.0
#: seconds a stop call on an actor may take beyond the replica's drain time before the actor is killed.
_STOP_SLACK_S = 10.0
#: how long the dashboard waits for a replica actor to hand over its log tail.
_LOG_TIMEOUT_S = 5.0
_OWNER_FILE = "ray-engine.json"


def _node_text(info: dict[str, Any]) -> str:
    return f"{info['node_ip']} ({str(info['node_id'])[:8]})"


def _future(ref: Any) -> asyncio.Future[Any]:
    return asyncio.wrap_future(ref.future())


class _RayRun(ReplicaRun):
    """A replica's actor: placed once its first `info` call answers."""

    def __init__(self, actor: Any, name: str, adopted: bool = False) -> None:
        self.actor, self.name, self.adopted = actor, name, adopted
        self.info: dict[str, Any] | None = None
        self._ready = _future(actor.info.remote())
        self._ready.add_done_callback(self._on_ready)

    def _on_ready(self, ready: asyncio.Future[Any]) -> None:
        if not ready.cancelled() and ready.exception() is None:
            self.info = ready.result()
            self.node = _node_text(self.info)

    def placed(self) -> bool:
        return self._ready.done()

    async def endpoints(self) -> Endpoints | None:
        import ray

        try:
            info = await _future(self.actor.info.remote())
        except ray.exceptions.RayError:
            return None  # `wait` reports how the actor ended
        self.info, self.node = info, _node_text(info)
        if info["http"] is None:
            return None
        host = info["node_ip"]
        return Endpoints(f"http://{host}:{info['http']}", f"{host}:{info['grpc']}" if info["grpc"] else None)

    async def wait(self) -> str:
        import ray

        try:
            info = await _future(self.actor.wait.remote())
        except ray.exceptions.ActorDiedError as exc:
            where = f" on node {self.node}" if self.node else ""
            return f"its Ray actor died{where}: {_death_cause(exc)}"
        except ray.exceptions.RayError as exc:
            return f"its Ray actor failed: {type(exc).__name__}: {exc}"
        if info["error"]:
            return info["error"]
        tail = info["log"]
        return f"{exit_text(info['exit'])} on node {_node_text(info)}" + (f": {tail}" if tail else "")

    async def stop(self, grace_s: float) -> str | None:
        if not self.placed():  # nothing runs yet, and a call would wait for a node that may never come
            import ray

            await asyncio.to_thread(ray.kill, self.actor)
            return "removed before Ray placed it"
        code = await _stop_actor(self.actor, grace_s)
        return exit_text(code) if code is not None else "its Ray actor was killed"

    async def log_lines(self, lines: int) -> list[str]:
        if not self.placed():
            return []
        try:
            return await asyncio.wait_for(_future(self.actor.log_lines.remote(lines)), _LOG_TIMEOUT_S)
        except Exception as exc:  # a dead or unreachable actor: say so rather than fail the page
            return [f"(the replica's log cannot be read: {_death_cause(exc)})"]


async def _stop_actor(actor: Any, grace_s: float) -> int | None:
    """Ask a replica's actor to drain and stop its process (its exit code), then kill the actor."""
    import ray

    code = None
    # AttributeError: an actor under our name that is not a replica's (its methods differ).
    with contextlib.suppress(TimeoutError, AttributeError, ray.exceptions.RayError):
        code = await asyncio.wait_for(_future(actor.stop.remote(grace_s)), grace_s + _STOP_SLACK_S)
    await asyncio.to_thread(ray.kill, actor)
    return code


def _death_cause(exc: Exception) -> str:
    # Ray's message runs to many lines; its start says whether the node or the process went.
    return " ".join(str(exc).split())[:300]


@dataclass(frozen=True, slots=True)
class _Found:
    """A replica actor a previous gateway left running."""

    name: str
    replica_id: str
    revision: str
    actor: Any


class RayEngine(PoolEngine):
    """Replicas as Ray actors, anywhere in the cluster at `address` (None: a local Ray started for
    this gateway, stopped with it, replicas included).

    state_dir: where the engine keeps its owner id. `settings` are `PoolEngine`'s.
    """

    label = "ray engine"
    multi_node = True

    def __init__(
        self,
        state_dir: Path,
        *,
        address: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(**settings)
        self.state_dir = Path(state_dir)
        self.address = address
        self.owner = ""
        self._started_local = False
        self._actor_class: Any = None
        #: replica id -> an actor found at start that no pool has re-attached to yet.
        self._found: dict[str, _Found] = {}
        self._problems: dict[str, str] = {}

    # -- Engine ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        # Off the event loop's thread: Ray then leaves the gateway's signal handlers alone.
        self._started_local = await asyncio.to_thread(connect, self.address)
        import ray

        from serving.engines._ray_replica import ReplicaActor

        self._actor_class = ray.remote(ReplicaActor)
        self.owner = self._owner_id()
        self._found = {f.replica_id: f for f in await asyncio.to_thread(self._find_actors)}
        if self._found:
            log.info("found %d replicas of an earlier run on the Ray cluster", len(self._found))
        await super().start()

    async def release_unclaimed(self) -> None:
        found, self._found = list(self._found.values()), {}
        for f in found:
            log.info("stopping replica %s: no revision of this gateway claims it", f.replica_id)
        await asyncio.gather(*(_stop_actor(f.actor, self.drain_timeout_s) for f in found))

    async def close(self) -> None:
        import ray

        if self._started_local:  # the local Ray goes with this gateway: stop the replicas properly
            await super().close()
        else:
            self._closing = True
            await self._stop_checks()
            running = sum(len(p.active()) for p in self._pools.values())
            for watcher in self._watchers:  # they wait on replicas that go on running
                watcher.cancel()
            await self._finish_tasks()
            if running:
                log.info(
                    "left %d replicas running on the Ray cluster: `servegate up --engine ray` with this "
                    "state dir re-attaches to them; `servegate delete` removes a service's",
                    running,
                )
        # Detached actors outlive this driver; leaving Ray properly keeps its exit clean.
        ray.shutdown()

    def gateway_host(self, listen_host: str) -> str:
        if listen_host not in ("0.0.0.0", "::"):
            return listen_host
        import ray

        # Listening everywhere: the address the cluster knows this machine by reaches it from any node.
        return ray.util.get_node_ip_address()

    # -- PoolEngine --------------------------------------------------------------------------------

    async def _place(self, pool: Pool) -> None:
        spec = pool.spec
        missing = pool.desired - len(pool.active())
        found = [f.replica_id for f in self._found.values() if f.revision == spec.revision]
        new = [self._new_replica(pool, replica_id=found[i] if i < len(found) else "") for i in range(missing)]
        await asyncio.gather(*(self._spawn(pool, r) for r in new))

    async def _launch(self, pool: Pool, r: Replica) -> ReplicaRun:
        found = self._found.pop(r.id, None)
        if found is not None:
            try:
                return _RayRun(found.actor, found.name, adopted=True)
            except AttributeError:  # not a replica's actor after all
                await _stop_actor(found.actor, 0)
        name = f"{self.owner}:{r.id}:{secrets.token_hex(3)}"
        options = actor_options(pool.spec, name)
        tokens = self._credentials_env(pool.spec.revision)

        def create() -> Any:
            return self._actor_class.options(**options).remote(r.id, pool.spec, self.drain_timeout_s, tokens)

        try:
            actor = await asyncio.to_thread(create)
        except ValueError as exc:  # Ray refuses the options (a malformed label selector, ...)
            raise RuntimeError(f"Ray refused the replica: {exc}") from None
        return _RayRun(actor, name)

    def _where(self, r: Replica) -> str:
        return " on the Ray cluster"

    async def _pending(self, pool: Pool, r: Replica) -> str:
        return self._problems.get(pool.spec.revision) or "waiting for Ray to place it"

    async def _after_checks(self) -> None:
        now = time.monotonic()
        late = _PENDING_GRACE_S
        waiting = {
            pool.spec.revision: pool
            for pool in self._pools.values()
            if pool.spec.image is None
            and any(r.state is ReplicaState.PENDING and now - r.launched_at >= late for r in pool.replicas)
        }
        nodes: list[dict[str, Any]] = []
        if waiting:
            import ray

            nodes = await asyncio.to_thread(ray.nodes)
        self._problems = {rev: placement_problem(pool.spec, nodes) for rev, pool in waiting.items()}
        for pool in self._pools.values():
            if pool.spec.image is not None:
                continue
            problem = self._problems.get(pool.spec.revision)
            if problem is None:
                self._set_schedulable(pool, True, "")
                continue
            pending = sum(r.state is ReplicaState.PENDING for r in pool.active())
            reason = f"not schedulable: {pending} of {pool.desired} replicas wait: {problem}"
            self._set_schedulable(pool, False, reason)
            for r in pool.active():
                if r.state is ReplicaState.PENDING:
                    r.reason = problem

    # -- actors of earlier runs --------------------------------------------------------------------

    def _owner_id(self) -> str:
        """This state dir's owner id on the cluster (made on first use, kept in the state dir)."""
        path = self.state_dir / _OWNER_FILE
        try:
            return str(json.loads(path.read_text())["owner"])
        except (OSError, ValueError, KeyError, TypeError):
            owner = f"sg{secrets.token_hex(4)}"
            write_secret(path, json.dumps({"owner": owner}))
            return owner

    def _find_actors(self) -> list[_Found]:
        import ray

        found = []
        prefix = f"{self.owner}:"
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = entry["name"]
            if entry.get("namespace") != NAMESPACE or not name.startswith(prefix):
                continue
            replica_id = name[len(prefix) :].rpartition(":")[0]
            revision = replica_id.rpartition("-")[0]
            try:
                actor = ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:  # gone meanwhile
                continue
            found.append(_Found(name, replica_id, revision, actor))
        return found
