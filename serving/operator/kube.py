"""The operator's calls to the cluster: KServe's custom objects (list, watch, patch, status) and its
Lease, through the official client, with the Kubernetes engine's error wording (`KubeApi`): which
permission is missing, which API cannot be reached.

Blocking (the client is synchronous): the operator calls these in threads. One `OperatorApi` reads
one watch at a time (`interrupt` ends it from another thread); `sibling()` gives another on the same
connection pool for another watch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from serving.engines.kubernetes.api import KubeApi, KubernetesUnavailable, status_message
from serving.engines.kubernetes.names import FIELD_MANAGER, SERVING_GROUP

__all__ = ["KINDS", "Conflict", "Kind", "KubernetesUnavailable", "OperatorApi"]

_MERGE = "application/merge-patch+json"
_LEASES = ("coordination.k8s.io", "v1", "leases")


@dataclass(frozen=True, slots=True)
class Kind:
    """One of KServe's kinds, as the cluster serves it and as the gateway's control API names it."""

    kind: str
    #: the CRD's plural, which is the control API's too (`/api/v1/inferenceservices`).
    plural: str
    #: the version the operator reads and writes (KServe's storage version).
    version: str
    group: str = SERVING_GROUP


KINDS = (
    Kind("InferenceService", "inferenceservices", "v1beta1"),
    Kind("TrainedModel", "trainedmodels", "v1alpha1"),
    Kind("InferenceGraph", "inferencegraphs", "v1alpha1"),
)


class Conflict(Exception):
    """A write lost a race: the object changed since it was read, or was created meanwhile (409)."""


class OperatorApi(KubeApi):
    """KServe's objects and the Lease in one cluster, through an `ApiClient` of the official client."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        super().__init__(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def sibling(self) -> OperatorApi:
        """Another handle on the same connection pool, with its own watch to interrupt."""
        return type(self)(self.client)

    # -- KServe's objects ----------------------------------------------------------------------------

    def list_objects(
        self, kind: Kind, namespace: str | None, limit: int | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """The objects of `kind` in `namespace` (None: every namespace) and the list's resourceVersion."""
        found = self._list(kind, namespace, limit=limit)
        return list(found.get("items") or []), str(found["metadata"].get("resourceVersion") or "")

    def watch_objects(
        self, kind: Kind, namespace: str | None, version: str, timeout_s: int
    ) -> Iterator[tuple[str, dict[str, Any], str]]:
        """The objects of `kind` in `namespace` (None: every namespace), watched from `version`
        (see KubeApi.watch)."""
        if namespace is None:
            method, args = self.custom.list_cluster_custom_object, (kind.group, kind.version, kind.plural)
        else:
            method = self.custom.list_namespaced_custom_object
            args = (kind.group, kind.version, namespace, kind.plural)
        return self.watch(_raising(method), *args, what=kind.plural, version=version, timeout_s=timeout_s)

    def patch_object(
        self, kind: Kind, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch an object (a `metadata.resourceVersion` in `patch` is a precondition: Conflict
        when it no longer holds); the object now, None when it is gone."""
        method = _raising(self.custom.patch_namespaced_custom_object)
        args = (kind.group, kind.version, namespace, kind.plural, name, patch)
        return self._call(method, *args, missing_ok=True, field_manager=FIELD_MANAGER, _content_type=_MERGE)

    def patch_status(
        self, kind: Kind, namespace: str, name: str, status_patch: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Merge-patch an object's status subresource; the object now, None when it is gone."""
        method = self.custom.patch_namespaced_custom_object_status
        body = {"status": status_patch}
        args = (kind.group, kind.version, namespace, kind.plural, name, body)
        return self._call(method, *args, missing_ok=True, field_manager=FIELD_MANAGER, _content_type=_MERGE)

    def _list(self, kind: Kind, namespace: str | None, **kwargs: Any) -> Any:
        if namespace is None:
            method = _raising(self.custom.list_cluster_custom_object)
            return self._call(method, kind.group, kind.version, kind.plural, **kwargs)
        method = _raising(self.custom.list_namespaced_custom_object)
        return self._call(method, kind.group, kind.version, namespace, kind.plural, **kwargs)

    # -- the Lease -----------------------------------------------------------------------------------

    def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Lease `name`, or None when there is none."""
        return self._call(
            self.custom.get_namespaced_custom_object,
            *_LEASES[:2],
            namespace,
            _LEASES[2],
            name,
            missing_ok=True,
        )

    def write_lease(
        self, namespace: str, name: str, spec: dict[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Create the Lease (`resource_version` None) or replace it if it is still at `resource_version`;
        Conflict when another holder wrote it first."""
        group, version, plural = _LEASES
        body: dict[str, Any] = {
            "apiVersion": f"{group}/{version}",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        if resource_version is None:
            method = _raising(self.custom.create_namespaced_custom_object)
            return self._call(method, group, version, namespace, plural, body, field_manager=FIELD_MANAGER)
        body["metadata"]["resourceVersion"] = resource_version
        method = _raising(self.custom.replace_namespaced_custom_object)
        return self._call(method, group, version, namespace, plural, name, body, field_manager=FIELD_MANAGER)


def _raising(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method`, with a 409 raised as Conflict and a 410 as KubeApi.Gone (KubeApi's error wording
    covers the rest)."""
    from kubernetes.client.exceptions import ApiException

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(status_message(exc)) from None
            if exc.status == 410:
                raise KubeApi.Gone(status_message(exc)) from None
            raise

    return call
