"""An InferenceService's status in KServe's shape: conditions, url, per-component revisions and
traffic, model status; plus the replica pools behind each revision (servegate's addition).

A component is ready when its newest revision takes the traffic it should (or a rollback pinned
traffic elsewhere): during a rollout, and when the newest revision cannot start, the service keeps
answering from the old revision but reports not ready, as KServe does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from serving.engines.base import Engine, PoolStatus, ReplicaState

__all__ = ["ConditionClock", "rfc3339", "service_status"]


class _State(Protocol):
    @property
    def revisions(self) -> list[Any]: ...
    @property
    def plan(self) -> Any: ...
    @property
    def component(self) -> Any: ...


def rfc3339(seconds: float) -> str:
    """Unix seconds as Kubernetes writes times (`2026-12-04T12:23:13Z`)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class ConditionClock:
    """When each condition last changed status (KServe's `lastTransitionTime`)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[bool, float]] = {}

    def stamp(self, service: str, type_: str, ok: bool) -> str:
        key = (service, type_)
        last = self._seen.get(key)
        if last is None or last[0] != ok:
            last = self._seen[key] = (ok, time.time())
        return rfc3339(last[1])

    def forget(self, service: str) -> None:
        for key in [k for k in self._seen if k[0] == service]:
            del self._seen[key]


def service_status(
    name: str,
    states: dict[str, _State],
    engine: Engine,
    gateway_url: str,
    clock: ConditionClock,
    autoscaling: Callable[[str], Any] | None = None,
) -> dict[str, Any]:
    """`autoscaling(revision)`: the autoscaler's last outcome for a revision (or None)."""
    predictor = states.get("predictor")
    protocol = predictor.component.protocol if predictor else "v1"
    path = f"/v1/models/{name}" if protocol == "v1" else f"/v2/models/{name}"

    def condition(type_: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"type": type_, "status": "True" if ok else "False"}
        out["lastTransitionTime"] = clock.stamp(name, type_, ok)
        if not ok:
            out["reason"], out["message"] = reason, message
        return out

    components: dict[str, Any] = {}
    conditions = []
    all_ready = bool(states)
    for kind, state in states.items():
        plan = state.plan
        latest = state.revisions[-1].name if state.revisions else None
        # What each revision serves: a `registry://NAME@ALIAS` pinned to the version it resolved to.
        uris = {row.name: row.spec.get("storage_uri") for row in state.revisions}
        pools = {
            row.name: {
                **_pool(pool, autoscaling(row.name) if autoscaling else None),
                "storageUri": uris[row.name],
            }
            for row in state.revisions
            if (pool := engine.status(row.name))
        }
        serving = bool(plan.traffic) and plan.latest_ready is not None
        ready = serving and (latest == plan.latest_ready or plan.rollout.pinned)
        all_ready = all_ready and ready
        components[kind] = {
            "latestCreatedRevision": latest,
            "latestReadyRevision": plan.latest_ready,
            "latestRolledoutRevision": plan.rollout.latest,
            "previousRolledoutRevision": plan.rollout.previous,
            "storageUri": uris.get(latest),
            "traffic": [
                {
                    "revisionName": rev,
                    "percent": percent,
                    "latestRevision": rev == latest,
                    "storageUri": uris.get(rev),
                }
                for rev, percent in plan.traffic
            ],
            "url": gateway_url + path,
            "replicas": pools,
        }
        reason, message = _why_not_ready(engine.status(latest) if latest else None, latest)
        if serving and not ready:
            message = f"serving from {plan.latest_ready} while the latest revision is not ready: {message}"
        conditions.append(condition(f"{kind.capitalize()}Ready", ready, reason, message))
    conditions.append(condition("IngressReady", True))
    conditions.append(condition("Ready", all_ready, "ComponentsNotReady", "a component is not ready"))
    status: dict[str, Any] = {
        "url": gateway_url + path,
        "address": {"url": gateway_url + path},
        "conditions": conditions,
        "components": components,
    }
    if predictor is not None:
        latest = predictor.revisions[-1].name if predictor.revisions else None
        status["modelStatus"] = _model_status(engine.status(latest) if latest else None)
    return status


def _pool(pool: PoolStatus, scaled: Any) -> dict[str, Any]:
    out = {
        "desired": pool.desired,
        "ready": pool.ready,
        "restarts": sum(r.restarts for r in pool.replicas),
        "schedulable": pool.schedulable,
        **({"reason": pool.reason} if pool.reason else {}),
        "replicas": [
            {
                "id": r.id,
                "state": r.state.value,
                "restarts": r.restarts,
                **({"node": r.node} if r.node else {}),
                **({"url": r.http_url} if r.http_url else {}),
                **({"gpus": list(r.gpu_ids)} if r.gpu_ids else {}),
                **({"reason": r.reason} if r.reason else {}),
            }
            for r in pool.replicas
        ],
        "events": list(pool.events[-5:]),
    }
    if scaled is not None:
        # The autoscaler's last word: what it wants and why, or why it holds (a failing metric).
        out["autoscaler"] = {
            "desired": scaled.desired,
            "panic": scaled.panic,
            "metric": scaled.metric,
            "observedPerReplica": scaled.observed,
            "reason": scaled.reason,
            **({"error": scaled.error} if scaled.error else {}),
        }
    return out


def _why_not_ready(pool: PoolStatus | None, revision: str | None) -> tuple[str, str]:
    if pool is None:
        return "RevisionMissing", f"revision {revision} has no replicas yet"
    if not pool.schedulable:
        return "NotSchedulable", pool.reason
    failure = _failure(pool)
    if failure:
        return "RevisionFailed", failure
    return "RevisionNotReady", f"revision {revision}: {pool.ready}/{pool.desired} replicas ready"


def _failure(pool: PoolStatus) -> str:
    """Why a replica of the pool failed (exited, or a model failed to load), or ""."""
    for replica in pool.replicas:
        if replica.state is ReplicaState.FAILED or "FAILED" in replica.reason:
            return replica.reason or f"replica {replica.id} failed"
    return ""


def _model_status(pool: PoolStatus | None) -> dict[str, Any]:
    total = pool.desired if pool else 0
    loaded = bool(pool and pool.ready)
    failure = _failure(pool) if pool else ""
    failed = (
        sum(1 for r in pool.replicas if r.state is ReplicaState.FAILED or "FAILED" in r.reason) if pool else 0
    )
    out: dict[str, Any] = {
        "states": {"activeModelState": "Loaded" if loaded else "Pending", "targetModelState": "Loaded"},
        "transitionStatus": "UpToDate" if loaded else ("BlockedByFailedLoad" if failure else "InProgress"),
        "copies": {"failedCopies": failed, "totalCopies": total},
    }
    if failure:
        out["lastFailureInfo"] = {"reason": "ModelLoadFailed", "message": failure}
    return out
