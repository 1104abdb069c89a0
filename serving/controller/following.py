"""How deployments follow the model registry: an InferenceService whose storageUri is
`registry://NAME@ALIAS` runs, in each new revision, the version the alias names (or the canary
alias's while one is set), pinned as `registry://NAME/VERSION`; a promote or rollback moves the
aliases to match; a TrainedModel loads what its alias names now.

The registry blocks (database), so every call runs in a worker thread. The controller owns the
reconcile loop; this module only answers "what should run" and keeps the registry in step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from serving.registry.types import RegistryError
from serving.registry.uris import RegistryUri, is_registry_uri, parse_uri
from serving.spec import Component, InferenceService, TrainedModel
from serving.store import Store

__all__ = ["CANARY_ALIAS_ANNOTATION", "RegistryFollower", "followed_version", "uses_registry"]

log = logging.getLogger(__name__)

#: InferenceService annotation: the registry alias whose version is canaried (default "canary").
CANARY_ALIAS_ANNOTATION = "serving.servegate.io/canary-alias"


def followed_version(alias: str, aliases: Mapping[str, int], canary_alias: str, model: str) -> int:
    """The version a service following `alias` should run newest: the canary alias's while it is
    set, else the alias's own."""
    if alias not in aliases:
        raise RegistryError(f"model {model} has no alias '{alias}'")
    if canary_alias != alias and canary_alias in aliases:
        return aliases[canary_alias]
    return aliases[alias]


def uses_registry(isvc: InferenceService) -> bool:
    return any(is_registry_uri(c.storage_uri) for c in isvc.components().values())


def _alias_of(uri: str | None) -> RegistryUri | None:
    """`uri` parsed when it is a `registry://NAME@ALIAS` (None for anything else)."""
    if not is_registry_uri(uri):
        return None
    try:
        parsed = parse_uri(uri)  # type: ignore[arg-type]
    except RegistryError:
        return None  # refused at apply; a stored one that no longer parses is not followed
    return parsed if parsed.alias else None


def _canary_alias(isvc: InferenceService) -> str:
    return isvc.metadata.annotations.get(CANARY_ALIAS_ANNOTATION, "canary")


class RegistryFollower:
    """The controller's view of the registry: pins, alias moves on promote/rollback, and a watch."""

    def __init__(self, registry: Any, store: Store, poll_s: float = 1.0) -> None:
        self.registry = registry
        self.store = store
        self.poll_s = poll_s
        #: registry://NAME@ALIAS -> the registry://NAME/VERSION it names now (TrainedModels).
        self._pins: dict[str, str] = {}
        #: service -> the registry problem last reported for it (reported once, not every reconcile).
        self._problems: dict[str, str] = {}

    def env(self) -> tuple[tuple[str, str], ...]:
        """What a replica needs to resolve (and verify) registry URIs itself."""
        return self.registry.config.env()

    async def pin(self, name: str, isvc: InferenceService, component: Component) -> Component | None:
        """`component` with a `registry://NAME@ALIAS` storageUri pinned to the version to run now.
        None when the registry cannot answer (a Warning event, once per distinct problem)."""
        followed = _alias_of(component.storage_uri)
        if followed is None:
            return component
        try:
            aliases = (await asyncio.to_thread(self.registry.model, followed.model)).aliases
            version = followed_version(followed.alias or "", aliases, _canary_alias(isvc), followed.model)
        except RegistryError as exc:
            if self._problems.get(name) != exc.message:
                self._problems[name] = exc.message
                message = f"{component.storage_uri}: {exc.message}"
                self.store.add_event("InferenceService", name, "Warning", "RegistryUnresolved", message)
            return None
        self._problems.pop(name, None)
        return dataclasses.replace(component, storage_uri=f"registry://{followed.model}/{version}")

    async def sync_aliases(
        self, name: str, isvc: InferenceService, serving_uri: str | None, how: str, actor: str = ""
    ) -> None:
        """After a promote or rollback (`how`) of a service that follows an alias: move the alias to
        the version now taking the traffic (`serving_uri`, its pinned URI; through the alias's gates
        on a promote, where a failing gate raises ValueError and nothing changes), and delete a
        canary alias that is done with. A rollback is never held up: a failure becomes an event."""
        followed = _alias_of(isvc.components()["predictor"].storage_uri)
        if followed is None or not is_registry_uri(serving_uri):
            return
        version = parse_uri(serving_uri).version  # type: ignore[arg-type]
        canary = _canary_alias(isvc)
        # The audit log names who asked (their token), and what moved the alias on their behalf.
        actor = (
            f"{actor} (servegate {how} inferenceservice/{name})"
            if actor
            else f"servegate {how} inferenceservice/{name}"
        )

        def sync() -> None:
            aliases = self.registry.model(followed.model).aliases
            if aliases.get(followed.alias) != version:
                self.registry.set_alias(followed.model, followed.alias, version, actor=actor)
            done = how == "rollback" or aliases.get(canary) == version
            if canary in aliases and canary != followed.alias and done:
                self.registry.delete_alias(followed.model, canary, actor=actor)

        try:
            await asyncio.to_thread(sync)
        except RegistryError as exc:
            if how == "promote":
                raise ValueError(f"not promoted: {exc.message}") from None
            self.store.add_event("InferenceService", name, "Warning", "RegistryNotUpdated", exc.message)

    async def watch(self, changed: Callable[[], None]) -> None:
        """Call `changed` whenever the registry changes (polled every `poll_s` seconds)."""
        seen = None
        while True:
            try:
                mark = await asyncio.to_thread(self.registry.change_mark)
            except Exception as exc:  # a registry database away for a while must not stop the watch
                log.warning("cannot read the model registry: %s", exc)
                mark = seen
            if mark != seen:
                seen = mark
                changed()
            await asyncio.sleep(self.poll_s)

    async def refresh(self, trained_models: Iterable[TrainedModel]) -> None:
        """Resolve the `registry://NAME@ALIAS` URIs of TrainedModels again."""
        followed = {
            tm.spec.model.storage_uri for tm in trained_models if _alias_of(tm.spec.model.storage_uri)
        }
        for uri in set(self._pins) - followed:
            del self._pins[uri]
        for uri in followed:
            try:
                self._pins[uri] = (await asyncio.to_thread(self.registry.resolve, uri)).uri
            except RegistryError as exc:
                log.warning("cannot resolve %s: %s", uri, exc)

    def pinned(self, uri: str) -> str:
        """What a TrainedModel's `uri` loads now (itself unless it follows an alias)."""
        return self._pins.get(uri, uri)
