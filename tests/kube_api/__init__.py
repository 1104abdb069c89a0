"""An in-memory Kubernetes API server served over real HTTP on loopback, for tests.

    with kube_api() as api:
        apps = kubernetes.client.AppsV1Api(api.api_client())
        ...

It answers the official `kubernetes` client as an API server would (discovery, CRUD, the patch
types, server-side apply with field ownership, watches, garbage collection, finalizers, RBAC-like
tokens), and runs a Deployment controller, a pluggable kubelet and an EndpointSlice controller.
"""

from tests.kube_api._app import SeenRequest
from tests.kube_api._auth import Rule, Rules
from tests.kube_api._kubelet import Kubelet, PodRuntime
from tests.kube_api._resources import RESOURCES, Resource
from tests.kube_api._server import KubeApi, kube_api

__all__ = [
    "RESOURCES",
    "KubeApi",
    "Kubelet",
    "PodRuntime",
    "Resource",
    "Rule",
    "Rules",
    "SeenRequest",
    "kube_api",
]
