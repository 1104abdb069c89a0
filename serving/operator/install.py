"""What `servegate install` applies to a cluster: KServe's CRDs, RBAC, the operator and the gateway.

Pure functions from settings to Kubernetes objects (dicts); only the CRD files are read. The
operator and the gateway run as one ServiceAccount, hardened alike (non-root, read-only root
filesystem, no privilege escalation, no capabilities, the runtime's seccomp profile).
"""

from __future__ import annotations

import re
from typing import Any

from serving import __version__
from serving.engines.kubernetes.names import (
    GRPC_PORT,
    HTTP_PORT,
    IMAGE,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SERVING_GROUP,
)
from serving.engines.kubernetes.render import hardened_container, http_probe
from serving.operator.crds import load_crds
from serving.spec.common import dns_label_problem

__all__ = [
    "DEFAULT_NAMESPACE",
    "GATEWAY_NAME",
    "OPERATOR_HEALTH_PORT",
    "OPERATOR_NAME",
    "OPERATOR_TOKEN_SECRET",
    "SERVICE_ACCOUNT",
    "STATE_URL_ENV",
    "cluster_role_rules",
    "install_objects",
    "lease_rules",
]

DEFAULT_NAMESPACE = "servegate"
SERVICE_ACCOUNT = "servegate"
OPERATOR_NAME = "servegate-operator"
GATEWAY_NAME = "servegate-gateway"
#: the operator's /healthz and /readyz (it serves no traffic).
OPERATOR_HEALTH_PORT = 8082
#: the Secret whose `token` key is the gateway admin token the operator applies with (made by the
#: admin: `servegate token create`); optional, the operator says what is missing when it is.
OPERATOR_TOKEN_SECRET = "servegate-operator-token"
#: the environment variable the gateway's `--state-url $(...)` reads, filled from a Secret.
STATE_URL_ENV = "SERVEGATE_STATE_URL"
#: writable folders on the read-only root filesystem: scratch space, and `servegate up`'s state dir.
_TMP = "/tmp"
_STATE_DIR = "/var/lib/servegate"
#: the non-root user of the image (the Dockerfile's `servegate`).
_UID = 10001
#: the gateway drains in-flight requests for 30 s (`--drain-timeout`) before it exits.
_GATEWAY_GRACE_S = 45

_ALL = ("get", "list", "watch", "create", "update", "patch", "delete")
_READ = ("get", "list", "watch")
_KSERVE_KINDS = ("inferenceservices", "trainedmodels", "inferencegraphs")


def cluster_role_rules() -> list[dict[str, Any]]:
    """Cluster-wide permissions of the operator and the Kubernetes engine (InferenceServices live
    in any namespace, so their Deployments, Services and Secrets do too)."""
    return [
        # KServe's resources: watched, their finalizers and status written back.
        {
            "apiGroups": [SERVING_GROUP],
            "resources": [*_KSERVE_KINDS],
            "verbs": ["get", "list", "watch", "update", "patch"],
        },
        {
            "apiGroups": [SERVING_GROUP],
            "resources": [f"{kind}/status" for kind in _KSERVE_KINDS],
            "verbs": ["get", "update", "patch"],
        },
        # Setting an ownerReference with blockOwnerDeletion needs update on the owner's finalizers.
        {
            "apiGroups": [SERVING_GROUP],
            "resources": [f"{kind}/finalizers" for kind in _KSERVE_KINDS],
            "verbs": ["update"],
        },
        # One Deployment + Service per revision (and a Secret with its replicas' token); the
        # autoscaler sets replicas through the scale subresource.
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": [*_ALL]},
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "update", "patch"]},
        {"apiGroups": [""], "resources": ["services", "secrets"], "verbs": [*_ALL]},
        # Where ready replicas are, for routing, and what describe shows about them.
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": [*_READ]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": [*_READ]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        # Events on InferenceServices, through either the core or the events.k8s.io API.
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]


def lease_rules() -> list[dict[str, Any]]:
    """Leader election, only in servegate's own namespace (a Role, not the ClusterRole)."""
    return [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]


