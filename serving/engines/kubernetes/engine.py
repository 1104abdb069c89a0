"""KubernetesEngine: every revision is a Deployment and a Service, every replica a Pod.

Kubernetes runs, restarts and health-checks the replicas (the readiness probe is the replica's
`/v2/health/ready`); this engine applies what a revision is (render.py) with server-side apply under
one field manager, sets its replica count through the scale subresource, and watches the Pods of
the namespace that it made. The router gets each ready Pod's own address, as with the other
engines, so the gateway must reach pod IPs: run it in the cluster (`servegate install`).

Replicas outlive the gateway: a gateway that starts again lists the Pods and Deployments it made
(its `owner` label) and keeps what its revisions still need; `release_unclaimed` deletes the rest.
The Pod watch (informer.py) restarts where it stopped after a dropped connection, and lists again
when the API says its place is too old (410 Gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.auth.internal import InternalCredentials
from serving.engines.base import Engine, PoolStatus, ReplicaInfo, ReplicaSpec, ReplicaState
from serving.engines.kubernetes import admission, render
from serving.engines.kubernetes.api import KubeApi, KubernetesUnavailable
from serving.engines.kubernetes.informer import Reporter, list_then_watch
from serving.engines.kubernetes.names import MANAGED_BY, MANAGED_BY_LABEL, OWNER_LABEL
from serving.engines.kubernetes.pods import replica_of, revision_of, unschedulable
from serving.spec.common import Problem
from serving.spec.manifests import Resource

__all__ = ["KubernetesEngine", "KubernetesUnavailable"]

log = logging.getLogger(__name__)

_EVENTS_KEPT = 20
#: seconds a watch request lasts before it is made again (the API closes long ones itself).
_WATCH_S = 240
#: seconds between attempts to apply or scale while the API cannot be reached: first, ceiling.
_RETRY_S = 1.0
_RETRY_MAX_S = 30.0


@dataclass(eq=False)
class _Pool:
    spec: ReplicaSpec
    desired: int = 0
    #: the replica count last set through the scale subresource (None: not yet).
    scaled: int | None = None
    applied: bool = False
    #: why the last apply or scale failed ("" when it did not): the pool is not schedulable.
    error: str = ""
    failures: int = 0
    retry: asyncio.Task[None] | None = None
    events: list[str] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class KubernetesEngine(Engine):
    """Runs revisions in namespace `placement.namespace` of the cluster `api` talks to.

    Several gateways may share the replicas: the leader applies and scales, followers (`lead(False)`)
    only watch the pods of what the leader runs.

    credentials: the gateway's internal tokens; each revision's pool token and the metrics token go
    into a Secret its pods read (None: replicas take any caller, for tests).
    """

    def __init__(
        self,
        api: KubeApi,
        placement: render.Placement,
        credentials: InternalCredentials | None = None,
    ) -> None:
        self.api = api
        self.placement = placement
        self.credentials = credentials
        self._pools: dict[str, _Pool] = {}
        #: revision -> pod name -> pod (the watch's view of the namespace; changed on the event loop).
        self._pods: dict[str, dict[str, dict[str, Any]]] = {}
        self._was_ready: set[str] = set()
        self._listeners: list[Callable[[str], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._listed = threading.Event()
        self._watcher: threading.Thread | None = None
        self.leading = True

    shares_replicas = True

    @property
    def selector(self) -> str:
        """The pods, deployments and services this gateway made."""
        own = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        return f"{own},{OWNER_LABEL}={self.placement.owner}" if self.placement.owner else own

    # -- Engine ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.api.preflight, self.placement.namespace)
        self._loop = asyncio.get_running_loop()
        self._watcher = threading.Thread(target=self._watch_pods, name="kube-pod-watch", daemon=True)
        self._watcher.start()
        # Pods an earlier gateway left running are known before the controller restores its pools.
        await asyncio.to_thread(self._listed.wait, 30.0)

    async def scale(self, spec: ReplicaSpec, replicas: int) -> None:
        pool = self._pools.get(spec.revision)
        if pool is None or pool.spec != spec:
            pool = self._pools[spec.revision] = _Pool(spec, scaled=pool.scaled if pool else None)
        pool.desired = replicas
        if not self.leading:
            self._notify(spec.revision)
            return
        async with pool.lock:
            try:
                if not pool.applied:
                    await asyncio.to_thread(self._apply, pool.spec)
                    pool.applied = True
                if pool.scaled != pool.desired:
                    await asyncio.to_thread(
                        self.api.scale, self.placement.namespace, spec.revision, pool.desired
                    )
                    pool.scaled = pool.desired
                    self._event(pool, f"scaled to {pool.desired}")
                pool.error = ""
                pool.failures = 0
            except KubernetesUnavailable as exc:
                pool.error = str(exc)
                self._event(pool, pool.error)
                log.warning("revision %s: %s", spec.revision, exc)
                self._retry(pool)
        self._notify(spec.revision)

    def _retry(self, pool: _Pool) -> None:
        """Apply and scale `pool` again after a backoff (1 s doubling to 30 s), until it works or
        the revision is removed: a refused or unreachable API must not leave it half made."""
        delay = min(_RETRY_MAX_S, _RETRY_S * 2**pool.failures)
        pool.failures += 1

        async def again() -> None:
            await asyncio.sleep(delay)
            pool.retry = None  # this one is done waiting: a failure now schedules the next
            if self._pools.get(pool.spec.revision) is pool:
                await self.scale(pool.spec, pool.desired)

        if pool.retry is None or pool.retry.done():
            pool.retry = asyncio.create_task(again(), name=f"kube-retry-{pool.spec.revision}")

    async def remove(self, revision: str) -> None:
        pool = self._pools.pop(revision, None)
        if pool is not None:
            pool.desired = 0
            if pool.retry is not None:
                pool.retry.cancel()
        if self.leading:
            try:
                await asyncio.to_thread(self.api.delete_revision, self.placement.namespace, revision)
            except KubernetesUnavailable as exc:
                # What is left carries this gateway's owner label: the next start deletes it.
                log.warning("revision %s could not be deleted: %s", revision, exc)
        self._notify(revision)

    def lead(self, leading: bool) -> None:
        self.leading = leading
        for pool in self._pools.values():  # a new leader applies and scales everything once
            pool.applied, pool.scaled = False, None

    async def current_replicas(self, revision: str) -> int | None:
        return await asyncio.to_thread(self.api.replicas, self.placement.namespace, revision)

    def status(self, revision: str) -> PoolStatus | None:
        pool = self._pools.get(revision)
        if pool is None:
            return None
        replicas = self._replicas(revision)
        waiting = [why for p in self._pods.get(revision, {}).values() if (why := unschedulable(p))]
        reason = pool.error or (waiting[0] if waiting else "")
        return PoolStatus(
            revision=revision,
            desired=pool.desired,
            ready=sum(r.ready for r in replicas),
            replicas=replicas,
            schedulable=not reason,
            reason=reason,
            events=tuple(pool.events),
        )

    def watch(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        """Stop watching; the replicas keep running (a gateway that starts again adopts them)."""
        self._stop.set()
        self.api.interrupt()
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.join, 10.0)

    async def replica_log(self, revision: str, replica_id: str, lines: int) -> list[str] | None:
        if replica_id not in self._pods.get(revision, {}):
            return None
        return await asyncio.to_thread(self.api.pod_log, self.placement.namespace, replica_id, lines)

    def gateway_host(self, listen_host: str) -> str:
        """Its pod's address, for a gateway in the cluster listening on every address (replicas and
        the other gateways reach it there): the downward API's POD_IP, else the host name's."""
        if listen_host not in ("0.0.0.0", "::"):
            return listen_host
        return os.environ.get("POD_IP") or socket.gethostbyname(socket.gethostname())

    def manifest_problems(self, resources: list[Resource]) -> list[Problem]:
        return admission.manifest_problems(resources)

    async def release_unclaimed(self) -> None:
        """Revisions this gateway made earlier that none of its pools claimed are deleted."""
        made = await asyncio.to_thread(self.api.revisions, self.placement.namespace, self.selector)
        for revision in sorted(set(made) - set(self._pools)):
            log.info("deleting revision %s: no InferenceService of this gateway has it now", revision)
            await asyncio.to_thread(self.api.delete_revision, self.placement.namespace, revision)

    # -- applying --------------------------------------------------------------------------------

    def _apply(self, spec: ReplicaSpec) -> None:
        """The revision's Deployment (replicas left alone), Service and Secret, server-side applied."""
        namespace = self.placement.namespace
        deployment, service = render.revision_objects(spec, self.placement)
        uid = self.api.apply(deployment)["metadata"]["uid"]
        self.api.apply(service)
        tokens = {"replica-token": "", "metrics-token": ""}
        if self.credentials is not None:
            tokens = {
                "replica-token": self.credentials.pool_token(spec.revision),
                "metrics-token": self.credentials.metrics_token,
            }
        self.api.apply(render.credentials_secret(spec, self.placement, tokens, uid))
        log.info("applied revision %s in namespace %s", spec.revision, namespace)

    # -- watching --------------------------------------------------------------------------------

    def _watch_pods(self) -> None:
        """The pods this gateway made, listed and watched (see informer.py) in their own thread
        until `close`; what it sees is applied on the event loop, the one thread that reads and
        changes the pods."""
        namespace = self.placement.namespace

        def listed(pods: list[dict[str, Any]]) -> None:
            self._in_loop(self._replace_pods, pods)  # before `start` goes on: callbacks keep order
            self._listed.set()

        list_then_watch(
            lambda: self.api.list_pods(namespace, self.selector),
            lambda version: self.api.watch_pods(namespace, self.selector, version, _WATCH_S),
            listed,
            lambda kind, pod: self._in_loop(self._on_pod, kind, pod),
            self._stop,
            what="watching pods",
            report=Reporter(),
        )

    def _replace_pods(self, pods: list[dict[str, Any]]) -> None:
        seen: dict[str, dict[str, dict[str, Any]]] = {}
        for pod in pods:
            revision = revision_of(pod)
            if revision:
                seen.setdefault(revision, {})[pod["metadata"]["name"]] = pod
        changed = set(seen) | set(self._pods)
        self._pods = seen
        for revision in changed:
            self._notify(revision)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        revision = revision_of(pod)
        if not revision:
            return
        name = pod["metadata"]["name"]
        pods = self._pods.setdefault(revision, {})
        if kind == "DELETED":
            pods.pop(name, None)
            self._was_ready.discard(name)
        else:
            pods[name] = pod
        self._notify(revision)

    def _replicas(self, revision: str) -> tuple[ReplicaInfo, ...]:
        found = []
        ports = self.placement.http_port, self.placement.grpc_port
        for name, pod in sorted(self._pods.get(revision, {}).items()):
            replica = replica_of(pod, *ports, name in self._was_ready)
            if replica.state is ReplicaState.READY:
                self._was_ready.add(name)
            found.append(replica)
        return tuple(found)

    # -- listeners -------------------------------------------------------------------------------

    def _in_loop(self, apply: Callable[..., None], *args: Any) -> None:
        """`apply(*args)` on the event loop, from the pod watch's thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(apply, *args)

    def _notify(self, revision: str) -> None:
        for listener in self._listeners:
            listener(revision)

    def _event(self, pool: _Pool, text: str) -> None:
        pool.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        del pool.events[:-_EVENTS_KEPT]
