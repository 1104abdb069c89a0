"""What the control API's apply endpoint reads of a Controller, without one: for tests of the checks
an apply runs before anything is stored."""

from __future__ import annotations

from typing import Any

from predictors.trust import TrustPolicy
from serving.auth.storage import StoragePolicy
from serving.spec.isvc import Component
from serving.store import Store


class ApplyOnlyController:
    """Takes whatever passes the apply's checks into `applied`; no service runs anything yet."""

    def __init__(
        self, store: Store, policy: StoragePolicy | None = None, trust: TrustPolicy | None = None
    ) -> None:
        self.store = store
        self.services: dict[str, Any] = {}
        self.autoscaler = None
        self.registry = None
        self.storage_policy = policy
        self.trust = trust or TrustPolicy()
        self.applied: list[Any] = []

    def manifest_problems(self, resources: list[Any]) -> list[Any]:
        return []

    def serving_component(self, name: str, kind: str = "predictor") -> Component | None:
        return None

    async def apply(self, resources: list[Any], **_: Any) -> list[dict[str, str]]:
        self.applied += resources
        return [{"kind": r.kind, "name": r.metadata.name, "action": "created"} for r in resources]