def install_objects(
    namespace: str = DEFAULT_NAMESPACE,
    image: str = IMAGE,
    gateway_replicas: int = 1,
    state_url_secret: str | None = None,
    state_url_key: str = "url",
    operator_replicas: int = 2,
) -> list[dict[str, Any]]:
    """Every object of a servegate installation, in the order to apply them: the CRDs, the
    Namespace, the ServiceAccount and its RBAC, the gateway's Service, then the two Deployments.

    `state_url_secret` names a Secret in `namespace` whose `state_url_key` holds the gateway's
    state URL (SQLAlchemy, e.g. PostgreSQL), which several gateway pods share (one leads, all
    route); without it the one gateway keeps its state in an emptyDir. Raises ValueError for a bad
    name or image, a replica count below 1, or several gateways without a shared state.
    """
    for what, value in (("namespace", namespace), ("state_url_secret", state_url_secret)):
        problem = value is not None and dns_label_problem(value)
        if problem:
            raise ValueError(f"{what}: {problem}")
    if not image or any(c.isspace() for c in image):
        raise ValueError(f"image: {image!r} is not an image reference")
    if gateway_replicas < 1 or operator_replicas < 1:
        raise ValueError("gateway_replicas and operator_replicas must be at least 1")
    if gateway_replicas > 1 and state_url_secret is None:
        raise ValueError(
            "gateway_replicas: several gateways need one shared state: give state_url_secret "
            "(a Secret holding a PostgreSQL URL)"
        )
    return [
        *load_crds(),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": _labels(None)}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(SERVICE_ACCOUNT, namespace, None),
        },
        *_rbac(namespace),
        _gateway_service(namespace),
        _operator_deployment(namespace, image, operator_replicas),
        _gateway_deployment(namespace, image, gateway_replicas, state_url_secret, state_url_key),
    ]


# -- metadata -------------------------------------------------------------------------------------


def _labels(component: str | None) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/part-of": "servegate",
        "app.kubernetes.io/version": _label_value(__version__),
        MANAGED_BY_LABEL: MANAGED_BY,
    }
    if component is not None:
        labels |= _selector(component) | {"app.kubernetes.io/component": component}
    return labels


def _selector(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"servegate-{component}"}


def _label_value(text: str) -> str:
    # A label value allows [-_.A-Za-z0-9] only; a version such as 0.2.0+local would not pass.
    return re.sub(r"[^-_.A-Za-z0-9]", "_", text)[:63].strip("-_.")


def _meta(name: str, namespace: str | None, component: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = _labels(component)
    return meta


def _service_account_subject(namespace: str) -> dict[str, Any]:
    return {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}


def _rbac(namespace: str) -> list[dict[str, Any]]:
    rbac = "rbac.authorization.k8s.io"
    # One installation per cluster (the CRDs and the operator's watch are cluster-wide).
    cluster_name = "servegate"
    return [
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "ClusterRole",
            "metadata": _meta(cluster_name, None, None),
            "rules": cluster_role_rules(),
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(cluster_name, None, None),
            "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": cluster_name},
            "subjects": [_service_account_subject(namespace)],
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "Role",
            "metadata": _meta("servegate-leader-election", namespace, None),
            "rules": lease_rules(),
        },
        {
            "apiVersion": f"{rbac}/v1",
            "kind": "RoleBinding",
            "metadata": _meta("servegate-leader-election", namespace, None),
            "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "servegate-leader-election"},
            "subjects": [_service_account_subject(namespace)],
        },
    ]


# -- workloads ------------------------------------------------------------------------------------


def _gateway_service(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(GATEWAY_NAME, namespace, "gateway"),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector("gateway"),
            "ports": [
                {
                    "name": "http",
                    "port": HTTP_PORT,
                    "targetPort": "http",
                    "protocol": "TCP",
                    "appProtocol": "http",
                },
                # gRPC without TLS: HTTP/2 cleartext, so meshes and gateways do not speak HTTP/1 to it.
                {
                    "name": "grpc",
                    "port": GRPC_PORT,
                    "targetPort": "grpc",
                    "protocol": "TCP",
                    "appProtocol": "kubernetes.io/h2c",
                },
            ],
        },
    }


