"""Following registry aliases, without a gateway: which version a service runs, the pin of a
component, and the aliases a promote or rollback moves (a fake registry records the calls)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from serving.controller.following import RegistryFollower, followed_version
from serving.registry.types import GateFailed, RegistryError, RegistryNotFound
from serving.spec import Component, InferenceService
from serving.store import Store


@pytest.mark.parametrize(
    ("alias", "aliases", "canary", "expected"),
    [
        ("production", {"production": 3}, "canary", 3),
        ("production", {"production": 3, "canary": 5}, "canary", 5),
        ("production", {"production": 3, "canary": 5}, "candidate", 3),
        ("production", {"production": 3, "candidate": 4}, "candidate", 4),
        ("canary", {"canary": 5}, "canary", 5),  # following the canary alias itself
    ],
)
def test_followed_version(alias: str, aliases: dict[str, int], canary: str, expected: int) -> None:
    assert followed_version(alias, aliases, canary, "mlp") == expected


def test_followed_version_of_a_missing_alias_says_so() -> None:
    with pytest.raises(RegistryError, match="model mlp has no alias 'production'"):
        followed_version("production", {"canary": 2}, "canary", "mlp")


@dataclass
class _Model:
    aliases: dict[str, int]


@dataclass
class FakeRegistry:
    aliases: dict[str, int]
    calls: list[tuple[str, ...]] = field(default_factory=list)
    refuse: RegistryError | None = None

    def model(self, name: str) -> _Model:
        if name != "mlp":
            raise RegistryNotFound(f"model '{name}' is not registered")
        return _Model(dict(self.aliases))

    def set_alias(self, name: str, alias: str, version: int, *, actor: str) -> None:
        if self.refuse:
            raise self.refuse
        self.calls.append(("set", alias, str(version), actor))
        self.aliases[alias] = version

    def delete_alias(self, name: str, alias: str, *, actor: str) -> None:
        self.calls.append(("delete", alias, actor))
        del self.aliases[alias]


def _isvc(uri: str, annotations: dict[str, str] | None = None) -> InferenceService:
    return InferenceService.model_validate(
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": "svc", "annotations": annotations or {}},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": uri}}},
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


async def test_pin_follows_the_alias_and_the_canary_alias(store: Store) -> None:
    registry = FakeRegistry({"production": 2})
    follower = RegistryFollower(registry, store)
    isvc = _isvc("registry://mlp@production")
    component = isvc.components()["predictor"]

    assert (await follower.pin("svc", isvc, component)).storage_uri == "registry://mlp/2"
    registry.aliases["canary"] = 3
    assert (await follower.pin("svc", isvc, component)).storage_uri == "registry://mlp/3"
    plain = Component(kind="predictor", storage_uri="/models/mlp")
    assert await follower.pin("svc", isvc, plain) is plain


async def test_an_unresolvable_alias_keeps_what_runs_and_warns_once(store: Store) -> None:
    follower = RegistryFollower(FakeRegistry({}), store)
    isvc = _isvc("registry://mlp@production")
    for _ in range(3):
        assert await follower.pin("svc", isvc, isvc.components()["predictor"]) is None
    events = store.events("InferenceService", "svc")
    assert [(e.type, e.reason) for e in events] == [("Warning", "RegistryUnresolved")]
    assert "no alias 'production'" in events[0].message


async def test_promote_moves_the_followed_alias_and_retires_the_canary(store: Store) -> None:
    registry = FakeRegistry({"production": 2, "canary": 3})
    follower = RegistryFollower(registry, store)
    await follower.sync_aliases("svc", _isvc("registry://mlp@production"), "registry://mlp/3", "promote")
    actor = "servegate promote inferenceservice/svc"
    assert registry.calls == [("set", "production", "3", actor), ("delete", "canary", actor)]
    assert registry.aliases == {"production": 3}


async def test_rollback_withdraws_the_canary_and_keeps_production(store: Store) -> None:
    registry = FakeRegistry({"production": 2, "canary": 3})
    follower = RegistryFollower(registry, store)
    await follower.sync_aliases("svc", _isvc("registry://mlp@production"), "registry://mlp/2", "rollback")
    assert registry.calls == [("delete", "canary", "servegate rollback inferenceservice/svc")]


async def test_a_failing_gate_refuses_the_promote_but_never_a_rollback(store: Store) -> None:
    registry = FakeRegistry({"production": 2}, refuse=GateFailed("gate accuracy >= 0.95 fails"))
    follower = RegistryFollower(registry, store)
    isvc = _isvc("registry://mlp@production")
    with pytest.raises(ValueError, match="not promoted: gate accuracy"):
        await follower.sync_aliases("svc", isvc, "registry://mlp/3", "promote")
    await follower.sync_aliases("svc", isvc, "registry://mlp/1", "rollback")
    assert [e.reason for e in store.events("InferenceService", "svc")] == ["RegistryNotUpdated"]


async def test_services_that_do_not_follow_an_alias_are_left_alone(store: Store) -> None:
    registry = FakeRegistry({"production": 2})
    follower = RegistryFollower(registry, store)
    await follower.sync_aliases("svc", _isvc("registry://mlp/2"), "registry://mlp/2", "promote")
    await follower.sync_aliases("svc", _isvc("/models/mlp"), "/models/mlp", "promote")
    assert registry.calls == []
