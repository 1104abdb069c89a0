"""The controller: applied manifests -> revisions -> replica pools (through the engine) -> routes.

Every change (an apply, a delete, a promote, a replica turning ready or dying) marks its
InferenceService dirty; one background task reconciles dirty services in turn, so reconciles never
interleave. Pool membership is the exception: the engine's reports update the router's pools at once
(a dead replica must stop getting traffic now, not after a reconcile).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoscaler.config import ConfigError, GlobalScalingDefaults, ScalingConfig
from autoscaler.runner import ScaleTarget
from predictors.trust import TrustPolicy
from router.balancer import Pool
from router.core import Router
from router.payload_logger import LoggerSpec
from router.policies.placement import Budget
from router.policies.traffic import effective_weights
from router.routes import Backend, Experiment, ModelRoute, RoutingTable, ServiceRoute, Shadow, Split, Variant
from serving.auth import Target
from serving.auth.internal import CALLER_ENV, GATEWAY_CERT_ENV, InternalCredentials
from serving.auth.storage import StoragePolicy
from serving.controller import rollout as policy
from serving.controller.following import RegistryFollower, uses_registry
from serving.controller.status import ConditionClock, rfc3339, service_status
from serving.engines.base import Engine, ReplicaSpec, ServedModelRef
from serving.registry.uris import is_registry_uri
from serving.spec import Component, InferenceService, TrainedModel
from serving.spec import isvc as isvc_spec
from serving.spec.common import Problem
from serving.spec.isvc import SERVER_METADATA
from serving.spec.manifests import Resource
from serving.store import ResourceRow, RevisionRow, Rollout, Store

if TYPE_CHECKING:
    from serving.controller.rollouts import Rollouts

__all__ = ["Controller", "NotFound"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
#: a retired revision keeps its replicas until its pool has been idle this long (seconds) ...
RETIRE_QUIET_S = 1.0
#: ... or this long has passed since it left the routing table (seconds).
RETIRE_LIMIT_S = 120.0
#: InferenceService annotation: how many TrainedModels one replica may hold (LRU beyond that).
MAX_MODELS_ANNOTATION = "serving.servegate.io/max-models-per-replica"
#: InferenceService annotation: "true" opens its data plane to callers without a token (KServe's way).
ANONYMOUS_INFERENCE_ANNOTATION = "serving.servegate.io/anonymous-inference"
#: InferenceService annotation: the predictor replicas' intra-op threads. It is defined with the
#: manifest (a bad value is refused at apply) and reaches the revision, and ReplicaSpec.threads,
#: through the predictor's Component.
THREADS_ANNOTATION = isvc_spec.THREADS_ANNOTATION


class NotFound(KeyError):
    pass


@dataclasses.dataclass
class _ComponentState:
    component: Component
    revisions: list[RevisionRow]
    plan: policy.Plan


class Controller:
    def __init__(self, store: Store, engine: Engine, router: Router, gateway_url: str) -> None:
        self.store = store
        self.engine = engine
        self.router = router
        self.gateway_url = gateway_url
        self.services: dict[str, InferenceService] = {}
        self.trained_models: dict[str, TrainedModel] = {}
        self.graphs: dict[str, Any] = {}
        self.pools: dict[str, Pool] = {}
        self._states: dict[str, dict[str, _ComponentState]] = {}
        self._desired: dict[str, int] = {}
        self._owner: dict[str, str] = {}  # revision -> service
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._runners: dict[str, tuple[Any, Any]] = {}
        self._clock = ConditionClock()
        self._tasks: set[asyncio.Task[None]] = set()
        #: revision -> (service, component) for every revision that should run (the autoscaler's).
        self._autoscaled: dict[str, tuple[str, str]] = {}
        #: revision -> replicas the autoscaler asked for.
        self._scaled: dict[str, int] = {}
        self._was_ready: set[str] = set()
        self._first_seen: dict[str, float] = {}
        #: set by the gateway: told when requests wait for a revision at zero.
        self.autoscaler: Any = None
        self.scaling_defaults = GlobalScalingDefaults()
        #: seconds a request waits for the first replica of a revision at zero.
        self.activation_timeout_s = 60.0
        #: revisions to scale to zero once the next routing table no longer sends them traffic.
        self._to_retire: set[str] = set()
        self._retiring: dict[str, asyncio.Task[None]] = {}
        #: set by the gateway: the model registry behind `registry://` URIs (None: none).
        self.registry: Any = None
        #: seconds between two looks at the registry for moved aliases.
        self.registry_poll_s = 1.0
        self._follower: RegistryFollower | None = None
        #: set by the gateway when it serves TLS: its certificate, which transformers calling it trust.
        self.gateway_cert: Path | None = None
        #: set by the gateway: the tokens its replicas accept, and its own parts call it back with.
        self.credentials: InternalCredentials | None = None
        #: data-plane name -> permission target (namespace, names, anonymous inference), for the guard.
        self.targets: dict[str, Target] = {}
        #: set by the gateway: what manifests may make it and its replicas read or fetch (None: anything).
        self.storage_policy: StoragePolicy | None = None
        #: set by the gateway: the sources whose models may run code as they load (its --trust-source).
        self.trust = TrustPolicy()
        #: set by the gateway: runs the services' rollout strategies (None: canaries wait for a person).
        self.rollouts: Rollouts | None = None
        #: whether this gateway reconciles and scales. Of several gateways on one shared state, the
        #: elected one leads; the others follow: they route by the state it writes and the replicas
        #: their engine sees, and change neither.
        self.leading = True
        self._seen_version: int | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore every stored resource and start reconciling."""
        self.engine.watch(self._on_engine)
        self._restore()
        self._task = asyncio.create_task(self._loop(), name="controller")
        if self.registry is not None:
            self._follower = RegistryFollower(self.registry, self.store, self.registry_poll_s)
            self._background(
                self._follower.watch(
                    lambda: self._mark(*(n for n, s in self.services.items() if uses_registry(s)))
                )
            )

    def _restore(self) -> None:
        """Every stored resource, as the store has them now (a resource gone from it is forgotten)."""
        from serving.spec.manifests import parse_resource

        before = set(self.services)
        self.services, self.trained_models, self.graphs = {}, {}, {}
        for row in self.store.resources():
            try:
                self._remember(parse_resource(row.manifest))
            except Exception as exc:  # a stored manifest that no longer validates must not stop the rest
                log.error("cannot restore %s/%s: %s", row.kind, row.name, exc)
        self._mark(*before, *self.services)

    async def follow_store(self, interval_s: float = 0.5) -> None:
        """Restore the resources whenever another gateway on the shared state changed them, until
        cancelled (one row read per `interval_s`; this gateway's own changes are known already)."""
        while True:
            try:
                if self._seen_version is None:
                    self._seen_version = await asyncio.to_thread(self.store.version)
                else:
                    seen = self._seen_version
                    self._seen_version, theirs = await asyncio.to_thread(self.store.changed_elsewhere, seen)
                    if theirs:
                        self._restore()
            except Exception as exc:  # the database away for a moment: keep what is known
                log.warning("cannot read the shared state: %s", exc)
            await asyncio.sleep(interval_s)

    async def lead(self, leading: bool) -> None:
        """Start (or stop) reconciling and scaling: the leader election's callback. A new leader
        takes the replica counts that run now as its own, so taking over scales nothing down."""
        if leading == self.leading:
            return
        self.leading = leading
        self.engine.lead(leading)
        log.info("this gateway %s", "leads: it reconciles and scales" if leading else "follows the leader")
        if not leading:
            return
        for revision in self._autoscaled:
            if revision not in self._scaled:
                current = await self.engine.current_replicas(revision)
                if current is not None:
                    self._scaled[revision] = current
        self._desired.clear()  # every revision is scaled (and applied) again, by this gateway now
        self._restore()
        self._background(self._claim())

    async def _claim(self) -> None:
        await self.settled()
        await self.engine.release_unclaimed()

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._retiring.values(), *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def settled(self) -> None:
        """Wait until no reconcile is pending (tests and the CLI's `--wait`)."""
        while self._dirty:
            await asyncio.sleep(0.01)
        await self._idle.wait()

    # -- commands ---------------------------------------------------------------------------------

    async def apply(self, resources: list[Resource], actor: str = "") -> list[dict[str, str]]:
        """Store and reconcile already-validated resources; returns kubectl-style results. `actor`:
        who asked (the caller's token name), kept in the events."""
        results = []
        for resource in resources:
            kind, name = resource.kind, resource.metadata.name
            manifest = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
            # What a server fills in (generation, uid, ...) is not the user's: `get -o yaml | apply`
            # must come back "unchanged".
            for key in SERVER_METADATA:
                manifest["metadata"].pop(key, None)
            action = self.store.put_resource(kind, name, manifest)
            self._remember(resource)
            if action != "unchanged":
                message = f"{kind} {name} {action}"
                self.store.add_event(kind, name, "Normal", action.capitalize(), message, actor)
            results.append({"kind": kind, "name": name, "action": action})
        self._mark(*self.services)
        return results

    async def delete(self, kind: str, name: str, actor: str = "") -> None:
        table = {
            "InferenceService": self.services,
            "TrainedModel": self.trained_models,
            "InferenceGraph": self.graphs,
        }
        if name not in table[kind]:
            raise NotFound(f"{kind} '{name}' not found")
        del table[kind][name]
        self.store.delete_resource(kind, name)
        self.store.add_event(kind, name, "Normal", "Deleted", f"{kind} {name} deleted", actor)
        if kind == "TrainedModel":
            self._background(self.router.placer.retire(name))
        self._mark(name if kind == "InferenceService" else "")

    async def promote(self, name: str, actor: str = "") -> str:
        return await self._move(name, "promote", actor)

    async def rollback(self, name: str, actor: str = "") -> str:
        return await self._move(name, "rollback", actor)

    async def _move(self, name: str, how: str, actor: str = "") -> str:
        if name not in self.services:
            raise NotFound(f"InferenceService '{name}' not found")
        await self.settled()
        state = self._states.get(name, {}).get("predictor")
        current = self.store.rollout(name, "predictor")
        latest_ready = state.plan.latest_ready if state else None
        if how == "promote":
            moved = policy.promote(current, latest_ready)
        else:
            # A canary: the newest ready revision, newer than the rolled-out one (in a rollout's
            # shadow phase it takes no live traffic yet).
            moved = policy.rollback(current, canary=latest_ready)
        serving = next((r for r in state.revisions if r.name == moved.latest), None) if state else None
        if serving is not None and self._follower is not None:
            await self._follower.sync_aliases(
                name, self.services[name], serving.spec.get("storage_uri"), how, actor
            )
        self.store.set_rollout(name, "predictor", moved)
        message = f"{how}: revision {moved.latest} takes 100% of traffic"
        self.store.add_event("InferenceService", name, "Normal", how.capitalize(), message, actor)
        self._mark(name)
        await self.settled()
        return message

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- views ------------------------------------------------------------------------------------

    def get(self, kind: str, name: str) -> dict[str, Any]:
        row = self.store.resource(kind, name)
        if row is None:
            raise NotFound(f"{kind} '{name}' not found")
        return self._view(row)

    def list(self, kind: str) -> list[dict[str, Any]]:
        return [self._view(row) for row in self.store.resources(kind)]

    def _view(self, row: ResourceRow) -> dict[str, Any]:
        """A stored resource as the API shows it: the manifest, server metadata and status."""
        kind, name = row.kind, row.name
        out = dict(row.manifest)
        created = rfc3339(row.created)
        out["metadata"] = {
            **out.get("metadata", {}),
            "generation": row.generation,
            "creationTimestamp": created,
        }
        if kind == "InferenceService":
            autoscaling = self.autoscaler.status if self.autoscaler is not None else None
            out["status"] = service_status(
                name, self._states.get(name, {}), self.engine, self.gateway_url, self._clock, autoscaling
            )
            if self.rollouts is not None and (rolling := self.rollouts.condition(name)) is not None:
                out["status"]["conditions"].append(rolling)
        elif kind == "TrainedModel":
            host = row.manifest["spec"]["inferenceService"]
            ready = self.router.table.services.get(host) is not None and host in self._states
            uri = row.manifest["spec"]["model"]["storageUri"]
            out["status"] = {
                "url": f"{self.gateway_url}/v2/models/{name}",
                # A `registry://NAME@ALIAS` shows the version it loads now.
                "storageUri": self._follower.pinned(uri) if self._follower else uri,
                "conditions": [
                    {"type": "InferenceServiceReady", "status": str(ready)},
                    {"type": "Ready", "status": str(ready)},
                ],
            }
        else:
            out["status"] = {"url": f"{self.gateway_url}/graphs/{name}"}
        return out

    def desired_replicas(self) -> dict[str, int]:
        """revision -> the replicas asked of the engine."""
        return dict(self._desired)

    def revision_owners(self) -> dict[str, str]:
        """revision -> the InferenceService it belongs to."""
        return dict(self._owner)

    def events(self, kind: str, name: str) -> list[dict[str, Any]]:
        return [dataclasses.asdict(e) for e in self.store.events(kind, name)]

    # -- reconciling ------------------------------------------------------------------------------

    def _remember(self, resource: Resource) -> None:
        if isinstance(resource, InferenceService):
            self.services[resource.metadata.name] = resource
        elif isinstance(resource, TrainedModel):
            self.trained_models[resource.metadata.name] = resource
        else:
            self.graphs[resource.metadata.name] = resource

    def _mark(self, *services: str) -> None:
        self._dirty.update(s for s in services if s)
        self._dirty.add("")  # "" rebuilds the routing table even when no service changed
        self._idle.clear()
        self._wake.set()

    def _on_engine(self, revision: str) -> None:
        status = self.engine.status(revision)
        pool = self.pools.get(revision)
        if pool is not None:
            ready = status.replicas if status else ()
            pool.update((r.id, r.http_url, r.grpc_target) for r in ready if r.ready and r.http_url)
        if revision in self._owner:
            self._mark(self._owner[revision])

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                name = self._dirty.pop()
                try:
                    if name:
                        await self._reconcile(name)
                except Exception:
                    log.exception("reconciling %s failed", name)
            if self.trained_models and self._follower is not None:
                await self._follower.refresh(self.trained_models.values())
            self.router.set_table(self._table())
            self.targets = self._targets()
            # Only now that no route names them may old revisions go (drain at the router first).
            for revision in self._to_retire:
                self._retiring[revision] = asyncio.create_task(self._retire(revision))
            self._to_retire.clear()
            if not self._dirty:
                self._idle.set()

    async def _reconcile(self, name: str) -> None:
        isvc = self.services.get(name)
        if isvc is None:
            for revision in [r for r, owner in self._owner.items() if owner == name]:
                for table in (self._desired, self._owner, self._autoscaled, self._scaled, self._first_seen):
                    table.pop(revision, None)
                self._was_ready.discard(revision)
                self._to_retire.add(revision)
            self._states.pop(name, None)
            self._clock.forget(name)
            if self.rollouts is not None:
                self.rollouts.forget(name)
            return
        states = {}
        for kind, component in isvc.components().items():
            states[kind] = await self._reconcile_component(name, kind, component)
        self._states[name] = states

    async def _reconcile_component(self, name: str, kind: str, component: Component) -> _ComponentState:
        revisions = self.store.revisions(name, kind)
        current = self.store.rollout(name, kind)
        pinned = (
            await self._follower.pin(name, self.services[name], component) if self._follower else component
        )
        if pinned is not None and self.leading:  # None: the registry cannot say what to run now
            current = self._revise(name, kind, pinned, revisions, current)
        ready = {r.name for r in revisions if self._counts_as_ready(r.name)}
        names = [r.name for r in revisions]
        canary_percent = component.canary_traffic_percent
        strategy = self.services[name].spec.rollout
        if kind == "predictor" and strategy is not None and self.rollouts is not None:
            candidate = policy.canary(names, ready, current)
            canary_percent = self.rollouts.canary_percent(
                name, strategy, canary_percent, candidate, current.latest if candidate else None
            )
        plan = policy.plan(names, ready, current, canary_percent)
        if plan.rollout != current and self.leading:
            self.store.set_rollout(name, kind, plan.rollout)
        for change in plan.changes if self.leading else ():
            self.store.add_event("InferenceService", name, "Normal", "RolledOut", change)
        wanted = {rev for rev, _ in plan.traffic} | self._referenced(name)
        if plan.rollout.previous is not None:
            wanted.add(plan.rollout.previous)  # kept warm: a rollback is instant
        if not plan.rollout.pinned:
            wanted.add(revisions[-1].name)  # the newest must run to become ready
        scaling = self._scaling(name, kind)
        for row in revisions:
            if row.name in wanted:
                self._autoscaled[row.name] = (name, kind)
                replicas = self._scaled.get(
                    row.name, scaling.initial_replicas if scaling else component.min_replicas
                )
                await self._scale(name, row, replicas)
            else:
                self._autoscaled.pop(row.name, None)
                self._scaled.pop(row.name, None)
                await self._scale(name, row, 0)
        return _ComponentState(component, revisions, plan)

    def _revise(
        self, name: str, kind: str, component: Component, revisions: list[RevisionRow], current: Rollout
    ) -> Rollout:
        """Add a revision when what should run changed (appending it to `revisions`); returns the
        rollout pointers, which going back to the rolled-out revision pins."""
        key = component.revision_key()
        if revisions and revisions[-1].key == key:
            return current
        rolled_out = next((r for r in revisions if r.name == current.latest), None)
        if rolled_out is not None and rolled_out.key == key:
            # Back to what takes the traffic (a rollback, a withdrawn canary): newer revisions get none.
            if not current.pinned:
                current = dataclasses.replace(current, pinned=True)
                self.store.set_rollout(name, kind, current)
            return current
        row = self.store.add_revision(name, kind, key, dataclasses.asdict(component))
        self.store.add_event(
            "InferenceService", name, "Normal", "RevisionCreated", f"{kind} revision {row.name}"
        )
        revisions.append(row)
        return self.store.rollout(name, kind)  # a new revision clears a rollback's pin

    def is_ready(self, revision: str) -> bool:
        return self._counts_as_ready(revision)

    def rolled_out(self, name: str) -> str | None:
        """The predictor revision that takes the traffic of service `name` (KServe's rolled-out one)."""
        return self.store.rollout(name, "predictor").latest

    def manifest_problems(self, resources: list[Resource]) -> list[Problem]:
        """What the engine could not run in `resources` (see Engine.manifest_problems)."""
        return self.engine.manifest_problems(resources)

    def serving_component(self, name: str, kind: str = "predictor") -> Component | None:
        """What the rolled-out revision of service `name` runs; None before one is rolled out."""
        latest = self.store.rollout(name, kind).latest
        row = next((r for r in self.store.revisions(name, kind) if r.name == latest), None)
        return _component_from(row.spec) if row is not None else None

    def mark(self, name: str) -> None:
        """Reconcile service `name` again soon (its traffic or routes changed)."""
        self._mark(name)

    def _counts_as_ready(self, revision: str) -> bool:
        """Ready: replicas answer, or the autoscaler took a once-ready revision to zero (it is still
        the one serving: the next request brings a replica back)."""
        pool = self.pools.get(revision)
        if pool is not None and pool.size > 0:
            self._was_ready.add(revision)
            return True
        return revision in self._was_ready and self._scaled.get(revision) == 0

    def _scaling(self, name: str, kind: str) -> ScalingConfig | None:
        try:
            return self.services[name].scaling(kind, self.scaling_defaults)
        except ConfigError as exc:  # a manifest stored before its fields were checked: fixed size
            log.warning("InferenceService %s %s: autoscaling off: %s", name, kind, exc)
            return None

    # -- autoscaling ------------------------------------------------------------------------------

    def scale_targets(self) -> list[ScaleTarget]:
        """Every revision that should run, as the autoscaler sizes it."""
        targets = []
        for revision, (service, kind) in self._autoscaled.items():
            scaling = self._scaling(service, kind) if service in self.services else None
            state = self._states.get(service, {}).get(kind)
            if scaling is None or state is None:
                continue
            pool = self.engine.status(revision)
            urls = tuple(r.http_url for r in pool.replicas if r.ready and r.http_url) if pool else ()
            targets.append(
                ScaleTarget(
                    service=service,
                    revision=revision,
                    config=scaling,
                    ready=len(urls),
                    desired=self._scaled.get(revision, self._desired.get(revision, 0)),
                    replica_urls=urls,
                    memory_limit_bytes=state.component.memory_bytes,
                    created=self._first_seen.setdefault(revision, time.monotonic()),
                )
            )
        return targets

    async def resize(self, revision: str, replicas: int, reason: str) -> None:
        """The autoscaler's decision for one revision: applied by the next reconcile."""
        owner = self._autoscaled.get(revision)
        if owner is None or self._scaled.get(revision) == replicas or not self.leading:
            return  # retired meanwhile, already asked for, or the leader's to decide
        self._scaled[revision] = replicas
        self.store.add_event("InferenceService", owner[0], "Normal", "Scaled", f"{revision}: {reason}")
        self._mark(owner[0])

    def _starved(self, revision: str) -> None:
        """Requests wait for a revision with no ready replica: scale it from zero at once."""
        if self.autoscaler is not None and self._scaled.get(revision) == 0:
            self.autoscaler.poke(revision)

    def _referenced(self, name: str) -> set[str]:
        """Revisions an experiment variant or a shadow names: they run whatever their traffic share."""
        spec = self.services[name].spec
        named = {v.revision for v in spec.experiment.variants} if spec.experiment else set()
        if spec.shadow is not None:
            named.add(spec.shadow.revision)
        return {r for r in named if r}

    async def _retire(self, revision: str) -> None:
        pool = self.pools.get(revision)
        if pool is not None:
            await pool.wait_idle(quiet_s=RETIRE_QUIET_S, limit_s=RETIRE_LIMIT_S)
        # Removal itself is not cancelled half-way: past this point the replicas drain and stop.
        await asyncio.shield(self.engine.remove(revision))
        self._retiring.pop(revision, None)
        if revision not in self._owner:
            self.pools.pop(revision, None)  # its service is gone

    def _replica_spec(self, service: str, row: RevisionRow) -> ReplicaSpec:
        c = _component_from(row.spec)
        env = c.env
        # Replicas resolve registry:// URIs themselves (and verify them): those of a registry model,
        # and multi-model pools (their TrainedModels may name one). Only they: what a replica runs
        # stays the same whichever gateway of several on one state made it.
        if self._follower is not None and (is_registry_uri(c.storage_uri) or not c.storage_uri):
            env += self._follower.env()
        if row.component == "transformer":
            # The transformer calls its predictor through this gateway (predictors.transformer).
            protocol = self.services[service].components()["predictor"].protocol
            env += (("SERVEGATE_PREDICTOR_URL", self.gateway_url), ("SERVEGATE_PREDICTOR_PROTOCOL", protocol))
            if self.credentials is not None:  # its calls may infer on this service only
                env += ((CALLER_ENV, self.credentials.caller_token(service)),)
            if self.gateway_cert is not None:  # a gateway serving TLS: trust exactly its certificate
                env += ((GATEWAY_CERT_ENV, str(self.gateway_cert)),)
        if self.storage_policy is not None:  # after the manifest's env: the later value wins
            env += tuple(self.storage_policy.to_env().items())
        # Always, and after the manifest's env: the operator names trusted sources, not a manifest.
        env += tuple(self.trust.env().items())
        return dataclasses.replace(replica_spec(service, row.component, row.name, c), env=env)

    async def _scale(self, service: str, row: RevisionRow, count: int) -> None:
        revision = row.name
        if self._desired.get(revision, 0) == count:
            return
        self._desired[revision] = count
        if count == 0:
            self._to_retire.add(revision)
            return
        self._to_retire.discard(revision)
        retiring = self._retiring.pop(revision, None)
        if retiring is not None:
            retiring.cancel()  # wanted again (a rollback): keep the replicas it still has
            await asyncio.gather(retiring, return_exceptions=True)
        self._owner[revision] = service
        component = _component_from(row.spec)
        self.pools.setdefault(
            revision,
            Pool(
                revision,
                component.container_concurrency,
                on_starved=self._starved,
                activation_timeout_s=self.activation_timeout_s,
                token=self.credentials.pool_token(revision) if self.credentials else None,
            ),
        )
        await self.engine.scale(self._replica_spec(service, row), count)

    # -- routes -----------------------------------------------------------------------------------

    def _split(
        self, service: str, traffic: tuple[tuple[str, int], ...], component: str = "predictor"
    ) -> Split:
        ready = {rev for rev, _ in traffic if rev in self.pools and self.pools[rev].size > 0}
        # Nothing ready (a lone replica restarting): keep the configured split and let requests
        # queue for the replacement rather than fail at once.
        weights = effective_weights(traffic, ready) or [(rev, w) for rev, w in traffic if rev in self.pools]
        return Split(
            tuple((Backend(rev, service, self.pools[rev], component=component), w) for rev, w in weights)
        )

    def _table(self) -> RoutingTable:
        services = {}
        for name, isvc in self.services.items():
            states = self._states.get(name)
            if not states:
                continue
            predictor = self._split(name, states["predictor"].plan.traffic)
            transformer = (
                self._split(name, states["transformer"].plan.traffic, "transformer")
                if "transformer" in states
                else None
            )
            component = states["predictor"].component
            services[name] = ServiceRoute(
                service=name,
                protocol=component.protocol,
                timeout_s=component.timeout_s or DEFAULT_TIMEOUT_S,
                predictor=predictor,
                transformer=transformer,
                experiment=self._experiment(name, isvc, predictor),
                shadow=self._shadow(name, isvc),
                loggers={kind: spec for kind, state in states.items() if (spec := _logger(state.component))},
            )
        return RoutingTable(services=services, models=self._model_routes(), graphs=self._graph_runners())

    def _targets(self) -> dict[str, Target]:
        """Every name the data plane answers to, as a permission target: its namespace, the names
        a `--service` token may use for it, and whether it is open to anonymous inference."""
        targets = {}
        for name, isvc in self.services.items():
            anonymous = isvc.metadata.annotations.get(ANONYMOUS_INFERENCE_ANNOTATION, "") == "true"
            targets[name] = Target(isvc.metadata.namespace, frozenset({name}), anonymous)
        for name, tm in self.trained_models.items():
            host = targets.get(tm.spec.inference_service)
            targets[name] = Target(
                tm.metadata.namespace,
                frozenset({name, tm.spec.inference_service}),
                host.anonymous_inference if host else False,
            )
        for name, graph in self.graphs.items():
            targets[name] = Target(graph.metadata.namespace, frozenset({name}))
        return targets

    def _model_routes(self) -> dict[str, ModelRoute]:
        routes = {}
        for name, tm in self.trained_models.items():
            host = self.services.get(tm.spec.inference_service)
            if host is None:
                continue
            limit = host.metadata.annotations.get(MAX_MODELS_ANNOTATION, "0")
            budget = Budget(
                max_models=int(limit) if limit.isdigit() else 0,
                memory_bytes=host.components()["predictor"].memory_bytes,
            )
            model = tm.spec.model
            uri = self._follower.pinned(model.storage_uri) if self._follower else model.storage_uri
            routes[name] = ModelRoute(name, host.metadata.name, uri, model.framework, tm.memory_bytes, budget)
        return routes

    def _graph_runners(self) -> dict[str, Any]:
        from router.graphs import step_caller
        from router.policies.graph import GraphRunner

        runners = self._runners
        for name, graph in self.graphs.items():
            if name not in runners or runners[name][0] is not graph:
                runners[name] = (graph, GraphRunner(graph, step_caller(self.router)))
        for name in set(runners) - set(self.graphs):
            del runners[name]
        return {name: runner for name, (_, runner) in runners.items()}

    def _experiment(self, name: str, isvc: InferenceService, own: Split) -> Experiment | None:
        spec = isvc.spec.experiment
        if spec is None:
            return None
        variants = []
        for v in spec.variants:
            split = own if not (v.service or v.revision) else None
            if v.revision:
                split = self._split(name, ((v.revision, 100),)) if v.revision in self.pools else Split()
            variants.append(Variant(v.name, v.weight, split, v.service))
        how, _, key = (spec.sticky_by or "header:x-user-id").partition(":")
        return Experiment(
            tuple(variants),
            header=key.lower() if how == "header" else None,
            cookie=key if how == "cookie" else None,
        )

    def _shadow(self, name: str, isvc: InferenceService) -> Shadow | None:
        """The spec's shadow; while a rollout mirrors requests to its canary, that instead."""
        mirrored = self.rollouts.shadow(name) if self.rollouts is not None else None
        if mirrored is not None:
            canary, percent = mirrored
            return Shadow(percent, self._split(name, ((canary, 100),)) if canary in self.pools else Split())
        spec = isvc.spec.shadow
        if spec is None:
            return None
        split = None
        if spec.revision:
            split = self._split(name, ((spec.revision, 100),)) if spec.revision in self.pools else Split()
        return Shadow(spec.percent, split, spec.service)