def _operator_deployment(namespace: str, image: str, replicas: int) -> dict[str, Any]:
    container = {
        "name": "operator",
        "image": image,
        "command": ["servegate"],
        "args": [
            "operator",
            "--namespace",
            namespace,
            "--health-port",
            str(OPERATOR_HEALTH_PORT),
            # The kubelet's probes come from outside the pod.
            "--health-host",
            "0.0.0.0",
        ],
        # The leader election's identity and the namespace of its Lease (and of the gateway's
        # Service, which the operator reaches at servegate-gateway.$(POD_NAMESPACE).svc by default).
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            {
                "name": "SERVEGATE_TOKEN",
                "valueFrom": {
                    "secretKeyRef": {"name": OPERATOR_TOKEN_SECRET, "key": "token", "optional": True}
                },
            },
            _home(),
        ],
        "ports": [{"name": "health", "containerPort": OPERATOR_HEALTH_PORT, "protocol": "TCP"}],
        "readinessProbe": http_probe("/readyz", period_s=10, port="health"),
        "livenessProbe": http_probe("/healthz", period_s=20, port="health"),
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": _TMP}],
    }
    return _deployment(OPERATOR_NAME, namespace, "operator", replicas, container, ["tmp"], grace_s=30)


def _gateway_deployment(
    namespace: str, image: str, replicas: int, state_url_secret: str | None, state_url_key: str
) -> dict[str, Any]:
    # Revisions run in servegate's namespace, from the gateway's own image.
    args = ["up", "--engine", "kubernetes", "--namespace", namespace, "--image", image, "--host", "0.0.0.0"]
    args += ["--http-port", str(HTTP_PORT), "--grpc-port", str(GRPC_PORT), "--state-dir", _STATE_DIR]
    # Its pod's address: where revisions' replicas and the other gateways reach it.
    env: list[dict[str, Any]] = [_home(), _field_env("POD_IP", "status.podIP")]
    if state_url_secret is not None:
        args += ["--state-url", f"$({STATE_URL_ENV})"]
        secret = {"secretKeyRef": {"name": state_url_secret, "key": state_url_key}}
        env.append({"name": STATE_URL_ENV, "valueFrom": secret})
    container = {
        "name": "gateway",
        "image": image,
        "command": ["servegate"],
        "args": args,
        "env": env,
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": http_probe("/v2/health/ready", period_s=5),
        "livenessProbe": http_probe("/v2/health/live", period_s=20),
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": _TMP}, {"name": "state", "mountPath": _STATE_DIR}],
    }
    deployment = _deployment(
        GATEWAY_NAME, namespace, "gateway", replicas, container, ["tmp", "state"], _GATEWAY_GRACE_S
    )
    # Spread the replicas over nodes where the cluster can (never a reason not to schedule).
    deployment["spec"]["template"]["spec"]["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": _selector("gateway")},
        }
    ]
    return deployment


# Each object gets its own dicts (no sharing between objects): a caller may change one, and
# YAML would print shared dicts as anchors and aliases.


def _container_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, **hardened_container()}


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": _UID,
        "runAsGroup": _UID,
        "fsGroup": _UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _home() -> dict[str, Any]:
    # Python and its libraries write caches under $HOME: point it at the writable /tmp.
    return {"name": "HOME", "value": _TMP}


def _deployment(
    name: str,
    namespace: str,
    component: str,
    replicas: int,
    container: dict[str, Any],
    volumes: list[str],
    grace_s: int,
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _selector(component)},
            "template": {
                "metadata": {"labels": _labels(component)},
                "spec": {
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": grace_s,
                    "containers": [container],
                    "volumes": [{"name": volume, "emptyDir": {}} for volume in volumes],
                },
            },
        },
    }


def _field_env(name: str, field: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}}
