"""Between a KServe custom object and the gateway, both ways, as pure functions: the manifest the
gateway is given, the status written back in KServe's shape (only the fields KServe's CRDs declare:
a real API server prunes the rest), a refused spec as KServe's admission would word it, and the merge
patch from one status to another.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from serving.spec.common import Problem

__all__ = ["FINALIZER", "cr_status", "gateway_manifest", "invalid_status", "merge_patch"]

#: on every object the operator has applied to the gateway: it is deleted there before it goes.
FINALIZER = "serving.servegate.io/cleanup"
#: what `kubectl apply` keeps in an annotation (the whole object again): the gateway needs none of it.
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"

_CONDITION = ("type", "status", "severity", "lastTransitionTime", "reason", "message")
_COMPONENT = (
    "latestCreatedRevision",
    "latestReadyRevision",
    "latestRolledoutRevision",
    "previousRolledoutRevision",
    "url",
    "restUrl",
    "grpcUrl",
    "address",
)
_TRAFFIC = ("tag", "revisionName", "latestRevision", "percent", "url")
_MODEL_STATUS = ("states", "transitionStatus", "copies", "lastFailureInfo")


def gateway_manifest(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the gateway's control API takes it: its kind, name, namespace, labels,
    annotations and spec; none of what the API server keeps (status, resourceVersion, uid,
    managedFields, finalizers, timestamps)."""
    meta = obj.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != _LAST_APPLIED}
    metadata: dict[str, Any] = {"name": meta["name"], "namespace": meta.get("namespace") or "default"}
    if meta.get("labels"):
        metadata["labels"] = dict(meta["labels"])
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": metadata,
        "spec": obj.get("spec") or {},
    }


def cr_status(kind: str, gateway_object: Mapping[str, Any], generation: int) -> dict[str, Any]:
    """The status of the custom object of `kind`, from the gateway's view of it (`GET
    /api/v1/<plural>/<name>`), observed at `generation`."""
    status = gateway_object.get("status") or {}
    out: dict[str, Any] = _pick(status, ("url",))
    if isinstance(status.get("address"), Mapping):
        out["address"] = _pick(status["address"], ("url",))
    conditions = [_pick(c, _CONDITION) for c in status.get("conditions") or ()]
    if kind == "InferenceService":
        components = {
            name: _component(component) for name, component in (status.get("components") or {}).items()
        }
        if components:
            out["components"] = components
        if isinstance(status.get("modelStatus"), Mapping):
            out["modelStatus"] = _pick(status["modelStatus"], _MODEL_STATUS)
    elif kind == "InferenceGraph" and not conditions:
        # The gateway routes a graph it accepted (its steps answer for themselves).
        conditions = [{"type": "Ready", "status": "True"}]
    if conditions:
        out["conditions"] = conditions
    out["observedGeneration"] = generation
    return out


def invalid_status(
    kind: str, name: str, problems: Iterable[Problem], generation: int, since: str
) -> dict[str, Any]:
    """A status saying the gateway refused the spec at `generation`: Ready False, reason InvalidSpec,
    each problem by its field path (`since`: when Ready became False, RFC 3339)."""
    prefix = f"{kind}/{name}: "
    reasons = [f"{p.path.removeprefix(prefix)}: {p.message}" if p.path else p.message for p in problems]
    message = "the gateway refused the spec: " + "; ".join(reasons or ["no reason given"])
    condition = {
        "type": "Ready",
        "status": "False",
        "lastTransitionTime": since,
        "reason": "InvalidSpec",
        "message": message,
    }
    return {"conditions": [condition], "observedGeneration": generation}


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: {} when they are equal. A key
    `new` lacks is patched to null (removed); lists are replaced whole."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            if nested := merge_patch(before, value):
                patch[key] = nested
        elif key not in old or before != value:
            patch[key] = value
    return patch


def _component(component: Mapping[str, Any]) -> dict[str, Any]:
    out = _pick(component, _COMPONENT)
    traffic = [_pick(t, _TRAFFIC) for t in component.get("traffic") or ()]
    if len(traffic) > 1:
        # KServe tags a split's targets; `kubectl get isvc` reads PREV from the "prev" one.
        previous = component.get("previousRolledoutRevision")
        for target in traffic:
            if target.get("latestRevision"):
                target.setdefault("tag", "latest")
            elif previous and target.get("revisionName") == previous:
                target.setdefault("tag", "prev")
    if traffic:
        out["traffic"] = traffic
    return out


def _pick(source: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """The `keys` of `source` that hold something (KServe omits empty fields)."""
    return {key: source[key] for key in keys if source.get(key) not in (None, "", [], {})}