def _image(component: Component) -> str | None:
    """The image of a custom-container component (KServe's `containers`), else None."""
    if not component.containers:
        return None
    containers = json.loads(component.container_spec or "[]")
    first = containers[0] if isinstance(containers, list) and containers else {}
    return str(first.get("image") or "custom container") if isinstance(first, dict) else "custom container"


def _logger(component: Component) -> LoggerSpec | None:
    if not component.logger_url:
        return None
    return LoggerSpec(component.logger_url, component.logger_mode)


def replica_spec(service: str, kind: str, revision: str, c: Component) -> ReplicaSpec:
    """What every replica of `revision` (component `kind` of `service`) runs, from the manifest alone;
    the controller adds the variables only a running gateway knows."""
    return ReplicaSpec(
        revision=revision,
        models=(ServedModelRef(service, c.storage_uri, c.format),) if c.storage_uri else (),
        max_batch_size=c.max_batch_size,
        max_latency_ms=c.max_latency_ms,
        gpus=c.gpus,
        cpus=c.cpus,
        memory_bytes=c.memory_bytes,
        env=c.env,
        args=c.args,
        image=_image(c),
        node_selector=c.node_selector,
        threads=c.threads,
        service=service,
        component=kind,
        pod=c.pod,
    )


def _component_from(spec: dict[str, Any]) -> Component:
    fields = dict(spec)
    fields["env"] = tuple(tuple(pair) for pair in fields.get("env", ()))
    fields["args"] = tuple(fields.get("args", ()))
    fields["node_selector"] = tuple(tuple(pair) for pair in fields.get("node_selector", ()))
    return Component(**fields)
