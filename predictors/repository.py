"""The models a replica holds: loading, reloading, unloading, and the repository index.

Loading never raises into the server: a bad artifact leaves the model FAILED with its reason,
visible in the index and in readiness. A reload builds the new copy beside the old one and swaps
only once the new one is ready; in-flight requests on the old copy finish before it is released.

Where a URI came from decides whether the storage policy (`StorageConfig.policy`) applies: a URI
from a load request is always checked, when it is registered and again when it is fetched; the
models given to `start` and the repository folder's are the operator's and are not, unless
`check_start_models` says a gateway started this replica (everything it serves then came from
manifests, checked once at apply; and a manifest's args could name the folder).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import KeysView
from pathlib import Path
from typing import Any

from predictors.discovery import discover, discover_one
from predictors.metrics import ReplicaMetrics
from predictors.model import ModelState, ServedModel
from predictors.runtime import Runtime
from predictors.runtimes import infer_format, is_import_path, normalize_format, runtime_class
from predictors.spec import ModelSpec, RegistryOrigin
from predictors.storage import StorageConfig, fetch
from serving.errors import InvalidInput, ModelFailure, ModelNotFound, ModelNotReady, as_serving_error
from serving.registry.types import RegistryError
from serving.registry.uris import is_registry_uri

__all__ = ["ModelRepository"]

log = logging.getLogger(__name__)


class ModelRepository:
    def __init__(
        self,
        metrics: ReplicaMetrics,
        storage: StorageConfig,
        root: Path | None = None,
        template: ModelSpec | None = None,
        check_start_models: bool = False,
    ) -> None:
        self._metrics = metrics
        self._storage = storage
        #: how the operator's own URIs are fetched: without a policy.
        self._operator_storage = dataclasses.replace(storage, policy=None)
        self._check_start_models = check_start_models
        #: names whose current URI is checked against the policy (see the module docstring).
        self._checked: set[str] = set()
        self._root = root
        self._template = template or ModelSpec(name="", uri="")
        self._specs: dict[str, ModelSpec] = {}
        self._models: dict[str, ServedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        metrics.watch_model_states(
            lambda: [(m.name, m.version, m.state.value) for m in self._models.values()]
        )

    # -- lookups -------------------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotFound(f"model '{name}' not found")
        if version is not None and version != model.version:
            raise ModelNotFound(
                f"model '{name}' has no version '{version}' (serving version {model.version})"
            )
        return model

    @property
    def names(self) -> KeysView[str]:
        return self._models.keys()

    @property
    def ready(self) -> bool:
        """Every model that is meant to serve is ready (unloaded models do not count)."""
        return all(m.state in (ModelState.READY, ModelState.UNAVAILABLE) for m in self._models.values())

    def index(self) -> list[dict[str, Any]]:
        known = dict(self._specs)
        if self._root is not None:
            known.update({n: s for n, s in discover(self._root, self._template).items() if n not in known})
        entries = []
        for name in sorted(known):
            model = self._models.get(name)
            entry: dict[str, Any] = {"name": name, "version": (model.spec if model else known[name]).version}
            if model is not None:
                entry["state"] = model.state.value
                entry["reason"] = model.reason
            entries.append(entry)
        return entries

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self, specs: list[ModelSpec]) -> None:
        """Load the given models and every model of the repository folder, concurrently."""
        found = discover(self._root, self._template) if self._root is not None else {}
        for spec in specs:
            found[spec.name] = spec
            if self._check_start_models:
                self._checked.add(spec.name)
        self._specs.update(found)
        await asyncio.gather(*(self.load(name) for name in found))

    async def register(self, name: str, uri: str, fmt: str | None) -> None:
        """Make `name` loadable from `uri`, a URI a load request gave (the repository folder, if any,
        still wins for its own models). StorageRefused, and nothing changes, unless the storage
        policy allows `uri`; it is checked again when fetched (a name may resolve elsewhere by then)."""
        if self._storage.policy is not None:
            await asyncio.to_thread(self._storage.policy.check_uri, uri)
        self._specs[name] = dataclasses.replace(self._template, name=name, uri=uri, format=fmt)
        self._checked.add(name)

    async def load(self, name: str) -> ServedModel:
        """(Re)load `name` from its known spec or the repository folder; raise if it does not become ready."""
        async with self._lock(name):
            spec, checked = self._find_spec(name)
            self._specs[name] = spec
            current = self._models.get(name)
            fresh = ServedModel(spec, self._metrics)
            if current is None or current.state is not ModelState.READY:
                self._models[name] = fresh
            await self._start(fresh, self._storage if checked else self._operator_storage)
            if fresh.state is not ModelState.READY:
                if current is not None and current.state is ModelState.READY:
                    raise ModelNotReady(
                        f"failed to load model '{name}': {fresh.reason} (still serving the loaded copy)"
                    )
                raise ModelNotReady(f"failed to load model '{name}': {fresh.reason}")
            if current is not None:
                self._models[name] = fresh
                await current.stop()
            return fresh

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            model = self.get(name)
            if model.state is not ModelState.UNAVAILABLE:
                await model.stop()

    async def close(self) -> None:
        await asyncio.gather(
            *(m.stop() for m in self._models.values() if m.state is not ModelState.UNAVAILABLE)
        )

    # -- internals -----------------------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _find_spec(self, name: str) -> tuple[ModelSpec, bool]:
        """The spec to load `name` from, and whether its URI is checked against the storage policy."""
        if self._root is not None:
            # The folder may have changed since start-up (a new version, a new model): look again.
            spec = discover_one(self._root, name, self._template)
            if spec is not None:
                return spec, self._check_start_models
        if name in self._specs:
            return self._specs[name], name in self._checked
        raise ModelNotFound(f"model '{name}' is not in the model repository")

    async def _start(self, model: ServedModel, storage: StorageConfig) -> None:
        try:
            runtime = await self._runtime(model.spec, storage)
        except Exception as exc:
            error = as_serving_error(exc)
            log.error("model %s cannot load: %s", model.name, error.message)
            model.fail(error.message)
            return
        await model.start(runtime)

    async def _runtime(self, spec: ModelSpec, storage: StorageConfig) -> Runtime:
        if is_registry_uri(spec.uri):
            return await self._registry_runtime(spec)
        fmt = spec.format or ("python" if is_import_path(spec.uri) else None)
        cls = runtime_class(fmt) if fmt else None
        path = None
        if cls is None or cls.needs_artifact:
            path = await asyncio.to_thread(fetch, spec.uri, storage)
        elif storage.policy is not None:
            # python's FILE.py:Class, triton's server URL: used as they are, so fetch() never sees them.
            await asyncio.to_thread(storage.policy.check_uri, spec.uri)
        if cls is None:
            cls = runtime_class(infer_format(spec.uri, path))
        return cls(spec, path)

    async def _registry_runtime(self, spec: ModelSpec) -> Runtime:
        """A `registry://` model: its format comes from the registry, its artifact is verified."""
        from serving.registry.local import materialize  # SQLAlchemy only where registry models are served

        try:
            got = await asyncio.to_thread(materialize, spec.uri, self._storage.cache_dir)
        except RegistryError as exc:
            raise ModelFailure(exc.message) from None
        registered = got.version.format
        if spec.format is not None and normalize_format(spec.format) != registered:
            raise InvalidInput(f"{spec.uri} is a {registered} model, not {normalize_format(spec.format)}")
        cls = runtime_class(registered)
        # Whether it may run code as it loads is the version record's to say, not the trust policy's.
        spec = dataclasses.replace(
            spec, format=registered, origin=RegistryOrigin(got.version.uri, got.version.trusted)
        )
        if not cls.needs_artifact:  # python: the class inside the verified copy
            return cls(dataclasses.replace(spec, uri=got.import_path), None)
        return cls(spec, got.path)
