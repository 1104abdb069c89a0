"""What one revision is on Kubernetes: a Deployment, a Service and a Secret, as plain dicts.

Pure functions of the revision's `ReplicaSpec` and where it goes (`Placement`); the engine applies
their output with server-side apply, `servegate render` prints it. The Deployment never names
`spec.replicas`: the engine sets it through the scale subresource, so re-applying a revision never
undoes a scaling decision (servegate's autoscaler or anyone else's).

Layout follows KServe's: labels `serving.kserve.io/inferenceservice` and `component`, the model
container named `kserve-container`, KServe's `pvc://CLAIM/PATH` storage URIs mounted read-only under
`/mnt/pvc/CLAIM`. The servegate container runs hardened (non-root, read-only root filesystem, no
privilege escalation, no capabilities); custom `containers` run as their manifest says.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from serving.auth.internal import METRICS_ENV, REPLICA_TOKEN_ENV
from serving.auth.storage import ALLOWED_HOSTS_ENV, STORAGE_ROOTS_ENV
from serving.engines._replica_proc import serve_args
from serving.engines.base import ReplicaSpec, ServedModelRef
from serving.engines.kubernetes.names import (
    COMPONENT_LABEL,
    GRPC_PORT,
    HTTP_PORT,
    IMAGE,
    ISVC_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OWNER_LABEL,
    REVISION_LABEL,
)

__all__ = [
    "CREDENTIALS_KEYS",
    "PVC_ROOT",
    "Placement",
    "credentials_name",
    "credentials_secret",
    "deployment",
    "hardened_container",
    "http_probe",
    "labels",
    "revision_objects",
    "service",
]

#: where `pvc://CLAIM/PATH` models are mounted (KServe's path), and so the replicas' storage root.
PVC_ROOT = "/mnt/pvc"
#: Secret keys -> the replica's variables: its pool token and the metrics token.
CREDENTIALS_KEYS = {"replica-token": REPLICA_TOKEN_ENV, "metrics-token": METRICS_ENV}
_CACHE_DIR = "/var/cache/servegate"
#: seconds past its own drain timeout a replica gets before the kubelet kills it.
_DRAIN_SLACK_S = 5
#: seconds a deleted pod keeps serving before it is told to stop (its endpoints go meanwhile).
_PRE_STOP_S = 3
_GPU = "nvidia.com/gpu"
_H2C = "kubernetes.io/h2c"


@dataclass(frozen=True, slots=True)
class Placement:
    """Where and how the engine runs revisions: the namespace, the image, the owner label of what it
    makes (the gateways of one state; "" for none), and the replicas' drain timeout."""

    namespace: str = "default"
    image: str = IMAGE
    owner: str = ""
    drain_timeout_s: float = 30.0
    #: the ports a replica container listens on, in its pod.
    http_port: int = HTTP_PORT
    grpc_port: int = GRPC_PORT


def labels(spec: ReplicaSpec, owner: str = "") -> dict[str, str]:
    """The labels of everything a revision is made of (KServe's, plus the revision and who made it)."""
    found = {
        ISVC_LABEL: spec.service,
        COMPONENT_LABEL: spec.component,
        REVISION_LABEL: spec.revision,
        MANAGED_BY_LABEL: MANAGED_BY,
        "app.kubernetes.io/part-of": "servegate",
    }
    if owner:
        found[OWNER_LABEL] = owner
    return {k: v for k, v in found.items() if v}


def credentials_name(revision: str) -> str:
    return f"{revision}-credentials"


def revision_objects(spec: ReplicaSpec, placement: Placement) -> list[dict[str, Any]]:
    """The Deployment and the Service of revision `spec` (the Secret needs the Deployment's uid)."""
    return [deployment(spec, placement), service(spec, placement)]


def deployment(spec: ReplicaSpec, placement: Placement) -> dict[str, Any]:
    pod = json.loads(spec.pod) if spec.pod else {}
    own = labels(spec, placement.owner)
    spec, volumes, mounts = _pvc_models(spec)
    custom = pod.get("containers")
    containers = _custom_containers(custom) if custom else [_model_container(spec, placement, pod, mounts)]
    pod_spec: dict[str, Any] = {
        "containers": containers,
        "terminationGracePeriodSeconds": math.ceil(placement.drain_timeout_s) + _PRE_STOP_S + _DRAIN_SLACK_S,
        # Replicas never call the Kubernetes API: no token in the pod unless the manifest's
        # service account asks for one.
        "automountServiceAccountToken": "serviceAccountName" in pod,
    }
    for field in ("serviceAccountName", "tolerations", "affinity", "imagePullSecrets"):
        if field in pod:
            pod_spec[field] = pod[field]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if not custom:
        pod_spec["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
        volumes += [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]
    volumes += pod.get("volumes", [])
    if volumes:
        pod_spec["volumes"] = volumes
    template_labels = {**pod.get("labels", {}), **own}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec.revision, placement, own, pod.get("annotations")),
        "spec": {
            "selector": {"matchLabels": {REVISION_LABEL: spec.revision}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": template_labels, **_annotations(pod.get("annotations"))},
                "spec": pod_spec,
            },
        },
    }


def service(spec: ReplicaSpec, placement: Placement) -> dict[str, Any]:
    """The revision's Service: named http and grpc ports (h2c), selecting its ready pods. The gateway
    routes to the pods themselves; the Service is for people, probes and in-cluster callers."""
    own = labels(spec, placement.owner)
    http, grpc = placement.http_port, placement.grpc_port
    ports = [
        {"name": "http", "port": http, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
        {"name": "grpc", "port": grpc, "targetPort": "grpc", "protocol": "TCP", "appProtocol": _H2C},
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec.revision, placement, own),
        "spec": {"type": "ClusterIP", "selector": {REVISION_LABEL: spec.revision}, "ports": ports},
    }


