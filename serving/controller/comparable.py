"""At apply: a rollout whose agreement check could never compare the two models' answers is refused.

The agreement check compares the stable revision's answers with the canary's (router/agreement.py);
models whose outputs share no name, differ in shape, or answer one number per row without a
tolerance would fail that check at the first mirrored request. Both models' output signatures are
known before either is loaded where the registry recorded them (`registry://` URIs) or where the
file records them (ONNX, torch.export and TorchScript with servegate.json, read without running
anything). Other models (scikit-learn, python, remote URIs) are judged on their first answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from predictors.trust import local_path
from router.agreement import signatures_problem
from serving.auth.storage import StoragePolicy
from serving.errors import ServingError
from serving.registry.inspect import inspect_artifact
from serving.registry.types import RegistryError
from serving.registry.uris import is_registry_uri
from serving.spec.common import Problem
from serving.spec.isvc import Component, InferenceService
from serving.spec.manifests import Resource

__all__ = ["agreement_problems", "output_signature"]


def agreement_problems(
    resources: list[Resource],
    serving: Callable[[str], Component | None],
    registry: Any,
    policy: StoragePolicy | None,
) -> list[Problem]:
    """One problem per agreement check of `resources` whose new model's outputs cannot be compared
    with those of the model service NAME serves now (`serving(NAME)`; None for a new service, which
    has no canary). Reads registry rows and model files' headers; call it in a thread."""
    problems = []
    for r in resources:
        if not isinstance(r, InferenceService) or r.spec.rollout is None:
            continue
        checks = [(i, c) for i, c in enumerate(r.spec.rollout.checks or ()) if c.metric == "agreement"]
        stable = serving(r.metadata.name)
        canary = r.components()["predictor"]
        if (
            not checks
            or stable is None
            or (stable.storage_uri, stable.format)
            == (
                canary.storage_uri,
                canary.format,
            )
        ):
            continue
        before = output_signature(stable.storage_uri, stable.format, registry, policy)
        after = output_signature(canary.storage_uri, canary.format, registry, policy)
        if before is None or after is None:
            continue
        for i, check in checks:
            why = signatures_problem(before, after, check.tolerance)
            if why is not None:
                where = f"InferenceService/{r.metadata.name}: spec.rollout.checks[{i}]"
                message = f"the new model's answers cannot be compared with {stable.storage_uri}'s: {why}"
                problems.append(Problem(where, message))
    return problems


def output_signature(
    uri: str | None, fmt: str | None, registry: Any, policy: StoragePolicy | None
) -> list[dict[str, Any]] | None:
    """The outputs (`{"name", "datatype", "shape"}`) the model at `uri` answers with, where they can
    be known without loading it; None otherwise (and for what the storage policy refuses: the
    apply's storage check says why)."""
    if not uri:
        return None
    signature = None
    if is_registry_uri(uri):
        if registry is None:
            return None
        try:
            signature = registry.resolve(uri).signature
        except RegistryError:
            return None  # the apply's registry check says why
    else:
        path = local_path(uri)
        if path is None:
            return None  # a remote artifact: its answers will tell
        try:
            checked = policy.check_path(path) if policy is not None else Path(path)
            signature = inspect_artifact(checked, fmt).signature
        except (RegistryError, ServingError, OSError):  # refused by the policy, unreadable, not a model
            return None
    return list(signature["outputs"]) if signature else None
