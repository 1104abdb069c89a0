"""The cluster's own controllers: Deployments -> Pods, the node's kubelet, Services -> EndpointSlices.

They run in the server's loop, wake on any write to the kinds they watch, reconcile everything
(the fake holds a handful of objects), and write only what differs, so they settle.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging

from tests.kube_api._cluster import Cluster, random_suffix
from tests.kube_api._kubelet import NODE_NAME, Kubelet, NodeKubelet, conditions, is_deleting, is_ready
from tests.kube_api._resources import Resource
from tests.kube_api._selectors import selector_of
from tests.kube_api._store import Event

log = logging.getLogger(__name__)

CONTROLLER_MANAGER = "kube-controller-manager"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
_SLICE_CONTROLLER = "endpointslice-controller.k8s.io"


def _controller_uid(obj: dict) -> str | None:
    refs = obj["metadata"].get("ownerReferences") or ()
    return next((ref["uid"] for ref in refs if ref.get("controller")), None)


def template_hash(template: dict) -> str:
    """A `pod-template-hash` label value: 10 characters of Kubernetes' safe alphabet."""
    number = int.from_bytes(hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()[:8], "big")
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    chars = []
    for _ in range(10):
        number, index = divmod(number, len(alphabet))
        chars.append(alphabet[index])
    return "".join(chars)


def _max_unavailable(spec: dict, replicas: int) -> int:
    value = ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxUnavailable", "25%")
    if isinstance(value, str) and value.endswith("%"):
        return replicas * int(value[:-1]) // 100
    return int(value)


