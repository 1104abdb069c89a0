"""A Pod as the router and the status see a replica: pure functions of the Pod object (a dict in the
API's own JSON spelling), so the whole mapping is tested as a table."""

from __future__ import annotations

from typing import Any

from serving.engines.base import ReplicaInfo, ReplicaState
from serving.engines.kubernetes.names import REVISION_LABEL

__all__ = ["replica_of", "revision_of", "unschedulable"]

#: container waiting reasons that mean it will not start by itself soon (the pod is failing).
_FAILING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def revision_of(pod: dict[str, Any]) -> str | None:
    return (pod.get("metadata", {}).get("labels") or {}).get(REVISION_LABEL)


def replica_of(pod: dict[str, Any], http_port: int, grpc_port: int, was_ready: bool = False) -> ReplicaInfo:
    """The replica a Pod is: its state, where it listens (the pod's IP), restarts, node and why it is
    not ready. A pod being deleted is DRAINING: it takes no new requests while it finishes. A running
    pod that is not ready is STARTING, or UNHEALTHY when it `was_ready` (its checks fail now)."""
    metadata, status = pod.get("metadata", {}), pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    ip = status.get("podIP")
    host = f"[{ip}]" if ip and ":" in ip else ip
    http_url = f"http://{host}:{http_port}" if ip else None
    grpc_target = f"{host}:{grpc_port}" if ip else None
    state, reason = _state(metadata, status, containers)
    if state is ReplicaState.STARTING and was_ready and status.get("phase") == "Running":
        state = ReplicaState.UNHEALTHY
    return ReplicaInfo(
        id=metadata.get("name", ""),
        revision=revision_of(pod) or "",
        state=state,
        http_url=http_url,
        grpc_target=grpc_target,
        restarts=restarts,
        reason=reason,
        node=(pod.get("spec") or {}).get("nodeName") or "",
    )


def unschedulable(pod: dict[str, Any]) -> str | None:
    """Why the scheduler cannot place a pending pod (its PodScheduled condition), else None."""
    condition = _condition(pod.get("status") or {}, "PodScheduled")
    if (
        condition is not None
        and condition.get("status") == "False"
        and condition.get("reason") == "Unschedulable"
    ):
        return condition.get("message") or "no node can run it"
    return None


def _state(
    metadata: dict[str, Any], status: dict[str, Any], containers: list[dict[str, Any]]
) -> tuple[ReplicaState, str]:
    if metadata.get("deletionTimestamp"):
        return ReplicaState.DRAINING, "being deleted"
    phase = status.get("phase") or "Pending"
    if phase in ("Failed", "Succeeded"):
        return ReplicaState.FAILED, status.get("message") or status.get("reason") or f"pod {phase.lower()}"
    failing = _failing(containers)
    if failing:
        return ReplicaState.FAILED, failing
    if phase == "Pending":
        scheduled = _condition(status, "PodScheduled")
        if scheduled is None or scheduled.get("status") != "True":
            message = (scheduled or {}).get("message") or "waiting for a node"
            return ReplicaState.PENDING, message
        return ReplicaState.STARTING, _waiting(containers) or "containers starting"
    ready = _condition(status, "Ready")
    if ready is not None and ready.get("status") == "True":
        return ReplicaState.READY, ""
    return ReplicaState.STARTING, (ready or {}).get("message") or "readiness check not passed yet"


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _failing(containers: list[dict[str, Any]]) -> str:
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _FAILING:
            last = ((c.get("lastState") or {}).get("terminated")) or {}
            exit_text = f"; last exit code {last['exitCode']}" if "exitCode" in last else ""
            message = waiting.get("message") or ""
            return f"{waiting['reason']}{': ' + message if message else ''}{exit_text}"
    return ""


def _waiting(containers: list[dict[str, Any]]) -> str:
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return str(waiting["reason"])
    return ""
