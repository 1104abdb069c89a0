"""The fake cluster's one node: a kubelet that schedules pods onto it, gives each the next loopback
address, starts it through a pluggable function and reports its status in Kubernetes' shapes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ipaddress
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from tests.kube_api._cluster import Cluster
from tests.kube_api._resources import Resource
from tests.kube_api._store import timestamp

log = logging.getLogger(__name__)

NODE_NAME = "kube-api-fake-node"
HOST_IP = "127.0.0.1"


def _nothing() -> None:
    pass


@dataclass
class PodRuntime:
    """A pod as a kubelet started it.

    `ready_after`: seconds after the start at which the pod turns Ready by itself; None leaves it
    not Ready until the test calls `KubeApi.set_pod_ready`. `stop`: called once, in a worker
    thread, when the pod is deleted (or the fake stops)."""

    ready_after: float | None = 0.0
    stop: Callable[[], None] = field(default=_nothing)


#: called in a worker thread with the scheduled pod (spec.nodeName and status.podIP already set)
Kubelet = Callable[[dict], PodRuntime]


def is_ready(pod: dict) -> bool:
    found = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in found)


def is_deleting(obj: dict) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def conditions(old: list[dict], wanted: list[tuple[str, bool, str, str]], *, deployment: bool) -> list[dict]:
    """Conditions as Kubernetes writes them, keeping the timestamps of those that did not change."""
    previous = {c.get("type"): c for c in old or ()}
    now = timestamp()
    result = []
    for kind, status, reason, message in wanted:
        condition = {"type": kind, "status": "True" if status else "False"}
        if reason:
            condition.update(reason=reason, message=message)
        before = previous.get(kind) or {}
        if deployment:
            same = all(before.get(k) == v for k, v in condition.items())
            condition["lastUpdateTime"] = before.get("lastUpdateTime", now) if same else now
        kept = before.get("status") == condition["status"]
        condition["lastTransitionTime"] = before.get("lastTransitionTime", now) if kept else now
        result.append(condition)
    return result


class NodeKubelet:
    """Runs the pods scheduled on the node: `sync` after every pod write, from the server's loop."""

    def __init__(
        self,
        cluster: Cluster,
        pods: Resource,
        *,
        start: Kubelet | None = None,
        ready_delay: float = 0.0,
        first_pod_ip: str = "127.0.0.2",
    ) -> None:
        self.cluster = cluster
        self._pods = pods
        self._start_pod = start or (lambda pod: PodRuntime(ready_after=ready_delay))
        self._next_ip = ipaddress.IPv4Address(first_pod_ip)
        self._runtimes: dict[str, PodRuntime | None] = {}  # pod uid -> runtime (None while starting)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()

    def sync(self, pods: list[dict]) -> None:
        """Start the pods new on the node, stop the ones gone or going."""
        alive = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            phase = (pod.get("status") or {}).get("phase")
            node = (pod.get("spec") or {}).get("nodeName")
            if is_deleting(pod) or phase in ("Failed", "Succeeded") or node not in (None, "", NODE_NAME):
                continue  # a pod put on another node is the test's to run
            alive.add(uid)
            if uid not in self._runtimes:
                self._runtimes[uid] = None
                self._spawn(self._start(self._schedule(pod)))
        for uid in [uid for uid in self._runtimes if uid not in alive]:
            runtime = self._runtimes.pop(uid)
            if timer := self._timers.pop(uid, None):
                timer.cancel()
            if runtime is not None:
                self._spawn(asyncio.to_thread(self._stop_quietly, runtime))

    def _spawn(self, coroutine: Coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _schedule(self, pod: dict) -> dict:
        """Place the pod on the one node and give it the next loopback address, still Pending."""
        ip = str(self._next_ip)
        self._next_ip += 1
        pod = copy.deepcopy(pod)
        pod["spec"]["nodeName"] = NODE_NAME
        pod["status"] = self._pod_status(pod, "Pending", ready=False, ip=ip)
        return self.cluster.write(pod, manager="kube-scheduler")

    async def _start(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        try:
            runtime = await asyncio.to_thread(self._start_pod, copy.deepcopy(pod))
        except Exception as error:
            log.exception("kube_api fake: the kubelet failed to start pod %s", pod["metadata"]["name"])
            self._runtimes.pop(uid, None)
            message = f"the kubelet failed: {error!r}"
            self._update_pod(pod, lambda p: self._pod_status(p, "Failed", ready=False, error=message))
            return
        if uid not in self._runtimes:  # deleted while starting
            await asyncio.to_thread(self._stop_quietly, runtime)
            return
        self._runtimes[uid] = runtime
        ready = runtime.ready_after == 0
        self._update_pod(pod, lambda p: self._pod_status(p, "Running", ready=ready))
        if runtime.ready_after:
            meta = pod["metadata"]
            self._timers[uid] = asyncio.get_running_loop().call_later(
                runtime.ready_after, self._turn_ready, meta["namespace"], meta["name"], uid
            )

    def _turn_ready(self, namespace: str, name: str, uid: str) -> None:
        if self._timers.pop(uid, None) is None:
            return  # the test set the pod's readiness first
        with contextlib.suppress(KeyError):  # deleted meanwhile
            self.set_pod_ready(namespace, name, True, uid)

    def _update_pod(self, pod: dict, status: Callable[[dict], dict]) -> dict | None:
        meta = pod["metadata"]
        with self.cluster.store.lock:
            live = self.cluster.store.get(self._pods, meta["namespace"], meta["name"])
            if live is None or live["metadata"]["uid"] != meta["uid"]:
                return None
            live["status"] = status(live)
            return self.cluster.write(live, manager="kubelet", subresource="status")

    def set_pod_ready(self, namespace: str, name: str, ready: bool, uid: str | None = None) -> dict:
        """Turn a Running pod's Ready condition (and its containers' `ready`) on or off."""
        pod = self.cluster.store.get(self._pods, namespace, name)
        if pod is None or (uid and pod["metadata"]["uid"] != uid):
            raise KeyError(f"no pod {namespace}/{name}")
        self._timers.pop(pod["metadata"]["uid"], None)
        updated = self._update_pod(pod, lambda p: self._pod_status(p, "Running", ready=ready))
        if updated is None:
            raise KeyError(f"no pod {namespace}/{name}")
        return updated

    @staticmethod
    def _pod_status(pod: dict, phase: str, *, ready: bool, ip: str | None = None, error: str = "") -> dict:
        old = pod.get("status") or {}
        ip = ip or old.get("podIP")
        now = timestamp()
        started = old.get("startTime", now)
        containers = []
        for container in (pod.get("spec") or {}).get("containers") or ():
            before = next(
                (c for c in old.get("containerStatuses") or () if c.get("name") == container["name"]), {}
            )
            if phase == "Running":
                state = before.get("state") if "running" in (before.get("state") or {}) else None
                state = state or {"running": {"startedAt": now}}
            elif phase == "Failed":
                state = {
                    "terminated": {"exitCode": 1, "reason": "Error", "message": error, "finishedAt": now}
                }
            else:
                state = {"waiting": {"reason": "ContainerCreating"}}
            containers.append(
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "containerID": f"containerd://{pod['metadata']['uid']}-{container['name']}",
                    "ready": ready,
                    "restartCount": before.get("restartCount", 0),
                    "started": phase == "Running",
                    "state": state,
                }
            )
        status = {
            "phase": phase,
            "conditions": conditions(
                old.get("conditions") or [],
                [
                    ("PodReadyToStartContainers", ip is not None, "", ""),
                    ("Initialized", True, "", ""),
                    (
                        "Ready",
                        ready,
                        "" if ready else "ContainersNotReady",
                        "" if ready else "containers not ready",
                    ),
                    (
                        "ContainersReady",
                        ready,
                        "" if ready else "ContainersNotReady",
                        "" if ready else "containers not ready",
                    ),
                    ("PodScheduled", True, "", ""),
                ],
                deployment=False,
            ),
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "startTime": started,
            "containerStatuses": containers,
            "qosClass": old.get("qosClass", "BestEffort"),
        }
        if ip:
            status.update(podIP=ip, podIPs=[{"ip": ip}])
        if error:
            status["message"] = error
        return status

    async def aclose(self) -> None:
        """Let pods being started finish starting, then stop every pod the kubelet started."""
        for timer in self._timers.values():
            timer.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        runtimes = [runtime for runtime in self._runtimes.values() if runtime is not None]
        self._runtimes.clear()
        for runtime in runtimes:
            await asyncio.to_thread(self._stop_quietly, runtime)

    @staticmethod
    def _stop_quietly(runtime: PodRuntime) -> None:
        try:
            runtime.stop()
        except Exception:
            log.exception("kube_api fake: a pod's stop() failed")