class Controllers:
    """The Deployment controller, the kubelet and the EndpointSlice controller of the fake cluster."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        kubelet: Kubelet | None = None,
        ready_delay: float = 0.0,
        first_pod_ip: str = "127.0.0.2",
    ) -> None:
        self.cluster = cluster
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: asyncio.Event | None = None
        registry = cluster.registry
        self._deployments = self._served(registry.find("apps", "v1", "deployments"))
        self._pods = self._served(registry.find("", "v1", "pods"))
        self._services = self._served(registry.find("", "v1", "services"))
        self._slices = self._served(registry.find("discovery.k8s.io", "v1", "endpointslices"))
        self._watched = {r.storage_key for r in (self._deployments, self._pods, self._services, self._slices)}
        self.kubelet = NodeKubelet(
            cluster, self._pods, start=kubelet, ready_delay=ready_delay, first_pod_ip=first_pod_ip
        )

    @staticmethod
    def _served(resource: Resource | None) -> Resource:
        if resource is None:
            raise ValueError(
                "the built-in controllers need deployments, pods, services and endpointslices served"
            )
        return resource

    def _on_write(self, event: Event) -> None:
        if event.resource.storage_key in self._watched and self._loop is not None and self._dirty is not None:
            self._loop.call_soon_threadsafe(self._dirty.set)

    async def run(self) -> None:
        """Reconcile after every relevant write, until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._dirty = asyncio.Event()
        self.cluster.store.add_listener(self._on_write)
        self._dirty.set()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                self._reconcile()
            except Exception:
                log.exception("kube_api fake: a controller failed")

    async def aclose(self) -> None:
        """Let pods being started finish starting, then stop every pod the kubelet started."""
        await self.kubelet.aclose()

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> dict:
        return self.kubelet.set_pod_ready(namespace, name, ready)

    def _reconcile(self) -> None:
        store = self.cluster.store
        with store.lock:
            pods = store.list(self._pods)
            for deployment in store.list(self._deployments):
                if not is_deleting(deployment):
                    uid = deployment["metadata"]["uid"]
                    owned = [p for p in pods if _controller_uid(p) == uid and not is_deleting(p)]
                    self._deployment(deployment, owned)
            self.kubelet.sync(store.list(self._pods))
            self._endpoint_slices()

    # -- Deployments

    def _new_pod(self, deployment: dict, pod_hash: str) -> None:
        meta = deployment["metadata"]
        template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
        template_meta = template.get("metadata") or {}
        pod_meta = {
            "name": f"{meta['name']}-{pod_hash}-{random_suffix(self.cluster.rng)}",
            "namespace": meta["namespace"],
            "labels": {**(template_meta.get("labels") or {}), "pod-template-hash": pod_hash},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if template_meta.get("annotations"):
            pod_meta["annotations"] = template_meta["annotations"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template.get("spec") or {}}
        self.cluster.write(pod, manager=CONTROLLER_MANAGER)

    def _delete_pods(self, pods: list[dict]) -> None:
        for pod in pods:
            meta = pod["metadata"]
            if self.cluster.store.get(self._pods, meta["namespace"], meta["name"]) is not None:
                self.cluster.store.delete(self._pods, meta["namespace"], meta["name"], "Background")

    def _deployment(self, deployment: dict, owned: list[dict]) -> None:
        spec = deployment.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        pod_hash = template_hash(spec.get("template") or {})
        current = [
            p for p in owned if (p["metadata"].get("labels") or {}).get("pod-template-hash") == pod_hash
        ]
        old = [p for p in owned if p not in current]
        # the least useful pods go first: not ready, then the newest
        current.sort(
            key=lambda p: (not is_ready(p), p["metadata"]["creationTimestamp"], p["metadata"]["name"])
        )
        old.sort(key=lambda p: (is_ready(p), p["metadata"]["creationTimestamp"]))
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        if recreate:
            self._delete_pods(old)
        for _ in range(replicas - len(current)):
            self._new_pod(deployment, pod_hash)
        self._delete_pods(current[replicas:])
        if not recreate:
            # roll: an old pod goes once a new one is ready to take its place
            ready_current = sum(is_ready(p) for p in current[:replicas])
            keep = max(0, replicas - ready_current)
            self._delete_pods(old[: max(0, len(old) - keep)])
        self._deployment_status(deployment, replicas, pod_hash)

    def _deployment_status(self, deployment: dict, replicas: int, pod_hash: str) -> None:
        meta = deployment["metadata"]
        pods = [
            p
            for p in self.cluster.store.list(self._pods, meta["namespace"])
            if _controller_uid(p) == meta["uid"] and not is_deleting(p)
        ]
        updated = [
            p for p in pods if (p["metadata"].get("labels") or {}).get("pod-template-hash") == pod_hash
        ]
        ready = sum(is_ready(p) for p in pods)
        available = ready >= replicas - _max_unavailable(deployment.get("spec") or {}, replicas)
        complete = len(updated) == replicas == len(pods) and sum(is_ready(p) for p in updated) == replicas
        replica_set = f"{meta['name']}-{pod_hash}"
        old_status = deployment.get("status") or {}
        counts = {
            "replicas": len(pods),
            "updatedReplicas": len(updated),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, replicas - ready),
        }
        status = {"observedGeneration": meta.get("generation", 1)}
        status.update({k: v for k, v in counts.items() if v})  # Kubernetes omits zero counts
        status["conditions"] = conditions(
            old_status.get("conditions") or [],
            [
                (
                    "Available",
                    available,
                    "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                    "Deployment has minimum availability."
                    if available
                    else "Deployment does not have minimum availability.",
                ),
                (
                    "Progressing",
                    True,
                    "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                    f'ReplicaSet "{replica_set}" has successfully progressed.'
                    if complete
                    else f'ReplicaSet "{replica_set}" is progressing.',
                ),
            ],
            deployment=True,
        )
        if status != old_status:
            latest = self.cluster.store.get(self._deployments, meta["namespace"], meta["name"])
            if latest is not None:
                latest["status"] = status
                self.cluster.write(latest, manager=CONTROLLER_MANAGER, subresource="status")

    # -- EndpointSlices

    def _endpoint_slices(self) -> None:
        store = self.cluster.store
        slices = store.list(self._slices)
        for service in store.list(self._services):
            selector = (service.get("spec") or {}).get("selector")
            if not selector or is_deleting(service):
                continue
            meta = service["metadata"]
            matches = selector_of({"matchLabels": selector})
            pods = [
                p
                for p in store.list(self._pods, meta["namespace"])
                if matches(p["metadata"].get("labels") or {})
                and (p.get("status") or {}).get("podIP")
                and (p.get("status") or {}).get("phase") not in ("Failed", "Succeeded")
            ]
            wanted = {
                "addressType": "IPv4",
                "endpoints": [self._endpoint(p) for p in pods],
                "ports": self._slice_ports(service, pods),
            }
            mine = [
                s
                for s in slices
                if s["metadata"].get("namespace") == meta["namespace"]
                and (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == meta["name"]
                and (s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == _SLICE_CONTROLLER
            ]
            labels = {
                **(meta.get("labels") or {}),
                SERVICE_NAME_LABEL: meta["name"],
                MANAGED_BY_LABEL: _SLICE_CONTROLLER,
            }
            if mine:
                current = mine[0]
                if (
                    all(current.get(k) == v for k, v in wanted.items())
                    and current["metadata"].get("labels") == labels
                ):
                    continue
                current.update(wanted)
                current["metadata"]["labels"] = labels
                self.cluster.write(current, manager=CONTROLLER_MANAGER)
                continue
            owner = {
                "apiVersion": "v1",
                "kind": "Service",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
            slice_meta = {
                "name": f"{meta['name']}-{random_suffix(self.cluster.rng)}",
                "generateName": f"{meta['name']}-",
                "namespace": meta["namespace"],
                "labels": labels,
                "ownerReferences": [owner],
            }
            body = {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": slice_meta,
                **wanted,
            }
            self.cluster.write(body, manager=CONTROLLER_MANAGER)

    @staticmethod
    def _endpoint(pod: dict) -> dict:
        meta, status = pod["metadata"], pod.get("status") or {}
        ready, terminating = is_ready(pod), is_deleting(pod)
        return {
            "addresses": [status["podIP"]],
            "conditions": {"ready": ready and not terminating, "serving": ready, "terminating": terminating},
            "targetRef": {
                "kind": "Pod",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
            "nodeName": (pod.get("spec") or {}).get("nodeName", NODE_NAME),
        }

    @staticmethod
    def _slice_ports(service: dict, pods: list[dict]) -> list[dict]:
        ports = []
        for port in (service.get("spec") or {}).get("ports") or ():
            target = port.get("targetPort", port.get("port"))
            if isinstance(target, str):  # a named container port: resolved on the pods
                named = [
                    p["containerPort"]
                    for pod in pods
                    for c in (pod.get("spec") or {}).get("containers") or ()
                    for p in c.get("ports") or ()
                    if p.get("name") == target
                ]
                if not named:
                    continue
                target = named[0]
            entry = {"name": port.get("name", ""), "port": target, "protocol": port.get("protocol", "TCP")}
            if port.get("appProtocol"):
                entry["appProtocol"] = port["appProtocol"]
            ports.append(entry)
        return ports
