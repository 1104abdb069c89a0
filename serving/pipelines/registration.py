"""From inside a pipeline step: register a model artifact in the model registry (with the run and
dataset it came from, recorded for lineage), and deploy a registered version to a running gateway
as a canary of the current production version.

`registry`: a gateway URL (`http://HOST:PORT`, its `/api/registry`), or empty for the registry of
the state dir the pipeline runs with (`$SERVEGATE_STATE_DIR`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from serving.pipelines import context
from serving.pipelines.types import Artifact
from serving.registry.artifacts import artifact_digest
from serving.registry.types import ModelVersion

__all__ = ["deploy_canary", "register_model"]


@contextlib.contextmanager
def _registry(registry: str) -> Iterator[Any]:
    if registry.startswith(("http://", "https://")):
        from serving.registry.client import RegistryClient

        with RegistryClient(registry, actor=f"pipeline {context.current().run_id}") as client:
            yield client
    else:
        from serving.registry import Registry, RegistryConfig

        with Registry(RegistryConfig.from_env()) as local:
            yield local


def register_model(
    model: Artifact,
    name: str,
    *,
    registry: str = "",
    format: str | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    dataset: Artifact | None = None,
    description: str = "",
) -> ModelVersion:
    """Register `model` (its file or folder) as the next version of `name`; the version's source
    names this run and the dataset's sha256, and the run records the registration."""
    step = context.current()
    with _registry(registry) as reg:
        version = reg.register(
            name,
            str(model.path.resolve()),
            format=format,
            metrics=metrics or {},
            params={k: str(v) for k, v in (params or {}).items()},
            tags={"pipeline_step": step.step_id},
            description=description,
            run=step.run_id,
            dataset=artifact_digest(dataset.path)[0] if dataset is not None else None,
            actor=f"pipeline {step.run_id}",
        )
    step.registered(version.uri, artifact=model)
    return version


def deploy_canary(
    version_uri: str,
    gateway: str,
    service: str,
    *,
    canary_percent: int = 20,
    alias: str = "production",
    canary_alias: str = "canary",
    protocol: str = "v2",
) -> str:
    """Serve a registered version through the gateway at `gateway`.

    The service follows `registry://MODEL@<alias>`. When the model already has that alias, the
    version becomes its `canary_alias`: the gateway rolls it out as a canary revision with
    `canary_percent` of the traffic (promote or roll back with `servegate promote|rollback`).
    Otherwise it becomes the alias itself. The service is created if it does not exist.
    Returns what was done, in words.
    """
    from serving.client import Client, ServegateError
    from serving.registry.uris import parse_uri

    pinned = parse_uri(version_uri)
    with Client(gateway) as client:
        registry = client.registry
        model = registry.model(pinned.model)
        if alias in model.aliases and model.aliases[alias] != pinned.version:
            registry.set_alias(pinned.model, canary_alias, pinned.version)
            done = f"{version_uri} is the canary of {pinned.model}@{alias} (version {model.aliases[alias]})"
        else:
            if model.aliases.get(alias) != pinned.version:
                registry.set_alias(pinned.model, alias, pinned.version)
            done = f"{version_uri} is {pinned.model}@{alias}"
        try:
            client.get("isvc", service)
        except ServegateError:
            fmt = registry.version(pinned.model, pinned.version).format
            client.apply(
                _following(service, f"registry://{pinned.model}@{alias}", fmt, canary_percent, protocol)
            )
            done += f"; created InferenceService {service} following it"
    return done


def _following(service: str, uri: str, fmt: str, canary_percent: int, protocol: str) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": service},
        "spec": {
            "predictor": {
                "canaryTrafficPercent": canary_percent,
                "model": {"modelFormat": {"name": fmt}, "protocolVersion": protocol, "storageUri": uri},
            }
        },
    }
