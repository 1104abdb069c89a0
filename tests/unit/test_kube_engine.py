"""The Kubernetes engine's own decisions, over a stub of its API calls: a refused apply is retried
until it works, a follower never writes, a new leader applies and scales what it follows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from serving.engines.base import ReplicaSpec
from serving.engines.kubernetes import engine as kube_engine
from serving.engines.kubernetes.api import KubernetesUnavailable
from serving.engines.kubernetes.engine import KubernetesEngine
from serving.engines.kubernetes.render import Placement

SPEC = ReplicaSpec(revision="echo-predictor-00001", service="echo", component="predictor")


class StubApi:
    """Records every write; the first `refusals` applies are refused as the API would."""

    def __init__(self, refusals: int = 0) -> None:
        self.refusals = refusals
        self.calls: list[tuple[str, Any]] = []

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.refusals:
            self.refusals -= 1
            raise KubernetesUnavailable('deployments.apps is forbidden: User "sa" cannot patch resource')
        self.calls.append(("apply", obj["kind"]))
        return {"metadata": {"uid": "uid-1"}}

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.calls.append(("scale", replicas))

    def delete_revision(self, namespace: str, revision: str) -> None:
        self.calls.append(("delete", revision))


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kube_engine, "_RETRY_S", 0.01)


async def test_a_refused_apply_is_retried_until_it_works() -> None:
    api = StubApi(refusals=2)
    engine = KubernetesEngine(api, Placement(namespace="models"))  # type: ignore[arg-type]
    await engine.scale(SPEC, 2)
    status = engine.status(SPEC.revision)
    assert status is not None and not status.schedulable and "forbidden" in status.reason
    for _ in range(100):
        if ("scale", 2) in api.calls:
            break
        await asyncio.sleep(0.01)
    assert api.calls == [("apply", "Deployment"), ("apply", "Service"), ("apply", "Secret"), ("scale", 2)]
    status = engine.status(SPEC.revision)
    assert status is not None and status.schedulable and status.reason == ""


async def test_a_follower_writes_nothing_and_a_new_leader_applies_and_scales() -> None:
    api = StubApi()
    engine = KubernetesEngine(api, Placement(namespace="models"))  # type: ignore[arg-type]
    engine.lead(False)
    await engine.scale(SPEC, 3)
    await engine.remove("echo-predictor-00000")
    status = engine.status(SPEC.revision)
    assert api.calls == [] and status is not None and status.desired == 3
    engine.lead(True)
    await engine.scale(SPEC, 3)
    assert api.calls == [("apply", "Deployment"), ("apply", "Service"), ("apply", "Secret"), ("scale", 3)]
    await engine.scale(SPEC, 3)  # nothing changed: no call
    await engine.scale(SPEC, 1)
    assert api.calls[-1] == ("scale", 1) and len(api.calls) == 5
