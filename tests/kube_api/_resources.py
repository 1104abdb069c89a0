"""The resource table the fake serves, and the discovery documents built from it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
_SUBRESOURCE_VERBS = ("get", "patch", "update")


@dataclass(frozen=True)
class Resource:
    """One REST resource: where it lives, what it is called, which subresources it has."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: tuple[str, ...] = ()
    short_names: tuple[str, ...] = ()
    #: a custom resource: list items carry apiVersion/kind, DELETE answers with the object
    custom: bool = False
    #: DELETE answers with the deleted object rather than a Success Status (pods do)
    delete_returns_object: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How Kubernetes names the resource in messages: `deployments.apps`, `pods`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def storage_key(self) -> tuple[str, str]:
        """Every served version of a resource shares one storage, as in etcd."""
        return self.group, self.plural

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    def discovery(self) -> list[dict]:
        """Its APIResource entries: the resource, then one per subresource."""
        entries = [
            {
                "name": self.plural,
                "singularName": self.kind.lower(),
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": list(VERBS),
                "shortNames": list(self.short_names),
            }
        ]
        for sub in self.subresources:
            entry = {
                "name": f"{self.plural}/{sub}",
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": list(_SUBRESOURCE_VERBS),
            }
            if sub == "scale":
                entry.update(group="autoscaling", version="v1", kind="Scale")
            entries.append(entry)
        return entries


def _custom(
    group: str, version: str, plural: str, kind: str, *short: str, namespaced: bool = True
) -> Resource:
    return Resource(
        group,
        version,
        plural,
        kind,
        namespaced=namespaced,
        subresources=("status",),
        short_names=short,
        custom=True,
        delete_returns_object=True,
    )


_RBAC = "rbac.authorization.k8s.io"
_KSERVE = "serving.kserve.io"

#: What a fresh fake serves; pass `resources=` to `kube_api` to add more (or create a CRD).
RESOURCES: tuple[Resource, ...] = (
    Resource(
        "", "v1", "namespaces", "Namespace", namespaced=False, subresources=("status",), short_names=("ns",)
    ),
    Resource(
        "", "v1", "pods", "Pod", subresources=("status",), short_names=("po",), delete_returns_object=True
    ),
    Resource("", "v1", "services", "Service", subresources=("status",), short_names=("svc",)),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    Resource("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "events", "Event", short_names=("ev",)),
    Resource(
        "apps", "v1", "deployments", "Deployment", subresources=("status", "scale"), short_names=("deploy",)
    ),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Resource("coordination.k8s.io", "v1", "leases", "Lease"),
    Resource(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        subresources=("status",),
        short_names=("crd", "crds"),
    ),
    Resource(_RBAC, "v1", "roles", "Role"),
    Resource(_RBAC, "v1", "rolebindings", "RoleBinding"),
    Resource(_RBAC, "v1", "clusterroles", "ClusterRole", namespaced=False),
    Resource(_RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
    _custom(_KSERVE, "v1beta1", "inferenceservices", "InferenceService", "isvc"),
    _custom(_KSERVE, "v1alpha1", "trainedmodels", "TrainedModel", "tm"),
    _custom(_KSERVE, "v1alpha1", "inferencegraphs", "InferenceGraph", "ig"),
    _custom(_KSERVE, "v1alpha1", "servingruntimes", "ServingRuntime", "sr"),
    _custom(_KSERVE, "v1alpha1", "clusterservingruntimes", "ClusterServingRuntime", namespaced=False),
)


def resources_of_crd(crd: dict) -> list[Resource]:
    """The resources a CustomResourceDefinition object asks to be served."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    return [
        Resource(
            spec.get("group", ""),
            version["name"],
            names.get("plural", ""),
            names.get("kind", ""),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            subresources=tuple(sorted((version.get("subresources") or {}).keys())),
            short_names=tuple(names.get("shortNames") or ()),
            custom=True,
            delete_returns_object=True,
        )
        for version in spec.get("versions") or ()
        if version.get("served", True)
    ]


class Registry:
    """The resources served now; CRD objects add to it while the server runs."""

    def __init__(self, resources: Iterable[Resource]) -> None:
        self._resources: dict[tuple[str, str, str], Resource] = {}
        for resource in resources:
            self.add(resource)

    def add(self, resource: Resource) -> None:
        self._resources.setdefault((resource.group, resource.version, resource.plural), resource)

    def __iter__(self) -> Iterator[Resource]:
        return iter(list(self._resources.values()))

    def find(self, group: str, version: str, plural: str) -> Resource | None:
        return self._resources.get((group, version, plural))

    def by_api_version(self, api_version: str, plural_or_kind: str) -> Resource | None:
        """Look a resource up as a test names it: ("apps/v1", "deployments") or ("apps/v1", "Deployment")."""
        group, _, version = api_version.rpartition("/")
        for resource in self:
            if (resource.group, resource.version) == (group, version) and plural_or_kind in (
                resource.plural,
                resource.kind,
            ):
                return resource
        return None

    def versions(self) -> dict[str, list[str]]:
        """group -> its versions, the preferred (first registered) first."""
        groups: dict[str, list[str]] = {}
        for resource in self:
            versions = groups.setdefault(resource.group, [])
            if resource.version not in versions:
                versions.append(resource.version)
        return groups


def version_info() -> dict:
    return {
        "major": "1",
        "minor": "31",
        "gitVersion": "v1.31.0-servegate-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2024-08-13T00:00:00Z",
        "goVersion": "go1.22.5",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> dict:
    """GET /api"""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(name: str, versions: list[str]) -> dict:
    listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": listed, "preferredVersion": listed[0]}


def api_group_list(registry: Registry) -> dict:
    """GET /apis"""
    groups = [_group(name, versions) for name, versions in registry.versions().items() if name]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(registry: Registry, group: str) -> dict | None:
    """GET /apis/{group}"""
    versions = registry.versions().get(group)
    if not group or not versions:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(group, versions)}


def resource_list(registry: Registry, group: str, version: str) -> dict | None:
    """GET /api/v1 and /apis/{group}/{version}"""
    served = [r for r in registry if (r.group, r.version) == (group, version)]
    if not served:
        return None
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": served[0].api_version,
        "resources": [entry for resource in served for entry in resource.discovery()],
    }