def credentials_secret(
    spec: ReplicaSpec, placement: Placement, tokens: dict[str, str], deployment_uid: str
) -> dict[str, Any]:
    """The revision's tokens (keys of CREDENTIALS_KEYS), owned by its Deployment so they go with it."""
    owner = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": spec.revision,
        "uid": deployment_uid,
        "controller": False,
        "blockOwnerDeletion": False,
    }
    metadata = _metadata(credentials_name(spec.revision), placement, labels(spec, placement.owner))
    metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": tokens,
    }


# -- parts ---------------------------------------------------------------------------------------


def _metadata(
    name: str, placement: Placement, own: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": placement.namespace, "labels": own}
    metadata.update(_annotations(annotations))
    return metadata


def _annotations(annotations: dict[str, str] | None) -> dict[str, Any]:
    return {"annotations": dict(annotations)} if annotations else {}


def _model_container(
    spec: ReplicaSpec, placement: Placement, pod: dict[str, Any], mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    listen = [
        "--host",
        "0.0.0.0",
        "--http-port",
        str(placement.http_port),
        "--grpc-port",
        str(placement.grpc_port),
    ]
    args = ["model", "serve", *listen, *serve_args(spec, placement.drain_timeout_s, cpus=spec.cpus)]
    mounts = [
        *mounts,
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": _CACHE_DIR},
        *pod.get("volumeMounts", []),
    ]
    return {
        "name": "kserve-container",
        "image": placement.image,
        "args": args,
        "ports": [
            {"name": "http", "containerPort": placement.http_port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": placement.grpc_port, "protocol": "TCP"},
        ],
        "env": _env(spec, pod),
        "resources": pod.get("resources") or _resources(spec),
        "readinessProbe": http_probe("/v2/health/ready", period_s=2, failures=3),
        "livenessProbe": http_probe("/v2/health/live", period_s=10, failures=3),
        # Loading a large model may take minutes: liveness waits until the server first answers.
        "startupProbe": http_probe("/v2/health/live", period_s=2, failures=300),
        # A deleted pod leaves the endpoints while the kubelet already stops it: a few seconds of
        # serving first, so a gateway that has not yet heard sends it nothing it drops.
        "lifecycle": {"preStop": {"sleep": {"seconds": _PRE_STOP_S}}},
        "volumeMounts": mounts,
        "securityContext": hardened_container(),
    }


def _custom_containers(containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """KServe's custom `containers` as given; the first is the model container, named as KServe does."""
    first = {"name": "kserve-container", **containers[0]}
    return [first, *containers[1:]]


def _env(spec: ReplicaSpec, pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The replica's variables: the spec's, the pod's own (storage roots of the pod, not of the
    gateway's machine), references to secrets and config maps, and its tokens from its Secret."""
    refs = pod.get("envFrom", [])
    referenced = {ref["name"] for ref in refs}
    # A variable the manifest takes from a secret or config map is in spec.env without its value.
    values = {k: v for k, v in spec.env if k not in referenced}
    values |= {STORAGE_ROOTS_ENV: PVC_ROOT, "SERVEGATE_CACHE_DIR": _CACHE_DIR, "HOME": "/tmp"}
    values.setdefault(ALLOWED_HOSTS_ENV, "")
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
    env += [ref for ref in refs if ref["name"] not in values]
    secret = credentials_name(spec.revision)
    env += [
        {"name": variable, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
        for key, variable in CREDENTIALS_KEYS.items()
    ]
    return env


def _resources(spec: ReplicaSpec) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if spec.cpus:
        limits["cpu"] = f"{round(spec.cpus * 1000)}m"
    if spec.memory_bytes:
        limits["memory"] = str(spec.memory_bytes)
    if spec.gpus:
        limits[_GPU] = spec.gpus
    # Requests default to the limits (Kubernetes does the same when only limits are given).
    return {"limits": limits} if limits else {}


def http_probe(
    path: str, period_s: int, *, port: str = "http", failures: int | None = None
) -> dict[str, Any]:
    """A probe GETting `path` on the named container `port` (servegate's containers and the installed
    gateway's and operator's); without `failures`, Kubernetes' default threshold (3)."""
    probe = {"httpGet": {"path": path, "port": port}, "periodSeconds": period_s, "timeoutSeconds": 2}
    return probe if failures is None else {**probe, "failureThreshold": failures}


def hardened_container() -> dict[str, Any]:
    """A servegate container's securityContext: no privilege escalation, a read-only root
    filesystem, no capabilities."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pvc_models(spec: ReplicaSpec) -> tuple[ReplicaSpec, list[dict[str, Any]], list[dict[str, Any]]]:
    """`pvc://CLAIM/PATH` models as paths under PVC_ROOT, with the claims' volumes and mounts."""
    claims: dict[str, None] = {}
    models = []
    for m in spec.models:
        parts = urlsplit(m.uri)
        if parts.scheme.lower() == "pvc" and parts.netloc:
            claims[parts.netloc] = None
            m = ServedModelRef(m.name, f"{PVC_ROOT}/{parts.netloc}{parts.path}", m.format)
        models.append(m)
    # A claim's name may hold dots; a volume's name may not.
    volumes = [
        {"name": _volume(claim), "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        for claim in claims
    ]
    mounts = [
        {"name": _volume(claim), "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True} for claim in claims
    ]
    return replace(spec, models=tuple(models)), volumes, mounts


def _volume(claim: str) -> str:
    return f"pvc-{claim.replace('.', '-')}"[:63]
