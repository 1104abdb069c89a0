"""An InferenceService's status in KServe's shape: conditions, url, per-component revisions and
traffic, model status; plus the replica pools behind each revision (servegate's addition)."""

from __future__ import annotations

import time
from typing import Any, Protocol

from serving.engines.base import Engine

__all__ = ["service_status"]


class _State(Protocol):
    @property
    def revisions(self) -> list[Any]: ...
    @property
    def plan(self) -> Any: ...
    @property
    def component(self) -> Any: ...


def _condition(type_: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": type_,
        "status": "True" if ok else "False",
        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if not ok:
        condition["reason"] = reason
        condition["message"] = message
    return condition


def service_status(name: str, states: dict[str, _State], engine: Engine, gateway_url: str) -> dict[str, Any]:
    predictor = states.get("predictor")
    protocol = predictor.component.protocol if predictor else "v1"
    path = f"/v1/models/{name}" if protocol == "v1" else f"/v2/models/{name}"
    components: dict[str, Any] = {}
    conditions = []
    all_ready = bool(states)
    for kind, state in states.items():
        plan = state.plan
        pools = {}
        problem = ("", "")
        for row in state.revisions:
            pool = engine.status(row.name)
            if pool is None:
                continue
            pools[row.name] = {
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
                        **({"reason": r.reason} if r.reason else {}),
                    }
                    for r in pool.replicas
                ],
                "events": list(pool.events[-5:]),
            }
            if row is state.revisions[-1] and not pool.ready:
                reason = pool.reason or next((r.reason for r in pool.replicas if r.reason), "")
                problem = ("NotSchedulable" if not pool.schedulable else "RevisionNotReady", reason)
        ready = bool(plan.traffic) and plan.latest_ready is not None
        all_ready = all_ready and ready
        latest = state.revisions[-1].name if state.revisions else None
        components[kind] = {
            "latestCreatedRevision": latest,
            "latestReadyRevision": plan.latest_ready,
            "latestRolledoutRevision": plan.rollout.latest,
            "previousRolledoutRevision": plan.rollout.previous,
            "traffic": [
                {"revisionName": rev, "percent": percent, "latestRevision": rev == latest}
                for rev, percent in plan.traffic
            ],
            "url": gateway_url + path,
            "replicas": pools,
        }
        conditions.append(
            _condition(
                f"{kind.capitalize()}Ready", ready, problem[0], problem[1] or "no revision is ready yet"
            )
        )
        if ready and latest != plan.latest_ready and problem[1]:
            # Ready on an older revision while the newest one cannot start: say so.
            conditions[-1]["message"] = f"latest revision {latest} is not ready: {problem[1]}"
    conditions.append(_condition("IngressReady", True))
    conditions.append(_condition("Ready", all_ready, "ComponentsNotReady", "a component is not ready"))
    status: dict[str, Any] = {
        "url": gateway_url + path,
        "address": {"url": gateway_url + path},
        "conditions": conditions,
        "components": components,
    }
    if predictor is not None:
        status["modelStatus"] = _model_status(predictor, engine)
    return status


def _model_status(state: _State, engine: Engine) -> dict[str, Any]:
    latest = state.revisions[-1].name if state.revisions else None
    pool = engine.status(latest) if latest else None
    total = pool.desired if pool else 0
    ready = pool.ready if pool else 0
    failed = sum(1 for r in pool.replicas if r.state.name == "FAILED") if pool else 0
    loaded = ready > 0
    out: dict[str, Any] = {
        "states": {"activeModelState": "Loaded" if loaded else "Pending", "targetModelState": "Loaded"},
        "transitionStatus": "UpToDate" if loaded else ("BlockedByFailedLoad" if failed else "InProgress"),
        "copies": {"failedCopies": failed, "totalCopies": total},
    }
    reason = next((r.reason for r in pool.replicas if r.reason), "") if pool else ""
    if reason and not loaded:
        out["lastFailureInfo"] = {"reason": "ModelLoadFailed", "message": reason}
    return out
